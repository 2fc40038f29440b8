"""Small file helpers shared by every layer: atomic writes and JSON reading with clear errors."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from numaplan.errors import NumaplanError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish(tmp: str | Path, path: str | Path, *, mode: int = 0o644) -> None:
    """Give a finished temporary file its final mode (under the umask) and move it in place."""
    os.chmod(tmp, mode & ~_umask())
    os.replace(tmp, path)


@contextmanager
def atomic_file(path: str | Path, *, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path``; on a clean exit it becomes ``path`` atomically.

    Readers see either the old file or the whole new one, never a part. On an exception the
    temporary file is removed and ``path`` is left as it was.

    Parameters
    ----------
    path
        Destination file; its directory must exist.
    mode
        Permission bits of the finished file, under the umask (``mkstemp`` creates 0600, and what
        numaplan writes is meant to be read by others).

    Yields
    ------
    BinaryIO
        The temporary file, open for binary writing.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, path, mode=mode)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one.

    Parameters
    ----------
    path
        Destination file; its directory must exist.
    data
        Text (written as UTF-8) or bytes.
    """
    with atomic_file(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)


def read_bytes(path: str | Path, *, error: type[NumaplanError] = NumaplanError,
               expected: str = "a file") -> bytes:
    """Read a file, turning every failure into ``error`` naming the file.

    Parameters
    ----------
    path
        The file to read.
    error
        The :class:`~numaplan.errors.NumaplanError` subclass to raise.
    expected
        What the file should be, for the message when ``path`` is a directory.

    Raises
    ------
    NumaplanError
        (as ``error``) when the file is missing, a directory or unreadable.
    """
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise error("file not found", path=path) from None
    except IsADirectoryError:
        raise error(f"is a directory, expected {expected}", path=path) from None
    except OSError as exc:
        raise error(f"cannot read: {exc.strerror or exc}", path=path) from None


def read_json(path: str | Path, *, error: type[NumaplanError] = NumaplanError) -> Any:
    """Read a JSON file, turning every failure into ``error`` naming the file.

    Parameters
    ----------
    path
        The file to read.
    error
        The :class:`~numaplan.errors.NumaplanError` subclass to raise.

    Raises
    ------
    NumaplanError
        (as ``error``) when the file is missing, unreadable, empty or not valid JSON.
    """
    path = Path(path)
    data = read_bytes(path, error=error, expected="a JSON file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"cannot read: {exc}", path=path) from None
    if not text.strip():
        raise error("file is empty", path=path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}",
                    path=path) from None


def dumps_canonical(obj: Any) -> str:
    """Serialise ``obj`` deterministically: sorted keys, two-space indent, trailing newline."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
