"""Small live facts about the running system that placement and measurement depend on.

Every reader takes ``root`` so tests can point it at a fake tree; all return ``None`` (or an empty
tuple) when the file is absent rather than guessing.
"""

from __future__ import annotations

import mmap
import re
from pathlib import Path

from numaplan.topology.cpulist import parse_cpulist

PAGE_SIZE = mmap.PAGESIZE
#: Size of a transparent huge page on x86_64 and arm64 with 4 KiB base pages (PMD size).
HUGE_PAGE_SIZE = 2 << 20

_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]?)\s*$")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def llc_bytes(cpu: int = 0, root: str | Path = "/") -> int | None:
    """Size of the last-level cache seen by ``cpu``, in bytes.

    Reads ``/sys/devices/system/cpu/cpuN/cache/index*/{level,size}`` (kernel
    ``Documentation/ABI/testing/sysfs-devices-system-cpu``) and returns the size of the highest
    level (L3 where there is one). ``None`` when sysfs has no cache information (some VMs).
    """
    base = Path(root) / f"sys/devices/system/cpu/cpu{cpu}/cache"
    best: tuple[int, int] | None = None
    for d in sorted(base.glob("index*")):
        level, size = _read(d / "level"), _read(d / "size")
        if level is None or size is None:
            continue
        m = _SIZE.match(size)
        if not m or not level.strip().isdigit():
            continue
        nbytes = int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2)]
        key = (int(level), nbytes)
        if best is None or key > best:
            best = key
    return None if best is None else best[1]


def thp_mode(root: str | Path = "/") -> str | None:
    """The transparent-huge-page mode: ``always``, ``madvise`` or ``never`` (the bracketed word
    of ``/sys/kernel/mm/transparent_hugepage/enabled``)."""
    text = _read(Path(root) / "sys/kernel/mm/transparent_hugepage/enabled")
    m = re.search(r"\[(\w+)\]", text or "")
    return m.group(1) if m else None


def numa_balancing(root: str | Path = "/") -> int | None:
    """``/proc/sys/kernel/numa_balancing`` (0 off, 1 on, 2/3 memory tiering); ``None`` when the
    kernel has no automatic NUMA balancing."""
    text = _read(Path(root) / "proc/sys/kernel/numa_balancing")
    return int(text) if text and text.strip().isdigit() else None


def _status_list(key: str, pid: int | str, root: str | Path) -> tuple[int, ...]:
    text = _read(Path(root) / f"proc/{pid}/status") or ""
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return parse_cpulist(line.split(":", 1)[1])
    return ()


def allowed_cpus(pid: int | str = "self", root: str | Path = "/") -> tuple[int, ...]:
    """``Cpus_allowed_list`` of a process (its main thread's affinity, inside the cpuset)."""
    return _status_list("Cpus_allowed_list", pid, root)


def allowed_memory_nodes(pid: int | str = "self", root: str | Path = "/") -> tuple[int, ...]:
    """``Mems_allowed_list`` of a process: the nodes its cpuset lets it allocate on."""
    return _status_list("Mems_allowed_list", pid, root)


def online_nodes(root: str | Path = "/") -> tuple[int, ...]:
    """Nodes the kernel has online (``/sys/devices/system/node/online``); ``(0,)`` when the
    kernel exposes no NUMA information."""
    text = _read(Path(root) / "sys/devices/system/node/online")
    return parse_cpulist(text) if text is not None else (0,)


def node_free_bytes(node_id: int, root: str | Path = "/") -> int | None:
    """Free memory of a node right now (``nodeN/meminfo`` ``MemFree``), in bytes."""
    text = _read(Path(root) / f"sys/devices/system/node/node{node_id}/meminfo")
    m = re.search(r"MemFree:\s+(\d+)\s*kB", text or "")
    return int(m.group(1)) << 10 if m else None


def load_average(root: str | Path = "/") -> float | None:
    """One-minute load average (``/proc/loadavg``): other work competing with a measurement."""
    text = _read(Path(root) / "proc/loadavg")
    try:
        return float(text.split()[0]) if text else None
    except ValueError:
        return None


def cpu_jiffies(root: str | Path = "/") -> tuple[int, int] | None:
    """``(total, steal)`` jiffies of all CPUs from ``/proc/stat`` (proc(5)); the steal share
    over an interval is the time a hypervisor ran something else on this guest's CPUs."""
    text = _read(Path(root) / "proc/stat") or ""
    for line in text.splitlines():
        if line.startswith("cpu "):
            vals = [int(v) for v in line.split()[1:]]
            # user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is
            # already counted in user/nice, so total is the first eight fields.
            return sum(vals[:8]), vals[7] if len(vals) > 7 else 0
    return None
