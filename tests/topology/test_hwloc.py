"""hwloc 2.x XML: the fixtures real lstopo wrote (``data/hwloc/make.sh``) read to the right
nodes, CPUs, memory, packages and distances; broken documents are refused in one line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from numaplan.cli.main import build_parser, main
from numaplan.errors import TopologyError
from numaplan.topology import parse_hwloc_xml, read_hwloc_file, read_sample

HWLOC = Path(__file__).with_name("data") / "hwloc"


def _text(name: str) -> str:
    return (HWLOC / name).read_text()


def test_two_packages_two_nodes_each():
    t = read_hwloc_file(HWLOC / "pack2_numa2_core4_pu2.xml")
    assert t.node_ids == (0, 1, 2, 3)
    assert [n.cpus for n in t.nodes] == [tuple(range(8 * i, 8 * i + 8)) for i in range(4)]
    assert all(n.mem_total_bytes == 1 << 30 and n.mem_free_bytes is None for n in t.nodes)
    assert [n.socket_id for n in t.nodes] == [0, 0, 1, 1]
    assert t.physical_cores(0) == ((0, 1), (2, 3), (4, 5), (6, 7))
    assert t.cpus[9].core_id == 4 and t.cpus[9].socket_id == 0 and t.cpus[9].node_id == 1
    # No distances recorded: assumed, and said so.
    assert t.distances_assumed and t.distances[0] == (10, 20, 20, 20)
    assert t.allowed_cpus == tuple(range(32)) and t.allowed_mem_node_ids == (0, 1, 2, 3)


def test_recorded_latency_matrix_is_used():
    t = read_hwloc_file(HWLOC / "pack2_numa2_slit.xml")
    assert not t.distances_assumed
    assert t.distances == ((10, 12, 32, 32), (12, 10, 32, 32), (32, 32, 10, 12),
                           (32, 32, 12, 10))
    assert [t.socket_of(n) for n in t.node_ids] == [0, 0, 1, 1]


def test_single_node():
    t = read_hwloc_file(HWLOC / "single_node.xml")
    assert t.node_ids == (0,) and t.node(0).cpus == tuple(range(8))
    assert t.distances == ((10,),)


def test_xeon_max_flat_matches_the_numactl_sample():
    """HBM nodes attached beside the DDR nodes are CPU-less, as Linux reports them."""
    t = read_hwloc_file(HWLOC / "xeonmax_flat.xml")
    sample = read_sample("xeonmax")
    assert t.node_ids == sample.node_ids
    assert t.distances == sample.distances  # the matrix is split over two <u64values>
    assert t.cpu_node_ids() == sample.cpu_node_ids() == (0, 1)
    assert t.node(2).cpus == () and t.node(2).mem_total_bytes == 64 * 10**9
    assert t.node(0).mem_total_bytes == 512 * 10**9
    assert [n.socket_id for n in t.nodes] == [0, 1, 0, 1]


def test_memoryless_cpu_nodes_and_a_cxl_node():
    t = read_hwloc_file(HWLOC / "memoryless_cxl.xml")
    assert [n.cpus for n in t.nodes] == [(0, 1, 2, 3), (4, 5, 6, 7), ()]
    assert [n.has_memory for n in t.nodes] == [False, False, True]
    assert t.memory_node_ids() == (2,) and t.cpu_node_ids() == (0, 1)
    assert t.node(2).socket_id is None  # attached to the machine, not a package


def test_exporting_process_cpuset_is_kept():
    text = re.sub(r'allowed_cpuset="[^"]*"', 'allowed_cpuset="0x000000f0"',
                  _text("pack2_numa2_core4_pu2.xml"), count=1)
    text = re.sub(r'allowed_nodeset="[^"]*"', 'allowed_nodeset="0x00000002"', text, count=1)
    t = parse_hwloc_xml(text)
    assert t.allowed_cpus == (4, 5, 6, 7) and t.allowed_mem_node_ids == (1,)


def test_memcache_and_gp_indexing_read_the_same():
    base = read_hwloc_file(HWLOC / "xeonmax_flat.xml")
    text = _text("xeonmax_flat.xml")
    # A memory-side cache in front of node P#0 (hwloc 2.1+ on cache-mode HBM).
    node0 = re.search(r'\s*<object type="NUMANode" os_index="0".*?</object>', text, re.S)
    text = text.replace(node0.group(0),
                        '<object type="MemCache" cache_size="1024">' + node0.group(0) + "</object>")
    # Distances may name their objects by gp_index instead of os_index.
    gp = {m.group(1): m.group(2) for m in re.finditer(
        r'type="NUMANode" os_index="(\d+)"[^>]*gp_index="(\d+)"', text)}
    text = re.sub(r'indexing="os">\s*<indexes length="\d+">([^<]*)</indexes>',
                  lambda m: 'indexing="gp"><indexes>' + " ".join(
                      gp[i] for i in m.group(1).split()) + "</indexes>", text)
    t = parse_hwloc_xml(text)
    assert t.model_dump(exclude={"source"}) == base.model_dump(exclude={"source"})


@pytest.mark.parametrize(("edit", "message"), [
    (lambda s: "", "not XML, or cut short"),
    (lambda s: s[: len(s) // 2], "not XML, or cut short"),
    (lambda s: "<html><body/></html>", "not hwloc XML: the root element is <html>"),
    (lambda s: s.replace('<topology version="2.0">', "<topology>"),
     "hwloc XML version 1.x is not supported"),
    (lambda s: re.sub(r"<u64values[^>]*>[^<]*</u64values>\s*</distances2>", "</distances2>", s),
     "4 indexes and 10 values for 4 objects, expected 4 and 16"),
    (lambda s: s.replace('os_index="3" cpuset', 'os_index="x" cpuset', 1),
     "has os_index='x', expected a non-negative integer"),
    (lambda s: s.replace('type="PU" os_index="1"', 'type="PU" os_index="0"'),
     "PU P#0 appears twice"),
    (lambda s: s.replace('type="NUMANode"', 'type="Misc"'), "PU P#0 has no NUMANode above it"),
    (lambda s: s.replace('nbobjs="4"', 'nbobjs="3"').replace(">0 2 1 3 <", ">0 2 1 <"),
     "4 indexes|values for 3 objects"),
])
def test_broken_documents(edit, message):
    text = edit(_text("xeonmax_flat.xml"))
    with pytest.raises(TopologyError, match=message) as exc:
        parse_hwloc_xml(text, source="node.xml")
    assert str(exc.value).startswith("node.xml: ") and "\n" not in str(exc.value)


def test_cut_anywhere_is_refused():
    text = _text("pack2_numa2_slit.xml")
    end = text.rindex("</topology>")
    for i in range(0, end, 37):
        with pytest.raises(TopologyError):
            parse_hwloc_xml(text[:i])


def test_cli_hwloc_file(tmp_path, capsys):
    assert main(["topology", "--hwloc-file", str(HWLOC / "xeonmax_flat.xml"), "--json"]) == 0
    assert '"source": "hwloc:' in capsys.readouterr().out
    bad = tmp_path / "bad.xml"
    bad.write_text("<topology version='2.0'>")
    assert main(["topology", "--hwloc-file", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"numaplan: error: {bad}: not XML") and "\n" not in err
    assert main(["topology", "--hwloc-file", str(tmp_path / "nope.xml")]) == 1


@pytest.mark.parametrize("command", [["topology"], ["probe"], ["compile", "m"],
                                     ["check", "p", "--model", "m"]])
def test_every_topology_command_takes_hwloc_file(command):
    args = build_parser().parse_args([*command, "--hwloc-file", "t.xml"])
    assert args.hwloc_file == "t.xml"
