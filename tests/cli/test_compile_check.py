"""`numaplan compile` and `numaplan check` as a user runs them."""

from __future__ import annotations

import json

import pytest

from numaplan.cli.main import main
from numaplan.model.presets import write_hf_config
from numaplan.topology import sample_path
from tests.model.mlc_fixtures import write_mlc_dir

from ..plan.helpers import GOLDEN_MODEL

EPYC = str(sample_path("epyc"))
HSW = str(sample_path("hsw"))


@pytest.fixture
def hf_dir(tmp_path):
    d = tmp_path / "golden-llama"
    write_hf_config(d, "tiny-llama", **GOLDEN_MODEL)
    return d


def compile_args(model, out, *extra):
    return ["compile", str(model), "--quantization", "q4f16_1", "--numactl-file", EPYC,
            "-o", str(out), *extra]


def test_compile_writes_plan_and_report(hf_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(compile_args(hf_dir, out, "--tp", "8")) == 0
    text = capsys.readouterr().out
    assert "plan:" in text and "lower bound" in text and "baselines" in text
    plan = json.loads((out / "numa-plan.json").read_text())
    assert plan["request"]["tensor_parallel_shards"] == 8
    report = json.loads((out / "numa-plan.report.json").read_text())
    assert "greedy" in report["solve_s"]


def test_default_w_is_largest_valid_not_above_cpu_nodes(hf_dir, tmp_path):
    assert main(compile_args(hf_dir, tmp_path / "o")) == 0
    plan = json.loads((tmp_path / "o" / "numa-plan.json").read_text())
    assert plan["request"]["tensor_parallel_shards"] == 8


def test_compile_real_mlc_dir(tmp_path):
    d = write_mlc_dir(tmp_path / "mlc", num_key_value_heads=4, num_attention_heads=4)
    assert main(["compile", str(d), "--numactl-file", HSW, "-o", str(tmp_path / "o"),
                 "--tp", "2"]) == 0


@pytest.mark.parametrize(("breakage", "message"), [
    (lambda d: (d / "tensor-cache.json").unlink(), "tensor-cache.json"),
    (lambda d: (d / "mlc-chat-config.json").write_text("{oops"), "invalid JSON"),
    (lambda d: (d / "mlc-chat-config.json").write_text("{}"), "mlc-chat-config.json"),
    (lambda d: _edit_index(d, lambda r: r.update(dataPath="../../etc/passwd")), "leaves the model"),
    (lambda d: _edit_index(d, lambda r: r["records"][0].update(shape=[-1, 4])), "negative"),
    (lambda d: _edit_index(d, lambda r: r["records"][0].update(dtype="float7")), "dtype"),
])
def test_malformed_model_dirs(tmp_path, capsys, breakage, message):
    d = write_mlc_dir(tmp_path / "mlc")
    breakage(d)
    out = tmp_path / "o"
    assert main(["compile", str(d), "--numactl-file", HSW, "-o", str(out), "--tp", "2"]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()  # nothing half-written


def _edit_index(d, fn):
    p = d / "tensor-cache.json"
    doc = json.loads(p.read_text())
    fn(doc["records"][0])
    p.write_text(json.dumps(doc))


def test_missing_model_dir(tmp_path, capsys):
    assert main(["compile", str(tmp_path / "nope"), "--numactl-file", HSW]) == 1
    assert "model directory not found" in capsys.readouterr().err


def test_impossible_requests(hf_dir, tmp_path, capsys):
    assert main(compile_args(hf_dir, tmp_path / "a", "--tp", "3")) == 1
    assert "valid values: 1, 2, 4, 8" in capsys.readouterr().err
    assert main(compile_args(hf_dir, tmp_path / "b", "--tp", "2", "--node-affinity", "0:9")) == 1
    assert "no usable CPUs" in capsys.readouterr().err
    assert main(compile_args(hf_dir, tmp_path / "c", "--node-affinity", "zero")) == 2
    assert main(compile_args(hf_dir, tmp_path / "d", "--numa-inter-node-penalty", "2")) in (1, 2)
    assert not any((tmp_path / x).exists() for x in "abcd")


def test_does_not_fit(tmp_path, capsys):
    d = tmp_path / "big"
    write_hf_config(d, "llama3-70b")
    topo = tmp_path / "small.txt"
    topo.write_text(open(HSW).read().replace("128788 MB", "8000 MB").replace(
        "128163 MB", "7000 MB").replace("129010 MB", "8000 MB").replace("128514 MB", "7000 MB"))
    assert main(["compile", str(d), "--quantization", "q0f16", "--numactl-file", str(topo),
                 "-o", str(tmp_path / "o"), "--tp", "2"]) == 1
    err = capsys.readouterr().err
    assert "lacks" in err and "bytes" in err


def test_check_ok_then_stale(hf_dir, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(compile_args(hf_dir, out, "--tp", "4")) == 0
    base = ["check", str(out), "--model", str(hf_dir), "--quantization", "q4f16_1"]
    assert main([*base, "--numactl-file", EPYC]) == 0
    assert "OK" in capsys.readouterr().out
    # Another machine: stale topology, nodes missing.
    assert main([*base, "--numactl-file", HSW]) == 1
    assert "stale: the topology" in capsys.readouterr().out
    # The model changed.
    write_hf_config(hf_dir, "tiny-llama", **{**GOLDEN_MODEL, "num_hidden_layers": 6})
    assert main([*base, "--numactl-file", EPYC]) == 1
    assert "model index changed" in capsys.readouterr().out


def test_check_detects_suboptimal_plan(hf_dir, tmp_path, capsys):
    out = tmp_path / "o"
    # A plan forced onto one node is valid but far from what a fresh solve finds.
    assert main(compile_args(hf_dir, out, "--tp", "4", "--node-affinity",
                             "0:0,1:0,2:0,3:0")) == 0
    plan = json.loads((out / "numa-plan.json").read_text())
    plan["request"]["node_affinity"] = {}
    (out / "numa-plan.json").write_text(json.dumps(plan))
    assert main(["check", str(out), "--model", str(hf_dir), "--quantization", "q4f16_1",
                 "--numactl-file", EPYC]) == 1
    assert "not optimal" in capsys.readouterr().out


def test_check_bad_plan_file(tmp_path, hf_dir, capsys):
    p = tmp_path / "numa-plan.json"
    p.write_text("{}")
    assert main(["check", str(p), "--model", str(hf_dir), "--numactl-file", EPYC]) == 1
    assert "schema_version" in capsys.readouterr().err


def test_memory_spec_and_a_sizing_only_preset(tmp_path, capsys):
    # A machine nobody here has, a format without kernels: planned and priced, never built.
    model = tmp_path / "llama3-8b"
    write_hf_config(model, "llama3-8b")
    out = tmp_path / "out"
    assert main(["compile", str(model), "--quantization", "int8_weight_only",
                 "--numactl-file", str(sample_path("hsw")), "--memory-spec", "4x2133@0.8",
                 "--tp", "2", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "int8_weight_only is a sizing-only preset" in text
    assert "no compute term" in text and "nominal" in text
    plan = json.loads((out / "numa-plan.json").read_text())
    assert plan["cost_model"]["method"] == "memory-spec" and plan["cost_model"]["nominal"]
    assert plan["prediction"]["compute_source"] is None
    assert plan["cost_model"]["params"]["node0"].endswith("= 54.6 GB/s")
