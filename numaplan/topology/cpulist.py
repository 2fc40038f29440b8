"""Parse and format Linux CPU / node lists (``0-3,8,10-11``) and bitmasks (``ff,00000003``).

The kernel's list format is documented in ``Documentation/admin-guide/cputopology.rst`` and
``man 7 cpuset`` ("List format"); the mask format is comma-separated 32-bit hex words, most
significant first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_RANGE = re.compile(r"^(\d+)(?:-(\d+)(?::(\d+))?)?$")


def parse_cpulist(text: str) -> tuple[int, ...]:
    """Parse a kernel list string into sorted, unique ids.

    Accepts ``""`` (empty list), single ids, ranges ``a-b`` and strided ranges ``a-b:s``
    (``cpuset`` syntax), separated by commas, with surrounding whitespace.

    Parameters
    ----------
    text
        The list, e.g. ``"0-3,8,10-11"``.

    Returns
    -------
    tuple of int
        Sorted unique ids.

    Raises
    ------
    ValueError
        On anything that is not a list (the caller wraps it with the file name).

    Examples
    --------
    >>> parse_cpulist("0-3,8, 10-11")
    (0, 1, 2, 3, 8, 10, 11)
    >>> parse_cpulist("0-8:4")
    (0, 4, 8)
    >>> parse_cpulist("")
    ()
    """
    text = text.strip()
    if not text:
        return ()
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        m = _RANGE.match(part)
        if not m:
            raise ValueError(f"not a CPU list element: {part!r}")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        step = int(m.group(3)) if m.group(3) is not None else 1
        if hi < lo or step < 1:
            raise ValueError(f"bad range {part!r}")
        out.update(range(lo, hi + 1, step))
    return tuple(sorted(out))


def format_cpulist(ids: Iterable[int]) -> str:
    """Format ids as the kernel's compact list (the inverse of :func:`parse_cpulist`).

    Examples
    --------
    >>> format_cpulist([0, 1, 2, 3, 8, 10, 11])
    '0-3,8,10-11'
    >>> format_cpulist([])
    ''
    """
    s = sorted(set(ids))
    parts: list[str] = []
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[j] + 1:
            j += 1
        parts.append(str(s[i]) if i == j else f"{s[i]}-{s[j]}")
        i = j + 1
    return ",".join(parts)


def parse_cpumask(text: str) -> tuple[int, ...]:
    """Parse a kernel hex bitmask (``Cpus_allowed: ff,00000003``) into sorted ids.

    Examples
    --------
    >>> parse_cpumask("3")
    (0, 1)
    >>> parse_cpumask("00000001,00000000")
    (32,)
    """
    text = text.strip().replace(",", "")
    if not text:
        return ()
    try:
        value = int(text, 16)
    except ValueError:
        raise ValueError(f"not a hex mask: {text!r}") from None
    return tuple(i for i in range(value.bit_length()) if value >> i & 1)


def parse_numactl_cpus(text: str) -> tuple[int, ...]:
    """Parse the CPU field of a ``numactl -H`` node line.

    Handles the plain form (``0 1 2 3``), the ``--cpu-compress`` form (``0-15 (16) 32-47 (16)``,
    where the parenthesised count must agree with the range) and an empty field.

    Examples
    --------
    >>> parse_numactl_cpus("0 1 2 3 ")
    (0, 1, 2, 3)
    >>> parse_numactl_cpus("0-3 (4) 8-9 (2)")
    (0, 1, 2, 3, 8, 9)
    """
    ids: list[int] = []
    last_range: tuple[int, ...] | None = None
    for tok in text.split():
        if tok.startswith("(") and tok.endswith(")"):
            if last_range is None:
                raise ValueError(f"count {tok} without a range before it")
            try:
                count = int(tok[1:-1])
            except ValueError:
                raise ValueError(f"bad count {tok!r}") from None
            if count != len(last_range):
                raise ValueError(f"count {tok} does not match the range before it "
                                 f"({len(last_range)} CPUs)")
            last_range = None
            continue
        last_range = parse_cpulist(tok.rstrip(","))
        ids.extend(last_range)
    if len(set(ids)) != len(ids):
        raise ValueError("a CPU is listed twice")
    return tuple(sorted(ids))
