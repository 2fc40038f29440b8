"""The MLC proposal's own Python examples run on numaplan, with only their imports changed.

``tests/data/proposal/snippets.md`` holds them verbatim. They run in order in one namespace, as a
reader would paste them into one session, in a directory where the proposal's model paths
(``path/to/model``, ``microsoft/DialoGPT-medium``) are local MLC model directories, with the
``numa_manager`` and ``current_worker_id`` that the proposal's fragments take for granted
supplied by a running engine. A snippet this machine cannot honour (eight workers on fewer cores)
must fail with a numaplan error that says why; everything else must run and mean something.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import pytest

import numaplan
from numaplan.errors import NumaplanError

pytestmark = pytest.mark.tvm

SNIPPETS = Path(__file__).resolve().parents[1] / "data" / "proposal" / "snippets.md"
#: A model every W up to 8 is valid for (8 KV heads), small enough to compile in seconds.
SIZE = dict(hidden_size=256, intermediate_size=768, num_attention_heads=8,
            num_key_value_heads=8, head_dim=32, num_hidden_layers=2, vocab_size=512,
            context_window_size=512, prefill_chunk_size=128)


def _snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", SNIPPETS.read_text(), re.S)


def _to_numaplan(code: str) -> str:
    """The proposal's code with its ``mlc_llm`` imports pointed at numaplan's."""
    code = re.sub(r"^from mlc_llm\.support\.numa_benchmark import", "from numaplan.bench import",
                  code, flags=re.M)
    return re.sub(r"^from mlc_llm(\.[\w.]+)? import", "from numaplan import", code, flags=re.M)


def _physical_cores() -> int:
    from numaplan.topology import read_sysfs

    topo = read_sysfs("/")
    return sum(len(topo.physical_cores(n)) for n in topo.cpu_node_ids())


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """A directory laid out as the proposal's paths, and a running engine as the manager."""
    from numaplan.tiny_llama.build import build_model_dir

    root = tmp_path_factory.mktemp("proposal")
    model = build_model_dir(root / "path" / "to" / "model", size=SIZE)
    (root / "microsoft").mkdir()
    (root / "microsoft" / "DialoGPT-medium").symlink_to(model)
    cache = root / "cache"
    old_cwd, old_cache = Path.cwd(), os.environ.get("NUMAPLAN_CACHE_DIR")
    os.chdir(root)
    os.environ["NUMAPLAN_CACHE_DIR"] = str(cache)
    engines: list = []
    real_init = numaplan.Engine.__init__

    def recording_init(self, config):  # every engine a snippet starts is closed afterwards
        real_init(self, config)
        engines.append(self)

    numaplan.Engine.__init__ = recording_init
    try:
        manager = numaplan.MLCEngine.from_pretrained(str(model), tensor_parallel_shards=1,
                                                     numa_tensor_parallel=True)
        manager.generate([5, 17, 99, 3], max_new_tokens=4)
        yield {"numa_manager": manager, "current_worker_id": 0}, engines
    finally:
        numaplan.Engine.__init__ = real_init
        for e in engines:
            e.close()
        os.chdir(old_cwd)
        if old_cache is None:
            os.environ.pop("NUMAPLAN_CACHE_DIR", None)
        else:
            os.environ["NUMAPLAN_CACHE_DIR"] = old_cache


def test_the_snippets_are_the_proposals():
    codes = _snippets()
    assert len(codes) == 14
    assert sum("from mlc_llm" in c for c in codes) == 8
    assert codes[0].startswith("from mlc_llm import MLCEngine\n")


def test_every_snippet_runs_or_says_why(session):
    namespace, _engines = session
    ns = dict(namespace)
    few_cores = _physical_cores() < 8
    printed: list[str] = []
    for i, code in enumerate(_snippets()):
        code = _to_numaplan(code)
        assert "mlc_llm" not in code
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(code, f"snippet {i}", "exec"), ns)
        except NumaplanError as exc:
            # Only `MLCEngine(engine_config)` may fail, and only for a reason the config gives:
            # eight workers on fewer cores, or a configuration stated without a model (the
            # tuning examples', which the logging example then starts).
            cfg, msg = ns.get("engine_config"), str(exc)
            assert "MLCEngine(engine_config)" in code, f"snippet {i}: {msg}"
            assert (cfg.model is None and "EngineConfig.model is not set" in msg) or \
                (cfg.tensor_parallel_shards == 8 and few_cores and
                 "8 workers need 8 physical cores" in msg), f"snippet {i}: {msg}"
        printed.append(out.getvalue())
    text = "".join(printed)
    # get_numa_topology: this machine's nodes.
    assert re.search(r"NUMA nodes: \d+\nNode 0: \d+ CPUs, \d+ MB", text)
    # The communicator and allocator of the running manager report measured figures.
    assert re.search(r"Inter-node communications: [\d.]+%", text)
    assert "Local memory allocations: 100.0%" in text
    # The benchmark printed a table, not a raw dict.
    assert "allreduce" in text.lower() and "{" not in text
    # A generic tensor gets a placement for a tensor of its shape.
    hint = ns["tensor_hint"]
    assert hint["planned"] is False and hint["piece_shape"] == [4096, 4096]
    assert hint["homes"][0]["nbytes"] == 4096 * 4096 * 4  # float32 model, W=1
    # The LlamaConfig's NUMA settings ride with the model built for 8 workers.
    model = ns["model"]
    assert model.config.numa_tensor_parallel and model.shards == 8
    assert ns["config"].enable_numa_tp and ns["config"].node_affinity == {0: 0, 1: 0, 2: 1, 3: 1}
    # MLCEngine.from_pretrained on a local directory, then re-made with NUMA settings.
    assert ns["engine"].config.numa_inter_node_penalty == 0.3
    assert ns["engine"].generate([1, 2, 3], max_new_tokens=2)


def test_a_hub_name_is_refused_with_why(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(numaplan.NumaplanError, match="not a local MLC model directory; "
                       "numaplan does not download models"):
        numaplan.MLCEngine.from_pretrained("microsoft/DialoGPT-medium")
    with pytest.raises(numaplan.NumaplanError, match=r"EngineConfig\.model is not set"):
        numaplan.MLCEngine(numaplan.EngineConfig(numa_tensor_parallel=True))
