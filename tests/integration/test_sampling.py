"""Batch sampling with Ray Data from a registered generator: partition-independent values and bytes,
an interrupted job (real SIGKILL) that leaves no manifest and completes on a rerun, samples equal to
the registered model's predict, the Prefect flow, PNG output and one-line errors for bad input."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from infra.data.shard_writer import PENDING_DIR
from infra.models import batch_sampling
from infra.models.batch_sampling import MANIFEST_NAME, open_samples, sample
from infra.models.registry import register_generator
from tests.integration.test_registry import DIGITS, digits_checkpoint, fixed_score  # noqa: F401 (fixtures)
from tests.factories import tiny_config

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
NAME = "sampling-gen"
N = 100_000
SEED = 5


@pytest.fixture(scope="module")
def registered(store, digits_checkpoint):  # noqa: F811 (fixtures imported above)
    """Version 1 of NAME, the champion (a fixed score keeps the test fast)."""
    reg = register_generator(digits_checkpoint, NAME, normalisation=DIGITS, evaluator=fixed_score(1.0),
                             export_formats=())
    assert reg.champion_version == "1"
    return reg


@pytest.fixture(scope="module")
def run_a(registered, ray_cluster, tmp_path_factory):
    """100,000 digits samples: batch 1024, one actor."""
    out = tmp_path_factory.mktemp("samples") / "a"
    s = sample(f"models:/{NAME}@champion", N, SEED, str(out), batch_size=1024, actors=1)
    return s


def _sha(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()


def test_100k_samples_identical_across_batch_sizes_and_actor_counts(run_a, registered, tmp_path):
    b = sample(f"models:/{NAME}@champion", N, SEED, str(tmp_path / "b"), batch_size=8192, actors=3)
    ma, mb = run_a.manifest, b.manifest
    assert ma["num_rows"] == mb["num_rows"] == N and ma["num_shards"] > 3
    assert ma["model"]["uri"] == f"models:/{NAME}/1" and ma["model"]["version"] == "1"
    assert ma["model"]["alias"] == "champion" and ma["options"]["actors"] == 1 and mb["options"]["actors"] == 3
    # the same bytes, shard for shard, whatever the batch size and actor count
    assert [(s["path"], s["rows"], s["sha256"]) for s in ma["shards"]] == \
        [(s["path"], s["rows"], s["sha256"]) for s in mb["shards"]]
    ia, xa = run_a.load_arrays()
    ib, xb = b.load_arrays()
    np.testing.assert_array_equal(ia, np.arange(N))
    np.testing.assert_array_equal(ib, np.arange(N))
    assert xa.shape == (N, 1, 8, 8) and xa.dtype == np.float32
    assert _sha(xa) == _sha(xb)
    assert 0.0 <= xa.min() and xa.max() <= 16.0  # the data's original pixel range
    assert not (Path(run_a.uri) / PENDING_DIR).exists()
    run_a.verify()


def test_samples_match_the_registered_models_predict(run_a, registered):
    import mlflow

    from gan_core.sampling import latents_for_range

    _, x = run_a.load_arrays()
    model = mlflow.pyfunc.load_model(f"models:/{NAME}/1")
    z_dim = model.metadata.metadata["ganpipe"]["z_dim"]
    for i in (0, 1, 1023, 1024, 54_321, N - 1):
        seeded = model.predict(np.zeros((0, z_dim), np.float32), params={"num_samples": 1, "seed": SEED, "start": i})
        np.testing.assert_array_equal(seeded[0], x[i])
        by_latent = model.predict(latents_for_range(SEED, i, 1, z_dim).numpy())
        np.testing.assert_allclose(by_latent[0], x[i], rtol=0, atol=1e-5)
    # a different seed gives different samples
    other = model.predict(np.zeros((0, z_dim), np.float32), params={"num_samples": 4, "seed": SEED + 1, "start": 0})
    assert not np.allclose(other, x[:4])


def test_truncated_samples_through_the_actors_match_predict_and_are_another_set(registered, ray_cluster, tmp_path):
    """--truncation end to end: the Ray actors' shards equal the registered pyfunc's seeded predict with
    params truncation (MLflow's signature passes it), the manifest records it, and the same --out with
    another truncation is refused as a different committed set."""
    import mlflow

    n = 2100
    s = sample(f"models:/{NAME}@champion", n, SEED, str(tmp_path / "t"), batch_size=1024, actors=2, truncation=0.8)
    assert s.manifest["truncation"] == 0.8
    _, x = s.load_arrays()
    model = mlflow.pyfunc.load_model(f"models:/{NAME}/1")
    z_dim = model.metadata.metadata["ganpipe"]["z_dim"]
    for i in (0, 1023, 1024, n - 1):
        seeded = model.predict(np.zeros((0, z_dim), np.float32),
                               params={"num_samples": 1, "seed": SEED, "start": i, "truncation": 0.8})
        np.testing.assert_array_equal(seeded[0], x[i])
    plain = model.predict(np.zeros((0, z_dim), np.float32), params={"num_samples": 4, "seed": SEED, "start": 0})
    assert not np.allclose(plain, x[:4])
    with pytest.raises(batch_sampling.SamplingError, match="different committed sample set.*truncation 0.8"):
        sample(f"models:/{NAME}@champion", n, SEED, s.uri, batch_size=1024, actors=1, truncation=0.5)



COND_NAME = "sampling-cond"


@pytest.fixture(scope="module")
def conditional(store):
    """Version 1 of COND_NAME, @champion: a tiny class-conditional MLP generator (ring8's 8 mode ids as
    classes, fixed random weights; logged as the registry logs every version)."""
    import mlflow
    import torch

    from gan_core.networks import build_generator
    from infra.models.registry import log_generator
    from infra.base.settings import mlflow_client
    from infra.train.tracking import ensure_experiment

    cfg = tiny_config({"network.conditional": True, "data.num_classes": 8})
    torch.manual_seed(0)
    G = build_generator(cfg).eval()
    client = mlflow_client()
    run = client.create_run(ensure_experiment(client, "sampling-cond"))
    info, _ = log_generator(G, cfg, run_id=run.info.run_id)
    client.set_terminated(run.info.run_id)
    version = mlflow.register_model(info.model_uri, COND_NAME).version
    client.set_registered_model_alias(COND_NAME, "champion", version)
    return f"models:/{COND_NAME}/{version}"


def test_class_samples_through_the_actors_match_predict_and_are_another_set(conditional, ray_cluster, tmp_path):
    """--class end to end (issue 17 item 2): the Ray actors' shards equal the registered pyfunc's seeded
    predict with params label (byte for byte, every sample), without --class they are predict's
    class-balanced default, with --truncation too both apply; the manifest records the class only when
    given, and the same --out with another class (or none) is refused as a different committed set."""
    import mlflow

    n, uri = 2100, f"models:/{COND_NAME}@champion"
    model = mlflow.pyfunc.load_model(conditional)

    def predict(**params):
        return model.predict(None, params={"num_samples": n, "seed": SEED, "start": 0, **params})

    k3 = sample(uri, n, SEED, str(tmp_path / "k3"), batch_size=1024, actors=2, class_label=3)
    assert k3.manifest["class_label"] == 3 and k3.manifest["model"]["uri"] == conditional
    _, x3 = k3.load_arrays()
    assert x3.shape == (n, 2) and x3.tobytes() == predict(label=3).tobytes()
    balanced = sample(uri, n, SEED, str(tmp_path / "balanced"), batch_size=512, actors=1)
    assert "class_label" not in balanced.manifest and balanced.manifest["truncation"] is None
    _, xb = balanced.load_arrays()
    assert xb.tobytes() == predict().tobytes() == predict(label=-1).tobytes()
    assert not np.allclose(xb[:8], x3[:8])
    both = sample(uri, n, SEED, str(tmp_path / "both"), batch_size=1024, actors=2, truncation=0.8, class_label=5)
    assert (both.manifest["truncation"], both.manifest["class_label"]) == (0.8, 5)
    assert both.load_arrays()[1].tobytes() == predict(label=5, truncation=0.8).tobytes()
    for other in ({"class_label": 4}, {}):
        with pytest.raises(batch_sampling.SamplingError, match="different committed sample set.*, class 3, "):
            sample(uri, n, SEED, k3.uri, batch_size=1024, actors=1, **other)

def test_rerun_of_a_committed_request_is_a_noop_and_another_request_is_refused(run_a):
    before = (Path(run_a.uri) / MANIFEST_NAME).read_bytes()
    again = sample(f"models:/{NAME}@champion", N, SEED, run_a.uri, batch_size=2048, actors=2)
    assert (Path(again.uri) / MANIFEST_NAME).read_bytes() == before
    with pytest.raises(batch_sampling.SamplingError, match="different committed sample set"):
        sample(f"models:/{NAME}@champion", N, SEED + 1, run_a.uri)


def test_killed_job_leaves_no_manifest_and_a_rerun_completes(run_a, registered, store, ray_cluster, tmp_path):  # noqa: F811
    """A real `ganpipe sample` process, killed with SIGKILL after a few shards, then the same command."""
    out = tmp_path / "killed"
    argv = ["sample", "--model", f"models:/{NAME}@champion", "--num-samples", str(N), "--seed", str(SEED),
            "--out", str(out), "--rows-per-shard", "1024", "--batch-size", "1024", "--actors", "1",
            "--engine", "direct", "--no-progress"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "MLFLOW_REGISTRY_URI": store,
           "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address, "PYTHONPATH": str(REPO)}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *argv], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    pending = out / PENDING_DIR
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if pending.is_dir() and len(list(pending.glob("*.json"))) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        assert pending.is_dir(), "no shard written within the deadline"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    time.sleep(1.0)  # let Ray reap the dead driver's actor
    assert not (out / MANIFEST_NAME).exists()
    with pytest.raises(batch_sampling.SamplingError, match="no committed sample set"):
        open_samples(str(out))
    kept = {p.name: p.read_bytes() for p in pending.glob("*.json")}
    assert 3 <= len(kept) < 98

    from pipelines.cli import main

    assert main(argv) == 0
    done = open_samples(str(out), verify=True)
    assert done.manifest["num_rows"] == N and done.manifest["num_shards"] == 98
    assert not pending.exists() and not list(out.glob("*.tmp-*"))
    idx, x = done.load_arrays()
    _, xa = run_a.load_arrays()
    np.testing.assert_array_equal(idx, np.arange(N))
    assert _sha(x) == _sha(xa)  # same values as the uninterrupted run with another shard layout


def _predict(start: int, count: int, seed: int) -> np.ndarray:
    import mlflow

    model = mlflow.pyfunc.load_model(f"models:/{NAME}/1")
    z_dim = model.metadata.metadata["ganpipe"]["z_dim"]
    return model.predict(np.zeros((0, z_dim), np.float32), params={"num_samples": count, "seed": seed, "start": start})


def test_flow_under_prefect(registered, ray_cluster, prefect_harness, tmp_path):
    from pipelines.sample import sample_generator

    uri = sample_generator(f"models:/{NAME}@champion", 3000, 11, str(tmp_path / "flow"), batch_size=1024, actors=2,
                           rows_per_shard=1024)
    s = open_samples(uri, verify=True)
    assert s.manifest["num_shards"] == 3 and s.manifest["model"]["version"] == "1"
    assert s.manifest["model"]["alias"] == "champion" and s.manifest["options"]["actors"] == 2
    idx, x = s.load_arrays()
    np.testing.assert_array_equal(idx, np.arange(3000))
    np.testing.assert_array_equal(x, _predict(0, 3000, 11))
    # the same request again: a no-op that returns the committed set
    before = (Path(uri) / MANIFEST_NAME).read_bytes()
    assert sample_generator(f"models:/{NAME}/1", 3000, 11, uri, rows_per_shard=1024) == uri
    assert (Path(uri) / MANIFEST_NAME).read_bytes() == before


def test_png_output(registered, ray_cluster, tmp_path):
    from PIL import Image

    s = sample(f"models:/{NAME}@champion", 1500, 2, str(tmp_path / "png"), fmt="png", rows_per_shard=1024)
    assert s.manifest["sample_format"] == "png" and s.manifest["num_shards"] == 2
    files = sorted((tmp_path / "png").glob("part-*/*.png"))
    assert len(files) == 1500 and files[1024].parent.name == "part-00001" and files[1024].name == "000001024.png"
    x = _predict(0, 1500, 2)
    for i in (0, 777, 1499):
        img = np.asarray(Image.open(io.BytesIO(files[i].read_bytes())))
        expected = np.clip(np.rint(x[i, 0] * 255 / 16), 0, 255)  # 0..16 pixels -> 0..255
        assert img.shape == (8, 8) and img.dtype == np.uint8
        assert np.abs(img.astype(int) - expected).max() <= 1


@pytest.mark.parametrize("model, match", [
    ("models:/no-such-model@champion", "no-such-model"),
    (f"models:/{NAME}@no-such-alias", "no-such-alias"),
    (f"models:/{NAME}/99", "99"),
    ("generator.pt", "expected models:/"),
])
def test_bad_model_uri_is_a_one_line_error(registered, tmp_path, capsys, model, match):
    from pipelines.cli import main

    out = tmp_path / "bad"
    rc = main(["sample", "--model", model, "--num-samples", "10", "--out", str(out), "--engine", "direct",
               "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and match in err, err
    assert not out.exists()


def test_bad_options_are_one_line_errors(registered, tmp_path, capsys):
    from pipelines.cli import main

    for extra, match in ((["--num-samples", "0"], "--num-samples"),
                         (["--num-samples", "10", "--batch-size", "0"], "--batch-size")):
        rc = main(["sample", "--model", f"models:/{NAME}@champion", "--out", str(tmp_path / "o"), "--engine",
                   "direct", "--no-progress", *extra])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and match in err, err
    assert not (tmp_path / "o" / MANIFEST_NAME).exists()


def test_a_version_registered_before_to_data_range_samples_through_its_predict():
    """Each version runs the code it shipped: an older pyfunc without the public `to_data_range` is
    sampled through its public `predict` (the same seed-addressed samples)."""
    from infra.models.batch_sampling import generate_range

    class OlderShippedModel:
        def predict(self, context, model_input, params=None):
            return ("predict", model_input, params)

    assert generate_range(OlderShippedModel(), seed=3, start=5, count=7, batch_size=2) == \
        ("predict", None, {"num_samples": 7, "seed": 3, "start": 5})


def test_samples_written_to_s3_match_the_local_set(run_a, registered, s3_bucket):
    """Sampling into s3:// (the `ganpipe sample --out s3://...` example of --help) commits the same shards
    as a local set."""
    uri = f"s3://{s3_bucket}/samples/a"
    s = sample(f"models:/{NAME}@champion", N, SEED, uri, batch_size=1024, actors=1)
    assert [(e["path"], e["sha256"]) for e in s.manifest["shards"]] == \
        [(e["path"], e["sha256"]) for e in run_a.manifest["shards"]]
    assert open_samples(uri, verify=True).num_rows == N
