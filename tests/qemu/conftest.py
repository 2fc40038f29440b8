"""Fixtures of the QEMU tier: boot each multi-node guest once, run ``guest_checks`` inside it.

The tier needs ``qemu-system-x86_64`` and the VM cache (``scripts/numa-vm setup``).
``NUMAPLAN_QEMU`` decides what happens without them: unset, the tier is skipped; ``1`` (CI), a
missing QEMU or cache is a failure; ``0`` skips the tier always.

Every guest selected by the collected tests is booted at once, when the first test needs one
(single-threaded TCG uses one host core per guest, so the 2-node and 4-node guests run side by
side). The example model directory and the reference tokens are made on the host first. A host
thread per guest answers the guest's compile request (``guest_checks --compile-on-host``):
``numaplan compile --topology`` with the topology the guest itself reported, so the plan is made
for exactly that machine, in seconds instead of minutes of emulation
(``NUMAPLAN_QEMU_COMPILE=guest`` compiles inside the guest instead).
Other knobs: ``NUMAPLAN_QEMU_TIMEOUT`` (seconds per boot, default 1500), ``NUMAPLAN_QEMU_KEEP``
(a directory to keep the guests' output in).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
NUMA_VM = ROOT / "scripts" / "numa-vm"
PROMPT = (1, 2, 3, 4)
MAX_NEW_TOKENS = 6
#: The library target for host compiles: the guest's TCG CPU (-cpu max) has every
#: x86-64-v3 feature (AVX2, FMA, BMI2, F16C, MOVBE) but not necessarily all of the host's.
GUEST_TARGET = '{"kind": "llvm", "mcpu": "x86-64-v3"}'


@dataclass(frozen=True)
class GuestSpec:
    """A guest of the tier: its NUMA shape and the tensor-parallel degrees run in it.

    ``tp`` (= nodes, one worker per node) is checked for placement and tokens, as is W=1;
    the fault-injection sessions use ``misplace_tp`` workers: every session starts W-1 worker
    processes that each import TVM (~30-100 s under TCG), so W=2 keeps the 4-node guest's
    two extra sessions at one worker process each instead of three. ``shared_tp`` (0: none)
    runs W workers with several per node, which share one copy of the replicated tensors per
    node (one guest is enough: the 2-node one, whose run is shorter).
    """

    nodes: int
    cpus_per_node: int
    mem_per_node_mib: int
    distances: tuple[tuple[int, ...], ...]
    misplace_tp: int = 2
    shared_tp: int = 0

    @property
    def tp(self) -> int:
        """W = the number of nodes (one worker per node)."""
        return self.nodes

    def distances_arg(self) -> str:
        """The matrix as ``numa-vm --distances``."""
        return " ".join(f"{i},{j},{self.distances[i][j]}" for i in range(self.nodes)
                        for j in range(i + 1, self.nodes))

    def cpus_of(self, node: int) -> list[int]:
        """The vCPUs QEMU gives ``node``."""
        return list(range(node * self.cpus_per_node, (node + 1) * self.cpus_per_node))


#: Two sockets (SLIT 21); two sockets of two sub-NUMA clusters (16 inside a pair, 32 across).
GUESTS = {
    2: GuestSpec(2, 1, 768, ((10, 21), (21, 10)), shared_tp=4),
    4: GuestSpec(4, 1, 768, ((10, 16, 32, 32), (16, 10, 32, 32), (32, 32, 10, 16),
                             (32, 32, 16, 10))),
}


def _vm_status() -> tuple[bool, str]:
    try:
        p = subprocess.run([sys.executable, str(NUMA_VM), "status"], capture_output=True,
                           text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"scripts/numa-vm status failed: {exc}"
    return p.returncode == 0, (p.stdout + p.stderr).strip()


@pytest.fixture(scope="session", autouse=True)
def _qemu_available() -> None:
    """Skip (or, with NUMAPLAN_QEMU=1, fail) the tier when QEMU or the VM cache is missing."""
    mode = os.environ.get("NUMAPLAN_QEMU", "")
    if mode == "0":
        pytest.skip("NUMAPLAN_QEMU=0")
    ready, detail = _vm_status()
    if ready:
        return
    msg = "QEMU tier unavailable: " + detail.replace("\n", "; ")
    if mode == "1":
        pytest.fail(msg + " (NUMAPLAN_QEMU=1: the tier is required)", pytrace=False)
    pytest.skip(msg)


def _guest_pythonpath() -> str:
    """``tests/qemu/hide_torch`` first (see its docstring), then the host's PYTHONPATH."""
    return os.pathsep.join(p for p in (str(Path(__file__).parent / "hide_torch"),
                                       os.environ.get("PYTHONPATH", "")) if p)


def _numaplan() -> list[str]:
    script = Path(sys.executable).with_name("numaplan")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "numaplan"]


@dataclass
class GuestRun:
    """One boot of one :class:`GuestSpec`, running ``guest_checks all``, and its results."""

    spec: GuestSpec
    out: Path
    model: Path
    timeout_s: float
    compile_on_host: bool
    proc: subprocess.Popen | None = None
    started: float = 0.0
    wall_s: float | None = None
    rc: int | None = None
    host_compile: dict[str, Any] = field(default_factory=dict)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def log_path(self) -> Path:
        """What numa-vm printed (the guest's output and numa-vm's own lines)."""
        return self.out.with_suffix(".log")

    def start(self) -> None:
        """Boot the guest in the background (and the host compile thread)."""
        self.out.mkdir(parents=True, exist_ok=True)
        s = self.spec
        argv = [sys.executable, str(NUMA_VM), "run", "--nodes", str(s.nodes),
                "--cpus-per-node", str(s.cpus_per_node), "--mem-per-node",
                str(s.mem_per_node_mib), "--distances", s.distances_arg(),
                "--timeout", str(self.timeout_s), "--out", str(self.out),
                "--env", f"PYTHONPATH={_guest_pythonpath()}",
                "--env", "NUMAPLAN_CCL_PORTABLE=1", "--",
                sys.executable, "-m", "tests.qemu.guest_checks", "all",
                "--model", str(self.model), "--out", str(self.out), "--tp", str(s.tp),
                "--misplace-tp", str(s.misplace_tp), "--shared-tp", str(s.shared_tp),
                "--prompt-ids", ",".join(map(str, PROMPT)),
                "--max-new-tokens", str(MAX_NEW_TOKENS)]
        if self.compile_on_host:
            argv.append("--compile-on-host")
        self.started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)
        if self.compile_on_host:
            self._thread = threading.Thread(target=self._serve_compile, daemon=True,
                                            name=f"compile-{s.nodes}n")
            self._thread.start()

    def _serve_compile(self) -> None:
        """Wait for the guest's compile request, compile on the host, answer (always: an
        error is an answer too, so the guest never waits in vain)."""
        from tests.qemu.guest_checks import COMPILE_DONE, COMPILE_REQUEST

        request = self.out / COMPILE_REQUEST
        while not request.is_file():
            if self.proc is None or self.proc.poll() is not None:
                return
            time.sleep(0.25)
        runs: dict[str, Any] = {}
        try:
            req = json.loads(request.read_text())
            for w in req["degrees"]:
                t0 = time.monotonic()
                over = ["--oversubscribe"] if w in req.get("oversubscribe", []) else []
                p = subprocess.run([*_numaplan(), "compile", req["model"], "-o",
                                    str(self.out / f"tp{w}"), "--tp", str(w), *over,
                                    "--topology", req["topology"], "--target", GUEST_TARGET],
                                   cwd=ROOT, capture_output=True, text=True, timeout=600)
                runs[str(w)] = {"rc": p.returncode, "stdout": p.stdout,
                                "stderr": p.stderr[-4000:],
                                "seconds": round(time.monotonic() - t0, 2)}
        except Exception as exc:  # reported to the guest, and so to the test
            runs["host"] = {"rc": None, "stderr": f"host compile: {type(exc).__name__}: {exc}"}
        self.host_compile = runs
        tmp = self.out / (COMPILE_DONE + ".tmp")
        tmp.write_text(json.dumps({"runs": runs}) + "\n")
        tmp.replace(self.out / COMPILE_DONE)

    def wait(self) -> None:
        """Wait for the boot to end (numa-vm enforces the timeout; this waits a little more)."""
        with self._lock:
            if self.rc is not None or self.proc is None:
                return
            try:
                self.rc = self.proc.wait(self.timeout_s + 60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.rc = self.proc.wait()
            self.wall_s = round(time.monotonic() - self.started, 1)
            if self._thread is not None:
                self._thread.join(5)

    def stop(self) -> None:
        """Stop a boot still running (numa-vm stops QEMU on SIGTERM)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def log_tail(self, lines: int = 60) -> str:
        """The end of numa-vm's output, for failure messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def doc(self, name: str) -> dict[str, Any]:
        """``results.json`` or ``runtime.json`` of the finished boot (empty when missing)."""
        self.wait()
        try:
            return json.loads((self.out / name).read_text())
        except (OSError, ValueError):
            return {}

    def step(self, name: str, *, runtime: bool = False) -> dict[str, Any]:
        """One recorded step; fails the test, with the guest's output, when it is missing or
        failed.

        Parameters
        ----------
        name
            The step name (see ``guest_checks``).
        runtime
            Look in ``runtime.json`` instead of ``results.json``.

        Returns
        -------
        dict
            The step's record.
        """
        from tests.qemu.guest_checks import RESULTS, RUNTIME

        steps = self.doc(RUNTIME if runtime else RESULTS).get("steps", {})
        rec = steps.get(name)
        where = f"{self.spec.nodes}-node guest ({self.out})"
        if rec is None:
            context = ""
            if runtime:
                rt = self.doc(RESULTS).get("steps", {}).get("runtime")
                context = f"\nruntime process: {json.dumps(rt, indent=1)[:3000]}"
            pytest.fail(f"step {name!r} did not run in the {where}; numa-vm exit status "
                        f"{self.rc} after {self.wall_s} s{context}\n--- numa-vm output ---\n"
                        f"{self.log_tail()}", pytrace=False)
        if not rec.get("ok"):
            pytest.fail(f"step {name!r} failed in the {where}: {rec.get('error')}\n"
                        f"{rec.get('traceback', '')}", pytrace=False)
        return rec


@pytest.fixture(scope="session")
def qemu_model(tmp_path_factory) -> tuple[Path, list[int]]:
    """The example model directory (built on the host, seen read-only by the guests) and the
    single-process reference tokens for the tier's prompt."""
    root = tmp_path_factory.mktemp("qemu-model")
    model = root / "tiny-llama"
    subprocess.run([sys.executable, "-m", "numaplan.tiny_llama.build", str(model),
                    "--size", "default"], cwd=ROOT, check=True, capture_output=True)
    from numaplan.model.reference import Reference

    _, tokens = Reference(model).generate(list(PROMPT), MAX_NEW_TOKENS - 1)
    return model, tokens


@pytest.fixture(scope="session")
def guests(request, qemu_model, tmp_path_factory):
    """``guests[n]``: the :class:`GuestRun` of the ``n``-node guest. Every guest a collected
    test asks for (``@pytest.mark.parametrize("nodes", ...)``) is booted at once."""
    wanted = sorted({item.callspec.params["nodes"] for item in request.session.items
                     if hasattr(item, "callspec") and "nodes" in item.callspec.params
                     and item.path.parent == Path(__file__).parent})
    keep = os.environ.get("NUMAPLAN_QEMU_KEEP")
    base = Path(keep).resolve() if keep else tmp_path_factory.mktemp("qemu-guests")
    timeout = float(os.environ.get("NUMAPLAN_QEMU_TIMEOUT", "1500"))
    on_host = os.environ.get("NUMAPLAN_QEMU_COMPILE", "host") != "guest"
    # The collective's C kernel, built here in a second instead of in every guest (a minute of
    # emulated gcc): the portable build, whose cache key the guests' CPU does not change; the
    # guests see this cache through their read-only view of the host's file system.
    from numaplan.runtime.ccl.kernel import compile_library

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NUMAPLAN_CCL_PORTABLE", "1")  # the guests get it with --env
        compile_library()
    runs = {}
    for n in wanted:
        out = base / f"guest-{n}n"
        if out.exists():
            shutil.rmtree(out)
        runs[n] = GuestRun(GUESTS[n], out, qemu_model[0], timeout, on_host)
        runs[n].start()
    yield runs
    for r in runs.values():
        r.stop()
        r.wait()
        print(f"\nqemu tier: {r.spec.nodes}-node guest: numa-vm exit status {r.rc}, "
              f"{r.wall_s} s wall, output in {r.out}", file=sys.stderr)
