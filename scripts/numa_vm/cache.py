"""``numa-vm setup``: QEMU, a Debian kernel, busybox and the guest initramfs, kept in a cache.

Only Debian packages are used: ``qemu-system-x86`` is installed with apt-get when missing (this
needs root); ``linux-image-amd64``'s current kernel and ``busybox-static`` are downloaded with
``apt-get download`` and unpacked with ``dpkg -x`` (never installed). The cache keeps:

``vmlinux``
    The uncompressed kernel (QEMU boots it through its PVH entry, which saves seconds of
    in-guest decompression under TCG); ``vmlinuz`` is kept when it cannot be extracted.
``busybox``, ``modules/*.ko``, ``modules/load-order``
    The guest's userland and the few modules it needs (virtio-9p, overlayfs and what they
    depend on), in load order.
``initrd.img``
    The initramfs: busybox, the modules and ``init.sh`` as ``/init`` (gzip'd newc cpio, built
    here without root).
``ready.json``
    Written last: what was built from what. Its presence means the cache is complete.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import stat
import subprocess
import tempfile
import urllib.parse
from pathlib import Path

#: Modules the guest needs (their dependencies are added from each module's modinfo).
MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
#: Bumped when the cache layout changes (a cache of another format is rebuilt).
CACHE_FORMAT = 1
INIT_SCRIPT = Path(__file__).with_name("init.sh")
QEMU = "qemu-system-x86_64"


class SetupError(Exception):
    """Something ``setup`` needs is missing or failed; the message says what to do."""


def default_cache_dir() -> Path:
    """The cache directory: ``$NUMAPLAN_VM_CACHE``, else ``$XDG_CACHE_HOME/numaplan-vm``
    (``~/.cache/numaplan-vm``).

    Returns
    -------
    Path
        The directory (it may not exist yet).
    """
    env = os.environ.get("NUMAPLAN_VM_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return (Path(base) / "numaplan-vm").resolve()


def find_qemu() -> str | None:
    """Path of ``qemu-system-x86_64``, or None when it is not installed."""
    return shutil.which(QEMU)


def init_digest() -> str:
    """SHA-256 of the guest ``/init`` script: the initramfs is rebuilt when it changes."""
    return hashlib.sha256(INIT_SCRIPT.read_bytes()).hexdigest()


def read_state(cache: Path) -> dict | None:
    """The ``ready.json`` of a complete cache, or None when the cache is missing or partial.

    Parameters
    ----------
    cache
        The cache directory.

    Returns
    -------
    dict or None
        What the cache was built from, with ``kernel`` (the path to boot) added.
    """
    try:
        state = json.loads((cache / "ready.json").read_text())
    except (OSError, ValueError):
        return None
    if state.get("format") != CACHE_FORMAT:
        return None
    kernel = cache / state.get("kernel_file", "")
    if not kernel.is_file() or not (cache / "initrd.img").is_file():
        return None
    return {**state, "kernel": str(kernel)}


def status(cache: Path) -> tuple[bool, list[str]]:
    """Whether ``run`` can boot now, and lines describing QEMU and the cache.

    Parameters
    ----------
    cache
        The cache directory.

    Returns
    -------
    tuple of (bool, list of str)
        ``(ready, lines)``.
    """
    lines = []
    qemu = find_qemu()
    lines.append(f"qemu: {qemu or 'not installed (numa-vm setup installs qemu-system-x86)'}")
    state = read_state(cache)
    if state is None:
        lines.append(f"cache: {cache}: not set up (run `scripts/numa-vm setup`)")
    else:
        stale = "" if state.get("init_sha256") == init_digest() else \
            " (init.sh changed: `setup` rebuilds the initramfs)"
        lines.append(f"cache: {cache}: kernel {state['kernel_package']}, "
                     f"{urllib.parse.unquote(state['busybox_package'])}{stale}")
    return qemu is not None and state is not None, lines


def setup(cache: Path, *, force: bool = False, log=print) -> dict:
    """Make ``run`` possible: install QEMU if missing, fill the cache, build the initramfs.

    Idempotent: a complete cache is left alone, except that the initramfs is rebuilt when
    ``init.sh`` changed (from the kept busybox and modules, without downloading).

    Parameters
    ----------
    cache
        The cache directory (created if needed).
    force
        Download the kernel and busybox again and rebuild everything.
    log
        Called with one progress line at a time.

    Returns
    -------
    dict
        The cache state (``ready.json`` plus ``kernel``).

    Raises
    ------
    SetupError
        A tool or package is missing, or a step failed; the message says which.
    """
    ensure_qemu(log)
    cache.mkdir(parents=True, exist_ok=True)
    state = read_state(cache)
    if state is not None and not force:
        if state.get("init_sha256") != init_digest():
            log("init.sh changed: rebuilding the initramfs")
            build_initrd(cache)
            state["init_sha256"] = init_digest()
            _write_state(cache, state)
        return read_state(cache) or {}
    with tempfile.TemporaryDirectory(prefix="setup-", dir=cache) as tmp:
        state = _fetch_kernel_and_busybox(cache, Path(tmp), log)
    build_initrd(cache)
    state["init_sha256"] = init_digest()
    _write_state(cache, state)
    size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
    log(f"setup done: kernel {state['kernel_package']}, cache {cache} ({size / 2**20:.0f} MiB)")
    return read_state(cache) or {}


def _write_state(cache: Path, state: dict) -> None:
    state = {k: v for k, v in state.items() if k != "kernel"}
    tmp = cache / "ready.json.tmp"
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    tmp.replace(cache / "ready.json")


def _run(argv: list[str], what: str, **kw) -> str:
    try:
        res = subprocess.run(argv, check=True, text=True, capture_output=True, **kw)
    except FileNotFoundError:
        raise SetupError(f"{what}: `{argv[0]}` not found (this needs a Debian-based "
                         f"system with apt and dpkg)") from None
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.stdout or "").strip().splitlines()[-3:]
        raise SetupError(f"{what} failed: `{' '.join(argv)}` exited {exc.returncode}: "
                         + " | ".join(detail)) from None
    return res.stdout


def _is_root() -> bool:
    return os.geteuid() == 0


def _apt_update(log) -> None:
    if not _is_root():
        raise SetupError("the apt package lists are missing or stale; run "
                         "`sudo apt-get update` (or run setup as root)")
    log("apt-get update")
    _run(["apt-get", "update", "-qq"], "apt-get update")


def ensure_qemu(log=print) -> str:
    """Install ``qemu-system-x86`` with apt-get when ``qemu-system-x86_64`` is missing.

    Parameters
    ----------
    log
        Called with progress lines.

    Returns
    -------
    str
        The path of ``qemu-system-x86_64``.

    Raises
    ------
    SetupError
        QEMU is missing and cannot be installed (not root, or apt-get failed).
    """
    qemu = find_qemu()
    if qemu:
        return qemu
    if not _is_root():
        raise SetupError(f"{QEMU} is not installed: run `sudo apt-get install "
                         f"qemu-system-x86` or run `scripts/numa-vm setup` as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _apt_update(log)
    log("apt-get install qemu-system-x86")
    _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "qemu-system-x86"],
         "installing qemu-system-x86", env=env)
    qemu = find_qemu()
    if not qemu:
        raise SetupError(f"qemu-system-x86 was installed but {QEMU} is not on PATH")
    return qemu


def _kernel_package(log) -> str:
    """The versioned kernel package ``linux-image-amd64`` currently depends on."""
    for attempt in range(2):
        try:
            out = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], text=True,
                                 capture_output=True).stdout
        except FileNotFoundError:
            raise SetupError("apt-cache not found: numa-vm setup needs a Debian-based "
                             "system") from None
        for line in out.splitlines():
            dep = line.strip().removeprefix("Depends:").strip()
            if line.strip().startswith("Depends:") and dep.startswith("linux-image-") \
                    and dep[len("linux-image-"):][:1].isdigit():
                return dep
        if attempt == 0:
            _apt_update(log)
    raise SetupError("apt cannot resolve linux-image-amd64 to a kernel package (is this "
                     "Debian amd64 with the main archive in its sources?)")


def _download(pkg: str, where: Path) -> Path:
    _run(["apt-get", "download", "-qq", "-o", "APT::Sandbox::User=root", pkg],
         f"downloading {pkg}", cwd=where)
    debs = sorted(where.glob(f"{pkg}_*.deb"))
    if not debs:
        raise SetupError(f"apt-get download {pkg} left no .deb in {where}")
    return debs[-1]


def _fetch_kernel_and_busybox(cache: Path, tmp: Path, log) -> dict:
    kpkg = _kernel_package(log)
    log(f"downloading {kpkg} and busybox-static")
    kdeb, bdeb = _download(kpkg, tmp), _download("busybox-static", tmp)
    kdir, bdir = tmp / "kernel", tmp / "busybox"
    log(f"unpacking {kdeb.name}")
    _run(["dpkg", "-x", str(kdeb), str(kdir)], f"unpacking {kdeb.name}")
    _run(["dpkg", "-x", str(bdeb), str(bdir)], f"unpacking {bdeb.name}")

    vmlinuz = sorted(kdir.glob("boot/vmlinuz-*"))
    mod_roots = sorted(p for p in kdir.glob("**/modules/*") if (p / "kernel").is_dir())
    busybox = [p for p in (bdir / "bin/busybox", bdir / "usr/bin/busybox") if p.is_file()]
    if not vmlinuz or not mod_roots or not busybox:
        raise SetupError(f"unexpected package layout: vmlinuz {vmlinuz}, module trees "
                         f"{mod_roots}, busybox {busybox}")
    for old in ("vmlinux", "vmlinuz", "busybox", "modules"):
        p = cache / old
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    shutil.copy2(busybox[0], cache / "busybox")
    order = copy_modules(mod_roots[0], cache / "modules", MODULES)
    kernel_file = "vmlinux" if extract_vmlinux(vmlinuz[0], cache / "vmlinux") else "vmlinuz"
    if kernel_file == "vmlinuz":
        log("could not extract an uncompressed vmlinux; booting the bzImage (slower)")
        shutil.copy2(vmlinuz[0], cache / "vmlinuz")
    return {"format": CACHE_FORMAT, "kernel_package": kpkg, "kernel_release": mod_roots[0].name,
            "kernel_file": kernel_file,
            "busybox_package": urllib.parse.unquote(bdeb.name.removesuffix(".deb")),
            "modules": order}


def extract_vmlinux(bzimage: Path, dest: Path) -> bool:
    """Write the uncompressed ELF kernel inside an xz-compressed bzImage to ``dest``.

    Parameters
    ----------
    bzimage
        The ``vmlinuz`` file.
    dest
        Where to write ``vmlinux``.

    Returns
    -------
    bool
        False when the image is not xz-compressed or holds no ELF file.
    """
    data = bzimage.read_bytes()
    start = data.find(b"\xfd7zXZ\x00")
    if start < 0:
        return False
    try:
        elf = lzma.LZMADecompressor().decompress(data[start:])
    except lzma.LZMAError:
        return False
    if elf[:4] != b"\x7fELF":
        return False
    dest.write_bytes(elf)
    return True


def _read_module(path: Path) -> bytes:
    name = path.name
    if name.endswith(".ko"):
        return path.read_bytes()
    if name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if name.endswith(".ko.gz"):
        return gzip.decompress(path.read_bytes())
    if name.endswith(".ko.zst"):  # no zstd in the standard library before Python 3.14
        try:
            return subprocess.run(["zstd", "-qdc", str(path)], check=True,
                                  capture_output=True).stdout
        except (FileNotFoundError, subprocess.CalledProcessError):
            raise SetupError(f"cannot decompress {path}: install zstd") from None
    raise SetupError(f"unknown module compression: {path}")


def _modinfo_depends(ko: bytes) -> list[str]:
    """The ``depends=`` field of a module's ``.modinfo`` section (NUL-separated strings)."""
    for field in ko.split(b"\0"):
        if field.startswith(b"depends="):
            return [d for d in field[len(b"depends="):].decode().split(",") if d]
    return []


def copy_modules(root: Path, dest: Path, wanted: tuple[str, ...]) -> list[str]:
    """Copy ``wanted`` modules and their dependencies, decompressed, into ``dest``.

    Modules built into the kernel (``modules.builtin``) are skipped. ``dest/load-order``
    lists the copied modules, dependencies first.

    Parameters
    ----------
    root
        The kernel's module tree (``.../modules/<release>``).
    dest
        The output directory.
    wanted
        Module names (``-`` and ``_`` are the same).

    Returns
    -------
    list of str
        The copied modules in load order.

    Raises
    ------
    SetupError
        A module is neither a file in the tree nor built in.
    """
    def norm(name: str) -> str:
        return name.replace("-", "_")

    files = {}
    for f in root.rglob("*.ko*"):
        files[norm(f.name.split(".ko")[0])] = f
    builtin = set()
    if (root / "modules.builtin").is_file():
        for line in (root / "modules.builtin").read_text().splitlines():
            builtin.add(norm(Path(line).name.split(".ko")[0]))
    dest.mkdir(parents=True)
    order: list[str] = []

    def add(name: str, chain: tuple[str, ...]) -> None:
        name = norm(name)
        if name in order or name in builtin:
            return
        if name in chain:
            raise SetupError(f"module dependency cycle: {' -> '.join((*chain, name))}")
        if name not in files:
            raise SetupError(f"module {name} is neither in {root} nor built into the kernel")
        ko = _read_module(files[name])
        for dep in _modinfo_depends(ko):
            add(dep, (*chain, name))
        (dest / f"{name}.ko").write_bytes(ko)
        order.append(name)

    for m in wanted:
        add(m, ())
    (dest / "load-order").write_text("\n".join(order) + "\n")
    return order


class _Cpio:
    """A minimal writer of the newc cpio format the kernel unpacks as initramfs."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0),
               nlink: int = 1) -> None:
        fields = (self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(name) + 1, 0)
        self.ino += 1
        head = b"070701" + b"".join(f"{v:08X}".encode() for v in fields)
        self.buf.write(head + name.encode() + b"\0")
        self.buf.write(b"\0" * (-self.buf.tell() % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-self.buf.tell() % 4))

    def directory(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755, nlink=2)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def char_device(self, name: str, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def build_initrd(cache: Path) -> Path:
    """Build ``initrd.img`` from the cached busybox and modules and ``init.sh``.

    Parameters
    ----------
    cache
        The cache directory (``busybox`` and ``modules/`` must be there).

    Returns
    -------
    Path
        The initramfs written.
    """
    cpio = _Cpio()
    for d in ("bin", "dev", "proc", "sys", "lib", "lib/modules", "out", "lower", "up",
              "newroot"):
        cpio.directory(d)
    cpio.char_device("dev/console", 5, 1)
    cpio.file("bin/busybox", (cache / "busybox").read_bytes(), 0o755)
    cpio.file("init", INIT_SCRIPT.read_bytes(), 0o755)
    for f in sorted((cache / "modules").iterdir()):
        cpio.file(f"lib/modules/{f.name}", f.read_bytes())
    out = cache / "initrd.img"
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(cpio.finish(), compresslevel=6, mtime=0))
    tmp.replace(out)
    return out
