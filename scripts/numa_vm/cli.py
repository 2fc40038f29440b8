"""The ``scripts/numa-vm`` command line.

Usage::

    numa-vm setup [--force]          install QEMU if missing, fetch kernel + busybox, build the
                                     initramfs (idempotent)
    numa-vm status                   is everything in place? (exit 0 yes, 1 no)
    numa-vm run [OPTIONS] [--] CMD [ARGS...]
                                     boot a guest, run CMD in the current directory, exit with its
                                     status (124 timeout, 125 the guest failed, 2 bad options)

``run`` options: ``--nodes N`` (2), ``--cpus-per-node C`` (1), ``--mem-per-node MIB`` (768),
``--distances "0,1,21 ..."`` (2 nodes: 21; 4 nodes: 16 in {0,1} and {2,3}, 32 across; else 20),
``--timeout S`` (600), ``--out DIR`` (shared read-write at the same path in the guest, where
``$NUMA_VM_OUT`` names it; default: a new temporary directory), ``--env NAME[=VALUE]``
(repeatable; PATH, HOME, VIRTUAL_ENV, PYTHONPATH, CI, NUMAPLAN_* ... are passed anyway),
``--accel auto|kvm|tcg``, ``--tcg-threads single|multi``, ``--verbose``. The options with a
value (not ``--env``) take their default from ``$NUMA_VM_<OPTION>`` when set
(``NUMA_VM_TIMEOUT``, ``NUMA_VM_TCG_THREADS``...). The cache directory is
``$NUMAPLAN_VM_CACHE`` or ``~/.cache/numaplan-vm`` (``--cache``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from numa_vm import cache, guest

EXIT_USAGE = 2


def _env_default(name: str, default: str | None) -> str | None:
    return os.environ.get(f"NUMA_VM_{name}", default)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``numa-vm``.

    Returns
    -------
    argparse.ArgumentParser
        With the ``setup``, ``status`` and ``run`` subcommands.
    """
    p = argparse.ArgumentParser(
        prog="numa-vm", description="Run a command inside a throw-away multi-node NUMA guest "
        "(QEMU; KVM when usable, else TCG) that shares this machine's root filesystem "
        "read-only.", epilog="See scripts/numa_vm/cli.py for the details.")
    p.add_argument("--cache", type=Path, default=None,
                   help="cache directory (default: $NUMAPLAN_VM_CACHE or ~/.cache/numaplan-vm)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    s = sub.add_parser("setup", help="install QEMU if missing, fetch the kernel and busybox, "
                       "build the initramfs (idempotent)")
    s.add_argument("--force", action="store_true", help="download and rebuild everything")
    sub.add_parser("status", help="report QEMU and the cache; exit 0 when run can boot")
    r = sub.add_parser("run", help="boot a guest and run a command in the current directory")
    r.add_argument("--nodes", type=int, metavar="N", default=_env_default("NODES", "2"),
                   help="NUMA nodes (default 2)")
    r.add_argument("--cpus-per-node", type=int, metavar="C",
                   default=_env_default("CPUS_PER_NODE", "1"),
                   help="vCPUs per node; node i has vCPUs i*C .. i*C+C-1 (default 1)")
    r.add_argument("--mem-per-node", type=int, metavar="MIB",
                   default=_env_default("MEM_PER_NODE", "768"),
                   help="MiB of RAM per node (default 768)")
    r.add_argument("--distances", metavar="'I,J,VAL ...'", default=_env_default("DISTANCES", None),
                   help="SLIT between distinct nodes (symmetric); default: 2 nodes 21, "
                   "4 nodes 16 inside {0,1} and {2,3} and 32 across, else 20")
    r.add_argument("--timeout", type=float, metavar="S",
                   default=_env_default("TIMEOUT", "600"),
                   help="kill the guest after S seconds and exit 124 (default 600)")
    r.add_argument("--out", type=Path, metavar="DIR", default=_env_default("OUT", None),
                   help="directory shared read-write, at the same path inside the guest")
    r.add_argument("--env", action="append", default=[], metavar="NAME[=VALUE]",
                   help="set a variable in the guest (repeatable)")
    r.add_argument("--accel", choices=("auto", "kvm", "tcg"),
                   default=_env_default("ACCEL", "auto"),
                   help="KVM when /dev/kvm is usable (auto, the default), else TCG emulation")
    r.add_argument("--tcg-threads", choices=("single", "multi"),
                   default=_env_default("TCG_THREADS", "single"),
                   help="TCG: one host thread for all vCPUs (default) or one per vCPU")
    r.add_argument("--verbose", action="store_true",
                   help="print the guest's whole console (kernel messages) afterwards")
    r.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD [ARGS...]",
                   help="runs in the current directory; exit status 124 on timeout, 125 when "
                   "the guest fails")
    return p


def _log(msg: str) -> None:
    print(f"numa-vm: {msg}", file=sys.stderr, flush=True)


def _on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through run_command, which stops QEMU


def main(argv: list[str] | None = None) -> int:
    """Run ``numa-vm`` and return its exit status.

    Parameters
    ----------
    argv
        Arguments without the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success; ``run`` returns the command's status (124 timeout, 125 guest failure);
        1 when ``setup`` fails or ``status`` finds something missing; 2 for bad options.
    """
    args = build_parser().parse_args(argv)  # exits 2 on a bad option (or NUMA_VM_* value)
    cache_dir = args.cache.expanduser().resolve() if args.cache else cache.default_cache_dir()
    if args.command == "setup":
        try:
            cache.setup(cache_dir, force=args.force, log=_log)
        except cache.SetupError as exc:
            _log(f"setup failed: {exc}")
            return 1
        ready, lines = cache.status(cache_dir)
        for line in lines:
            _log(line)
        return 0 if ready else 1
    if args.command == "status":
        ready, lines = cache.status(cache_dir)
        print("\n".join(lines))
        return 0 if ready else 1

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        _log("run: no command given (numa-vm run [OPTIONS] [--] CMD [ARGS...])")
        return EXIT_USAGE
    try:
        layout = guest.make_layout(args.nodes, args.cpus_per_node, args.mem_per_node,
                                   args.distances)
        guest.guest_env(args.env)  # validates the --env names
    except guest.RequestError as exc:
        _log(f"error: {exc}")
        return EXIT_USAGE
    if args.timeout <= 0:
        _log("error: --timeout must be positive")
        return EXIT_USAGE
    qemu, state = cache.find_qemu(), cache.read_state(cache_dir)
    if qemu is None or state is None:
        what = f"{cache.QEMU} is not installed" if qemu is None else \
            f"the VM cache {cache_dir} is not set up"
        _log(f"error: {what}: run `scripts/numa-vm setup` (as root to install QEMU)")
        return guest.EXIT_VM_FAILED
    if state.get("init_sha256") != cache.init_digest():
        state = cache.setup(cache_dir, log=_log)  # rebuilds the initramfs only
    if args.accel == "kvm" and not guest.kvm_usable():
        _log("error: --accel kvm: /dev/kvm is missing or unusable here (use --accel tcg)")
        return EXIT_USAGE
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return guest.run_command(cmd, qemu=qemu, cache_state=state, layout=layout,
                                 timeout_s=args.timeout, out_dir=args.out, env=args.env,
                                 accel=args.accel, tcg_threads=args.tcg_threads,
                                 verbose=args.verbose, log=_log)
    except KeyboardInterrupt:
        _log("interrupted: guest stopped")
        return 130
