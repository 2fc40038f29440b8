"""Memory policies: where the kernel allocates a thread's pages or a range's pages.

- set_mempolicy(2) sets the *calling thread's* policy, used for its future page faults outside
  ranges that have their own policy; threads created afterwards inherit it.
- mbind(2) sets the policy of an address range (a VMA policy), which wins over the thread
  policy. With ``MPOL_MF_MOVE`` pages already present are migrated; with ``MPOL_MF_STRICT`` the
  call fails with EIO when some cannot be.
- get_mempolicy(2) reads the thread policy back, or (``MPOL_F_NODE | MPOL_F_ADDR``) the node of
  the page at an address.

Every function validates the request first (node exists, has memory, is allowed by the cpuset)
so the error says *which* node is the problem instead of the kernel's bare EINVAL.

The ``allow_fallback`` pattern: :func:`apply_mempolicy` and :func:`bind_range` degrade
bind -> preferred -> nothing when asked to, and return a :class:`PlacementOutcome` that records
what was really applied and why; they never continue silently.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from numaplan._base import Frozen
from numaplan.errors import PlacementError
from numaplan.osnuma.backend import (
    MPOL_F_ADDR,
    MPOL_F_MEMS_ALLOWED,
    MPOL_F_NODE,
    MPOL_F_NUMA_BALANCING,
    MPOL_F_RELATIVE_NODES,
    MPOL_F_STATIC_NODES,
    MPOL_MF_MOVE,
    MPOL_MF_MOVE_ALL,
    MPOL_MF_STRICT,
    MPOL_MODE_FLAGS,
    Mpol,
    NumaBackend,
    NumaCallError,
    get_backend,
    make_nodemask,
    mask_bits,
    nodemask_ids,
    placement_error,
)
from numaplan.osnuma.system import PAGE_SIZE, allowed_memory_nodes, online_nodes
from numaplan.topology.cpulist import format_cpulist, parse_cpulist

ModeName = Literal["default", "preferred", "bind", "interleave", "local", "preferred-many",
                   "weighted-interleave"]
FlagName = Literal["static-nodes", "relative-nodes", "numa-balancing"]

_MODE_NAMES: dict[Mpol, str] = {m: m.name.lower().replace("_", "-") for m in Mpol}
_FLAGS: dict[str, int] = {"static-nodes": MPOL_F_STATIC_NODES,
                          "relative-nodes": MPOL_F_RELATIVE_NODES,
                          "numa-balancing": MPOL_F_NUMA_BALANCING}


class MemPolicy(Frozen):
    """A memory policy: mode, nodes and mode flags (set_mempolicy(2))."""

    mode: ModeName
    node_ids: tuple[int, ...] = ()
    flags: tuple[FlagName, ...] = ()

    def describe(self) -> str:
        """``bind to node 1`` / ``interleave over nodes 0-3`` / ``default``."""
        if not self.node_ids:
            return self.mode
        what = (f"node {self.node_ids[0]}" if len(self.node_ids) == 1
                else f"nodes {format_cpulist(self.node_ids)}")
        return f"{self.mode} {'over' if 'interleave' in self.mode else 'to'} {what}"


class Downgrade(Frozen):
    """One placement call the kernel refused under ``allow_fallback``, and what was done instead.

    Attributes
    ----------
    call
        The refused system call (``mbind``, ``set_mempolicy``, ``get_mempolicy``,
        ``move_pages``).
    errno
        Its errno name (``EPERM``).
    what
        What was being placed or audited (``bind to node 1: weights of worker 1``).
    fallback
        What happened instead (``preferred to node 1``, ``no policy: first touch``,
        ``not audited``).
    """

    call: str
    errno: str
    what: str
    fallback: str

    @classmethod
    def of(cls, exc: PlacementError, what: str, fallback: str) -> Downgrade:
        """The downgrade a refused call (``exc``) led to."""
        return cls(call=exc.call or "?", errno=exc.errno_name or "?", what=what,
                   fallback=fallback)

    def describe(self) -> str:
        """``weights of worker 1: mbind refused (EPERM), fell back to preferred to node 1``."""
        return f"{self.what}: {self.call} refused ({self.errno}), fell back to {self.fallback}"


#: What a range or a thread gets when no policy at all could be set.
NO_POLICY = "no policy (first touch)"


class PlacementOutcome(Frozen):
    """What a placement request really achieved.

    Attributes
    ----------
    action
        ``set_mempolicy`` (thread policy) or ``mbind`` (range policy).
    requested
        The policy asked for.
    achieved
        The policy in force afterwards; ``None`` when nothing could be applied.
    degraded
        ``True`` when ``achieved`` is weaker than ``requested``.
    reasons
        The errors that forced each step down, in order.
    refused
        ``(call, errno name)`` of each of those errors.
    """

    action: Literal["set_mempolicy", "mbind"]
    requested: MemPolicy
    achieved: MemPolicy | None
    degraded: bool = False
    reasons: tuple[str, ...] = ()
    refused: tuple[tuple[str, str], ...] = ()

    def downgrade(self, what: str) -> Downgrade | None:
        """The :class:`Downgrade` this outcome records (``None`` when nothing was degraded).

        The errno is the requested call's: the reason the placement is weaker than planned.
        """
        if not self.degraded:
            return None
        call, err = self.refused[0] if self.refused else (self.action, "?")
        return Downgrade(call=call, errno=err, what=f"{self.requested.describe()}: {what}",
                         fallback=self.achieved.describe() if self.achieved else NO_POLICY)


def mode_number(mode: Mpol | ModeName | int) -> Mpol:
    """The :class:`Mpol` for a mode name (``"bind"``), number or enum."""
    if isinstance(mode, str):
        for m, name in _MODE_NAMES.items():
            if name == mode.lower():
                return m
        raise PlacementError(f"unknown memory policy mode {mode!r}; use one of "
                             f"{', '.join(_MODE_NAMES.values())}")
    return Mpol(mode)


def mode_name(mode: Mpol | ModeName | int) -> ModeName:
    """The name (``"bind"``) of a mode number or enum."""
    return _MODE_NAMES[mode_number(mode)]  # type: ignore[return-value]


def _policy(mode: Mpol | ModeName | int, node_ids: Iterable[int],
            flags: Iterable[FlagName] = ()) -> MemPolicy:
    return MemPolicy(mode=mode_name(mode), node_ids=tuple(sorted(set(node_ids))),
                     flags=tuple(flags))


def _has_memory_nodes() -> tuple[int, ...] | None:
    try:
        return parse_cpulist(Path("/sys/devices/system/node/has_memory").read_text())
    except (OSError, ValueError):
        return None


def check_policy_nodes(policy: MemPolicy) -> None:
    """Refuse a policy whose nodes the kernel would reject, naming the offending node.

    Raises
    ------
    PlacementError
        Wrong node count for the mode, or a node that does not exist, has no memory, or is not
        in this process's ``Mems_allowed_list``.
    """
    m, nodes = policy.mode, policy.node_ids
    if m in ("default", "local") and nodes:
        raise PlacementError(f"memory policy {m} takes no nodes, got {list(nodes)}")
    if m == "preferred" and len(nodes) > 1:
        raise PlacementError(f"memory policy preferred takes one node, got {list(nodes)}; use "
                             f"preferred-many for several")
    if m in ("bind", "interleave", "preferred-many", "weighted-interleave") and not nodes:
        raise PlacementError(f"memory policy {m} needs at least one node")
    online = online_nodes()
    for n in nodes:
        if n not in online:
            raise PlacementError(f"cannot {policy.describe()}: node {n} does not exist (online "
                                 f"nodes: {format_cpulist(online)})")
    with_mem = _has_memory_nodes()
    if with_mem is not None:
        for n in nodes:
            if n not in with_mem:
                raise PlacementError(f"cannot {policy.describe()}: node {n} has no memory (nodes "
                                     f"with memory: {format_cpulist(with_mem)})")
    allowed = allowed_memory_nodes()
    if allowed:
        for n in nodes:
            if n not in allowed:
                raise PlacementError(f"cannot {policy.describe()}: node {n} is not allowed for "
                                     f"this process (Mems_allowed_list {format_cpulist(allowed)} "
                                     f"in /proc/self/status, set by its cpuset); use one of "
                                     f"those nodes")


def _mask_args(policy: MemPolicy):
    if not policy.node_ids:
        # mbind(2): MPOL_DEFAULT needs an empty set; NULL + maxnode 0 is the canonical one.
        return None, 0
    bits = mask_bits()
    return make_nodemask(policy.node_ids, bits), bits + 1


def _mode_arg(policy: MemPolicy) -> int:
    value = int(mode_number(policy.mode))
    for f in policy.flags:
        value |= _FLAGS[f]
    return value


def set_mempolicy(mode: Mpol | ModeName | int, node_ids: Iterable[int] = (), *,
                  flags: Iterable[FlagName] = (),
                  backend: NumaBackend | str | None = None) -> MemPolicy:
    """Set the calling thread's memory policy (set_mempolicy(2)).

    Parameters
    ----------
    mode
        ``"default"``, ``"preferred"``, ``"bind"``, ``"interleave"``, ``"local"``,
        ``"preferred-many"`` (name, number or :class:`Mpol`).
    node_ids
        The nodes (none for default/local; one for preferred, none meaning local).
    flags
        Mode flags (``"static-nodes"``, ``"relative-nodes"``, ``"numa-balancing"``).
    backend
        libnuma / syscall backend; default :func:`~numaplan.osnuma.backend.get_backend`.

    Returns
    -------
    MemPolicy
        The policy set.

    Raises
    ------
    PlacementError
        For an invalid or refused request, naming the node or errno and a hint.
    """
    policy = _policy(mode, node_ids, flags)
    check_policy_nodes(policy)
    mask, maxnode = _mask_args(policy)
    try:
        get_backend(backend).set_mempolicy(_mode_arg(policy), mask, maxnode)
    except NumaCallError as exc:
        raise placement_error(exc, f"set the thread memory policy to {policy.describe()}"
                              ) from None
    return policy


def get_mempolicy(*, backend: NumaBackend | str | None = None) -> MemPolicy:
    """The calling thread's memory policy (get_mempolicy(2) with no flags).

    Raises
    ------
    PlacementError
        When the call is refused (e.g. EPERM under a container's seccomp profile).
    """
    bits = mask_bits()
    mask = make_nodemask((), bits)
    try:
        raw = get_backend(backend).get_mempolicy(mask, bits + 1, None, 0)
    except NumaCallError as exc:
        raise placement_error(exc, "read the thread memory policy") from None
    return _decode(raw, nodemask_ids(mask))


def _decode(raw: int, nodes: tuple[int, ...]) -> MemPolicy:
    flags = tuple(name for name, bit in _FLAGS.items() if raw & bit)
    mode = mode_number(raw & ~MPOL_MODE_FLAGS)
    if mode in (Mpol.DEFAULT, Mpol.LOCAL):
        nodes = ()
    return MemPolicy(mode=mode_name(mode), node_ids=nodes, flags=flags)  # type: ignore[arg-type]


def restore_mempolicy(policy: MemPolicy, *, backend: NumaBackend | str | None = None) -> None:
    """Put back a policy saved with :func:`get_mempolicy` (no node validation: it was in force).
    """
    mask, maxnode = _mask_args(policy)
    try:
        get_backend(backend).set_mempolicy(_mode_arg(policy), mask, maxnode)
    except NumaCallError as exc:
        raise placement_error(exc, f"restore the thread memory policy {policy.describe()}"
                              ) from None


@contextlib.contextmanager
def thread_mempolicy(mode: Mpol | ModeName | int, node_ids: Iterable[int] = (), *,
                     backend: NumaBackend | str | None = None) -> Iterator[MemPolicy]:
    """Set the calling thread's policy for a ``with`` block, then restore the previous one."""
    before = get_mempolicy(backend=backend)
    policy = set_mempolicy(mode, node_ids, backend=backend)
    try:
        yield policy
    finally:
        restore_mempolicy(before, backend=backend)


def mems_allowed(*, backend: NumaBackend | str | None = None) -> tuple[int, ...]:
    """Nodes this thread may allocate on, from the kernel (get_mempolicy(2),
    ``MPOL_F_MEMS_ALLOWED``)."""
    bits = mask_bits()
    mask = make_nodemask((), bits)
    try:
        get_backend(backend).get_mempolicy(mask, bits + 1, None, MPOL_F_MEMS_ALLOWED)
    except NumaCallError as exc:
        raise placement_error(exc, "read the allowed memory nodes") from None
    return nodemask_ids(mask)


def memory_node_of(address: int, *, backend: NumaBackend | str | None = None) -> int:
    """Node of the page holding ``address`` (get_mempolicy(2) ``MPOL_F_NODE | MPOL_F_ADDR``).

    The page must be present: for a never-touched page the kernel faults it in first, which
    would itself place it, so prefer :func:`~numaplan.osnuma.audit.audit_range` for audits.
    """
    try:
        return get_backend(backend).get_mempolicy(None, 0, address, MPOL_F_NODE | MPOL_F_ADDR)
    except NumaCallError as exc:
        raise placement_error(exc, f"read the node of address {address:#x}") from None


def mbind(address: int, length: int, mode: Mpol | ModeName | int,
          node_ids: Iterable[int] = (), *, strict: bool = False, move: bool = False,
          move_all: bool = False, backend: NumaBackend | str | None = None) -> MemPolicy:
    """Set the memory policy of ``[address, address + length)`` (mbind(2)).

    Parameters
    ----------
    address
        Page-aligned start.
    length
        Bytes (rounded up to whole pages by the kernel).
    mode, node_ids
        As for :func:`set_mempolicy`.
    strict
        ``MPOL_MF_STRICT``: fail with EIO when pages present do not follow the policy (after
        moving, when ``move`` is set).
    move
        ``MPOL_MF_MOVE``: migrate pages of this process already present to follow the policy.
    move_all
        ``MPOL_MF_MOVE_ALL``: also pages shared with other processes (needs CAP_SYS_NICE).

    Returns
    -------
    MemPolicy
        The policy set on the range.

    Raises
    ------
    PlacementError
        For an unaligned range, an invalid node or a refused call.
    """
    if address % PAGE_SIZE:
        raise PlacementError(f"mbind needs a page-aligned address, got {address:#x} (page size "
                             f"{PAGE_SIZE})")
    if length <= 0:
        raise PlacementError(f"mbind needs a positive length, got {length}")
    policy = _policy(mode, node_ids)
    check_policy_nodes(policy)
    mask, maxnode = _mask_args(policy)
    flags = ((MPOL_MF_STRICT if strict else 0) | (MPOL_MF_MOVE if move else 0)
             | (MPOL_MF_MOVE_ALL if move_all else 0))
    try:
        get_backend(backend).mbind(address, length, _mode_arg(policy), mask, maxnode, flags)
    except NumaCallError as exc:
        raise placement_error(exc, f"{policy.describe()} the {length} bytes at {address:#x}"
                              ) from None
    return policy


def _fallbacks(policy: MemPolicy) -> list[MemPolicy]:
    """The weaker policies to try after ``policy`` fails: bind -> preferred (first node)."""
    if policy.mode in ("bind", "interleave", "preferred-many", "weighted-interleave"):
        return [MemPolicy(mode="preferred", node_ids=policy.node_ids[:1])]
    return []


def apply_mempolicy(mode: Mpol | ModeName | int, node_ids: Iterable[int] = (), *,
                    allow_fallback: bool = False,
                    backend: NumaBackend | str | None = None) -> PlacementOutcome:
    """Set the calling thread's policy, degrading bind -> preferred -> nothing if allowed.

    Parameters
    ----------
    mode, node_ids
        The policy wanted.
    allow_fallback
        When ``False`` any failure raises; when ``True`` failures step down and are recorded.

    Returns
    -------
    PlacementOutcome
        With ``achieved=None`` when even the weakest step failed (the thread keeps its policy).

    Raises
    ------
    PlacementError
        When the request fails and ``allow_fallback`` is ``False``, and always for a node that
        does not exist or is not allowed.
    """
    requested = _policy(mode, node_ids)
    check_policy_nodes(requested)  # a wrong node is the caller's error: never degrade on it
    reasons: list[str] = []
    refused: list[tuple[str, str]] = []
    for candidate in [requested, *_fallbacks(requested)]:
        try:
            set_mempolicy(candidate.mode, candidate.node_ids, backend=backend)
        except PlacementError as exc:
            if not allow_fallback:
                raise
            reasons.append(str(exc))
            refused.append((exc.call or "set_mempolicy", exc.errno_name or "?"))
            continue
        return PlacementOutcome(action="set_mempolicy", requested=requested, achieved=candidate,
                                degraded=candidate != requested, reasons=tuple(reasons),
                                refused=tuple(refused))
    return PlacementOutcome(action="set_mempolicy", requested=requested, achieved=None,
                            degraded=True, reasons=tuple(reasons), refused=tuple(refused))


def bind_range(address: int, length: int, node_ids: int | Iterable[int], *,
               mode: Mpol | ModeName | int = "bind", strict: bool = True, move: bool = True,
               allow_fallback: bool = False,
               backend: NumaBackend | str | None = None) -> PlacementOutcome:
    """mbind a range to ``node_ids``, degrading bind -> preferred -> nothing if allowed.

    Defaults are ``MPOL_MF_STRICT | MPOL_MF_MOVE``: pages already present are migrated and the
    call fails if any cannot be, so success means every present page follows the policy.

    Returns
    -------
    PlacementOutcome
        What the range ended up with.

    Raises
    ------
    PlacementError
        When binding fails and ``allow_fallback`` is ``False``, and always for a node that does
        not exist or is not allowed.
    """
    nodes = (node_ids,) if isinstance(node_ids, int) else tuple(node_ids)
    requested = _policy(mode, nodes)
    check_policy_nodes(requested)  # a wrong node is the caller's error: never degrade on it
    reasons: list[str] = []
    refused: list[tuple[str, str]] = []
    for candidate in [requested, *_fallbacks(requested)]:
        try:
            mbind(address, length, candidate.mode, candidate.node_ids, strict=strict, move=move,
                  backend=backend)
        except PlacementError as exc:
            if not allow_fallback:
                raise
            reasons.append(str(exc))
            refused.append((exc.call or "mbind", exc.errno_name or "?"))
            continue
        return PlacementOutcome(action="mbind", requested=requested, achieved=candidate,
                                degraded=candidate != requested, reasons=tuple(reasons),
                                refused=tuple(refused))
    return PlacementOutcome(action="mbind", requested=requested, achieved=None, degraded=True,
                            reasons=tuple(reasons), refused=tuple(refused))
