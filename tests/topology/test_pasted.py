"""Topology text as people paste it: every shape around the committed dumps reads the same, and
every cut of a dump is refused (or, cut after the block, reads the same).

The blocks come from the sample machines (real ``numactl -H`` dumps) and from a real ``lscpu``
(``tests/topology/data/``); the wrappers are the shapes that arrive in bug reports and job logs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numaplan.errors import TopologyError
from numaplan.topology import (
    format_cpulist,
    parse_cpulist,
    parse_lscpu,
    parse_numactl,
    parse_numactl_cpus,
    sample_path,
)

DATA = Path(__file__).with_name("data")
SAMPLES = ("epyc", "hsw", "xeonmax")


def _block(text: str, first: str) -> str:
    """The dump without its provenance header: from the line starting with ``first``."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(first))
    return "\n".join(lines[start:]) + "\n"


NUMACTL = {name: _block(sample_path(name).read_text(), "available:") for name in SAMPLES}
LSCPU = {
    "kvm": _block((DATA / "lscpu_kvm_1node.txt").read_text(), "Architecture:"),
    # util-linux before 2.37: no sections, 'NUMA node(s)' beside the socket count, the per-node
    # lines after the caches, 'Flags' last.
    "hsw": """Architecture:          x86_64
CPU(s):                64
On-line CPU(s) list:   0-63
Thread(s) per core:    2
Socket(s):             2
NUMA node(s):          2
Model name:            Intel(R) Xeon(R) CPU E5-2698B v3 @ 2.00GHz
L3 cache:              40960K
NUMA node0 CPU(s):     0-15,32-47
NUMA node1 CPU(s):     16-31,48-63
Flags:                 fpu vme de pse tsc msr pae mce
""",
}


def _compress(block: str) -> str:
    """The same block as ``numactl -H --cpu-compress`` prints it (``0-15 (16) 32-47 (16)``)."""
    out = []
    for line in block.splitlines():
        head, sep, cpus = line.partition(" cpus:")
        if sep and cpus.strip():
            ids = parse_numactl_cpus(cpus)
            cpus = " " + " ".join(f"{part} ({len(parse_cpulist(part))})"
                                  for part in format_cpulist(ids).split(","))
        out.append(head + sep + cpus)
    return "\n".join(out) + "\n"


PROMPTS = (
    "$ numactl -H",
    "# numactl --hardware",
    "user@host:~/work/llm$ LANG=C numactl --hardware",
    "[root@cn017 ~]# numactl -H --cpu-compress",
    "benutzer@rechner:~/Schreibtisch$ LANG=C numactl -H",
    "utilisateur@hôte:~/répertoire$ lscpu",
    "(venv) dev@box /srv/models % srun -n1 numactl -H",
    "PS> ssh node01 numactl -H",
)
BEFORE = st.lists(st.sampled_from((
    *PROMPTS,
    "# saved from the login node, 2024-05-01",
    "",
    "   ",
    "Last login: Mon May  6 09:12:44 2024 from 10.0.0.1",
    "```",
    "```text",
)), max_size=4)
AFTER = st.lists(st.sampled_from((
    "user@host:~/work/llm$ ",
    "[root@cn017 ~]# exit",
    "```",
    "",
    "# that is all",
    "policy: default",
    "Thanks for looking!",
    "Connection to node01 closed.",
)), max_size=4)
SHAPES = st.fixed_dictionaries({
    "before": BEFORE,
    "after": AFTER,
    "newline": st.sampled_from(("\n", "\r\n")),
    "trailing": st.sampled_from(("", " ", "   ", "\t")),
    "indent": st.sampled_from(("", "    ", "\t")),
})


def _paste(block: str, shape: dict) -> str:
    nl = shape["newline"]
    body = [shape["indent"] + ln + shape["trailing"] for ln in block.splitlines()]
    return nl.join([*shape["before"], *body, *shape["after"]]) + nl


def _same(a, b) -> bool:
    return a.model_dump(exclude={"source"}) == b.model_dump(exclude={"source"})


@pytest.mark.parametrize("name", SAMPLES)
@settings(max_examples=60, deadline=None)
@given(shape=SHAPES, compress=st.booleans())
def test_numactl_pasted_reads_like_the_bare_dump(name, shape, compress):
    block = _compress(NUMACTL[name]) if compress else NUMACTL[name]
    assert _same(parse_numactl(_paste(block, shape)), parse_numactl(NUMACTL[name]))


@pytest.mark.parametrize("name", sorted(LSCPU))
@settings(max_examples=60, deadline=None)
@given(shape=SHAPES)
def test_lscpu_pasted_reads_like_the_bare_output(name, shape):
    assert _same(parse_lscpu(_paste(LSCPU[name], shape)), parse_lscpu(LSCPU[name]))


def _cuts(block: str):
    """Every line boundary, and every character of the distance table (where a cut still looks
    like a table)."""
    table = block.find("node distances:")
    for i in range(len(block)):
        if block[i - 1:i] == "\n" or (table >= 0 and i > table):
            yield i


@pytest.mark.parametrize("name", SAMPLES)
def test_numactl_cut_anywhere_is_refused_in_one_line(name):
    block = NUMACTL[name]
    full = parse_numactl(block)
    for i in _cuts(block):
        for tail in ("", "\nuser@host:~$ \n"):
            text = block[:i] + tail
            try:
                t = parse_numactl(text, source="paste.txt")
            except TopologyError as exc:
                message = str(exc)
                assert message.startswith("paste.txt: ") and "\n" not in message, (i, message)
            else:
                # Only a cut inside the last row's trailing whitespace leaves the whole block.
                assert _same(t, full) and not block[i:].strip(), (i, text[-80:])


@pytest.mark.parametrize("name", sorted(LSCPU))
def test_lscpu_cut_at_any_line_is_refused_or_complete(name):
    block = LSCPU[name]
    full = parse_lscpu(block)
    lines = block.splitlines(keepends=True)
    for n in range(len(lines)):
        text = "".join(lines[:n])
        try:
            t = parse_lscpu(text, source="paste.txt")
        except TopologyError as exc:
            assert "\n" not in str(exc)
        else:
            assert _same(t, full), n


@pytest.mark.parametrize(("text", "message"), [
    (NUMACTL["hsw"].split("node 1 size")[0] + "user@host:~$ \n",
     "truncated: node 1 has no 'size:' line \\(the block stops at line 6: 'user@host:~\\$'\\)"),
    (NUMACTL["hsw"].split("node distances")[0],
     "truncated: no 'node distances:' table \\(the text ends there\\)"),
    (NUMACTL["hsw"].rsplit("  1:", 1)[0] + "$ exit\n",
     "truncated: distance row of node 1 is missing \\(the block stops at line 11: '\\$ exit'\\)"),
    (NUMACTL["hsw"].rstrip()[:-1], "distance of node 1 to itself is 1, Linux reports 10"),
    (NUMACTL["hsw"].replace("node   0   1", "node   0"),
     "distance header lists nodes \\[0\\], expected \\[0, 1\\]"),
    (NUMACTL["hsw"].replace("node distances:\n", "node distances:\n\n"), None),
    (NUMACTL["hsw"] + "\n" + NUMACTL["hsw"], "2 numactl -H blocks \\(lines 1 and 13\\)"),
    ("available: 2 nodes (0-\n", "line 1: 'available: 2 nodes \\(0-' is not"),
])
def test_what_is_missing_is_named(text, message):
    if message is None:
        parse_numactl(text)  # blank lines inside the block are harmless
        return
    with pytest.raises(TopologyError, match=message):
        parse_numactl(text)


def test_numactl_without_distances_or_sizes():
    """Older kernels / numactl: no SLIT, and sizes numactl could not read."""
    text = NUMACTL["hsw"].split("node distances:")[0] + "No distance information available.\n"
    text = text.replace("node 1 size: 129010 MB", "node 1 size: <not available>")
    t = parse_numactl(text)
    assert t.distances_assumed and t.distances == ((10, 20), (20, 10))
    assert t.node(1).mem_total_bytes is None and t.node(1).mem_free_bytes == 128514 << 20


def test_memoryless_node_reads_as_no_memory():
    text = NUMACTL["hsw"].replace("node 1 size: 129010 MB", "node 1 size: 0 MB").replace(
        "node 1 free: 128514 MB", "node 1 free: 0 MB")
    t = parse_numactl(text)
    assert not t.node(1).has_memory and t.memory_node_ids() == (0,)


def test_lscpu_without_numa_lines_is_one_node_only_when_complete():
    whole = "".join(ln for ln in LSCPU["kvm"].splitlines(keepends=True) if "NUMA" not in ln)
    t = parse_lscpu(whole)
    assert t.node_ids == (0,) and t.node(0).cpus == (0, 1) and t.distances_assumed
    # Cut before the Vulnerability lines, it could be a two-node machine cut short.
    cut = whole.split("Vulnerability")[0]
    with pytest.raises(TopologyError, match="truncated"):
        parse_lscpu(cut)


def test_lscpu_hex_masks_and_cpuless_node():
    text = LSCPU["hsw"].replace("0-15,32-47", "0x0000ffff0000ffff").replace(
        "16-31,48-63", "0xffff0000,ffff0000").replace("NUMA node(s):          2",
                                                      "NUMA node(s):          3")
    text += "NUMA node2 CPU(s):     \n"
    t = parse_lscpu(text)
    assert t.node(0).cpus == (*range(16), *range(32, 48)) and t.node(2).cpus == ()


@pytest.mark.parametrize(("text", "message"), [
    (LSCPU["hsw"] + LSCPU["hsw"], "a second 'NUMA node\\(s\\):' line"),
    ("Architektur:  x86_64\nNUMA-Knoten:  2\nNUMA-Knoten0 CPU(s):  0-3\n", "localized lscpu"),
])
def test_lscpu_refusals(text, message):
    with pytest.raises(TopologyError, match=message):
        parse_lscpu(text)
