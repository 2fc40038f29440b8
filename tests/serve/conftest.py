"""Fixtures of the server tests: a small text model (a GGUF file written here, converted, with
a tokenizer and a chat template; random weights, so it is fast), its libraries, and a real
``numaplan serve`` subprocess on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from numaplan.cli.main import main

REPO = Path(__file__).resolve().parents[2]
#: How long a server may take to answer /health after its start (a loaded 2-core machine).
START_TIMEOUT_S = 120.0


@pytest.fixture(scope="session")
def text_model(tmp_path_factory):
    """A converted llama with a tokenizer, a ChatML template and a 256-token context."""
    pytest.importorskip("gguf")
    from numaplan.convert.convert import convert_gguf
    from tests.convert.test_convert import write_gguf

    root = tmp_path_factory.mktemp("serve-model")
    write_gguf(root / "m.gguf", "llama")
    convert_gguf(root / "m.gguf", root / "model", quantization="q0f32")
    return root / "model"


@pytest.fixture(scope="session")
def text_libs(text_model, tmp_path_factory):
    """``text_libs(W)`` -> the library of :func:`text_model` for W workers (built once)."""
    cache: dict[int, Path] = {}
    root = tmp_path_factory.mktemp("serve-libs")

    def get(w: int) -> Path:
        if w not in cache:
            out = root / f"tp{w}"
            extra = ["--oversubscribe"] if w > len(os.sched_getaffinity(0)) else []
            assert main(["compile", str(text_model), "--tp", str(w), "-o", str(out),
                         *extra]) == 0
            cache[w] = out / f"{text_model.name}-numa-llvm.so"
        return cache[w]

    return get


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running ``numaplan serve`` process."""

    proc: subprocess.Popen
    url: str
    log: Path

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, then wait; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"the server did not stop in {timeout_s} s:\n"
                                 f"{self.log.read_text()[-3000:]}") from None

    def shm_files(self) -> list[str]:
        return [f for f in os.listdir("/dev/shm") if f.startswith(f"numaplan-{self.proc.pid}-")]


@contextlib.contextmanager
def running_server(model: Path, lib: Path | None, tmp_path: Path, *args: str):
    """``numaplan serve`` started as a subprocess; stopped (SIGTERM) on exit."""
    import httpx

    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    cmd = [sys.executable, "-m", "numaplan.cli", "serve", str(model), "--port", str(port),
           *(["--lib", str(lib)] if lib else []), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"the server exited with {proc.returncode}:\n"
                                     f"{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{server.url}/health", timeout=2.0).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"no /health after {START_TIMEOUT_S} s:\n"
                                     f"{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield server
    finally:
        if proc.poll() is None:
            server.stop()


@pytest.fixture(scope="module")
def tiny_server(text_model, text_libs, tmp_path_factory):
    """One server on the small model (W=1, local mode: 4 sequences, queue 4) for the tests
    that leave it running."""
    with running_server(text_model, text_libs(1), tmp_path_factory.mktemp("srv"),
                        "--max-queue", "4") as server:
        yield server
