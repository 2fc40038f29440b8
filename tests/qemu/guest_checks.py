"""The checks the QEMU tier runs *inside* a multi-node guest, batched into one boot.

Run from the repository root inside a ``scripts/numa-vm`` guest whose output directory is
``OUT``::

    python -m tests.qemu.guest_checks all --model DIR --out OUT --tp W [--compile-on-host]

Nothing is asserted here: every step is timed and recorded as soon as it ends (a step that fails
or hangs does not hide the others), and ``test_numa_guest.py`` asserts on the host.

``OUT/results.json`` (this process):

``topology``
    ``numaplan topology --json`` (also written to ``OUT/topology.json``).
``probe``
    ``numaplan probe --quick --buffer-mib B -o OUT/cost.json --json``.
``prepare``
    Builds the collective's C kernel into the guest's cache before any worker needs it.
``compile``
    ``numaplan compile MODEL -o OUT/tpW --tp W`` and the same for ``--tp 1``. With
    ``--compile-on-host`` the guest asks the host to run it (``OUT/compile-request.json``, with
    ``--topology OUT/topology.json``: the plan is made for exactly the topology this guest
    reported) and waits for ``OUT/compile-done.json``; it probes meanwhile. Under TCG a compile
    in the guest costs ~2.5 min, on the host a few seconds.
``runtime``
    The exit status of the runtime process below.

``OUT/runtime.json`` (``python -m tests.qemu.guest_checks runtime``: one process, so that
``import tvm``, ~40 s under TCG, is paid once; started first, it imports TVM while the steps
above run and starts its sessions when ``OUT/runtime-go.json`` says so; rewritten after each
session):

``tp``
    What ``numaplan run MODEL --lib OUT/tpW/<name>-numa-llvm.so --plan OUT/tpW --prompt-ids ...
    --max-new-tokens N --json`` prints (``tokens``, ``result``, ``stats``), made by the same
    API calls, because the command has no option for the collective's start-up timeout (30 s),
    which workers importing TVM under TCG exceed.
``tp1``
    The ``--tp 1`` library, run like ``tp``.
``shared``
    The ``--shared-tp`` library (compiled with ``--oversubscribe``: several workers per node),
    run like ``tp``: one copy of the replicated tensors per node, shared by its workers.
``misplaced``
    ``RunOptions(inject_misplacement={1: node})`` with the ``--misplace-tp`` library (default
    W=2: each session starts W-1 worker processes that import TVM, ~40 s each under TCG):
    the stats.
``strict``
    The same with ``strict_placement=True``: what ``start()`` raised.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = "results.json"
RUNTIME = "runtime.json"
COMPILE_REQUEST = "compile-request.json"
COMPILE_DONE = "compile-done.json"
GO = "runtime-go.json"
#: Seconds a worker may take to reach the collective (the runtime default of 30 s is too short
#: for a process importing TVM under TCG).
COLLECTIVE_TIMEOUT_S = 600.0


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def numaplan_command() -> list[str]:
    """The installed ``numaplan`` console script next to this interpreter (else ``-m``).

    Returns
    -------
    list of str
        The argument vector prefix.
    """
    script = Path(sys.executable).with_name("numaplan")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "numaplan"]


def library_path(out: Path, model: Path, tp: int) -> Path:
    """Where ``numaplan compile MODEL -o OUT/tpW`` puts the library.

    Parameters
    ----------
    out
        The output directory.
    model
        The model directory (its name names the library).
    tp
        The tensor-parallel degree.

    Returns
    -------
    Path
        ``OUT/tpW/<name>-numa-llvm.so``.
    """
    return out / f"tp{tp}" / f"{model.name}-numa-llvm.so"


def cli_in_process(argv: list[str]) -> tuple[int, str, str]:
    """Run ``numaplan ARGV`` through ``numaplan.cli.main.main`` in this process.

    Parameters
    ----------
    argv
        The arguments after ``numaplan``.

    Returns
    -------
    tuple of (int, str, str)
        Exit code, stdout, stderr.
    """
    from numaplan.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def run_process(argv: list[str], timeout_s: float) -> dict[str, Any]:
    """Run a command, capture its output, never raise.

    Parameters
    ----------
    argv
        The command.
    timeout_s
        Killed after this many seconds (``rc`` is then None and ``timeout`` True).

    Returns
    -------
    dict
        ``argv``, ``rc``, ``stdout``, ``stderr`` (tail), ``timeout``.
    """
    def text(b: Any) -> str:
        return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")

    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
        return {"argv": argv, "rc": p.returncode, "stdout": p.stdout,
                "stderr": _tail(p.stderr), "timeout": False}
    except subprocess.TimeoutExpired as exc:
        return {"argv": argv, "rc": None, "stdout": text(exc.stdout),
                "stderr": _tail(text(exc.stderr)), "timeout": True}


class Recorder:
    """Step results, rewritten to a JSON file after every step.

    Parameters
    ----------
    path
        The results file.
    header
        Fields recorded once.
    """

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.doc: dict[str, Any] = {**header, "steps": {}}
        self.save()

    def save(self) -> None:
        """Write the document (atomically)."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.doc, indent=2, sort_keys=True, default=str) + "\n")
        os.replace(tmp, self.path)

    def step(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run one step and record ``{ok, seconds, error, ...its data}``.

        Parameters
        ----------
        name
            The step's key in ``steps``.
        fn
            Returns the step's data; an exception marks the step failed (traceback kept).

        Returns
        -------
        dict
            The recorded entry.
        """
        t0 = time.monotonic()
        try:
            rec = {"ok": True, "error": None, **fn()}
        except Exception as exc:
            rec = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                   "traceback": _tail(traceback.format_exc())}
        rec["seconds"] = round(time.monotonic() - t0, 2)
        self.doc["steps"][name] = rec
        self.save()
        state = "ok" if rec["ok"] else "FAILED " + rec["error"]
        print(f"guest_checks: {name}: {state} ({rec['seconds']} s)", flush=True)
        return rec


def kernel_view() -> dict[str, Any]:
    """The guest's nodes as the kernel reports them (independent of numaplan).

    Returns
    -------
    dict
        ``nodes`` (id -> cpulist, distance row, MemTotal and MemFree bytes), ``nproc``,
        ``uptime_s``.
    """
    nodes = {}
    for d in sorted(Path("/sys/devices/system/node").glob("node[0-9]*")):
        total_kb = int((d / "meminfo").read_text().split("MemTotal:")[1].split()[0])
        free_kb = int((d / "meminfo").read_text().split("MemFree:")[1].split()[0])
        nodes[d.name[4:]] = {"cpulist": (d / "cpulist").read_text().strip(),
                             "distance": [int(x) for x in (d / "distance").read_text().split()],
                             "mem_total_bytes": total_kb * 1024,
                             "mem_free_bytes": free_kb * 1024}
    return {"nodes": nodes, "nproc": os.cpu_count(),
            "uptime_s": float(Path("/proc/uptime").read_text().split()[0])}


def _wait_for(path: Path, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while not path.is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {path.name} from the host after {timeout_s:g} s")
        time.sleep(0.5)
    return json.loads(path.read_text())


def cmd_all(args: argparse.Namespace) -> int:
    """The ``all`` subcommand: every step, in order, into ``OUT/results.json``."""
    out = Path(args.out).resolve()
    model = Path(args.model).resolve()
    degrees = sorted({w for w in (args.tp, args.misplace_tp, args.shared_tp, 1) if w >= 1},
                     reverse=True)
    # W = shared_tp puts several workers on a node: on one vCPU per node that needs
    # --oversubscribe (correctness, not speed, is checked).
    oversubscribe = [args.shared_tp] if args.shared_tp else []
    rec = Recorder(out / RESULTS, {"tp": args.tp, "model_dir": str(model),
                                   "compile_on_host": args.compile_on_host,
                                   "kernel": kernel_view()})

    def topology() -> dict[str, Any]:
        rc, stdout, stderr = cli_in_process(["topology", "--json"])
        if rc != 0:
            raise RuntimeError(f"numaplan topology exited {rc}: {_tail(stderr, 5)}")
        (out / "topology.json").write_text(stdout)
        return {"topology": json.loads(stdout)}

    def probe() -> dict[str, Any]:
        cost = out / "cost.json"
        rc, stdout, stderr = cli_in_process(
            ["probe", "--quick", "--buffer-mib", str(args.buffer_mib), "-o", str(cost),
             "--json"])
        if rc != 0:
            raise RuntimeError(f"numaplan probe exited {rc}: {_tail(stderr, 5)}")
        return {"cost": json.loads(cost.read_text()), "stdout": json.loads(stdout),
                "progress": _tail(stderr, 40)}

    def plans(runs: dict[str, Any]) -> dict[str, Any]:
        bad = {w: r for w, r in runs.items() if r.get("rc") != 0}
        if bad:
            raise RuntimeError("numaplan compile failed: " + "; ".join(
                f"--tp {w}: exit {r.get('rc')}: {_tail(r.get('stderr', ''), 5)}"
                for w, r in bad.items()))
        return {w: json.loads((out / f"tp{w}" / "numa-plan.json").read_text())["workers"]
                for w in runs}

    def compile_in_guest() -> dict[str, Any]:
        runs = {}
        for w in degrees:
            t0 = time.monotonic()
            res = run_process([*numaplan_command(), "compile", str(model), "-o",
                               str(out / f"tp{w}"), "--tp", str(w),
                               *(["--oversubscribe"] if w in oversubscribe else [])],
                              args.step_timeout)
            runs[str(w)] = {k: res[k] for k in ("rc", "timeout", "stdout", "stderr")}
            runs[str(w)]["seconds"] = round(time.monotonic() - t0, 2)
        return {"where": "guest", "runs": runs, "plans": plans(runs)}

    def compile_on_host() -> dict[str, Any]:
        runs = _wait_for(out / COMPILE_DONE, args.step_timeout)["runs"]
        return {"where": "host", "runs": runs, "plans": plans(runs)}

    def prepare() -> dict[str, Any]:
        # Build the collective's C kernel once now: with a cold cache every worker of the
        # first session compiles it at the same time (~30 s each under TCG).
        from numaplan.runtime.ccl.kernel import compile_library

        return {"ccl_library": str(compile_library())}

    # The runtime process starts now and imports TVM (~40 s under TCG) while the steps below
    # run; it waits for GO before its first session.
    go = out / GO
    go.unlink(missing_ok=True)
    t_runtime = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.qemu.guest_checks", "runtime", "--model", str(model),
         "--out", str(out), "--tp", str(args.tp), "--misplace-tp", str(args.misplace_tp),
         "--shared-tp", str(args.shared_tp), "--prompt-ids", args.prompt_ids,
         "--max-new-tokens", str(args.max_new_tokens),
         "--wait-for", str(go), "--wait-timeout", str(args.step_timeout)])  # output streamed
    try:
        topo = rec.step("topology", topology)
        if args.compile_on_host and topo["ok"]:
            tmp = out / (COMPILE_REQUEST + ".tmp")  # the host polls: never half a file
            tmp.write_text(json.dumps({"model": str(model),
                                       "topology": str(out / "topology.json"),
                                       "degrees": degrees,
                                       "oversubscribe": oversubscribe}) + "\n")
            os.replace(tmp, out / COMPILE_REQUEST)
        rec.step("probe", probe)
        prepared = rec.step("prepare", prepare)
        compiled = rec.step("compile", compile_on_host if args.compile_on_host and topo["ok"]
                            else compile_in_guest)
        ok = compiled["ok"] and prepared["ok"]
        go.write_text(json.dumps({"go": ok}) + "\n")

        def runtime() -> dict[str, Any]:
            try:
                rc = child.wait(args.step_timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                raise RuntimeError("the runtime process timed out (its output is in the "
                                   "guest's output)") from None
            if rc != 0:
                raise RuntimeError(f"the runtime process exited {rc} (its output is in the "
                                   f"guest's output)")
            return {"rc": rc, "seconds_since_start": round(time.monotonic() - t_runtime, 2)}

        if ok:
            rec.step("runtime", runtime)
    finally:
        if child.poll() is None:
            go.write_text(json.dumps({"go": False}) + "\n")
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(30)
            child.kill()
    rec.doc["kernel_end"] = kernel_view()
    rec.save()
    return 0


def cmd_runtime(args: argparse.Namespace) -> int:
    """The ``runtime`` subcommand: the sessions, into ``OUT/runtime.json``."""
    from numaplan.errors import PlacementError
    from numaplan.plan.io import read_plan
    from numaplan.runtime.session import NumaRuntime, RunOptions

    out = Path(args.out).resolve()
    model = Path(args.model).resolve()
    ids = [int(t) for t in args.prompt_ids.split(",")]
    if args.wait_for:
        import tvm  # noqa: F401  (the slow part of the first session, done while waiting)

        if not _wait_for(Path(args.wait_for), args.wait_timeout).get("go"):
            return 0
    rec = Recorder(out / RUNTIME, {"prompt_ids": ids, "max_new_tokens": args.max_new_tokens})

    def generate(tp: int) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            opts = RunOptions(collective_timeout_s=COLLECTIVE_TIMEOUT_S)
            t = [time.monotonic()]
            with NumaRuntime(model, library_path(out, model, tp), plan_path=out / f"tp{tp}",
                             options=opts) as rt:
                t.append(time.monotonic())
                res = rt.generate(ids, args.max_new_tokens)
                stats = rt.stats()
                t.append(time.monotonic())
            t.append(time.monotonic())
            # the document `numaplan run --json` prints
            return {"doc": {"tokens": list(res.tokens),
                            "result": res.model_dump(exclude={"logits"}),
                            "stats": stats.model_dump()},
                    "phases_s": {"start": round(t[1] - t[0], 2),
                                 "generate_and_stats": round(t[2] - t[1], 2),
                                 "close": round(t[3] - t[2], 2)}}
        return run

    rec.step("tp", generate(args.tp))
    if args.tp != 1:
        rec.step("tp1", generate(1))
    if args.shared_tp:
        rec.step("shared", generate(args.shared_tp))
    if args.misplace_tp >= 2:
        mtp = args.misplace_tp
        planned = {w.worker_id: w.node_id for w in read_plan(out / f"tp{mtp}").workers}
        others = [int(n) for n in kernel_view()["nodes"] if int(n) != planned[1]]
        wrong = 0 if planned[1] != 0 or not others else others[0]
        inject = {1: wrong}
        lib = library_path(out, model, mtp)

        def misplaced() -> dict[str, Any]:
            opts = RunOptions(inject_misplacement=inject,
                              collective_timeout_s=COLLECTIVE_TIMEOUT_S)
            with NumaRuntime(model, lib, options=opts) as rt:
                stats = rt.stats()
            return {"tp": mtp, "planned_nodes": planned,
                    "injected": {"worker": 1, "planned_node": planned[1], "bound_to": wrong},
                    "stats": stats.model_dump()}

        def strict() -> dict[str, Any]:
            opts = RunOptions(strict_placement=True, inject_misplacement=inject,
                              collective_timeout_s=COLLECTIVE_TIMEOUT_S)
            rt = NumaRuntime(model, lib, options=opts)
            try:
                rt.start()
                return {"raised": None}
            except Exception as exc:
                return {"raised": type(exc).__name__, "message": str(exc),
                        "is_placement_error": isinstance(exc, PlacementError)}
            finally:
                rt.close()

        rec.step("misplaced", misplaced)
        rec.step("strict", strict)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line of the guest driver.

    Parameters
    ----------
    argv
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0: failures are recorded in the JSON files, not signalled by the exit status.
    """
    p = argparse.ArgumentParser(prog="python -m tests.qemu.guest_checks")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("all", "runtime"):
        s = sub.add_parser(name)
        s.add_argument("--model", required=True)
        s.add_argument("--out", required=True)
        s.add_argument("--tp", type=int, required=True)
        s.add_argument("--misplace-tp", type=int, default=2,
                       help="W of the fault-injection sessions (0: none)")
        s.add_argument("--shared-tp", type=int, default=0,
                       help="W of a session with several workers per node, which share one "
                            "copy of the replicated tensors per node (0: none)")
        s.add_argument("--prompt-ids", default="1,2,3,4")
        s.add_argument("--max-new-tokens", type=int, default=6)
        if name == "runtime":
            s.add_argument("--wait-for", help="start the sessions when this JSON file says go")
            s.add_argument("--wait-timeout", type=float, default=1200.0)
        if name == "all":
            s.add_argument("--buffer-mib", type=int, default=8)
            s.add_argument("--step-timeout", type=float, default=1200.0)
            s.add_argument("--compile-on-host", action="store_true")
    args = p.parse_args(argv)
    return cmd_all(args) if args.cmd == "all" else cmd_runtime(args)


if __name__ == "__main__":
    sys.exit(main())
