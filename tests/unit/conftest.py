"""Fixtures shared by the gan_core unit tests."""

import pytest
import torch


def _session_cache(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "digits-cache"


@pytest.fixture(autouse=True)
def ganpipe_cache_dir(tmp_path_factory, monkeypatch):
    """$GANPIPE_CACHE_DIR points at the session's cache (the digits classifier is trained there on first
    use): training digits with the default diagnostics must not write under the user's ~/.cache."""
    monkeypatch.setenv("GANPIPE_CACHE_DIR", str(_session_cache(tmp_path_factory)))


@pytest.fixture(scope="session")
def digits_cache(tmp_path_factory):
    """A cache directory holding the digits classifier, trained once per session (seconds, CPU)."""
    from gan_core.metrics.digits import load_or_train_digits_classifier

    cache = _session_cache(tmp_path_factory)
    threads = torch.get_num_threads()
    try:
        load_or_train_digits_classifier(cache)
    finally:
        torch.set_num_threads(threads)
    return cache


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny networks on a shared 2-core machine run many times faster than with two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
