"""The guest: its NUMA layout, the QEMU command line, and running one command in it.

Exit statuses of :func:`run_command`: the command's own status; 124 when the timeout expired
(QEMU was killed); 125 when the guest could not be booted or did not report a status (the
reason is printed, with the end of the guest console).
"""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

EXIT_TIMEOUT = 124
EXIT_VM_FAILED = 125
#: Host environment variables passed into the guest (plus every ``NUMAPLAN_*``).
PASSED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ",
              "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHASHSEED", "CI")


class RequestError(ValueError):
    """A run request (NUMA layout, --env) QEMU or the guest would refuse or misread; the
    message says what is wrong."""


@dataclass(frozen=True)
class Layout:
    """The guest's NUMA layout: ``nodes`` nodes of ``cpus_per_node`` vCPUs and
    ``mem_per_node_mib`` MiB each, node ``i`` owning vCPUs ``i*C .. i*C+C-1``, and the SLIT
    ``distances`` (a full symmetric matrix, 10 on the diagonal)."""

    nodes: int
    cpus_per_node: int
    mem_per_node_mib: int
    distances: tuple[tuple[int, ...], ...]

    def describe(self) -> str:
        """One line: nodes x vCPUs x MiB and the off-diagonal distances."""
        pairs = " ".join(f"{i},{j},{self.distances[i][j]}" for i in range(self.nodes)
                         for j in range(i + 1, self.nodes))
        return (f"{self.nodes} node(s) x {self.cpus_per_node} vCPU(s) x "
                f"{self.mem_per_node_mib} MiB" + (f", distances {pairs}" if pairs else ""))


def default_distances(nodes: int) -> str:
    """The SLIT used when none is given, as ``"i,j,val ..."`` (upper triangle).

    2 nodes: 21 (two sockets). 4 nodes: 16 inside the pairs {0,1} and {2,3}, 32 across (two
    sockets of two sub-NUMA clusters). Any other count: 20 between every two nodes.

    Parameters
    ----------
    nodes
        The number of nodes.

    Returns
    -------
    str
        The distances in the ``--distances`` syntax.
    """
    out = []
    for i in range(nodes):
        for j in range(i + 1, nodes):
            if nodes == 2:
                d = 21
            elif nodes == 4:
                d = 16 if i // 2 == j // 2 else 32
            else:
                d = 20
            out.append(f"{i},{j},{d}")
    return " ".join(out)


def make_layout(nodes: int, cpus_per_node: int, mem_per_node_mib: int,
                distances: str | None) -> Layout:
    """Validate the request and build the :class:`Layout`.

    Parameters
    ----------
    nodes, cpus_per_node, mem_per_node_mib
        The shape of the guest.
    distances
        ``"i,j,val i,j,val ..."`` (space- or semicolon-separated triples; ``i,j`` sets ``j,i``
        too unless that is given separately), or None for :func:`default_distances`. When
        given, every pair of distinct nodes needs a value.

    Returns
    -------
    Layout
        The layout.

    Raises
    ------
    RequestError
        Out-of-range sizes, malformed triples, a missing pair, or a distance outside 11..254.
    """
    if not 1 <= nodes <= 16:
        raise RequestError(f"--nodes must be in 1..16, got {nodes}")
    if not 1 <= cpus_per_node <= 16:
        raise RequestError(f"--cpus-per-node must be in 1..16, got {cpus_per_node}")
    if nodes * cpus_per_node > 64:
        raise RequestError(f"{nodes * cpus_per_node} vCPUs in all: at most 64")
    if mem_per_node_mib < 128 or mem_per_node_mib % 2:
        raise RequestError(f"--mem-per-node must be an even number of MiB >= 128, got "
                          f"{mem_per_node_mib}")
    text = default_distances(nodes) if distances is None else distances
    given: dict[tuple[int, int], int] = {}
    for triple in text.replace(";", " ").split():
        try:
            i, j, v = (int(x) for x in triple.split(","))
        except ValueError:
            raise RequestError(f"--distances: {triple!r} is not 'i,j,value'") from None
        if not (0 <= i < nodes and 0 <= j < nodes):
            raise RequestError(f"--distances: {triple!r} names a node outside 0..{nodes - 1}")
        if i == j:
            if v != 10:
                raise RequestError(f"--distances: {triple!r}: a node's distance to itself is 10")
            continue
        if not 11 <= v <= 254:
            raise RequestError(f"--distances: {triple!r}: distances between nodes are 11..254")
        given[(i, j)] = v
    matrix = [[10] * nodes for _ in range(nodes)]
    missing = []
    for i in range(nodes):
        for j in range(nodes):
            if i == j:
                continue
            v = given.get((i, j), given.get((j, i)))
            if v is None:
                if i < j:
                    missing.append(f"{i},{j}")
                continue
            matrix[i][j] = v
    if missing:
        raise RequestError(f"--distances: no value for the pair(s) {' '.join(missing)} "
                          f"(give every pair, e.g. {default_distances(nodes)!r})")
    return Layout(nodes, cpus_per_node, mem_per_node_mib, tuple(tuple(r) for r in matrix))


def kvm_usable() -> bool:
    """True when ``/dev/kvm`` is usable here: it opens read-write and the CPU advertises
    hardware virtualisation. A device node alone is not enough: some VMs offer a software
    KVM (``kvm-pvm``) that creates VMs but hangs a guest with more than one vCPU in its
    firmware (seen on the 2-core development VM), and a NUMA guest needs a vCPU per node."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " vmx" in flags or " svm" in flags


def qemu_argv(qemu: str, layout: Layout, kernel: str, initrd: str, out_dir: Path, *,
              accel: str, tcg_threads: str = "single", verbose: bool = False) -> list[str]:
    """The QEMU command line for one boot.

    Parameters
    ----------
    qemu
        Path of ``qemu-system-x86_64``.
    layout
        The NUMA layout.
    kernel, initrd
        From the cache.
    out_dir
        The shared output directory (``.numa-vm/`` inside it holds the console log).
    accel
        ``"kvm"`` or ``"tcg"``.
    tcg_threads
        ``"single"``: one host thread runs every vCPU in turn; ``"multi"``: one host thread per
        vCPU (parallel, but the threads compete for the host's cores).
    verbose
        Full kernel messages in the console log.

    Returns
    -------
    list of str
        The argument vector.
    """
    n, c = layout.nodes, layout.cpus_per_node
    argv = [qemu, "-M", "q35", "-nodefaults", "-no-reboot", "-display", "none",
            "-m", f"{n * layout.mem_per_node_mib}M",
            "-smp", f"{n * c},sockets={n},cores={c},threads=1"]
    if accel == "kvm":
        argv += ["-accel", "kvm", "-cpu", "host"]
    else:
        argv += ["-accel", f"tcg,thread={tcg_threads}", "-cpu", "max"]
    for i in range(n):
        argv += ["-object", f"memory-backend-ram,id=mem{i},size={layout.mem_per_node_mib}M",
                 "-numa", f"node,nodeid={i},memdev=mem{i}",
                 "-numa", f"cpu,node-id={i},socket-id={i}"]
    for i in range(n):
        for j in range(n):
            if i != j:
                argv += ["-numa", f"dist,src={i},dst={j},val={layout.distances[i][j]}"]
    qboot = Path("/usr/share/qemu/qboot.rom")  # boots faster than SeaBIOS
    if qboot.is_file():
        argv += ["-bios", str(qboot)]
    def opt(path: Path) -> str:  # a comma inside a QEMU option value is written twice
        return str(path).replace(",", ",,")

    console = out_dir / ".numa-vm" / "console.log"
    cmdline = "console=ttyS0 panic=-1 " + ("ignore_loglevel" if verbose else "quiet")
    argv += ["-kernel", kernel, "-initrd", initrd, "-append", cmdline,
             "-chardev", f"file,id=console,path={opt(console)}", "-serial", "chardev:console",
             "-serial", "stdio",
             "-virtfs", "local,path=/,mount_tag=host,security_model=none,readonly=on,"
                        "multidevs=remap",
             "-virtfs", f"local,path={opt(out_dir)},mount_tag=out,security_model=none"]
    return argv


def command_script(argv: list[str], cwd: Path, out_dir: Path, layout: Layout,
                   env: dict[str, str]) -> str:
    """The ``/bin/sh`` script the guest runs: environment, ``cd``, ``exec`` the command.

    Parameters
    ----------
    argv
        The command.
    cwd
        Where it runs (the host path, the same inside the guest).
    out_dir
        The output directory (``$NUMA_VM_OUT``).
    layout
        Published as ``$NUMA_VM_NODES``, ``$NUMA_VM_CPUS_PER_NODE``,
        ``$NUMA_VM_MEM_PER_NODE_MIB``.
    env
        Host variables to set in the guest.

    Returns
    -------
    str
        The script text.
    """
    q = shlex.quote
    guest_env = {**env, "NUMA_VM_OUT": str(out_dir), "NUMA_VM_NODES": str(layout.nodes),
                 "NUMA_VM_CPUS_PER_NODE": str(layout.cpus_per_node),
                 "NUMA_VM_MEM_PER_NODE_MIB": str(layout.mem_per_node_mib),
                 "TMPDIR": "/tmp", "PYTHONUNBUFFERED": "1"}
    lines = ["# written by numa-vm for one guest run"]
    lines += [f"export {k}={q(v)}" for k, v in sorted(guest_env.items())]
    lines += [f"cd {q(str(cwd))} || exit 125", "exec " + " ".join(q(a) for a in argv)]
    return "\n".join(lines) + "\n"


def guest_env(extra: list[str]) -> dict[str, str]:
    """The host variables passed to the guest: :data:`PASSED_ENV`, every ``NUMAPLAN_*``, and
    ``extra`` (``NAME`` copies the host's value, ``NAME=VALUE`` sets one).

    Parameters
    ----------
    extra
        The ``--env`` arguments.

    Returns
    -------
    dict
        Name to value.

    Raises
    ------
    RequestError
        A name that is not a shell variable name.
    """
    env = {k: v for k, v in os.environ.items()
           if k in PASSED_ENV or k.startswith("NUMAPLAN_")}
    for item in extra:
        name, eq, value = item.partition("=")
        if not name.isidentifier():
            raise RequestError(f"--env {item!r}: {name!r} is not a variable name")
        if eq:
            env[name] = value
        elif name in os.environ:
            env[name] = os.environ[name]
    return env


def _die_with_parent() -> None:
    """In the QEMU child: be killed when numa-vm dies, even by SIGKILL (no orphaned guests)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _console_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").replace("\r", "")
    except OSError:
        return "(no console log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty console log)"


def run_command(argv: list[str], *, qemu: str, cache_state: dict, layout: Layout,
                timeout_s: float, out_dir: Path | None = None, env: list[str] = (),
                accel: str = "auto", tcg_threads: str = "single", verbose: bool = False,
                log=None) -> int:
    """Boot a guest, run ``argv`` in the current directory, stream its output, power off.

    The command's output (stdout and stderr together) is written to this process's stdout as
    it arrives. The output directory is shared read-write at the same path inside the guest.

    Parameters
    ----------
    argv
        The command and its arguments.
    qemu
        Path of ``qemu-system-x86_64``.
    cache_state
        :func:`numa_vm.cache.read_state` of a complete cache.
    layout
        The NUMA layout.
    timeout_s
        Wall-clock limit for the whole boot, command and power-off.
    out_dir
        The shared directory (created if needed); default: a new temporary directory, kept.
    env
        ``--env`` items (see :func:`guest_env`).
    accel
        ``"auto"`` (KVM when usable, else TCG), ``"kvm"`` or ``"tcg"``.
    tcg_threads
        ``"single"`` or ``"multi"`` (see :func:`qemu_argv`).
    verbose
        Print the whole guest console log (kernel messages included) to stderr afterwards.
    log
        Called with progress lines (default: stderr).

    Returns
    -------
    int
        The command's exit status, 124 on timeout, 125 when the guest failed.
    """
    log = log or (lambda m: print(f"numa-vm: {m}", file=sys.stderr, flush=True))
    if out_dir is None:
        out_dir = Path(tempfile.mkdtemp(prefix="numa-vm-out-"))
    out_dir = out_dir.resolve()
    meta = out_dir / ".numa-vm"
    meta.mkdir(parents=True, exist_ok=True)
    for stale in ("rc", "console.log"):
        (meta / stale).unlink(missing_ok=True)
    (meta / "guest-path").write_text(str(out_dir))
    (meta / "cmd.sh").write_text(command_script(argv, Path.cwd(), out_dir, layout,
                                                guest_env(list(env))))
    if accel == "auto":
        accel = "kvm" if kvm_usable() else "tcg"
    cmd = qemu_argv(qemu, layout, cache_state["kernel"],
                    str(Path(cache_state["kernel"]).with_name("initrd.img")), out_dir,
                    accel=accel, tcg_threads=tcg_threads, verbose=verbose)
    how = accel if accel == "kvm" else f"tcg ({tcg_threads}-threaded)"
    log(f"booting {layout.describe()}, {how}, output dir {out_dir}")
    t0 = time.monotonic()
    sys.stdout.flush()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=_die_with_parent)
    timed_out = False
    try:
        _, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        _stop(proc)
        err = proc.stderr.read() if proc.stderr else b""
    except BaseException:  # KeyboardInterrupt, SystemExit from a signal handler
        _stop(proc)
        raise
    elapsed = time.monotonic() - t0
    qemu_err = (err or b"").decode(errors="replace").strip()
    if verbose:
        print(_console_tail(meta / "console.log", 10**6), file=sys.stderr)
        if qemu_err:
            log(f"QEMU said: {qemu_err}")
    if timed_out:
        log(f"TIMEOUT after {timeout_s:g} s: QEMU killed")
        return EXIT_TIMEOUT
    rc_file = meta / "rc"
    if not rc_file.is_file():
        log(f"the guest reported no exit status (QEMU exit status {proc.returncode}"
            + (f": {qemu_err}" if qemu_err else "") + ")")
        log("end of the guest console:\n" + _console_tail(meta / "console.log"))
        return EXIT_VM_FAILED
    try:
        rc = int(rc_file.read_text().strip())
    except ValueError:
        rc = EXIT_VM_FAILED
    log(f"guest command exit status {rc}, {elapsed:.1f} s wall")
    return rc
