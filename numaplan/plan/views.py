"""Views of one plan: who reads what from where.

Derived from the plan file alone (tensor homes and worker counts), for the text view
(:mod:`numaplan.plan.table`), the picture (:mod:`numaplan.plan.picture`) and the diff
(:mod:`numaplan.plan.diff`).
"""

from __future__ import annotations

from collections import defaultdict

from numaplan._base import Frozen
from numaplan.model.roles import Role
from numaplan.plan.formatting import describe_tensors
from numaplan.plan.schema import Plan, PlanTensor, TensorHome


class RemoteGroup(Frozen):
    """Tensors that the workers of ``reader_node_id`` read from another node's memory.

    ``nbytes`` is what is homed on ``home_node_id`` for those workers (each worker's piece of a
    split tensor, one shared copy of a replicated one); ``read_bytes_per_token`` is what those
    workers read from there per decode token (an untied embedding, a lookup of a few rows, is
    counted as 0).
    """

    reader_node_id: int
    home_node_id: int
    replicated: bool
    tensor_names: tuple[str, ...]
    what: str
    nbytes: int
    read_bytes_per_token: int

    @property
    def noun(self) -> str:
        """``"pieces"`` (split tensors) or ``"copies"`` (replicated tensors)."""
        return "copies" if self.replicated else "pieces"


def reader_mem_nodes(plan: Plan) -> dict[int, int]:
    """Memory node each worker-hosting node binds to (``{node_id: mem_node_id}``).

    Parameters
    ----------
    plan
        The plan.

    Returns
    -------
    dict
        One entry per node that runs workers, in node order.
    """
    out: dict[int, int] = {}
    for w in sorted(plan.workers, key=lambda w: (w.node_id, w.worker_id)):
        out.setdefault(w.node_id, w.mem_node_id)
    return out


def workers_per_node(plan: Plan) -> dict[int, int]:
    """Number of workers on each node that runs any."""
    out: dict[int, int] = defaultdict(int)
    for w in plan.workers:
        out[w.node_id] += 1
    return dict(sorted(out.items()))


def threads_on_node(plan: Plan, node_id: int) -> int:
    """Threads the plan's workers run on a node.

    Parameters
    ----------
    plan
        The plan.
    node_id
        A node of the plan.

    Returns
    -------
    int
        The sum of the node's workers' threads; 0 when it runs none.
    """
    return sum(w.num_threads for w in plan.workers if w.node_id == node_id)


def piece_homes(plan: Plan, tensor: PlanTensor) -> dict[int, tuple[TensorHome, ...]]:
    """Where each reader node's piece (or shared copy) of ``tensor`` lives.

    Parameters
    ----------
    plan
        The plan the tensor belongs to.
    tensor
        One of ``plan.tensors``.

    Returns
    -------
    dict
        ``{reader node id: homes}``; ``"local"`` is spelled out as the reader's memory node.
    """
    if tensor.homes == "local":
        return {r: (TensorHome(node_id=m, nbytes=tensor.piece_nbytes),)
                for r, m in reader_mem_nodes(plan).items()}
    return {int(k): v for k, v in sorted(tensor.homes.items(), key=lambda kv: int(kv[0]))}


def _untied_embedding(plan: Plan) -> bool:
    # With its own lm_head, the embedding is a lookup of a few rows per token, not a stream.
    return any(t.role == str(Role.LM_HEAD) for t in plan.tensors)


def _read_per_token(plan: Plan, tensor: PlanTensor, nbytes: int, workers: int,
                    untied: bool) -> int:
    if tensor.replicated and tensor.role == str(Role.EMBEDDING) and untied:
        return 0
    return workers * nbytes


def remote_groups(plan: Plan) -> tuple[RemoteGroup, ...]:
    """The tensors that are not local, grouped by reader node, home node and kind.

    Parameters
    ----------
    plan
        The plan.

    Returns
    -------
    tuple of RemoteGroup
        Sorted by reader node, then home node, split pieces before replicated copies; empty when
        every worker reads only its own memory node.
    """
    mem = reader_mem_nodes(plan)
    count = workers_per_node(plan)
    untied = _untied_embedding(plan)
    acc: dict[tuple[int, int, bool], list[tuple[PlanTensor, int]]] = defaultdict(list)
    for t in plan.tensors:
        if t.homes == "local":
            continue
        for r, homes in piece_homes(plan, t).items():
            per_node: dict[int, int] = defaultdict(int)
            for h in homes:
                if h.node_id != mem.get(r, r):
                    per_node[h.node_id] += h.nbytes
            for j, b in per_node.items():
                acc[(r, j, t.replicated)].append((t, b))
    out = []
    for (r, j, rep), entries in sorted(acc.items()):
        k = count.get(r, 0)
        mult = 1 if rep else k
        out.append(RemoteGroup(
            reader_node_id=r, home_node_id=j, replicated=rep,
            tensor_names=tuple(t.name for t, _ in entries),
            what=describe_tensors([t for t, _ in entries]),
            nbytes=sum(mult * b for _, b in entries),
            read_bytes_per_token=sum(_read_per_token(plan, t, b, k, untied)
                                     for t, b in entries)))
    return tuple(out)


def cross_node_reads(plan: Plan) -> dict[tuple[int, int], int]:
    """Bytes per decode token each node's workers read from another node's memory.

    Derived from the tensors' homes and the number of workers per node (the KV cache is always
    local). An untied embedding (a lookup of a few rows) is not counted.

    Parameters
    ----------
    plan
        The plan.

    Returns
    -------
    dict
        ``{(reader node, memory node): bytes per token}``, only nonzero entries.
    """
    out: dict[tuple[int, int], int] = defaultdict(int)
    for g in remote_groups(plan):
        if g.read_bytes_per_token:
            out[(g.reader_node_id, g.home_node_id)] += g.read_bytes_per_token
    return dict(sorted(out.items()))
