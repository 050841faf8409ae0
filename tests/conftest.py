"""Shared, session-scoped services for the integration tests: one local Ray instance, one Prefect test
harness, one moto S3 server on 127.0.0.1, and an MLflow SQLite store in a temp dir. Each fixture
starts its service on first use only, so unit tests stay fast."""

from __future__ import annotations

import os
import socket
import tempfile

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # subprocesses too: tiny nets run fastest on one thread
# the embedded default's home (MLflow store, Prefect home, datasets) of anything the tests run in-process
# through the CLI: a fresh folder per session, never the user's ~/.ganpipe
os.environ.setdefault("GANPIPE_HOME", tempfile.mkdtemp(prefix="ganpipe-tests-home-"))

import torch  # noqa: E402

# Prefect binds its console log handler to sys.stderr as it is when its logging is first set up (on the
# first flow import): set it up now, on the session's stream, so that a test whose in-process CLI does it
# first (under capsys, whose stream closes with the test) cannot leave every later flow logging into a
# closed file (RecursionError in Prefect's handler).
from prefect.logging.configuration import setup_logging  # noqa: E402

setup_logging()

# The tests' networks are tiny: one intra-op thread is faster than two fighting over the 2 cores with
# Ray workers and servers (measured: ~10x on this machine under load).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _environment_is_per_test():
    """Each test starts from the environment the session's fixtures set up and leaves it so: the CLI run
    in-process (pipelines.cli.main) writes its embedded defaults into os.environ, as the real process does,
    and one test's must not become every later test's (e.g. Ray's loopback-only switch, which refuses the
    second node of tests.ray_head's cluster). NOTE: a session fixture that sets variables (s3_server) must
    then be set up before the test, as an argument, not through request.getfixturevalue inside it."""
    saved = dict(os.environ)
    yield
    if dict(os.environ) != saved:
        os.environ.clear()
        os.environ.update(saved)


SERVICE_FIXTURES = ("ray_cluster", "prefect_harness", "s3_server", "s3_bucket")  # processes that would inherit a limit
DEFAULT_HOSTILE_MEMORY_GIB = 3


@pytest.fixture(autouse=True)
def _bounded_memory(request):
    """`@pytest.mark.bounded_memory(gib=N)`: a hostile-input test whose regression could grow without
    bound (a device read to the end, a walk through a folder loop, a huge feature dimension) may add at
    most N GiB (default 3) to this process's address space while it runs (RLIMIT_AS, soft), so it fails
    with a MemoryError instead of making the kernel's or Ray's memory monitor kill other work. Restored
    after the test. Not for tests that start services (they would inherit the limit)."""
    marker = request.node.get_closest_marker("bounded_memory")
    if marker is None:
        yield
        return
    import resource

    import psutil

    starting = [f for f in SERVICE_FIXTURES if f in request.fixturenames]
    assert not starting, f"bounded_memory: {starting} would start under the limit"
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = psutil.Process().memory_info().vms + (marker.kwargs.get("gib", DEFAULT_HOSTILE_MEMORY_GIB) << 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray instance shared by the whole test session (4 logical CPUs on the 2-core machine)."""
    import ray

    if not ray.is_initialized():
        # address="local": always a fresh instance, never a cluster some other process left running
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=True,
                 runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def prefect_harness():
    """Prefect's test harness: a temporary API server with a SQLite database, for the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 API over real HTTP on 127.0.0.1; boto3, pyarrow.fs and Ray workers can all reach it.

    Sets AWS_ENDPOINT_URL and dummy credentials in os.environ (inherited by Ray workers started later).
    Yields the endpoint URL.
    """
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION", "AWS_REGION")}
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_REGION": "us-east-1"})
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def fresh_tiny_run(s3_server, tmp_path_factory):
    """One `ganpipe run --preset tiny` in a fresh process, examined by several tests (tests/fresh_run.py)."""
    from tests.fresh_run import fresh_run

    with fresh_run(tmp_path_factory.mktemp("fresh-run"), s3_server) as run:
        yield run


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh bucket on the moto server; yields its name."""
    import boto3

    name = "test-" + request.node.name.lower().replace("_", "-").replace("[", "-").replace("]", "")[:40].strip("-")
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite MLflow store (tracking + registry) for the module; artifacts next to it. The
    process-wide URIs are set too (and cleared afterwards), so no earlier test's store leaks in."""
    import mlflow

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("MLFLOW_REGISTRY_URI", uri)
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            yield uri
        finally:
            mlflow.set_tracking_uri(None)
            mlflow.set_registry_uri(None)


@pytest.fixture
def mlflow_tracking(tmp_path, monkeypatch):
    """An MLflow SQLite tracking store and registry in a temp dir; yields the tracking URI."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield uri


@pytest.fixture(scope="session")
def photo_crops(tmp_path_factory):
    """48 random 32x32 crops of scikit-learn's two sample photographs (labels 0 china, 1 flower), written
    as an image folder, a Hugging Face-style Parquet file and a StyleGAN zip: see
    tests.staging_data.make_photo_crops (keys folder, parquet, zip, x, labels)."""
    from tests.staging_data import make_photo_crops

    return make_photo_crops(tmp_path_factory.mktemp("photo-crops"), 48)
