"""Backend selection, node masks and raw-call errors."""

from __future__ import annotations

import errno

import pytest

from numaplan.errors import PlacementError
from numaplan.osnuma import backend as bk
from numaplan.osnuma.buffer import NodeBuffer


def test_both_backends_load():
    assert bk.get_backend("syscall").name == "syscall"
    assert bk.libnuma_available()
    assert bk.get_backend("libnuma").name == "libnuma"
    assert bk.get_backend("auto").name == "libnuma"  # preferred where installed


def test_backend_forced_by_environment(monkeypatch):
    monkeypatch.setenv(bk.BACKEND_ENV, "syscall")
    assert bk.get_backend().name == "syscall"
    monkeypatch.setenv(bk.BACKEND_ENV, "nonsense")
    with pytest.raises(PlacementError, match="unknown NUMA backend 'nonsense'"):
        bk.get_backend()


def test_backend_instance_passes_through():
    be = bk.get_backend("syscall")
    assert bk.get_backend(be) is be


def test_syscall_numbers_per_architecture():
    assert bk.SyscallBackend("x86_64").numbers["move_pages"] == 279
    assert bk.SyscallBackend("aarch64").numbers == {
        "mbind": 235, "set_mempolicy": 237, "get_mempolicy": 236, "move_pages": 239}
    assert bk.SyscallBackend("arm64").machine == "aarch64"
    with pytest.raises(PlacementError, match=r"riscv64.*libnuma"):
        bk.SyscallBackend("riscv64")


def test_nodemask_round_trip():
    bits = bk.mask_bits()
    assert bits >= 64 and bits % 64 == 0
    mask = bk.make_nodemask([0, 3, 63, bits - 1])
    assert bk.nodemask_ids(mask) == (0, 3, 63, bits - 1)
    with pytest.raises(PlacementError, match="outside the kernel's node range"):
        bk.make_nodemask([bits])


@pytest.mark.parametrize("name", ["libnuma", "syscall"])
def test_kernel_einval_for_missing_node_names_call_and_errno(name):
    """Bypass numaplan's own validation: the kernel's EINVAL becomes a clear PlacementError."""
    be = bk.get_backend(name)
    bits = bk.mask_bits()
    with NodeBuffer(1 << 20) as buf:
        with pytest.raises(bk.NumaCallError) as info:
            be.mbind(buf.address, buf.nbytes, bk.Mpol.BIND, bk.make_nodemask([bits - 1]),
                     bits + 1, 0)
    assert info.value.errno == errno.EINVAL and info.value.call == "mbind"
    err = bk.placement_error(info.value, "bind a test buffer")
    assert "mbind failed (EINVAL" in str(err) and "Mems_allowed_list" in str(err)


def test_eperm_hint_mentions_cap_sys_nice():
    err = bk.placement_error(bk.NumaCallError("set_mempolicy", errno.EPERM), "bind")
    assert "set_mempolicy failed (EPERM" in str(err)
    assert "CAP_SYS_NICE" in str(err) and "allow_fallback" in str(err)
