"""The server's ``/metrics``, in Prometheus' text format (``prometheus_client``, one registry
per server so that tests can run several in a process).

Request counts, the queue and the batch, output tokens and their rate, time to first token
and per output token as histograms, and the placement the workers measured: the share of
weight bytes found on their planned node (page audits) and the share of collective bytes
read across nodes. The rate is over a sliding window, so an idle server reads 0.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from numaplan.serve.scheduler import SchedulerObserver

#: Seconds over which ``numaplan_output_tokens_per_second`` is measured.
RATE_WINDOW_S = 10.0
#: Histogram buckets (seconds): a CPU's first token takes from milliseconds to many seconds.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

__all__ = ["CONTENT_TYPE", "RATE_WINDOW_S", "ServerMetrics"]


class ServerMetrics(SchedulerObserver):
    """Every figure ``/metrics`` shows; the scheduler reports tokens to it as they come."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("numaplan_requests", "HTTP requests answered, by endpoint and "
                                "status code", ["endpoint", "status"], registry=r)
        self.finished_reqs = Counter("numaplan_generations", "Generations ended, by reason "
                                     "(stop, length, cancelled, error)", ["reason"], registry=r)
        self.queue = Gauge("numaplan_queue_depth", "Requests waiting to join the batch",
                           registry=r)
        self.running = Gauge("numaplan_running_sequences", "Sequences in the running batch",
                             registry=r)
        self.tokens = Counter("numaplan_output_tokens", "Output tokens generated", registry=r)
        self.rate = Gauge("numaplan_output_tokens_per_second",
                          f"Output tokens per second over the last {RATE_WINDOW_S:g} s",
                          registry=r)
        self.ttft = Histogram("numaplan_time_to_first_token_seconds", "Time from a request's "
                              "arrival to its first token", buckets=TTFT_BUCKETS, registry=r)
        self.tpot = Histogram("numaplan_time_per_output_token_seconds", "Time between two "
                              "output tokens of a request", buckets=TPOT_BUCKETS, registry=r)
        self.weight_local = Gauge("numaplan_weight_bytes_on_planned_node_ratio", "Share of "
                                  "the weight bytes found on their planned node (page audit)",
                                  registry=r)
        self.worker_weights = Gauge("numaplan_worker_weight_bytes", "Weight bytes a worker "
                                    "reads, and those found on its planned node",
                                    ["worker", "node", "where"], registry=r)
        self.inter_node = Gauge("numaplan_collective_inter_node_ratio", "Share of the "
                                "collective's bytes read from another node's segment",
                                registry=r)
        self.collective_calls = Gauge("numaplan_collective_calls", "Collective calls of "
                                      "worker 0 since start", registry=r)
        self._stamps: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()

    # -- SchedulerObserver (the loop's thread) ------------------------------------------------
    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)
        self._token()

    def next_token(self, seconds: float) -> None:
        self.tpot.observe(seconds)
        self._token()

    def finished(self, reason: str) -> None:
        self.finished_reqs.labels(reason).inc()

    def _token(self) -> None:
        self.tokens.inc()
        with self._lock:
            self._stamps.append(time.monotonic())

    # -- the HTTP side ------------------------------------------------------------------------
    def answered(self, endpoint: str, status: int) -> None:
        """Count one HTTP answer."""
        self.requests.labels(endpoint, str(status)).inc()

    def render(self, *, queue_depth: int, running: int, stats: Any = None) -> bytes:
        """The text format, with the gauges read now.

        Parameters
        ----------
        queue_depth, running
            The scheduler's queue and batch.
        stats
            The runtime's :class:`~numaplan.runtime.stats.RuntimeStats` (``None``: placement
            gauges keep their last values).
        """
        now = time.monotonic()
        with self._lock:
            while self._stamps and self._stamps[0] < now - RATE_WINDOW_S:
                self._stamps.popleft()
            self.rate.set(len(self._stamps) / RATE_WINDOW_S)
        self.queue.set(queue_depth)
        self.running.set(running)
        if stats is not None:
            self.weight_local.set(stats.weight_local_percentage / 100.0)
            self.inter_node.set(stats.inter_node_percentage / 100.0)
            self.collective_calls.set(stats.collective_calls)
            for w in stats.workers:
                labels = (str(w.worker_id), str(w.node_id))
                self.worker_weights.labels(*labels, "all").set(w.weight_bytes)
                self.worker_weights.labels(*labels, "planned_node").set(
                    w.weight_bytes_on_planned_node)
        return generate_latest(self.registry)
