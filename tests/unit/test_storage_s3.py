"""infra.base.storage's S3 filesystem: configured from the standard AWS variables by pyarrow itself (read back
from pyarrow's pickling state: this test fails loudly if a pyarrow release changes it), and its retry
budget kept when pickled to Ray workers."""

from __future__ import annotations

import pickle

import pytest

from infra.base import storage


def test_s3_filesystem_takes_the_endpoint_and_keeps_its_retries_when_pickled(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "4")
    fs = storage.s3_filesystem(access_key="AKIA-TEST", secret_key="not-a-secret")
    assert isinstance(fs, storage.RetryingS3FileSystem)
    assert "127.0.0.1:9" in fs._options["endpoint_override"] and fs._options["access_key"] == "AKIA-TEST"
    again = pickle.loads(pickle.dumps(fs))
    assert isinstance(again, storage.RetryingS3FileSystem) and again._options == fs._options
    assert again._options["max_attempts"] == 4


@pytest.mark.parametrize("value", ["abc", "0", "-2", "1.5"])
def test_a_bad_aws_max_attempts_is_one_line_naming_it(monkeypatch, value):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", value)
    with pytest.raises(storage.StorageError, match=f"AWS_MAX_ATTEMPTS: got '{value}'; allowed: a positive integer"):
        storage.s3_max_attempts()
