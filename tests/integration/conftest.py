"""Fixtures shared by the integration tests (the session-wide ones live in tests/conftest.py)."""

import pytest


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
