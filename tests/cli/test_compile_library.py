"""`numaplan compile` builds the library of a model directory that carries a Relax module."""

from __future__ import annotations

import json
import os
import stat

import pytest

from numaplan.cli.main import main
from numaplan.topology import synthetic_topology

pytestmark = pytest.mark.tvm


@pytest.fixture(scope="module")
def example_dir(tmp_path_factory):
    from numaplan.tiny_llama.build import build_model_dir

    return build_model_dir(tmp_path_factory.mktemp("ex") / "tiny-llama", size="default")


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    p = tmp_path_factory.mktemp("topo") / "t.json"
    p.write_text(synthetic_topology(sockets=2, cores_per_node=2).to_json())
    return p


def test_builds_library_with_plan_inside(example_dir, two_nodes, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compile", str(example_dir), "--topology", str(two_nodes), "--tp", "2",
                 "-o", str(out)]) == 0
    text = capsys.readouterr().out
    lib = out / "tiny-llama-numa-llvm.so"
    assert lib.exists() and f"library: {lib}" in text
    assert stat.S_IMODE(os.stat(out / "numa-plan.json").st_mode) & 0o044  # readable by others
    report = json.loads((out / "numa-plan.report.json").read_text())
    assert report["library"]["nbytes"] == lib.stat().st_size

    import tvm
    import tvm_ffi
    from tvm import relax

    for op in ("allreduce", "broadcast_from_worker0", "allgather", "scatter_from_worker0"):
        if tvm.get_global_func(f"numaplan.ccl.{op}", allow_missing=True) is None:
            tvm_ffi.register_global_func(f"numaplan.ccl.{op}", lambda *a: None)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
    assert str(vm["_numaplan_plan"]()) == (out / "numa-plan.json").read_text()


def test_w_the_builder_does_not_offer(example_dir, two_nodes, tmp_path, capsys):
    """A directory's own builder (numaplan-model.json) wins over numaplan's definitions, with
    the worker counts it offers."""
    own = {"schema_version": 1, "kind": "relax-nn-builder",
           "builder": "numaplan.nn.export:build_ir_module", "tensor_parallel_shards": [1, 2]}
    (example_dir / "numaplan-model.json").write_text(json.dumps(own))
    out = tmp_path / "o"
    try:
        assert main(["compile", str(example_dir), "--topology", str(two_nodes), "--tp", "4",
                     "-o", str(out)]) == 1
    finally:
        (example_dir / "numaplan-model.json").unlink()
    assert "offers tensor_parallel_shards [1, 2], not 4" in capsys.readouterr().err
    assert not out.exists()


def test_dir_without_relax_module_gets_plan_only(tmp_path, capsys, two_nodes):
    from numaplan.model.presets import write_hf_config

    d = tmp_path / "hf"
    write_hf_config(d, "tiny-llama")
    assert main(["compile", str(d), "--quantization", "q0f16", "--topology", str(two_nodes),
                 "--tp", "2", "-o", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "library: not built" in out and "mlc-chat-config.json" in out
    assert (tmp_path / "o" / "numa-plan.json").exists()


def test_unsupported_model_type_gets_plan_and_the_supported_list(tmp_path, capsys, two_nodes):
    import json

    from numaplan.model.random_model import chat_config, write_random_model

    d = tmp_path / "m"
    doc = chat_config("llama", "q0f16", hidden_size=64, intermediate_size=128,
                      num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=1,
                      vocab_size=64)
    write_random_model(d, doc)
    doc["model_type"] = "gpt_neox"  # planned by its tensor names, but numaplan cannot build it
    (d / "mlc-chat-config.json").write_text(json.dumps(doc))
    assert main(["compile", str(d), "--topology", str(two_nodes), "--tp", "2",
                 "-o", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "no model definition for model_type 'gpt_neox'" in out
    assert "llama, mistral, qwen2, phi3" in out
    assert (tmp_path / "o" / "numa-plan.json").exists()
