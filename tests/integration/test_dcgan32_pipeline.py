"""Real photographs at 32x32 RGB through the whole pipeline (issue 14): crops of scikit-learn's two
sample photographs, written as a Hugging Face-style Parquet file, `ganpipe run --preset dcgan32` with a
CPU-sized schedule (stage -> train -> evaluate -> register -> sample), then `ganpipe sample` from the
registry. Checks the RGB 32x32 preview grid, the registered model's signature and the sampler's shape."""

from __future__ import annotations

import json

import pytest

from pipelines.cli import main
from tests.staging_data import make_photo_crops

pytestmark = pytest.mark.integration

CPU_SIZED = ["train.total_steps=8", "train.tick_every_steps=4", "train.checkpoint_every_steps=8",
             "train.global_batch_size=16", "network.g_width=8", "network.d_width=8", "network.z_dim=16",
             "evaluation.num_samples=64", "sampling.num_samples=16", "registry.export=false"]


def test_dcgan32_on_photographs_from_parquet_end_to_end(ray_cluster, prefect_harness, mlflow_tracking, tmp_path,
                                                        monkeypatch, capsys):
    from mlflow import MlflowClient
    from mlflow.pyfunc import load_model
    from PIL import Image

    from infra.models.batch_sampling import open_samples

    monkeypatch.setenv("GANPIPE_HOME", str(tmp_path / "home"))
    crops = make_photo_crops(tmp_path / "photos", 96, size=32, seed=0)
    argv = ["run", "--preset", "dcgan32", "--json", "--set", f"source.uri={crops['parquet']}",
            "--set", f"storage.root={tmp_path / 'root'}", "--set", f"cluster.storage_path={tmp_path / 'runs'}",
            "--set", "registry.model_name=photos32"]
    for override in CPU_SIZED:
        argv += ["--set", override]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()  # the JSON summary (indented), among other lines
    result = json.loads("\n".join(lines[lines.index("{"):lines.index("}") + 1]))
    assert result["train_step"] == 8 and result["version"] == "1"
    # the staged dataset: every crop, RGB 32x32, two classes
    manifest = json.loads((tmp_path / "root" / "datasets" / "crops").glob("*/_manifest.json").__next__().read_text())
    assert manifest["num_rows"] == 96 and manifest["shape"] == [3, 32, 32] and manifest["has_labels"]
    # the preview grid is an RGB picture of 32x32 samples (4x4 of them, with the grid's padding)
    with Image.open(result["sample_grid"]) as grid:
        assert grid.mode == "RGB" and grid.width >= 4 * 32 and grid.height >= 4 * 32
    # the registered model: its signature's output and a prediction are (n, 3, 32, 32)
    client = MlflowClient(mlflow_tracking)
    version = client.get_model_version_by_alias("photos32", "champion")
    model = load_model("models:/photos32@champion")
    out_spec = model.metadata.get_output_schema().inputs[0]
    assert tuple(out_spec.shape) == (-1, 3, 32, 32), out_spec
    assert model.predict(None, params={"num_samples": 5, "seed": 0}).shape == (5, 3, 32, 32)
    assert str(version.version) == "1"
    # batch sampling from the registry: (n, 3, 32, 32)
    out = tmp_path / "samples"
    assert main(["sample", "--model", "models:/photos32@champion", "--num-samples", "40", "--out", str(out),
                 "--engine", "direct", "--actors", "1"]) == 0
    indices, x = open_samples(str(out), verify=True).load_arrays()
    assert x.shape == (40, 3, 32, 32) and list(indices) == list(range(40))
