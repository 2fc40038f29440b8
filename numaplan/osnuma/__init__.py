"""OS side of NUMA placement: affinity, memory policies, node-bound buffers, page audits.

The bottom layer shared by the probe (``numaplan.cost.probe``) and the runtime (pinned
workers). Everything here acts on the running process through Linux interfaces:
sched_setaffinity(2), set_mempolicy(2), get_mempolicy(2), mbind(2), move_pages(2),
``/proc/<pid>/numa_maps`` and ``/proc/<pid>/task/<tid>/status``. The NUMA calls go through
libnuma when it is installed and through raw syscalls otherwise (:mod:`.backend`; force one with
``NUMAPLAN_NUMA_BACKEND=syscall``). Refused operations raise
:class:`~numaplan.errors.PlacementError` naming the call, the errno and what to do.
"""

from numaplan.osnuma.affinity import (
    ThreadAffinity,
    current_thread_id,
    get_affinity,
    pinned,
    process_thread_affinities,
    read_thread_affinity,
    set_affinity,
)
from numaplan.osnuma.audit import (
    MovePagesQuery,
    NumaMapsEntry,
    PageAudit,
    audit_range,
    audit_statuses,
    huge_page_bytes,
    numa_maps_audit,
    page_nodes,
    parse_numa_maps,
    read_numa_maps,
    sample_page_addresses,
)
from numaplan.osnuma.backend import (
    BACKEND_ENV,
    Mpol,
    NumaBackend,
    get_backend,
    libnuma_available,
)
from numaplan.osnuma.buffer import NodeBuffer
from numaplan.osnuma.mempolicy import (
    NO_POLICY,
    Downgrade,
    MemPolicy,
    PlacementOutcome,
    apply_mempolicy,
    bind_range,
    get_mempolicy,
    mbind,
    memory_node_of,
    mems_allowed,
    restore_mempolicy,
    set_mempolicy,
    thread_mempolicy,
)
from numaplan.osnuma.threads import PinnedThreads, set_native_thread_name

__all__ = [
    "BACKEND_ENV",
    "NO_POLICY",
    "Downgrade",
    "MemPolicy",
    "MovePagesQuery",
    "Mpol",
    "NodeBuffer",
    "NumaBackend",
    "NumaMapsEntry",
    "PageAudit",
    "PinnedThreads",
    "PlacementOutcome",
    "ThreadAffinity",
    "apply_mempolicy",
    "audit_range",
    "audit_statuses",
    "bind_range",
    "current_thread_id",
    "get_affinity",
    "get_backend",
    "get_mempolicy",
    "huge_page_bytes",
    "libnuma_available",
    "mbind",
    "memory_node_of",
    "mems_allowed",
    "numa_maps_audit",
    "page_nodes",
    "parse_numa_maps",
    "pinned",
    "process_thread_affinities",
    "read_numa_maps",
    "read_thread_affinity",
    "restore_mempolicy",
    "sample_page_addresses",
    "set_affinity",
    "set_mempolicy",
    "set_native_thread_name",
    "thread_mempolicy",
]
