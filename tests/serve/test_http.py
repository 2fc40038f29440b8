"""The endpoints of a running server on the small model: answers in OpenAI's shapes, streamed
and whole; every malformed request a 4xx with a JSON error, the server unharmed."""

from __future__ import annotations

import json

import httpx
import pytest

pytestmark = [pytest.mark.tvm, pytest.mark.slow]

CHAT = {"messages": [{"role": "user", "content": "t1 x3 x4"}], "max_tokens": 8}


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["message"], body
    return body["error"]


@pytest.mark.parametrize(("path", "body", "needle"), [
    ("/v1/chat/completions", b'{"messages": [', "malformed JSON"),
    ("/v1/chat/completions", b"\xff\xfe", "malformed JSON"),
    ("/v1/chat/completions", b"[1, 2]", "JSON object"),
    ("/v1/chat/completions", json.dumps({**CHAT, "logprobs": True}).encode(), "logprobs"),
    ("/v1/chat/completions", json.dumps({**CHAT, "max_tokens": 10**9}).encode(),
     "context window"),
    ("/v1/chat/completions", json.dumps({**CHAT, "max_tokens": -5}).encode(), "max_tokens"),
    ("/v1/chat/completions", json.dumps({**CHAT, "n": 2}).encode(), "n"),
    ("/v1/chat/completions", json.dumps({**CHAT, "temperature": "hot"}).encode(),
     "temperature"),
    ("/v1/chat/completions", json.dumps({"messages": []}).encode(), "messages"),
    ("/v1/chat/completions", json.dumps({"messages": [{"role": "robot", "content": "x"}]})
     .encode(), "robot"),
    ("/v1/chat/completions", json.dumps({**CHAT, "stop": [""]}).encode(), "stop"),
    ("/v1/completions", json.dumps({"prompt": [3] * 300, "max_tokens": 4}).encode(),
     "context window"),
    ("/v1/completions", json.dumps({"prompt": [1, 2, 10**6]}).encode(), "token ids"),
    ("/v1/completions", json.dumps({"prompt": ""}).encode(), "prompt"),
])
def test_bad_requests_get_400_with_a_json_error(tiny_server, path, body, needle):
    r = httpx.post(tiny_server.url + path, content=body, timeout=30,
                   headers={"content-type": "application/json"})
    err = _error(r, 400)
    assert needle in err["message"] and err["type"] == "invalid_request_error"


def test_wrong_routes_and_methods(tiny_server):
    assert _error(httpx.get(tiny_server.url + "/v1/nothing", timeout=10), 404)
    assert _error(httpx.get(tiny_server.url + "/v1/chat/completions", timeout=10), 405)


def test_answers_after_abuse(tiny_server):
    # (runs after the bad requests above: the server is unharmed)
    r = httpx.post(tiny_server.url + "/v1/chat/completions", json=CHAT, timeout=60)
    assert r.status_code == 200, r.text
    done = r.json()
    assert done["object"] == "chat.completion" and done["id"].startswith("chatcmpl-")
    assert done["choices"][0]["finish_reason"] in ("stop", "length")
    assert 1 <= done["usage"]["completion_tokens"] <= 8
    # The same request streamed: the same text, piece by piece, then [DONE].
    pieces, finish = [], None
    with httpx.stream("POST", tiny_server.url + "/v1/chat/completions",
                      json={**CHAT, "stream": True}, timeout=60) as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in s.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    for ln in lines[:-1]:
        chunk = json.loads(ln.removeprefix("data: "))
        assert chunk["object"] == "chat.completion.chunk"
        pieces.append(chunk["choices"][0]["delta"].get("content") or "")
        finish = chunk["choices"][0]["finish_reason"] or finish
    assert "".join(pieces) == done["choices"][0]["message"]["content"]
    assert finish == done["choices"][0]["finish_reason"]


def test_models_health_metrics(tiny_server):
    models = httpx.get(tiny_server.url + "/v1/models", timeout=10).json()
    assert models["object"] == "list" and models["data"][0]["id"] == "model"
    health = httpx.get(tiny_server.url + "/health", timeout=10).json()
    assert health["status"] == "ok"
    httpx.post(tiny_server.url + "/v1/completions", json={"prompt": "t1", "max_tokens": 3},
               timeout=60).raise_for_status()
    m = httpx.get(tiny_server.url + "/metrics", timeout=30)
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    values = {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in m.text.splitlines()
              if ln and not ln.startswith("#")}
    assert values['numaplan_requests_total{endpoint="/v1/completions",status="200"}'] >= 1
    assert values["numaplan_output_tokens_total"] >= 3
    assert values["numaplan_time_to_first_token_seconds_count"] >= 1
    assert values["numaplan_time_per_output_token_seconds_count"] >= 2
    assert values["numaplan_queue_depth"] == 0
    # Measured by the worker's page audit: every weight byte on its planned node.
    assert values["numaplan_weight_bytes_on_planned_node_ratio"] == 1.0
    assert values["numaplan_collective_inter_node_ratio"] == 0.0
