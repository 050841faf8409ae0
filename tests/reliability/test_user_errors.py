"""Bad user input through the whole CLI, in-process: every case is one line `error: ...` on stderr naming
the value, exit code 2, no traceback, nothing committed or left behind, and no service started (no Ray
instance, no Prefect server, no MLflow store). Cheap cases only: each is refused before any work starts,
which is what the table checks.
"""

from __future__ import annotations

import http.server
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pipelines.cli import main
from tests.reliability.test_flow_faults import closed_port
from tests.staging_data import make_png_folder

pytestmark = pytest.mark.integration

BIG = str(10**12)
CLOSED_PORT_ENDPOINT = "http://127.0.0.1:9"  # discard: nothing listens there


RAY_STARTS: list = []


@pytest.fixture
def fresh_home(tmp_path, monkeypatch):
    """GANPIPE_HOME in tmp_path, MLflow's store inside it (the embedded default), S3 credentials that
    need no lookup; yields tmp_path with a file `afile` and a non-UTF-8 config `latin1.toml`."""
    home = tmp_path / "home"
    monkeypatch.setenv("GANPIPE_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home}/mlflow.db")
    for k, v in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_REGION", "us-east-1")):
        monkeypatch.setenv(k, v)
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "latin1.toml").write_bytes('[registry]\nmodel_name = "caf\xe9"\n'.encode("latin-1"))
    # every way the pipeline starts or joins Ray goes through infra.base.ray_cluster.ensure_ray: record calls
    # (the session may already run a Ray instance of its own, so ray.is_initialized() would say nothing)
    import infra.base.ray_cluster
    import infra.train.ray_train

    RAY_STARTS.clear()
    for module in (infra.base.ray_cluster, infra.train.ray_train):
        monkeypatch.setattr(module, "ensure_ray", lambda *args, **kwargs: RAY_STARTS.append(args))
    return tmp_path


# (test id, argv with {tmp} for the test's folder, text the one line must contain)
CASES = [
    # -- run: the whole request is validated by --dry-run, before any service starts --------------------
    ("config-not-utf8", ["run", "--config", "{tmp}/latin1.toml", "--dry-run"],
     "latin1.toml: not UTF-8 text (byte 0xe9"),
    ("network-too-big", ["run", "--set", "network.g_width=65536", "--dry-run"],
     "network: got 'dcgan z_dim=32 g_width=65536"),
    ("network-too-big-mlp", ["run", "--preset", "ring8", "--set", "network.d_width=40000", "--set",
                             "network.d_depth=3", "--dry-run"], "parameters in G and D)'; allowed: at most 1e+09"),
    ("field-as-section", ["run", "--set", "train.total_steps.x=1", "--dry-run"],
     "train.total_steps: unknown section; allowed: none (it is a field)"),
    ("batch-vs-workers", ["run", "--set", "cluster.num_workers=3", "--dry-run"],
     "train.global_batch_size: got 64 for cluster.num_workers = 3"),
    ("huge-batch", ["run", "--set", f"train.global_batch_size={BIG}", "--dry-run"],
     f"train.global_batch_size: got {BIG}"),
    ("model-name-path", ["run", "--set", "registry.model_name=../../etc", "--dry-run"],
     "registry.model_name: got '../../etc'"),
    ("alias-bad", ["run", "--set", "registry.alias=bad alias!", "--dry-run"], "registry.alias: got 'bad alias!'"),
    ("alias-reserved", ["run", "--set", "registry.alias=latest", "--dry-run"], "registry.alias: got 'latest'"),
    ("source-num-samples", ["run", "--set", f"source.num_samples={BIG}", "--dry-run"],
     f"source.num_samples: got {BIG}; allowed: an integer from 0 to 100,000,000"),
    ("source-image-size", ["run", "--set", "source.image_size=100000", "--dry-run"],
     "source.image_size: got 100000"),
    ("source-name", ["run", "--set", "source.name=a/../b", "--dry-run"], "source.name: got 'a/../b'"),
    ("run-sampling-out-is-file", ["run", "--preset", "tiny", "--set", "sampling.out={tmp}/afile"],
     "sampling.out {tmp}/afile: is an existing file"),
    ("run-storage-root-under-file", ["run", "--preset", "tiny", "--set", "storage.root={tmp}/afile/data"],
     "storage.root {tmp}/afile/data: {tmp}/afile is a file"),
    # -- train: the run storage checked before Ray starts ----------------------------------------------
    ("train-storage-is-file", ["train", "--dataset", "{tmp}/no-dataset", "--preset", "tiny", "--storage",
                               "{tmp}/afile"], "cluster.storage_path {tmp}/afile: is an existing file"),
    ("train-no-dataset", ["train", "--dataset", "{tmp}/no-dataset", "--preset", "tiny"],
     "{tmp}/no-dataset: no committed dataset version there"),
    # -- register: names checked before a checkpoint is read, evaluated or logged ------------------------
    ("register-name", ["register", "--run", "{tmp}/no-such-checkpoint", "--name", "a/../b"], "--name: got 'a/../b'"),
    ("register-alias", ["register", "--run", "{tmp}/no-such-checkpoint", "--alias", "bad alias!"],
     "--alias: got 'bad alias!'"),
    ("register-alias-version", ["register", "--run", "{tmp}/no-such-checkpoint", "--alias", "v2"],
     "--alias: got 'v2'"),
    # -- sample: sizes and --out checked before MLflow, Prefect or Ray ------------------------------------
    ("sample-too-many", ["sample", "--model", "models:/m/1", "--num-samples", BIG, "--out", "{tmp}/o"],
     f"--num-samples: got {int(BIG):,}; allowed: an integer from 1 to 1,000,000,000"),
    ("sample-zero", ["sample", "--model", "models:/m/1", "--num-samples", "0", "--out", "{tmp}/o"],
     "--num-samples: got 0"),
    ("sample-out-is-file", ["sample", "--model", "models:/m/1", "--num-samples", "10", "--out", "{tmp}/afile"],
     "--out {tmp}/afile: is an existing file"),
    ("sample-out-under-file", ["sample", "--model", "models:/m/1", "--num-samples", "10", "--out",
                               "{tmp}/afile/x"], "{tmp}/afile is a file"),
    ("sample-batch-size", ["sample", "--model", "models:/m/1", "--num-samples", "10", "--out", "{tmp}/o",
                           "--batch-size", BIG], f"--batch-size: got {int(BIG):,}"),
    ("sample-actors", ["sample", "--model", "models:/m/1", "--num-samples", "10", "--out", "{tmp}/o",
                       "--actors", "0"], "--actors: got 0"),
    ("sample-rows-per-shard", ["sample", "--model", "models:/m/1", "--num-samples", "10", "--out", "{tmp}/o",
                               "--rows-per-shard", "-3"], "--rows-per-shard: got -3"),
    ("sample-out-scheme", ["sample", "--model", "models:/m/1", "--num-samples", "10", "--out", "gs://b/x"],
     "--out: storage URI 'gs://b/x': unsupported scheme"),
    # -- stage: sizes, names and --root checked before the source is read --------------------------------
    ("stage-root-is-file", ["stage", "digits", "--root", "{tmp}/afile"], "--root {tmp}/afile: is an existing file"),
    ("stage-too-many", ["stage", "ring8", "--root", "{tmp}/store", "--num-samples", BIG],
     f"--num-samples: got {BIG}"),
    ("stage-name", ["stage", "digits", "--root", "{tmp}/store", "--name", "a/../b"], "--name: got 'a/../b'"),
    ("stage-image-size", ["stage", "digits", "--root", "{tmp}/store", "--image-size", "100000"],
     "--image-size: got 100000"),
    ("stage-shard-size", ["stage", "digits", "--root", "{tmp}/store", "--target-shard-mib", "-1"],
     "--target-shard-mib: got -1"),
    ("stage-rows-per-shard", ["stage", "digits", "--root", "{tmp}/store", "--rows-per-shard", "0"],
     "--rows-per-shard: got 0"),
    ("stage-no-root", ["stage", "digits"], "--root is required"),
    # -- evaluate -----------------------------------------------------------------------------------------
    ("evaluate-num-samples", ["evaluate", "{tmp}/ckpt", "--num-samples", "-1"], "--num-samples: got -1"),
    ("evaluate-missing", ["evaluate", "{tmp}/no-such-checkpoint"], "no-such-checkpoint: no such checkpoint"),
]


def run_cli(capsys, argv: list[str]) -> str:
    """main(argv) in-process; assert exit 2 and one `error: ` line without a traceback; return the line."""
    rc = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == 2, (rc, captured.err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err[-2000:]
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


def assert_nothing_left(tmp: Path) -> None:
    """No committed set, no shard, no output folder, no MLflow store and no Ray instance."""
    made = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.name not in ("afile", "latin1.toml"))
    assert [m for m in made if not m.startswith("home")] == [], made
    assert not (tmp / "home" / "mlflow.db").exists(), "an MLflow store was created"
    assert RAY_STARTS == [], "Ray was started"


@pytest.mark.bounded_memory
@pytest.mark.parametrize("argv, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_user_error_is_one_line_before_anything_starts(fresh_home, capsys, argv, expected):
    tmp = str(fresh_home)
    line = run_cli(capsys, [a.replace("{tmp}", tmp) for a in argv])
    assert expected.replace("{tmp}", tmp) in line, line
    assert_nothing_left(fresh_home)


@pytest.mark.parametrize("argv", [
    ["stage", "digits", "--root", "s3://bucket/root"],
    ["stage", "s3://bucket/raw", "--root", "{tmp}/store"],
    ["sample", "--model", "models:/m/1", "--num-samples", "10", "--out", "s3://bucket/samples"],
], ids=["stage-root", "stage-source", "sample-out"])
def test_unreachable_s3_endpoint_is_one_line(fresh_home, capsys, monkeypatch, argv):
    """AWS_ENDPOINT_URL on a closed port: one line naming the endpoint, from the probe of the services at the
    user's addresses (pipelines.cli.check_services) before anything starts."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", CLOSED_PORT_ENDPOINT)
    line = run_cli(capsys, [a.replace("{tmp}", str(fresh_home)) for a in argv])
    assert f"AWS_ENDPOINT_URL: the S3 endpoint at {CLOSED_PORT_ENDPOINT} cannot be reached" in line, line
    assert_nothing_left(fresh_home)


# every command that needs MLflow probes an http(s) server before any work (infra.base.settings.check_mlflow_reachable)
MLFLOW_COMMANDS = {
    "run": ["run", "--preset", "tiny", "--set", "sampling.out={tmp}/out"],
    "register": ["register", "--run", "0123456789abcdef", "--name", "m"],
    "sample": ["sample", "--model", "models:/m/1", "--num-samples", "10", "--out", "{tmp}/out"],
    "evaluate": ["evaluate", "0123456789abcdef"],
    "runs": ["runs"],
    "models": ["models"],
}


@pytest.mark.parametrize("argv", MLFLOW_COMMANDS.values(), ids=MLFLOW_COMMANDS.keys())
def test_unreachable_mlflow_server_fails_fast_in_one_line(fresh_home, capsys, monkeypatch, argv):
    """MLFLOW_TRACKING_URI on a closed port, with MLflow's own HTTP retry budget as it ships (7 retries with
    backoff: about 4 minutes): exit 2 in seconds, one line naming the URI, the cause and the variable;
    nothing written (no --out folder, no MLflow store, no Ray)."""
    down = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", down)
    for var in ("MLFLOW_REGISTRY_URI", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    start = time.monotonic()
    line = run_cli(capsys, [a.replace("{tmp}", str(fresh_home)) for a in argv])
    elapsed = time.monotonic() - start
    assert elapsed < 30, elapsed  # a bound (the probe's worst case is 10 s), not a benchmark
    assert f"the MLflow server {down} (MLFLOW_TRACKING_URI) cannot be reached: connection refused" in line, line
    assert line.endswith("start it, or set MLFLOW_TRACKING_URI to a server that runs"), line
    assert not (fresh_home / "out").exists()
    assert_nothing_left(fresh_home)


class _Answer(http.server.BaseHTTPRequestHandler):
    status = 200  # what GET /health answers; set per test

    def do_GET(self):
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args):  # quiet
        pass


@pytest.mark.parametrize("status, reachable", [(200, True), (401, True), (404, True), (503, False), (502, False)])
def test_mlflow_probe_needs_an_answer_but_not_a_5xx(monkeypatch, status, reachable):
    """A server that answers /health (even 401 behind auth, or 404 behind a proxy) passes; a 5xx (a proxy in
    front of a stopped server, which MLflow's client would retry for minutes) fails in one line naming the
    status, after the probe's few tries."""
    from infra.base.settings import PROBE_ATTEMPTS, MlflowUnreachable, check_mlflow_reachable

    monkeypatch.setattr(_Answer, "status", status)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_port}"
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    try:
        if reachable:
            check_mlflow_reachable(uri)
        else:
            with pytest.raises(MlflowUnreachable) as e:
                check_mlflow_reachable(uri)
            assert f"the MLflow server {uri} (MLFLOW_REGISTRY_URI) cannot be reached: HTTP {status} " in str(e.value)
            assert f"({PROBE_ATTEMPTS} tries in " in str(e.value) and "\n" not in str(e.value)
    finally:
        server.shutdown()
        server.server_close()


def test_failed_staging_leaves_no_shard(fresh_home, capsys):
    """A corrupt image found while shards are being written: the shards already written are deleted and
    the uncommitted version folder goes with them (they used to stay, beside no manifest)."""
    folder = fresh_home / "imgs"
    make_png_folder(folder, num_images=40, size_px=8, classes=("x", "y"))
    (folder / "y" / "zz-garbage.png").write_bytes(b"this is not a png")
    root = fresh_home / "store"
    line = run_cli(capsys, ["stage", str(folder), "--root", str(root), "--rows-per-shard", "4", "--no-progress",
                            "--engine", "direct"])
    assert "y/zz-garbage.png: unreadable or corrupt image" in line
    assert [p for p in root.rglob("*") if p.is_file()] == []
    assert [p.name for p in (root / "datasets").iterdir()] == ["imgs"]  # the dataset's folder, empty (below)
    assert list((root / "datasets" / "imgs").iterdir()) == []  # the version folder itself is gone


def test_edited_manifest_shape_names_the_manifest(fresh_home, capsys):
    """A manifest whose shape no longer matches its shards: the reader names the manifest, the shard and
    both sizes instead of numpy's bare "cannot reshape array"."""
    import json

    from infra.data import datasets, shardset
    from infra.data.shardset import ShardSetError

    np.save(fresh_home / "x.npy", np.arange(40 * 6, dtype=np.float32).reshape(40, 6))
    assert main(["stage", str(fresh_home / "x.npy"), "--root", str(fresh_home / "store"), "--no-progress",
                 "--engine", "direct"]) == 0
    uri = capsys.readouterr().out.strip()
    manifest_path = Path(uri) / datasets.MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["shape"] = [4]
    manifest_path.write_text(json.dumps(manifest))
    # the field digests (format /2) refuse the edit at once, naming the field
    with pytest.raises(ShardSetError, match="field 'shape' was changed after the set was committed"):
        datasets.open_dataset(uri)
    # with the digests remade too, the reader still checks the shape against the shards
    manifest[shardset.FIELD_DIGESTS] = shardset.field_digests(manifest)
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ShardSetError) as e:
        datasets.open_dataset(uri).load_arrays()
    msg = str(e.value)
    assert str(manifest_path) in msg and "shape [4] (4 values per row)" in msg and "part-00000.parquet holds 6" in msg
    assert "\n" not in msg


@pytest.mark.bounded_memory
def test_sample_planning_is_lazy():
    """The shard ranges of the largest request are computed on access: planning memory does not grow
    with the shard count (10^12 samples used to plan 15 million tuples, > 3 GB)."""
    import pickle
    import tracemalloc

    from infra.data import shardset
    from infra.models.batch_sampling import choose_layout

    from gan_core.sampling import MAX_NUM_SAMPLES

    layout = choose_layout(MAX_NUM_SAMPLES, (3, 64, 64), "parquet")
    tracemalloc.start()
    ranges = shardset.split_rows(MAX_NUM_SAMPLES, layout.rows_per_shard, balanced=False)
    first, last = ranges[0], ranges[-1]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(ranges) > 10**5 and peak < 100_000, (len(ranges), peak)
    assert first == (0, layout.rows_per_shard) and last[1] == MAX_NUM_SAMPLES
    assert len(pickle.dumps(ranges)) < 1000  # what travels to each Ray actor with the plan
    assert shardset.split_rows(1797, 500) == [(0, 449), (449, 898), (898, 1347), (1347, 1797)]
    assert list(shardset.split_rows(2500, 1024, balanced=False)) == [(0, 1024), (1024, 2048), (2048, 2500)]


def test_sigterm_unwinds_like_ctrl_c():
    """SIGTERM raises KeyboardInterrupt in the main thread (so exit handlers run: ray.shutdown, the Prefect
    server's stop) even while another handler (Prefect's, during a flow) owns SIGTERM, and the caller's
    handlers come back afterwards."""
    import signal
    import time

    from pipelines import cli

    before = signal.getsignal(signal.SIGTERM)
    # Python's own SIGINT handler (an in-process Ray driver earlier in the session may have replaced it)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    with cli.unwind_on_termination() as received:
        signal.signal(signal.SIGTERM, lambda s, f: None)  # as Prefect's handler: one that does not raise
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(500):
                time.sleep(0.01)
    signal.signal(signal.SIGINT, previous_int)
    assert received == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) is before
