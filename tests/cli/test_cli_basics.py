"""The command line: exit codes, one-line errors, topology output."""

from __future__ import annotations

import json

import pytest

from numaplan.cli.main import main
from numaplan.topology import synthetic_topology, write_sysfs_tree


def test_topology_this_machine(capsys):
    assert main(["topology"]) == 0
    out = capsys.readouterr().out
    assert "NUMA node(s)" in out and "distances (SLIT" in out


def test_topology_json_roundtrip(tmp_path, capsys, topo_file):
    out = tmp_path / "t.json"
    assert main(["topology", "--numactl-file", str(topo_file("epyc")), "--json",
                 "-o", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["schema_version"] == 1 and len(data["nodes"]) == 8
    assert main(["topology", "--topology", str(out)]) == 0
    assert "memory only" not in capsys.readouterr().out


def test_topology_fake_sysfs(tmp_path, capsys):
    write_sysfs_tree(synthetic_topology(sockets=2, nodes_per_socket=2, memoryless_nodes=[1],
                                        cpuless_nodes_per_socket=1), tmp_path)
    assert main(["topology", "--sysfs-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "cpu only (memoryless)" in out and "memory only (no CPUs)" in out


@pytest.mark.parametrize(("content", "code", "message"), [
    ("", 1, "empty numactl -H output"),
    ("garbage\n", 1, "not numactl -H output"),
    ("available: 2 nodes (0-1)\nnode 0 cpus: 0\n", 1, "truncated"),
])
def test_bad_inputs_one_line(tmp_path, capsys, content, code, message):
    p = tmp_path / "dump.txt"
    p.write_text(content)
    assert main(["topology", "--numactl-file", str(p)]) == code
    err = capsys.readouterr().err
    assert message in err and str(p) in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_bad_json_version(tmp_path, capsys):
    p = tmp_path / "t.json"
    d = json.loads(synthetic_topology(sockets=1).to_json())
    d["schema_version"] = 7
    p.write_text(json.dumps(d))
    assert main(["topology", "--topology", str(p)]) == 1
    assert "unknown topology schema_version 7" in capsys.readouterr().err


def test_usage_errors(capsys):
    assert main(["topology", "--nope"]) == 2
    assert main(["no-such-command"]) == 2
    assert main([]) == 2


def test_two_sources_rejected(capsys, topo_file, tmp_path):
    assert main(["topology", "--numactl-file", str(topo_file("hsw")),
                 "--sysfs-root", str(tmp_path)]) == 2


def test_missing_file(capsys, tmp_path):
    assert main(["topology", "--numactl-file", str(tmp_path / "nope")]) == 1
    assert "file not found" in capsys.readouterr().err


def test_internal_error_exit_3(monkeypatch, capsys):
    import numaplan.cli.topology as t

    def boom(args):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(t, "topology_from_args", boom)
    assert main(["topology"]) == 3
    err = capsys.readouterr().err
    assert "internal error" in err and "Traceback" not in err
