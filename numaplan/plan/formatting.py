"""How numaplan writes numbers, ids and sets of tensors for people.

Shared by every text numaplan prints (the plan table, the plan diff, the picture's labels, the
command line's summaries), so a size or a rate reads the same everywhere.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

from numaplan.model.roles import Role
from numaplan.plan.schema import PlanPrediction, PlanTensor

#: Runs of layers shown per group of tensors before "... and N more".
MAX_RUNS = 4
_ROLE_ORDER = {str(r): i for i, r in enumerate(Role)}


def human_bytes(n: int | float | None) -> str:
    """``4.6 GiB`` style sizes (``?`` when unknown); negative values keep their sign."""
    if n is None:
        return "?"
    sign = "-" if n < 0 else ""
    value = float(abs(n))
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return sign + (f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}")
        value /= 1024
    raise AssertionError("unreachable")


def format_seconds(s: float | None) -> str:
    """A duration in the unit that keeps it readable (``17.078 ms``, ``4.25 us``)."""
    if s is None:
        return "-"
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    return f"{s * 1e6:.2f} us"


def roofline_text(pr: PlanPrediction) -> str:
    """``read 1.234 ms | compute 2.345 ms (binds)`` or, without a compute term, ``read 1.234 ms
    (no compute term: ...)``: what the predicted node time is made of."""
    if pr.compute_source is None:
        return f"read {pr.read_s * 1e3:.3f} ms (no compute term: the cost model has no kernel " \
               "figures, memory reads only)"
    binds = "compute" if pr.compute_s > pr.read_s else "read"
    return (f"max(read {pr.read_s * 1e3:.3f} ms, compute {pr.compute_s * 1e3:.3f} ms): {binds} "
            f"binds")


def format_tps(tokens_per_s: float) -> str:
    """Tokens per second as every report writes them (two decimals).

    Examples
    --------
    >>> format_tps(17.0784)
    '17.08'
    """
    return f"{tokens_per_s:.2f}"


def format_ids(ids: Iterable[int]) -> str:
    """Compact id list: ``0-3,7`` (``-`` when empty).

    Examples
    --------
    >>> format_ids([0, 1, 2, 3, 7])
    '0-3,7'
    >>> format_ids([])
    '-'
    """
    xs = sorted(set(ids))
    if not xs:
        return "-"
    parts = []
    start = prev = xs[0]
    for x in [*xs[1:], None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if x is not None:
            start = prev = x
    return ",".join(parts)


def _roles(roles: Iterable[str]) -> str:
    return "/".join(sorted(set(roles), key=lambda r: (_ROLE_ORDER.get(r, 99), r)))


def describe_tensors(tensors: Sequence[PlanTensor], *, max_runs: int = MAX_RUNS) -> str:
    """Name a set of tensors by runs of layers with the same roles.

    Parameters
    ----------
    tensors
        Tensors of one plan.
    max_runs
        Runs shown before ``... and N more``.

    Returns
    -------
    str
        e.g. ``"layer 59 mlp_out, layers 60-79 attn_qkv/attn_out/mlp_in/mlp_out, lm_head/norm"``.
    """
    by_layer: dict[int, set[str]] = defaultdict(set)
    other: set[str] = set()
    for t in tensors:
        if t.layer is None:
            other.add(t.role)
        else:
            by_layer[t.layer].add(t.role)
    runs: list[tuple[int, int, frozenset[str]]] = []
    for layer in sorted(by_layer):
        roles = frozenset(by_layer[layer])
        if runs and runs[-1][1] == layer - 1 and runs[-1][2] == roles:
            runs[-1] = (runs[-1][0], layer, roles)
        else:
            runs.append((layer, layer, roles))
    parts = [(f"layer {a}" if a == b else f"layers {a}-{b}") + f" {_roles(roles)}"
             for a, b, roles in runs]
    if len(parts) > max_runs:
        parts = [*parts[:max_runs - 1], f"... and {len(parts) - max_runs + 1} more layer runs"]
    if other:
        parts.append("top-level " + _roles(other))
    return ", ".join(parts) or "no tensors"
