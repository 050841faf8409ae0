"""The registered generator: a clean consumer process, the champion alias, tags, tampering, S3 artifacts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from gan_core import get_preset, train
from gan_core.checkpoint import load_generator
from gan_core.data import InMemoryBatches, Normalisation, load_digits
from gan_core.sampling import generate, latents_for_range
from infra.models.evaluation import Evaluation
from infra.models.registry import register_generator

pytestmark = pytest.mark.integration

DIGITS = Normalisation(scale=1 / 8, offset=-1.0)  # pixel values 0..16 -> [-1, 1]

# The consumer: nothing but mlflow + torch (+ numpy). Prints a JSON report on its last line.
CONSUMER = textwrap.dedent("""
    import json, sys
    import numpy as np
    import mlflow
    uri, z_file, out_file = sys.argv[1:4]
    model = mlflow.pyfunc.load_model(uri)
    z = np.load(z_file)
    x = model.predict(z)
    n_dim = z.shape[1]
    seeded = model.predict(None, params={"num_samples": 5, "seed": 3, "start": 1000})  # as documented
    np.savez(out_file, x=x, seeded=seeded)
    engine = type(model.unwrap_python_model().G).__module__
    print(json.dumps({"ray": "ray" in sys.modules, "prefect": "prefect" in sys.modules,
                      "gan_core": "gan_core" in sys.modules, "engine": engine,
                      "engine_file": sys.modules[engine].__file__}))
""")


def _consume(uri: str, z: np.ndarray, tmp: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    """Load ``uri`` in a fresh interpreter started outside the repository and predict."""
    (tmp / "consumer.py").write_text(CONSUMER)
    np.save(tmp / "z.npy", z)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(tmp / "consumer.py"), uri, str(tmp / "z.npy"), str(tmp / "out.npz")],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    out = np.load(tmp / "out.npz")
    return report, out["x"], out["seeded"]


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory):
    """A few steps of small DCGAN nets on digits: enough for BatchNorm statistics and an EMA."""
    cfg = get_preset("digits").with_overrides({
        "network.g_width": 8, "network.d_width": 8, "train.global_batch_size": 32, "train.total_steps": 3,
        "train.tick_every_steps": 3, "train.checkpoint_every_steps": 3})
    x, _ = load_digits()
    res = train(cfg, batches=InMemoryBatches(x, 32, seed=0), checkpoint_root=tmp_path_factory.mktemp("ckpt"))
    return res.checkpoint_dir


def fixed_score(value: float, primary: str = "score", higher_is_better: bool = True):
    """An evaluator with a chosen score, to drive the champion decision deterministically."""
    def evaluate(G, config):
        return Evaluation({primary: value, "other": 1.0}, primary, higher_is_better, {"evaluator": "fixed"})
    return evaluate


@pytest.fixture(scope="module")
def champion(store, digits_checkpoint):
    """Version 1 of 'digits-gen' with the default evaluator and both exports: the first champion."""
    return register_generator(digits_checkpoint, "digits-gen", normalisation=DIGITS, dataset_version="v-test")


def test_first_version_is_champion_with_tags_and_exports(champion):
    from mlflow import MlflowClient

    assert champion.version == "1" and champion.promoted and champion.champion_version == "1"
    assert champion.evaluation.primary == "fd_raw" and champion.evaluation.higher_is_better is False
    assert champion.exports == {"pt2": "artifacts/generator.pt2", "onnx": "artifacts/generator.onnx"}
    tags = MlflowClient().get_model_version("digits-gen", "1").tags
    assert float(tags["metric.fd_raw"]) == pytest.approx(champion.evaluation.value)
    assert tags["eval.primary"] == "fd_raw" and tags["dataset.version"] == "v-test"
    assert tags["dataset.name"] == "digits" and "training_run_id" in tags and len(tags["weights_sha256"]) == 64
    assert tags["export.pt2"].startswith("ok") and tags["export.onnx"].startswith("ok")
    assert tags["champion.decision"].startswith("promoted")


def test_clean_process_loads_champion_and_matches_training_side_G_ema(champion, digits_checkpoint, tmp_path):
    G_ema, cfg = load_generator(digits_checkpoint)
    z = latents_for_range(11, 0, 20, cfg.network.z_dim).numpy()
    report, x, seeded = _consume("models:/digits-gen@champion", z, tmp_path)

    assert not report["ray"] and not report["prefect"], report
    # the model runs its own copy of gan_core, under a version-private package name
    assert report["engine"].startswith("_ganpipe_model_") and report["engine"].endswith(".networks"), report
    assert "/code/gan_core/networks.py" in report["engine_file"] and not report["gan_core"], report
    assert x.shape == (20, 1, 8, 8) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 16.0  # the data's original pixel range
    with torch.no_grad():
        expected = ((G_ema(torch.from_numpy(z)) - DIGITS.offset) / DIGITS.scale).numpy()
    np.testing.assert_allclose(x, expected, rtol=0, atol=1e-5)
    # the seed-addressed convenience equals gan_core.sampling.generate for samples [1000, 1005)
    expected_seeded = ((generate(G_ema, 5, 3, start=1000) - DIGITS.offset) / DIGITS.scale).numpy()
    assert seeded.shape == (5, 1, 8, 8) and seeded.dtype == np.float32
    np.testing.assert_allclose(seeded, expected_seeded, rtol=0, atol=1e-5)


def test_alias_moves_only_for_a_strictly_better_version(store, digits_checkpoint):
    from mlflow import MlflowClient

    name = "alias-gen"
    common = dict(normalisation=DIGITS, dataset_version="v7", export_formats=())
    r1 = register_generator(digits_checkpoint, name, evaluator=fixed_score(0.5), **common)
    r2 = register_generator(digits_checkpoint, name, evaluator=fixed_score(0.4), **common)  # worse
    r3 = register_generator(digits_checkpoint, name, evaluator=fixed_score(0.5), **common)  # tie
    r4 = register_generator(digits_checkpoint, name, evaluator=fixed_score(0.9), **common)  # better
    r5 = register_generator(digits_checkpoint, name, evaluator=fixed_score(0.1, "loss", False), **common)  # other metric
    assert [r.promoted for r in (r1, r2, r3, r4, r5)] == [True, False, False, True, False]
    assert [r.champion_version for r in (r1, r2, r3, r4, r5)] == ["1", "1", "1", "4", "4"]
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(name, "champion").version) == "4"
    for r, score in zip((r1, r2, r3, r4), (0.5, 0.4, 0.5, 0.9)):
        tags = client.get_model_version(name, r.version).tags
        assert float(tags["metric.score"]) == score and tags["metric.other"] == "1.0"
        assert tags["eval.primary"] == "score" and tags["dataset.version"] == "v7"
        assert tags["champion.decision"] == r.decision
        run_id = client.get_model_version(name, r.version).run_id
        assert run_id, "every version is linked to a run"
    assert "not higher" in r2.decision and "not higher" in r3.decision and "scored with score" in r5.decision


def test_tampered_model_files_fail_to_load(store, digits_checkpoint):
    import mlflow
    from mlflow import MlflowClient

    reg = register_generator(digits_checkpoint, "tamper-gen", normalisation=DIGITS, export_formats=())
    mlflow.pyfunc.load_model(reg.model_uri)  # intact: loads
    source = MlflowClient().get_model_version("tamper-gen", reg.version).source
    model_dir = Path(mlflow.artifacts.download_artifacts(source))  # local store: the stored files themselves
    weights = model_dir / "artifacts" / "weights.pt"
    state = torch.load(weights, weights_only=True)
    next(iter(state.values())).add_(0.01)  # a plausible, silently wrong set of weights
    torch.save(state, weights)
    with pytest.raises(Exception, match=r"weights\.pt has been modified: sha256 .* does not match"):
        mlflow.pyfunc.load_model(reg.model_uri)


def test_registry_with_artifacts_on_s3(store, digits_checkpoint, s3_bucket, s3_server, tmp_path, monkeypatch):
    import boto3
    from mlflow import MlflowClient

    from infra.train.tracking import ensure_experiment

    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_server)
    s3 = boto3.client("s3")
    for f in Path(digits_checkpoint).iterdir():  # the checkpoint itself on S3, as Ray Train stores it
        s3.upload_file(str(f), s3_bucket, f"runs/r1/checkpoint-3/{f.name}")
    ensure_experiment(MlflowClient(), "s3-experiment", f"s3://{s3_bucket}/mlflow")
    reg = register_generator(f"s3://{s3_bucket}/runs/r1/checkpoint-3", "s3-gen", normalisation=DIGITS,
                             export_formats=("pt2",), experiment="s3-experiment")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert any(k.endswith("artifacts/weights.pt") for k in keys), keys
    assert any(k.endswith("artifacts/generator.pt2") for k in keys), keys

    G_ema, cfg = load_generator(digits_checkpoint)
    z = latents_for_range(5, 0, 4, cfg.network.z_dim).numpy()
    report, x, _ = _consume("models:/s3-gen@champion", z, tmp_path)
    assert not report["ray"] and not report["prefect"]
    with torch.no_grad():
        expected = ((G_ema(torch.from_numpy(z)) - DIGITS.offset) / DIGITS.scale).numpy()
    np.testing.assert_allclose(x, expected, rtol=0, atol=1e-5)
    assert reg.version == "1"


def test_evaluators_score_on_fixed_latents():
    """The documented default and the adapter of the project's evaluation both give a primary metric."""
    from gan_core.data import load_builtin
    from gan_core.networks import build_generator
    from infra.models.evaluation import default_evaluator, gan_core_evaluator

    cfg = get_preset("tiny")
    torch.manual_seed(0)
    G = build_generator(cfg).eval()
    a, b = default_evaluator()(G, cfg), default_evaluator()(G, cfg)
    assert a == b and a.primary == "modes_covered" and a.higher_is_better
    real, labels = load_builtin("ring8", 1000, 0)
    ev = gan_core_evaluator(real, labels, num_samples=200)(G, cfg)
    assert ev.primary == "fd" and not ev.higher_is_better and np.isfinite(ev.value)
