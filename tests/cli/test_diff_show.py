"""``numaplan diff`` and ``numaplan show``: plan comparison in words, tables, the PNG."""

from __future__ import annotations

import json

import pytest

from numaplan.cli import main as cli_main
from numaplan.cost import cost_from_slit
from numaplan.model import load_workload
from numaplan.model.presets import write_hf_config
from numaplan.plan import PlanOptions, make_plan, read_plan, write_plan
from numaplan.plan.diff import diff_plans, render_diff
from numaplan.plan.formatting import describe_tensors
from numaplan.plan.picture import render_plan_png
from numaplan.plan.schema import PlanTensor
from numaplan.plan.table import render_plan_table
from numaplan.plan.views import cross_node_reads, remote_groups
from numaplan.topology import read_sample, synthetic_topology

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def main(monkeypatch):
    """``numaplan.cli.main.main`` with diff and show registered (whether or not main.py has them
    yet)."""
    monkeypatch.setitem(cli_main.COMMANDS, "diff", "numaplan.cli.diff")
    monkeypatch.setitem(cli_main.COMMANDS, "show", "numaplan.cli.show")
    return cli_main.main


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-llama")
    write_hf_config(d, "tiny-llama")
    return load_workload(d, quantization="q4f16_1")


def _plan(workload, topo, **opts):
    opts.setdefault("tensor_parallel_shards", 2)
    return make_plan(workload, topo, cost_from_slit(topo), PlanOptions(**opts),
                     model_name="tiny-llama").plan


def _spill_topology(workload, extra_bytes: int):
    """Two one-node sockets; node 1 has just the per-worker reserve plus ``extra_bytes``."""
    from numaplan.plan import build_problem

    roomy = synthetic_topology(sockets=2)
    p = build_problem(workload, roomy, cost_from_slit(roomy), num_workers=2)
    # Capacity = total * (1 - headroom 0.10) (a synthetic machine is not the live one).
    mem = int((p.reserve_bytes_per_worker + extra_bytes) / 0.9) + 4096
    return synthetic_topology(sockets=2, mem_per_node_bytes=[1 << 30, mem])


@pytest.fixture(scope="module")
def plans(workload, tmp_path_factory):
    """Plans that differ in one way each, written to disk (``plans[name] = (plan, dir)``)."""
    four = synthetic_topology(sockets=2, nodes_per_socket=2)
    pinned = {"node_affinity": {0: 0, 1: 1}, "numa_prefer_local_memory": False}
    made = {
        "base": _plan(workload, four),
        "w1": _plan(workload, four, tensor_parallel_shards=1),
        "nodes01": _plan(workload, four, numa_nodes=(0, 1)),
        "nodes23": _plan(workload, four, numa_nodes=(2, 3)),
        "roomy": _plan(workload, synthetic_topology(sockets=2), **pinned),
        "spill": _plan(workload, _spill_topology(workload, 10_000), **pinned),
        "epyc": _plan(workload, read_sample("epyc")),
    }
    root = tmp_path_factory.mktemp("plans")
    return {k: (p, write_plan(p, root / k).parent) for k, p in made.items()}


# --------------------------------------------------------------------------------------------
# diff


def test_identical_plans_have_an_empty_diff(plans, main, capsys):
    plan, path = plans["base"]
    d = diff_plans(plan, read_plan(path))
    assert d.equal and d.items == ()
    assert render_diff(d) == "no differences"
    assert main(["diff", str(path), str(path / "numa-plan.json"), "--exit-code"]) == 0
    assert capsys.readouterr().out.strip() == "no differences"


def test_changing_w_shows_in_words(plans, main, capsys):
    (a, pa), (b, pb) = plans["w1"], plans["base"]
    d = diff_plans(a, b)
    text = render_diff(d)
    assert "W (tensor_parallel_shards): 1 -> 2" in text
    assert "workers 1 added" in text
    assert any("predicted" in i.text for i in d.section("prediction"))
    # Pieces follow their workers in both plans: no tensor noise for a W change alone.
    assert d.section("tensors") == ()
    # A report: exit 0 even when different, unless --exit-code.
    assert main(["diff", str(pa), str(pb)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"plan diff {pa} -> {pb}:") and "request:" in out
    assert main(["diff", str(pa), str(pb), "--exit-code"]) == 1


def test_moving_nodes_shows_in_words(plans):
    (a, _), (b, _) = plans["nodes01"], plans["nodes23"]
    d = diff_plans(a, b)
    text = render_diff(d)
    assert "numa_nodes: 0-1 -> 2-3" in text
    assert "topology fingerprint changed" in text
    moved = [i.text for i in d.section("workers")]
    assert moved and all("moved from node" in t for t in moved), moved
    for w in a.workers:
        assert f"worker {w.worker_id}: moved from node {w.node_id} to node " \
               f"{b.workers[w.worker_id].node_id}" in text


def test_spill_shows_in_words(plans, main, capsys):
    (a, pa), (b, pb) = plans["roomy"], plans["spill"]
    assert all(t.homes == "local" for t in a.tensors)
    assert any(t.homes != "local" for t in b.tensors)
    d = diff_plans(a, b)
    tensors = [i.text for i in d.section("tensors")]
    assert any("pieces of node 1 workers moved from node 1 (local) to node 0" in t
               for t in tensors), tensors
    assert all("layer" in t or "embedding" in t for t in tensors)
    assert any("capacity" in i.text for i in d.section("nodes"))
    # ...and back: the pieces come home.
    back = render_diff(diff_plans(b, a))
    assert "moved from node 0 to node 1 (local)" in back
    # The JSON form carries the same findings.
    assert main(["diff", str(pa), str(pb), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["equal"] is False
    assert [i["text"] for i in doc["items"]] == [i.text for i in d.items]


def test_spill_is_listed(plans):
    plan, _ = plans["spill"]
    groups = remote_groups(plan)
    assert groups and {(g.reader_node_id, g.home_node_id) for g in groups} == {(1, 0)}
    assert cross_node_reads(plan)[(1, 0)] > 0
    table = render_plan_table(plan)
    assert "node 1 workers read from node 0: layer" in table


def test_describe_tensors_groups_layer_runs():
    def t(layer, role):
        return PlanTensor(name=f"l{layer}.{role}", role=role, layer=layer, split_dim=0,
                          split_segments=None, replicated=False, piece_nbytes=1, homes="local")

    ts = [t(59, "mlp_out")] + [t(i, r) for i in range(60, 80) for r in ("mlp_out", "mlp_in")]
    ts.append(t(None, "lm_head"))
    assert describe_tensors(ts) == ("layer 59 mlp_out, layers 60-79 mlp_in/mlp_out, "
                                    "top-level lm_head")


# --------------------------------------------------------------------------------------------
# show


def _section(text: str, title: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index(title) + 2  # skip the header row
    out = []
    for line in lines[start:]:
        if not line.strip():
            break
        out.append(line.split())
    return out


@pytest.mark.parametrize("name", ["base", "epyc", "spill", "w1"])
def test_show_table_lists_every_node_and_worker(plans, main, capsys, name):
    plan, path = plans[name]
    assert main(["show", str(path)]) == 0
    out = capsys.readouterr().out
    nodes = _section(out, "nodes:")
    assert sorted(int(r[0]) for r in nodes) == sorted(n.node_id for n in plan.nodes)
    workers = _section(out, "workers:")
    assert [(int(r[0]), int(r[1]), r[2]) for r in workers] == \
        [(w.worker_id, w.node_id, w.cpus) for w in plan.workers]
    assert f"{plan.prediction.tokens_per_s:.2f} tokens/s" in out
    assert "lower bound" in out and "non-local tensors:" in out
    for name_ in plan.prediction.baselines:
        assert name_ in out


def test_show_png_is_written(plans, main, tmp_path, capsys, matplotlib_extra):
    _, path = plans["epyc"]
    png = tmp_path / "pics" / "plan.png"
    assert main(["show", str(path), "--png", str(png)]) == 0
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert f"wrote {png}" in capsys.readouterr().err
    assert [p.name for p in png.parent.iterdir()] == ["plan.png"]  # no temporary left behind
    # Same plan, same picture.
    again = render_plan_png(read_plan(path), tmp_path / "again.png")
    assert again.read_bytes() == data


def test_png_of_odd_shapes(plans, workload, tmp_path, matplotlib_extra):
    one = synthetic_topology(sockets=1)
    many = synthetic_topology(sockets=6, nodes_per_socket=3, cpuless_nodes_per_socket=1)
    for i, plan in enumerate([_plan(workload, one, tensor_parallel_shards=1),
                              _plan(workload, many), plans["spill"][0]]):
        out = render_plan_png(plan, tmp_path / f"{i}.png")
        assert out.read_bytes().startswith(PNG_MAGIC)
        render_plan_table(plan)


def test_png_does_not_show_the_directory_of_the_topology_file(plans, tmp_path,
                                                              matplotlib_extra):
    plan = plans["epyc"][0]
    pictures = []
    for source in ("numactl:/home/alice/t/epyc.txt", "numactl:/srv/bob/epyc.txt",
                   "numactl:epyc.txt"):
        moved = plan.model_copy(update={"topology": plan.topology.model_copy(
            update={"source": source})})
        pictures.append(render_plan_png(moved, tmp_path / "p.png").read_bytes())
    assert pictures[0] == pictures[1] == pictures[2]


def test_show_json_is_the_plan(plans, main, capsys):
    plan, path = plans["spill"]
    assert main(["show", str(path), "--json"]) == 0
    assert capsys.readouterr().out == plan.to_json()


@pytest.mark.parametrize("argv", [
    ["show", "{tmp}/missing"],
    ["show", "{tmp}/bad.json", "--png", "{tmp}/x.png"],
    ["diff", "{plan}", "{tmp}/missing"],
    ["diff", "{tmp}/bad.json", "{plan}", "--exit-code"],
])
def test_bad_plan_path_is_one_line(plans, main, tmp_path, capsys, argv):
    (tmp_path / "bad.json").write_text('{"schema_version": 1, "workers": []}')
    args = [a.format(tmp=tmp_path, plan=plans["base"][1]) for a in argv]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("numaplan: error: ")
    assert "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_details_without_words_still_differ(plans):
    plan, _ = plans["base"]
    co = plan.collectives
    tweaked = plan.model_copy(update={"collectives": co.model_copy(update={
        "choices": (co.choices[0].model_copy(update={"predicted_s": 1.0}), *co.choices[1:])})})
    d = diff_plans(plan, tweaked)
    assert not d.equal
    assert [i.section for i in d.items] == ["other"]
    assert "collectives.choices[0].predicted_s" in d.items[0].text
