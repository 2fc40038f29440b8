"""numaplan._io: the one atomic writer."""

from __future__ import annotations

import os
import stat

import pytest

from numaplan._io import atomic_file, write_atomic


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_write_atomic_replaces_the_whole_file(tmp_path):
    path = tmp_path / "f.json"
    write_atomic(path, "old\n")
    write_atomic(path, b"new\n")
    assert path.read_text() == "new\n"
    assert _mode(path) == 0o644 & ~_umask()
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]  # no temporary file left


def test_atomic_file_leaves_the_old_file_on_error(tmp_path):
    path = tmp_path / "pic.png"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(path, mode=0o666) as f:
        f.write(b"half")
        raise RuntimeError("drawing failed")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["pic.png"]
    with atomic_file(path, mode=0o666) as f:
        f.write(b"new")
    assert path.read_bytes() == b"new" and _mode(path) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
