"""Small file helpers shared by every layer: atomic writes and JSON reading with clear errors."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from numaplan.errors import NumaplanError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish(tmp: str | Path, path: str | Path, *, mode: int = 0o644) -> None:
    """Give a finished temporary file its final mode (under the umask) and move it in place."""
    os.chmod(tmp, mode & ~_umask())
    os.replace(tmp, path)


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one.

    Parameters
    ----------
    path
        Destination file; its directory must exist.
    data
        Text (written as UTF-8) or bytes.
    """
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; a plan or cost file is meant to be read by others.
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error("file not found", path=path) from None
    except IsADirectoryError:
        raise error("is a directory, expected a JSON file", path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
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
