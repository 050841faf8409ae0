"""Fixtures shared by the integration tests (the session-wide ones live in tests/conftest.py)."""

import pytest


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


@pytest.fixture(scope="session")
def ray_head(s3_server, tmp_path_factory):
    """A 2-node Ray cluster started with `ray start` (dashboard, job server, token auth) for the session,
    as an operator would run one; its processes see moto's S3 endpoint and credentials. See tests.ray_head."""
    from tests.ray_head import RayHead

    home = tmp_path_factory.mktemp("cluster-home")  # GANPIPE_HOME of its jobs (their embedded MLflow store)
    cluster = RayHead.start(extra_env={"GANPIPE_HOME": str(home)})
    yield cluster
    cluster.stop()
    assert not [p for p in cluster.processes() if p.status() != "zombie"], "the test cluster outlived its stop"
