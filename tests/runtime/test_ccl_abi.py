"""The collective's ABI (numaplan.ccl_abi): one table of names and codes, which the C kernel
mirrors; the descriptor; the one algorithm choice."""

from __future__ import annotations

import re

import pytest

from numaplan import ccl_abi as abi
from numaplan.runtime.ccl.kernel import SOURCE


def _c_enums() -> dict[str, int]:
    """Every ``NAME = value`` of the kernel's enums and every ``#define CCL_MAX_*``."""
    text = SOURCE.read_text()
    found = {}
    for body in re.findall(r"enum\s*\{([^}]*)\}", text):
        for name, value in re.findall(r"(\w+)\s*=\s*(\d+)", body):
            found[name] = int(value)
    for name, value in re.findall(r"#define\s+(CCL_MAX_\w+)\s+(\d+)", text):
        found[name] = int(value)
    return found


def test_the_c_kernel_mirrors_the_abi():
    c = _c_enums()
    assert {n: c[f"DT_{s}"] for n, s in zip(abi.DTYPES, ("F32", "F16", "BF16", "I32", "F64",
                                                          "I64"), strict=True)} == \
        abi.DTYPE_CODES
    assert {n: c[f"OP_{n.upper()}"] for n in abi.REDUCE_OPS} == abi.OP_CODES
    assert {n: c[f"ALG_{n.upper()}"] for n in abi.ALGORITHMS} == abi.ALGORITHM_CODES
    assert [c["CCL_OK"], c["CCL_ERR_TIMEOUT"], c["CCL_ERR_DEAD"], c["CCL_ERR_ABORTED"],
            c["CCL_ERR_MISMATCH"], c["CCL_ERR_ARG"]] == \
        [abi.OK, abi.ERR_TIMEOUT, abi.ERR_DEAD, abi.ERR_ABORTED, abi.ERR_MISMATCH, abi.ERR_ARG]
    assert (c["CCL_MAX_RANKS"], c["CCL_MAX_NODES"]) == (abi.MAX_RANKS, abi.MAX_NODES)
    assert len(abi.DTYPE_SIZES) == len(abi.DTYPES)


def test_function_names():
    assert abi.FUNCTION_NAMES == tuple(abi.function_name(op) for op in abi.OPS)
    assert all(n.startswith("numaplan.ccl.") for n in abi.FUNCTION_NAMES)
    with pytest.raises(ValueError, match="unknown collective"):
        abi.function_name("reduce_scatter")


@pytest.mark.parametrize("kind", range(len(abi.OPS)))
def test_descriptor_fields(kind):
    desc = abi.encode_desc(kind, abi.TWO_SHOT, abi.DT_BF16, abi.OP_MAX, 0x1_2345, 4096)
    assert desc & 0xFFFFFFFF == 4096
    assert (desc >> 32) & 0xFFFF == 0x2345  # the collective id wraps at 16 bits
    assert (desc >> 56) & 0xF == kind
    # a chunk's descriptor is the call's with its size or-ed in
    assert abi.encode_desc(kind, abi.TWO_SHOT, abi.DT_BF16, abi.OP_MAX, 0x1_2345, 0) | 4096 == desc
    text = abi.describe_desc(desc)
    assert text.startswith(abi.OPS[kind]) and "of 4096 bytes (collective id 9029)" in text
    if kind == abi.ALLREDUCE:
        assert "two_shot max bfloat16" in text


def test_algorithm_table_from_choices():
    class C:
        def __init__(self, m, a):
            self.message_bytes, self.algorithm = m, a

    rules = abi.algorithms_from_choices([C(16384, "one_shot"), C(8 << 20, "two_shot")], (0, 0))
    assert [(r.below_bytes, r.algorithm) for r in rules] == [(1 << 20, "one_shot"),
                                                             (None, "two_shot")]
    # the example: a 2 MiB message between the two listed sizes is two-shot
    assert abi.choose_algorithm(rules, 2 << 20) == "two_shot"
    rules = abi.algorithms_from_choices([C(1024, "one_shot"), C(4096, "two_shot")], (0, 0))
    assert rules[0].below_bytes == 2048
    assert abi.algorithms_from_choices([C(64, "none")], (0,)) == abi.default_algorithms((0,))
    # every listed size gets its own algorithm
    choices = [C(1024, "one_shot"), C(3000, "two_shot"), C(5000, "one_shot"),
               C(2 << 20, "two_shot")]
    rules = abi.algorithms_from_choices(choices, (0, 0))
    assert all(abi.choose_algorithm(rules, c.message_bytes) == c.algorithm for c in choices)
    with pytest.raises(ValueError, match="must end with a rule"):
        abi.choose_algorithm(rules[:-1], 1 << 30)
