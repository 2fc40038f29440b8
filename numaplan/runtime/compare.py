"""The plan's predicted time per decode token next to what the workers measured.

The plan predicts ``max(read, compute) + collectives`` per token (:mod:`numaplan.plan.predict`);
a run measures the whole step and worker 0's time inside collectives, so the node time (reads
and products, which overlap and cannot be told apart from outside the kernels) is measured as
their difference. Each part gets a ratio measured / predicted: above 1, the machine was slower
than the model said.
"""

from __future__ import annotations

from numaplan._base import Frozen
from numaplan.plan.schema import Plan
from numaplan.runtime.stats import RuntimeStats


class PredictionCheck(Frozen):
    """Predicted and measured seconds per decode token, part by part (``None``: not known).

    Attributes
    ----------
    predicted_token_s, measured_token_s
        The whole step.
    predicted_node_s, measured_node_s
        Reads and products: the plan's ``max(read_s, compute_s)``, the step minus collectives.
    predicted_read_s, predicted_compute_s
        The roofline's two ceilings (``compute`` 0 without a compute term).
    predicted_collective_s, measured_collective_s
        All-reduces and the broadcast.
    bound
        Which ceiling the prediction says binds (``read``, ``compute``).
    compute_source
        The plan's compute term source (``None``: memory reads only).
    context_tokens, batch_size
        What the plan priced (the KV cache read per token grows with the context).
    """

    predicted_token_s: float
    measured_token_s: float | None
    predicted_node_s: float
    measured_node_s: float | None
    predicted_read_s: float
    predicted_compute_s: float
    predicted_collective_s: float
    measured_collective_s: float | None
    bound: str
    compute_source: str | None
    context_tokens: int
    batch_size: int

    @property
    def token_ratio(self) -> float | None:
        """Measured / predicted time per token."""
        return _ratio(self.measured_token_s, self.predicted_token_s)


def _ratio(measured: float | None, predicted: float) -> float | None:
    return measured / predicted if measured is not None and predicted > 0 else None


def compare_prediction(plan: Plan, stats: RuntimeStats) -> PredictionCheck:
    """The plan's prediction next to a run's measurements.

    Parameters
    ----------
    plan
        The plan the run used.
    stats
        The run's statistics (:meth:`numaplan.runtime.session.NumaRuntime.stats`).

    Returns
    -------
    PredictionCheck
    """
    pr = plan.prediction
    measured = stats.decode_s_per_step
    coll = stats.collective_s_per_step
    if plan.request.tensor_parallel_shards == 1 and measured is not None:
        coll = 0.0  # one worker: no collective is called
    node = None if measured is None or coll is None else max(measured - coll, 0.0)
    return PredictionCheck(
        predicted_token_s=pr.token_s, measured_token_s=measured,
        predicted_node_s=max(pr.read_s, pr.compute_s), measured_node_s=node,
        predicted_read_s=pr.read_s, predicted_compute_s=pr.compute_s,
        predicted_collective_s=pr.collective_s, measured_collective_s=coll,
        bound="compute" if pr.compute_s > pr.read_s else "read",
        compute_source=pr.compute_source, context_tokens=plan.request.context_tokens,
        batch_size=pr.batch_size)


def render_prediction_check(c: PredictionCheck) -> str:
    """Lines for ``numaplan run --stats``: predicted | measured | ratio per part."""

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1e3:.3f} ms"

    def row(what: str, pred: float, meas: float | None) -> str:
        r = _ratio(meas, pred)
        return f"  {what:<13} {ms(pred):>12} {ms(meas):>12} {'-' if r is None else f'{r:.2f}':>9}"

    term = (f"roofline, compute from {c.compute_source}" if c.compute_source else
            "no compute term: the cost model has no kernel figures, memory reads only")
    lines = [f"prediction vs measurement per token ({term}; plan priced batch {c.batch_size}, "
             f"context {c.context_tokens} tokens):",
             f"  {'part':<13} {'predicted':>12} {'measured':>12} {'meas/pred':>9}",
             row("step", c.predicted_token_s, c.measured_token_s),
             row(f"node ({c.bound})", c.predicted_node_s, c.measured_node_s),
             f"  {'  read':<13} {ms(c.predicted_read_s):>12} {'-':>12} {'-':>9}",
             f"  {'  compute':<13} {ms(c.predicted_compute_s):>12} {'-':>12} {'-':>9}",
             row("collectives", c.predicted_collective_s, c.measured_collective_s)]
    return "\n".join(lines)
