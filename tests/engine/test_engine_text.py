"""The Engine with text: one or several prompts, and OpenAI-style chat completions, on a model
converted from a small GGUF file (it has a tokenizer and a chat template)."""

from __future__ import annotations

import pytest

pytest.importorskip("gguf")

from numaplan.engine import Engine, EngineConfig

pytestmark = [pytest.mark.tvm, pytest.mark.slow]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from numaplan.convert.convert import convert_gguf
    from tests.convert.test_convert import write_gguf

    root = tmp_path_factory.mktemp("engine-text")
    write_gguf(root / "m.gguf", "llama")
    convert_gguf(root / "m.gguf", root / "model", quantization="q0f32")
    with Engine(EngineConfig(model=str(root / "model"), tensor_parallel_shards=1,
                             cache_dir=str(root / "cache"))) as eng:
        yield eng


def test_generate_text_ids_and_batches(engine):
    text = engine.generate("t1 x3 x4", max_new_tokens=5, ignore_eos=True)
    assert isinstance(text, str)
    ids = engine.generate([1, 5, 9], max_new_tokens=5)
    assert isinstance(ids, list) and len(ids) == 5 and all(isinstance(i, int) for i in ids)
    both = engine.generate(["t1 x3 x4", [1, 5, 9]], max_new_tokens=5, ignore_eos=True)
    assert both == [text, ids]  # batched = alone (greedy)


def test_chat_completions_plain_and_streamed(engine):
    messages = [{"role": "user", "content": "t1 x7"}]
    done = engine.chat.completions.create(messages=messages, max_tokens=6)
    assert done.object == "chat.completion" and done.choices[0].finish_reason in ("stop",
                                                                                   "length")
    assert done.usage.completion_tokens <= 6
    chunks = list(engine.chat.completions.create(messages=messages, max_tokens=6, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == done.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == done.choices[0].finish_reason
    with pytest.raises(Exception, match="logprobs"):
        engine.chat.completions.create(messages=messages, logprobs=True)
