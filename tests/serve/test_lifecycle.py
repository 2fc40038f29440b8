"""A server's life around its requests: a client that leaves frees its sequence at once,
SIGTERM finishes the requests in flight before the workers stop, and a worker that dies fails
the requests in flight with 503 and stops the server with a non-zero exit, /dev/shm clean."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.serve.conftest import running_server

pytestmark = [pytest.mark.tvm, pytest.mark.slow]

#: A request that runs for a while: nearly the whole 256-token context of the small model.
LONG = {"prompt": [7], "max_tokens": 250}


def _metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=30).text
    return next((float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(name)), 0.0)


def _wait(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _in_threads(url: str, bodies: list[dict]) -> tuple[list[threading.Thread], list]:
    results: list = [None] * len(bodies)

    def ask(i: int) -> None:
        try:
            r = httpx.post(url + "/v1/completions", json=bodies[i], timeout=120)
            results[i] = (r.status_code, r.json())
        except httpx.HTTPError as exc:
            results[i] = (None, str(exc))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    return threads, results


def _running(url: str) -> int:
    return httpx.get(url + "/health", timeout=10).json()["running"]


def _taken(url: str, results: list) -> int:
    """Requests running, waiting or answered (a loaded machine may finish one before the
    last is sent)."""
    h = httpx.get(url + "/health", timeout=10).json()
    return h["running"] + h["queue_depth"] + sum(r is not None for r in results)


def test_a_client_that_leaves_is_cancelled_at_once(tiny_server):
    url = tiny_server.url
    before = _metric(url, 'numaplan_generations_total{reason="cancelled"}')
    with httpx.stream("POST", url + "/v1/completions", json=LONG | {"stream": True},
                      timeout=30) as r:
        first = next(ln for ln in r.iter_lines() if ln)
        assert json.loads(first.removeprefix("data: "))["choices"][0]["finish_reason"] is None
    # The connection is closed: the sequence leaves the batch at the next token boundary.
    _wait(lambda: _metric(url, 'numaplan_generations_total{reason="cancelled"}') == before + 1,
          10, "the cancellation")
    assert _running(url) == 0
    assert httpx.post(url + "/v1/completions", json={"prompt": [1], "max_tokens": 2},
                      timeout=30).status_code == 200


def test_sigterm_drains_requests_in_flight(text_model, text_libs, tmp_path):
    with running_server(text_model, text_libs(1), tmp_path) as server:
        threads, results = _in_threads(server.url, [LONG] * 3)
        # Each takes the whole KV cache (local mode: 256 tokens shared), so one runs and two
        # wait: SIGTERM once all three are in, and all three must be answered.
        _wait(lambda: _taken(server.url, results) >= 3, 60, "three requests taken")
        server.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(120)
        assert server.proc.wait(60) == 0, Path(server.log).read_text()[-2000:]
    for status, body in results:
        assert status == 200, results
        assert body["usage"]["completion_tokens"] == LONG["max_tokens"] or \
            body["choices"][0]["finish_reason"] == "stop"
    assert not server.shm_files()


def _children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out += [int(c) for c in f.read().split()]
    return out


def test_a_dead_worker_fails_requests_with_503_and_stops_the_server(text_model, text_libs,
                                                                    tmp_path):
    with running_server(text_model, text_libs(2), tmp_path) as server:
        workers = _children(server.proc.pid)
        assert workers, "worker 1 runs in a process of its own"
        threads, results = _in_threads(server.url, [LONG] * 8)
        _wait(lambda: _taken(server.url, results) >= 8, 60, "eight requests taken")
        os.kill(workers[0], signal.SIGKILL)
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "a request hangs"
        code = server.proc.wait(60)
        log = Path(server.log).read_text()
        assert code not in (0, None), log[-2000:]
        assert "worker 1" in log and "died" in log, log[-2000:]
    statuses = [s for s, _ in results]
    assert set(statuses) <= {200, 503}, results
    failed = [body for status, body in results if status == 503]
    assert failed and all("died" in b["error"]["message"] for b in failed)
    assert not server.shm_files()
