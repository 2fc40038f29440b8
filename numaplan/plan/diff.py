"""The diff of two plans, in the words a reviewer reads.

:func:`diff_plans` is pure: it takes two :class:`~numaplan.plan.schema.Plan` objects and returns
a :class:`PlanDiff`, a list of findings grouped by section (inputs, request knobs, solver, nodes,
workers, tensor homes, collectives, prediction). :func:`render_diff` prints it like a code-review
comment. Identical plans give an empty diff.

Tensor homes are compared per *reader node* (the node whose workers read a piece or copy), as
fractions of the piece when the two plans split the model differently (another W), so a change
of W alone does not report every tensor; changes are grouped into runs of layers and roles
("layers 60-79 mlp_in/mlp_out pieces of node 3 workers moved from node 3 to node 2 (1.2 GiB)").
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Literal

from numaplan._base import Frozen
from numaplan.plan.formatting import (
    describe_tensors,
    format_ids,
    format_seconds,
    format_tps,
    human_bytes,
)
from numaplan.plan.schema import BaselinePrediction, Plan, PlanNode, PlanTensor, TensorHome
from numaplan.plan.views import piece_homes, reader_mem_nodes, remote_groups, workers_per_node

Section = Literal["inputs", "request", "solver", "nodes", "workers", "tensors", "collectives",
                  "prediction", "other"]

SECTIONS: tuple[Section, ...] = ("inputs", "request", "solver", "nodes", "workers", "tensors",
                                 "collectives", "prediction", "other")

#: Leftover differing fields listed when nothing else explains why two plans differ.
MAX_OTHER_PATHS = 8


class DiffItem(Frozen):
    """One finding: a sentence about one subject (``"W"``, ``"node 3"``, ``"worker 5"``...)."""

    section: Section
    subject: str
    text: str


class PlanDiff(Frozen):
    """What differs between plan ``a`` (before) and plan ``b`` (after)."""

    a_label: str = "a"
    b_label: str = "b"
    items: tuple[DiffItem, ...] = ()

    @property
    def equal(self) -> bool:
        """True when nothing differs."""
        return not self.items

    def section(self, name: Section) -> tuple[DiffItem, ...]:
        """The findings of one section, in order."""
        return tuple(i for i in self.items if i.section == name)


def _delta_bytes(a: int, b: int) -> str:
    d = b - a
    return f"{human_bytes(a)} -> {human_bytes(b)} ({'+' if d > 0 else ''}{human_bytes(d)})"


_ms = format_seconds


def _pct_change(a: float, b: float) -> str:
    if a == 0:
        return ""
    return f" ({100 * (b - a) / a:+.1f}%)"


def _fp(s: str) -> str:
    return s[:12]


def _nodes_word(ids: Sequence[int], local: int | None = None) -> str:
    names = [f"{j} (local)" if j == local else str(j) for j in ids]
    return ("node " if len(ids) == 1 else "nodes ") + " + ".join(names)


class _Collector:
    def __init__(self) -> None:
        self.items: list[DiffItem] = []

    def add(self, section: Section, subject: str, text: str) -> None:
        self.items.append(DiffItem(section=section, subject=subject, text=text))

    def field(self, section: Section, subject: str, a: Any, b: Any, fmt=str) -> None:
        if a != b:
            self.add(section, subject, f"{subject}: {fmt(a)} -> {fmt(b)}")


def diff_plans(a: Plan, b: Plan, *, a_label: str = "a", b_label: str = "b") -> PlanDiff:
    """Describe what changed from plan ``a`` to plan ``b``.

    Parameters
    ----------
    a, b
        The plan before and after.
    a_label, b_label
        How the report names them (e.g. their paths).

    Returns
    -------
    PlanDiff
        Findings grouped by section; no items (``equal``) when the plans are equal.
    """
    c = _Collector()
    if a != b:
        _inputs(c, a, b)
        _request(c, a, b)
        _solver(c, a, b)
        _nodes(c, a, b, b_label)
        _workers(c, a, b)
        _tensors(c, a, b, a_label, b_label)
        _collectives(c, a, b)
        _prediction(c, a, b)
        if not c.items:
            _other(c, a, b)
    return PlanDiff(a_label=a_label, b_label=b_label, items=tuple(c.items))


def _inputs(c: _Collector, a: Plan, b: Plan) -> None:
    c.field("inputs", "numaplan version", a.numaplan_version, b.numaplan_version)
    ma, mb = a.model, b.model
    c.field("inputs", "model", ma.name, mb.name)
    if ma.fingerprint != mb.fingerprint:
        c.add("inputs", "model fingerprint",
              f"model fingerprint changed ({_fp(ma.fingerprint)} -> {_fp(mb.fingerprint)}): "
              "the model index differs")
    for name in ("model_type", "quantization", "model_dtype", "num_hidden_layers",
                 "hidden_size", "num_key_value_heads", "index_source"):
        c.field("inputs", f"model {name}", getattr(ma, name), getattr(mb, name))
    if ma.weight_bytes != mb.weight_bytes:
        c.add("inputs", "model weight_bytes",
              f"model weights: {_delta_bytes(ma.weight_bytes, mb.weight_bytes)}")
    ta, tb = a.topology, b.topology
    if ta.fingerprint != tb.fingerprint:
        c.add("inputs", "topology fingerprint",
              f"topology fingerprint changed ({_fp(ta.fingerprint)} -> {_fp(tb.fingerprint)}): "
              "another machine, cpuset or numa_nodes selection")
    c.field("inputs", "topology source", ta.source, tb.source)
    c.field("inputs", "cpu model", ta.cpu_model, tb.cpu_model)
    if (ta.distances, ta.distances_node_ids) != (tb.distances, tb.distances_node_ids):
        c.add("inputs", "distances",
              f"SLIT distances changed (nodes {format_ids(ta.distances_node_ids)} -> "
              f"{format_ids(tb.distances_node_ids)})")
    ca, cb = a.cost_model, b.cost_model
    c.field("inputs", "cost model", ca.method, cb.method)
    if ca.fingerprint != cb.fingerprint:
        c.add("inputs", "cost fingerprint",
              f"cost model fingerprint changed ({_fp(ca.fingerprint)} -> {_fp(cb.fingerprint)})")
    c.field("inputs", "cost figures", ca.nominal, cb.nominal,
            lambda x: "nominal" if x else "measured")
    for k in sorted(set(ca.params) | set(cb.params)):
        c.field("inputs", f"cost param {k}", ca.params.get(k, "unset"), cb.params.get(k, "unset"))


_REQUEST_NAMES = {
    "tensor_parallel_shards": "W (tensor_parallel_shards)",
    "numa_tensor_parallel": "numa_tensor_parallel",
    "numa_nodes": "numa_nodes",
    "numa_inter_node_penalty": "numa_inter_node_penalty",
    "numa_prefer_local_memory": "numa_prefer_local_memory",
    "node_affinity": "node_affinity",
    "batch_size": "batch size",
    "context_tokens": "context tokens",
    "mem_headroom": "memory headroom",
    "solver": "solver requested",
}


def _request_value(name: str, v: Any) -> str:
    if name == "numa_nodes":
        return "all" if v is None else format_ids(v)
    if name == "node_affinity":
        return ",".join(f"{w}:{n}" for w, n in sorted(v.items())) or "none"
    return str(v)


def _request(c: _Collector, a: Plan, b: Plan) -> None:
    for name, label in _REQUEST_NAMES.items():
        va, vb = getattr(a.request, name), getattr(b.request, name)
        if va != vb:
            c.add("request", label,
                  f"{label}: {_request_value(name, va)} -> {_request_value(name, vb)}")


def _gap(g: float | None) -> str:
    return "unknown" if g is None else f"{100 * g:.2f}%"


def _solver(c: _Collector, a: Plan, b: Plan) -> None:
    sa, sb = a.solver, b.solver
    c.field("solver", "solver", sa.name, sb.name)
    c.field("solver", "status", sa.status, sb.status)
    c.field("solver", "optimality gap", _gap(sa.gap), _gap(sb.gap))


def _nodes(c: _Collector, a: Plan, b: Plan, b_label: str) -> None:
    na = {n.node_id: n for n in a.nodes}
    nb = {n.node_id: n for n in b.nodes}
    for nid in sorted(set(na) | set(nb)):
        x, y = na.get(nid), nb.get(nid)
        subject = f"node {nid}"
        if y is None:
            assert x is not None
            c.add("nodes", subject, f"node {nid}: no longer in the plan (had "
                  f"{_node_words(x)})")
            continue
        if x is None:
            c.add("nodes", subject, f"node {nid}: new in the plan ({_node_words(y)})")
            continue
        parts = []
        if x.worker_ids != y.worker_ids:
            parts.append(f"workers {format_ids(x.worker_ids)} -> {format_ids(y.worker_ids)}")
        if x.socket_id != y.socket_id:
            parts.append(f"socket {x.socket_id} -> {y.socket_id}")
        if x.cpus != y.cpus:
            parts.append(f"CPUs {x.cpus or '-'} -> {y.cpus or '-'}")
        if x.mem_capacity_bytes != y.mem_capacity_bytes:
            if x.mem_capacity_bytes is None or y.mem_capacity_bytes is None:
                parts.append(f"capacity {human_bytes(x.mem_capacity_bytes)} -> "
                             f"{human_bytes(y.mem_capacity_bytes)}")
            else:
                parts.append("capacity "
                             + _delta_bytes(x.mem_capacity_bytes, y.mem_capacity_bytes))
        if x.bytes_homed != y.bytes_homed:
            parts.append(f"homed {_delta_bytes(x.bytes_homed, y.bytes_homed)}")
        if x.predicted_read_s != y.predicted_read_s:
            parts.append(f"read/token {_ms(x.predicted_read_s)} -> {_ms(y.predicted_read_s)}")
        if x.predicted_compute_s != y.predicted_compute_s:
            parts.append(f"compute/token {_ms(x.predicted_compute_s)} -> "
                         f"{_ms(y.predicted_compute_s)}")
        if parts:
            c.add("nodes", subject, f"node {nid}: " + "; ".join(parts))


def _node_words(n: PlanNode) -> str:
    workers = f"workers {format_ids(n.worker_ids)}" if n.worker_ids else "no workers"
    return f"{workers}, {human_bytes(n.bytes_homed)} homed"


def _workers(c: _Collector, a: Plan, b: Plan) -> None:
    wa = {w.worker_id: w for w in a.workers}
    wb = {w.worker_id: w for w in b.workers}
    gone = sorted(set(wa) - set(wb))
    new = sorted(set(wb) - set(wa))
    if gone:
        c.add("workers", "removed", f"workers {format_ids(gone)} removed (were on nodes "
              f"{format_ids(wa[w].node_id for w in gone)})")
    if new:
        c.add("workers", "added", f"workers {format_ids(new)} added (on nodes "
              f"{format_ids(wb[w].node_id for w in new)})")
    for wid in sorted(set(wa) & set(wb)):
        x, y = wa[wid], wb[wid]
        parts = []
        if x.node_id != y.node_id:
            parts.append(f"moved from node {x.node_id} to node {y.node_id}")
        if x.cpus != y.cpus or x.num_threads != y.num_threads:
            threads = ("" if x.num_threads == y.num_threads
                       else f" ({x.num_threads} -> {y.num_threads} threads)")
            parts.append(f"CPUs {x.cpus} -> {y.cpus}{threads}")
        if (x.mem_node_id, x.mem_policy) != (y.mem_node_id, y.mem_policy):
            parts.append(f"memory {x.mem_policy} node {x.mem_node_id} -> {y.mem_policy} node "
                         f"{y.mem_node_id}")
        if parts:
            c.add("workers", f"worker {wid}", f"worker {wid}: " + "; ".join(parts))


def _fractions(homes: tuple[TensorHome, ...], piece: int) -> tuple[tuple[int, float], ...]:
    acc: dict[int, int] = defaultdict(int)
    for h in homes:
        acc[h.node_id] += h.nbytes
    return tuple((j, round(v / piece, 3) if piece else 0.0) for j, v in sorted(acc.items()))


def _exact(homes: tuple[TensorHome, ...]) -> tuple[tuple[int, int], ...]:
    acc: dict[int, int] = defaultdict(int)
    for h in homes:
        acc[h.node_id] += h.nbytes
    return tuple(sorted(acc.items()))


def _tensors(c: _Collector, a: Plan, b: Plan, a_label: str, b_label: str) -> None:
    ta = {t.name: t for t in a.tensors}
    tb = {t.name: t for t in b.tensors}
    only_a = [n for n in ta if n not in tb]
    only_b = [n for n in tb if n not in ta]
    if only_a:
        c.add("tensors", "only in a", f"{len(only_a)} tensors only in {a_label} "
              f"(e.g. {only_a[0]})")
    if only_b:
        c.add("tensors", "only in b", f"{len(only_b)} tensors only in {b_label} "
              f"(e.g. {only_b[0]})")
    resplit = [n for n in ta if n in tb and
               (ta[n].role, ta[n].split_dim, ta[n].replicated) !=
               (tb[n].role, tb[n].split_dim, tb[n].replicated)]
    if resplit:
        x, y = ta[resplit[0]], tb[resplit[0]]
        c.add("tensors", "split", f"{len(resplit)} tensors changed role or split (e.g. "
              f"{x.name}: {x.role}, split dim {x.split_dim} -> {y.role}, split dim "
              f"{y.split_dim})")
    count_a, count_b = workers_per_node(a), workers_per_node(b)
    mem_a, mem_b = reader_mem_nodes(a), reader_mem_nodes(b)
    # (reader node, replicated, nodes that lost bytes, nodes that gained bytes)
    #   -> [(tensor, bytes moved, whether some of it stayed)]
    moves: dict[tuple[int, bool, tuple[int, ...], tuple[int, ...]],
                list[tuple[PlanTensor, int, bool]]] = defaultdict(list)
    # Both "local" can only differ where a reader node's memory node changed.
    same_mem = all(mem_a[r] == mem_b[r] for r in set(mem_a) & set(mem_b))
    for name, x in ta.items():
        y = tb.get(name)
        if y is None or (x.homes == y.homes == "local" and same_mem):
            continue
        ha, hb = piece_homes(a, x), piece_homes(b, y)
        for r in sorted(set(ha) & set(hb)):
            same_piece = x.piece_nbytes == y.piece_nbytes
            if same_piece:
                if _exact(ha[r]) == _exact(hb[r]):
                    continue
            elif _fractions(ha[r], x.piece_nbytes) == _fractions(hb[r], y.piece_nbytes):
                continue
            before = dict(_exact(ha[r]))
            after = dict(_exact(hb[r]))
            scale = y.piece_nbytes / x.piece_nbytes if x.piece_nbytes else 1.0
            delta = {j: after.get(j, 0) - round(before.get(j, 0) * scale)
                     for j in set(before) | set(after)}
            lost = tuple(sorted(j for j, d in delta.items() if d < 0))
            gained = tuple(sorted(j for j, d in delta.items() if d > 0))
            if not lost or not gained:
                continue  # a rounding of the same homes
            partly = any(j in after for j in lost)
            mult = 1 if y.replicated else count_b.get(r, 0)
            moves[(r, y.replicated, lost, gained)].append(
                (y, mult * sum(delta[j] for j in gained), partly))

    def order(item):
        (r, rep, lost, gained), entries = item
        first = min((t.layer for t, _, _ in entries if t.layer is not None), default=1 << 30)
        return (r, rep, first, lost, gained)

    for (r, rep, lost, gained), entries in sorted(moves.items(), key=order):
        noun = "copies" if rep else "pieces"
        what = describe_tensors([t for t, _, _ in entries])
        moved = sum(m for _, m, _ in entries)
        partly = sum(p for _, _, p in entries)
        note = f"; {partly} of them only in part" if partly else ""
        c.add("tensors", f"node {r} homes",
              f"{what} {noun} of node {r} workers moved from "
              f"{_nodes_word(lost, mem_a.get(r))} to {_nodes_word(gained, mem_b.get(r))} "
              f"({human_bytes(moved)}{note})")
    # Readers that exist in only one plan: their non-local homes.
    for g in remote_groups(b):
        if g.reader_node_id not in count_a:
            c.add("tensors", f"node {g.reader_node_id} homes",
                  f"{g.what} {g.noun} of node {g.reader_node_id} workers (new there) homed on "
                  f"node {g.home_node_id}, not local ({human_bytes(g.nbytes)})")
    for g in remote_groups(a):
        if g.reader_node_id not in count_b:
            c.add("tensors", f"node {g.reader_node_id} homes",
                  f"{g.what} {g.noun} of node {g.reader_node_id} workers (gone) were homed on "
                  f"node {g.home_node_id} ({human_bytes(g.nbytes)})")


def _collectives(c: _Collector, a: Plan, b: Plan) -> None:
    ca, cb = a.collectives, b.collectives
    c.field("collectives", "collective kind", ca.kind, cb.kind)

    def groups(gs: tuple[tuple[int, ...], ...]) -> str:
        return " | ".join(format_ids(g) for g in gs) or "none"

    c.field("collectives", "intra-node groups", ca.intra_node_groups, cb.intra_node_groups,
            groups)
    c.field("collectives", "inter-node leaders", ca.inter_node_leaders, cb.inter_node_leaders,
            format_ids)
    c.field("collectives", "all-reduces per token", ca.allreduces_per_token,
            cb.allreduces_per_token)
    c.field("collectives", "broadcasts per token", ca.broadcasts_per_token,
            cb.broadcasts_per_token)
    pa = {x.phase: x for x in ca.choices}
    pb = {x.phase: x for x in cb.choices}
    for phase in sorted(set(pa) | set(pb)):
        x, y = pa.get(phase), pb.get(phase)
        if x is None or y is None:
            c.add("collectives", f"{phase} all-reduce",
                  f"{phase} all-reduce: {'none' if x is None else x.algorithm} -> "
                  f"{'none' if y is None else y.algorithm}")
            continue
        parts = []
        if x.algorithm != y.algorithm:
            parts.append(f"algorithm {x.algorithm} -> {y.algorithm}")
        if x.message_bytes != y.message_bytes:
            parts.append(f"message {human_bytes(x.message_bytes)} -> "
                         f"{human_bytes(y.message_bytes)}")
        if parts:
            c.add("collectives", f"{phase} all-reduce", f"{phase} all-reduce: "
                  + "; ".join(parts) + f" (predicted {x.predicted_s * 1e6:.1f} -> "
                  f"{y.predicted_s * 1e6:.1f} us)")
    if ca.segment_bytes != cb.segment_bytes:
        c.add("collectives", "segment",
              f"shared-memory segment: {_delta_bytes(ca.segment_bytes, cb.segment_bytes)}")


def _prediction(c: _Collector, a: Plan, b: Plan) -> None:
    pa, pb = a.prediction, b.prediction
    if pa.tokens_per_s != pb.tokens_per_s:
        change = _pct_change(pa.tokens_per_s, pb.tokens_per_s)
        c.add("prediction", "tokens/s", f"predicted {format_tps(pa.tokens_per_s)} -> "
              f"{format_tps(pb.tokens_per_s)} tokens/s{change} at batch {pa.batch_size}"
              + ("" if pa.batch_size == pb.batch_size else f" -> {pb.batch_size}"))
    parts = [f"{what} {_ms(x)} -> {_ms(y)}" for what, x, y in
             (("read", pa.read_s, pb.read_s), ("compute", pa.compute_s, pb.compute_s),
              ("collectives", pa.collective_s, pb.collective_s))
             if _ms(x) != _ms(y)]
    if parts:
        c.add("prediction", "per token", "per token: " + ", ".join(parts))
    reach = f"{100 * pa.fraction_of_bound:.1f}% -> {100 * pb.fraction_of_bound:.1f}%"
    if pa.lower_bound_tokens_per_s != pb.lower_bound_tokens_per_s:
        c.add("prediction", "lower bound",
              f"lower bound {format_tps(pa.lower_bound_tokens_per_s)} -> "
              f"{format_tps(pb.lower_bound_tokens_per_s)} tokens/s; plan reaches {reach} of it")
    elif pa.fraction_of_bound != pb.fraction_of_bound:
        c.add("prediction", "lower bound",
              f"plan reaches {reach} of the lower bound "
              f"({format_tps(pb.lower_bound_tokens_per_s)} tokens/s)")
    if (pa.cross_node_read_bytes_per_token, pa.bytes_read_per_token) != \
            (pb.cross_node_read_bytes_per_token, pb.bytes_read_per_token):
        c.add("prediction", "cross-node reads",
              f"cross-node reads {human_bytes(pa.cross_node_read_bytes_per_token)} of "
              f"{human_bytes(pa.bytes_read_per_token)} -> "
              f"{human_bytes(pb.cross_node_read_bytes_per_token)} of "
              f"{human_bytes(pb.bytes_read_per_token)} per token")
    c.field("prediction", "cost figures", pa.nominal, pb.nominal,
            lambda x: "nominal" if x else "measured")
    for name in sorted(set(pa.baselines) | set(pb.baselines)):
        x, y = pa.baselines.get(name), pb.baselines.get(name)
        if x == y and pa.tokens_per_s == pb.tokens_per_s:
            continue

        sa, sb = _speedup(x, pa.tokens_per_s), _speedup(y, pb.tokens_per_s)
        if sa == sb:
            continue
        if x is not None and y is not None and \
                (x.tokens_per_s, x.fits) == (y.tokens_per_s, y.fits):
            c.add("prediction", f"vs {name}", f"vs {name} ({_baseline_words(y)}): {sa} -> {sb}")
        else:
            c.add("prediction", f"vs {name}",
                  f"vs {name}: {sa} ({_baseline_words(x)}) -> {sb} ({_baseline_words(y)})")


def _baseline_words(base: BaselinePrediction | None) -> str:
    if base is None:
        return "not priced"
    return f"{format_tps(base.tokens_per_s)} tokens/s" + ("" if base.fits else ", does not fit")


def _speedup(base: BaselinePrediction | None, plan_tps: float) -> str:
    if base is None:
        return "n/a"
    if not base.tokens_per_s:
        return "inf"
    return f"{plan_tps / base.tokens_per_s:.2f}x"


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(obj, list | tuple):
        out = {}
        for i, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out or {prefix: obj}
    return {prefix: obj}


def _other(c: _Collector, a: Plan, b: Plan) -> None:
    fa, fb = _flatten(a.model_dump(mode="json")), _flatten(b.model_dump(mode="json"))
    paths = [p for p in list(fa) + [p for p in fb if p not in fa] if fa.get(p) != fb.get(p)]
    shown = ", ".join(paths[:MAX_OTHER_PATHS])
    more = f" and {len(paths) - MAX_OTHER_PATHS} more" if len(paths) > MAX_OTHER_PATHS else ""
    c.add("other", "fields", f"plans differ only in details: {shown}{more}")


def render_diff(d: PlanDiff) -> str:
    """The diff as a review comment: one heading per section, one line per finding.

    Parameters
    ----------
    d
        From :func:`diff_plans`.

    Returns
    -------
    str
        ``"no differences"`` for equal plans; no trailing newline.
    """
    if d.equal:
        return "no differences"
    n = len(d.items)
    lines = [f"plan diff {d.a_label} -> {d.b_label}: {n} difference{'s' if n != 1 else ''}"]
    for section in SECTIONS:
        items = d.section(section)
        if not items:
            continue
        lines.append("")
        lines.append(f"{section}:")
        lines.extend(f"  - {i.text}" for i in items)
    return "\n".join(lines)
