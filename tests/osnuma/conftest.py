"""Fixtures for the OS-level tests: both NUMA backends, and a clean thread memory policy."""

from __future__ import annotations

import pytest

from numaplan.osnuma import get_backend, get_mempolicy, restore_mempolicy

BACKENDS = ["libnuma", "syscall"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Each test using this runs once per backend (libnuma through ctypes, raw syscalls)."""
    if request.param == "libnuma":
        try:
            return get_backend("libnuma")
        except Exception as exc:  # libnuma1 not installed on this machine
            pytest.skip(f"libnuma unavailable: {exc}")
    return get_backend("syscall")


@pytest.fixture(autouse=True)
def _restore_thread_policy():
    """Whatever a test does to the calling thread's memory policy is undone."""
    before = get_mempolicy()
    yield
    if get_mempolicy() != before:
        restore_mempolicy(before)
