"""A plan as the text tables a reviewer reads (what ``numaplan show`` prints).

:func:`render_plan_table`: the request, every node (socket, workers, CPUs, threads, memory homed
against capacity, predicted read time), every worker (node, CPUs, memory binding), the
collectives, the prediction against the lower bound and the baselines, and the tensors that are
not local, grouped.
"""

from __future__ import annotations

from collections.abc import Sequence

from numaplan.plan.formatting import (
    format_ids,
    format_seconds,
    format_tps,
    human_bytes,
    roofline_text,
)
from numaplan.plan.schema import Plan
from numaplan.plan.views import remote_groups, threads_on_node


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int],
           indent: str = "  ") -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]

    def line(cells: Sequence[str]) -> str:
        out = [str(c).rjust(w) if i in right else str(c).ljust(w)
               for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return (indent + "  ".join(out)).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def _pct(part: int, whole: int | None) -> str:
    if not whole:
        return "-"
    return f"{100 * part / whole:.1f}%"


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def render_plan_table(plan: Plan) -> str:
    """The plan as text tables a reviewer reads.

    Parameters
    ----------
    plan
        The plan.

    Returns
    -------
    str
        Several titled sections (header, nodes, workers, collectives, prediction, non-local
        tensors); no trailing newline.
    """
    m, r, s, pr = plan.model, plan.request, plan.solver, plan.prediction
    gap = "" if s.gap is None else f", gap {100 * s.gap:.2f}%"
    sockets = sorted({n.socket_id for n in plan.nodes})
    lines = [
        f"plan: {m.name} ({m.model_type}, {m.quantization}, {human_bytes(m.weight_bytes)} of "
        f"weights, {m.num_hidden_layers} layers), W={r.tensor_parallel_shards}, solver "
        f"{s.name}: {s.status}{gap}",
        f"machine: {plan.topology.source}"
        + (f" ({plan.topology.cpu_model})" if plan.topology.cpu_model else "")
        + f", {len(plan.nodes)} nodes on {len(sockets)} socket{'s' if len(sockets) != 1 else ''}"
        f"; cost model {plan.cost_model.method}"
        + (" (nominal figures)" if plan.cost_model.nominal else " (measured)"),
        "request: numa_nodes " + ("all" if r.numa_nodes is None else format_ids(r.numa_nodes))
        + f", penalty {r.numa_inter_node_penalty:g}, prefer local memory "
        + ("yes" if r.numa_prefer_local_memory else "no") + ", affinity "
        + (",".join(f"{w}:{n}" for w, n in sorted(r.node_affinity.items())) or "none")
        + f", batch {r.batch_size}, context {r.context_tokens} tokens, headroom "
        f"{100 * r.mem_headroom:g}%, solver {r.solver}",
        f"model fingerprint {m.fingerprint[:12]}, topology {plan.topology.fingerprint[:12]}, "
        f"cost {plan.cost_model.fingerprint[:12]}, plan digest {plan.digest()[:12]}",
    ]

    lines += ["", "nodes:"]
    rows = []
    for n in sorted(plan.nodes, key=lambda n: (n.socket_id, n.node_id)):
        kind = "" if n.cpus else " (memory only)"
        rows.append([str(n.node_id), str(n.socket_id), format_ids(n.worker_ids),
                     (n.cpus or "-") + kind, str(threads_on_node(plan, n.node_id) or "-"),
                     human_bytes(n.bytes_homed), human_bytes(n.mem_capacity_bytes),
                     _pct(n.bytes_homed, n.mem_capacity_bytes),
                     format_seconds(n.predicted_read_s),
                     format_seconds(n.predicted_compute_s) + (" *" if n.bound == "compute"
                                                              else "")])
    lines += _table(["node", "socket", "workers", "cpus", "threads", "homed", "capacity",
                     "used", "read/token", "compute/token"], rows,
                    right={0, 1, 4, 5, 6, 7, 8, 9})

    lines += ["", "workers:"]
    rows = [[str(w.worker_id), str(w.node_id), w.cpus, str(w.num_threads),
             f"{w.mem_policy} node {w.mem_node_id}"] for w in plan.workers]
    lines += _table(["worker", "node", "cpus", "threads", "memory"], rows, right={0, 1, 3})

    co = plan.collectives
    lines += ["", f"collectives: {co.kind}, {_count(co.allreduces_per_token, 'all-reduce')} + "
              f"{_count(co.broadcasts_per_token, 'broadcast')} per token, shared segment "
              f"{human_bytes(co.segment_bytes)}"]
    if co.intra_node_groups:
        node_of = {w.worker_id: w.node_id for w in plan.workers}
        lines.append("  intra-node groups: " + " | ".join(
            f"node {node_of.get(g[0], '?')}: {format_ids(g)}" for g in co.intra_node_groups))
    lines.append("  inter-node leaders: " + (format_ids(co.inter_node_leaders)
                                             if co.inter_node_leaders else "none (one node)"))
    if co.choices:
        rows = [[c.phase, human_bytes(c.message_bytes), c.algorithm,
                 format_seconds(c.predicted_s)] for c in co.choices]
        lines += _table(["phase", "message", "algorithm", "predicted"], rows, right={1, 3})

    label = "prediction (nominal cost figures):" if pr.nominal else "prediction:"
    lines += ["", label,
              f"  {format_tps(pr.tokens_per_s)} tokens/s at batch {pr.batch_size}: "
              f"{format_seconds(pr.token_s)} per token = {roofline_text(pr)} + "
              f"collectives {format_seconds(pr.collective_s)} ({pr.collective_alpha_source} "
              f"alpha {format_seconds(pr.collective_alpha_s)} per call)",
              f"  lower bound {format_tps(pr.lower_bound_tokens_per_s)} tokens/s "
              f"({format_seconds(pr.lower_bound_token_s)} per token): plan reaches "
              f"{100 * pr.fraction_of_bound:.1f}%",
              f"  reads {human_bytes(pr.bytes_read_per_token)} per token, "
              f"{human_bytes(pr.cross_node_read_bytes_per_token)} of them cross-node"]
    if pr.baselines:
        rows = []
        for name, b in pr.baselines.items():
            ratio = f"{pr.tokens_per_s / b.tokens_per_s:.2f}x" if b.tokens_per_s else "-"
            rows.append([name, format_tps(b.tokens_per_s), ratio, "yes" if b.fits else "no",
                         " ".join(f"{k}:{v}" for k, v in sorted(b.workers_per_node.items())),
                         human_bytes(b.cross_node_read_bytes_per_token)])
        lines += _table(["baseline", "tokens/s", "plan is", "fits", "workers per node",
                         "cross-node/token"], rows, right={1, 2, 5})

    groups = remote_groups(plan)
    lines += ["", "non-local tensors:"]
    if not groups:
        lines.append("  none: every worker reads only its own memory node")
    for g in groups:
        per_token = (f"read {human_bytes(g.read_bytes_per_token)}/token"
                     if g.read_bytes_per_token else "a few rows read per token")
        lines.append(f"  node {g.reader_node_id} workers read from node {g.home_node_id}: "
                     f"{g.what} {g.noun} ({human_bytes(g.nbytes)} homed there, {per_token})")
    return "\n".join(lines)
