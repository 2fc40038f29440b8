"""Build a small C library at first use and cache it: the one place that does it.

Used by the measurement kernels (:mod:`numaplan.osnuma.kernels`) and the collective's kernel
(:mod:`numaplan.runtime.ccl.kernel`); every failure is a :class:`~numaplan.errors.CBuildError`.
The compiler is ``$CC`` (split like a shell would), else the first of ``cc``, ``gcc``, ``clang``
on ``PATH``. A build is cached under
``$XDG_CACHE_HOME/numaplan`` (default ``~/.cache/numaplan``) as ``<prefix>-<hash>.so``, the hash
covering the source, the compiler and its version, the flags and the architecture, and the CPU's
feature flags only when the flags say ``-march=native`` (such a build is for this CPU alone; a
portable one serves every machine of the architecture, e.g. a host and the QEMU guests it runs).
The compiler writes a temporary file that is then renamed, so concurrent processes never load a
half-written library; when the cache directory is not writable a per-user directory under the
temporary directory is used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from numaplan.errors import CBuildError

log = logging.getLogger(__name__)

#: What every build says when there is no compiler.
NO_COMPILER = "no C compiler found (set CC or install gcc)"

_version_cache: dict[tuple[str, ...], str] = {}
_build_lock = threading.Lock()


def find_compiler() -> list[str] | None:
    """The C compiler command: ``$CC``, else ``cc``, ``gcc`` or ``clang``; ``None`` if none."""
    env = os.environ.get("CC", "").strip()
    if env:
        argv = shlex.split(env)
        return argv if shutil.which(argv[0]) else None
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return [path]
    return None


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/numaplan`` or ``~/.cache/numaplan``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "numaplan"


def compiler_identity(cc: Sequence[str]) -> str:
    """The command and what ``--version`` prints (cached per process)."""
    key = tuple(cc)
    if key not in _version_cache:
        try:
            out = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=30)
            _version_cache[key] = out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            _version_cache[key] = ""
    return " ".join(cc) + "\n" + _version_cache[key]


def cpu_flags() -> str:
    """The CPU's feature flags line from ``/proc/cpuinfo`` (empty when unreadable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return ""


def library_path(source: Path, prefix: str, cc: Sequence[str], flags: Sequence[str],
                 cache: Path | None = None) -> Path:
    """Where the build of ``source`` by ``cc`` with ``flags`` is cached (see the module doc)."""
    native = any(f.startswith("-march=native") for f in flags)
    h = hashlib.sha256()
    for part in (source.read_bytes(), compiler_identity(cc).encode(), " ".join(flags).encode(),
                 platform.machine().encode(), cpu_flags().encode() if native else b""):
        h.update(part)
        h.update(b"\0")
    return (cache or cache_dir()) / f"{prefix}-{h.hexdigest()[:16]}.so"


def _build(source: Path, cc: Sequence[str], flags: Sequence[str], target: Path) -> Path:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        directory = target.parent
    except OSError:
        directory = Path(tempfile.gettempdir()) / f"numaplan-{os.getuid()}"
        directory.mkdir(exist_ok=True)
        target = directory / target.name
        if target.exists():
            return target
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}-", suffix=".so", dir=directory)
    os.close(fd)
    try:
        proc = subprocess.run([*cc, *flags, "-o", tmp, str(source)], capture_output=True,
                              text=True, timeout=120)
        if proc.returncode != 0:
            raise CBuildError(f"compiling {source.name} with {' '.join(cc)} {' '.join(flags)} "
                        f"failed: {proc.stderr.strip()[:400]}")
        os.replace(tmp, target)  # atomic: other processes see no file or a whole one
    except (OSError, subprocess.SubprocessError) as exc:
        raise CBuildError(f"cannot compile {source.name} with {' '.join(cc)}: {exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info("compiled %s into %s", source.name, target)
    return target


def compile_cached(source: Path, prefix: str, flag_choices: Sequence[Sequence[str]], *,
                   cc: Sequence[str] | None = None, cache: Path | None = None) -> Path:
    """Return the cached build of ``source``, building it first if needed.

    Parameters
    ----------
    source
        The C file.
    prefix
        File-name prefix of the library in the cache.
    flag_choices
        Flag sets to try in order (e.g. ``-march=native`` first, a portable set next); the
        first that is cached or builds wins.
    cc
        Compiler command (default :func:`find_compiler`).
    cache
        Cache directory (default :func:`cache_dir`).

    Raises
    ------
    CBuildError
        No compiler, or every flag set failed.
    """
    cc = list(cc) if cc else find_compiler()
    if not cc:
        raise CBuildError(NO_COMPILER)
    failures = []
    with _build_lock:
        for flags in flag_choices:
            target = library_path(source, prefix, cc, flags, cache)
            if target.exists():
                return target
            try:
                return _build(source, cc, flags, target)
            except CBuildError as exc:
                failures.append(str(exc))
    raise CBuildError("; ".join(failures))
