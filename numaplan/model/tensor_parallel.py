"""Which tensor-parallel degrees a model admits under MLC's sharding."""

from __future__ import annotations

from numaplan.errors import InfeasiblePlanError
from numaplan.model.quantization import get_quantization
from numaplan.model.workload import Workload


def tp_violations(workload: Workload, num_workers: int) -> tuple[str, ...]:
    """Every constraint ``num_workers`` breaks, as one sentence each (empty when valid).

    The constraints are MLC's: the degree divides the kv heads, the attention heads and the
    intermediate size; for group quantization the groups along each row-parallel input
    (``o_proj``: heads*head_dim, ``down_proj``: intermediate) split evenly, which also needs
    that input to be a whole number of groups; the ``KN`` layout cannot be sharded at all.
    """
    w = num_workers
    if isinstance(w, bool) or not isinstance(w, int) or w < 1:
        return (f"tensor_parallel_shards must be a positive integer, got {w!r}",)
    if w == 1:
        return ()
    found: list[str] = []
    quant = get_quantization(workload.quantization)
    if not quant.supports_tensor_parallel:
        found.append(f"quantization {quant.name} stores weights in the KN layout, which MLC "
                     "cannot shard (use the *_1 variant)")
    for name in ("num_key_value_heads", "num_attention_heads", "intermediate_size"):
        value = getattr(workload, name)
        if value % w:
            found.append(f"tensor_parallel_shards={w} does not divide {name}={value}")
    if quant.is_group_quant and quant.supports_tensor_parallel:
        group = quant.group_size
        inputs = (("o_proj input (num_attention_heads*head_dim)",
                   workload.num_attention_heads * workload.head_dim),
                  ("down_proj input (intermediate_size)", workload.intermediate_size))
        for what, in_features in inputs:
            if in_features % group:  # type: ignore[operator]
                found.append(f"the {what} of {in_features} is not a whole number of "
                             f"{group}-element groups, so it cannot be split among workers")
            elif (in_features // group) % w:  # type: ignore[operator]
                found.append(f"tensor_parallel_shards={w} does not divide the "
                             f"{in_features // group} quantization groups of the {what}")  # type: ignore[operator]
    if not found:
        # Anything the named constraints miss (an unusual architecture) still has to split.
        for t in workload.tensors:
            uneven = [s for s in t.shard_rule.segments if s % w]
            if uneven:
                found.append(f"tensor_parallel_shards={w} does not divide segment(s) {uneven} "
                             f"of {t.name} (dim {t.shard_rule.dim})")
                break
    return tuple(found)


def valid_tp_degrees(workload: Workload) -> tuple[int, ...]:
    """All tensor-parallel degrees the model admits, ascending (always includes 1).

    Examples
    --------
    Llama-3-8B q4f16_1 gives ``(1, 2, 4, 8)``.
    """
    kv = workload.num_key_value_heads
    return tuple(w for w in range(1, kv + 1) if kv % w == 0 and not tp_violations(workload, w))


def validate_tp(workload: Workload, num_workers: int) -> None:
    """Check that ``num_workers`` tensor-parallel workers can shard ``workload``.

    Parameters
    ----------
    workload
        The model.
    num_workers
        The tensor-parallel degree W.

    Raises
    ------
    InfeasiblePlanError
        Naming every violated constraint and listing the valid degrees, e.g.
        ``tensor_parallel_shards=3 does not divide num_key_value_heads=8; ...; valid values:
        1, 2, 4, 8``.
    """
    problems = tp_violations(workload, num_workers)
    if problems:
        valid = ", ".join(map(str, valid_tp_degrees(workload)))
        raise InfeasiblePlanError(f"{'; '.join(problems)}; valid values: {valid}")
