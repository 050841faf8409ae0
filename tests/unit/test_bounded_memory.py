"""The bound that hostile-input tests run under (tests/conftest.py, `bounded_memory`): growth past it is a
MemoryError in the test, not a machine out of memory."""

from __future__ import annotations

import resource

import pytest


@pytest.mark.bounded_memory(gib=1)
def test_growth_past_the_bound_is_a_memory_error():
    with pytest.raises(MemoryError):
        bytearray(2 << 30)  # 2 GiB: allowed without the bound (zero pages, never touched)


def test_the_bound_is_lifted_after_the_test():
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    assert soft == hard  # as the session started: unlimited, or the hard limit it was given
