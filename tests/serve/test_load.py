"""Load on loopback: 8 concurrent clients x 20 requests against one server whose queue is
smaller than the clients (continuous batching of 4 sequences, 2 waiting): every request is
answered exactly once, each answer equals the one its prompt gets alone (no sequence mixed
with another; sampled ones reproduce their seed), refusals are 429 with Retry-After, and the
batch really held several sequences at once."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.serve.conftest import running_server

pytestmark = [pytest.mark.tvm, pytest.mark.slow]

CLIENTS, PER_CLIENT = 8, 20
PROMPTS = [[1, 5, 9], [3, 4, 5, 6], [7], [10, 11], [12, 3, 12], [4, 4, 4, 4, 4], [20, 30],
           [40, 41, 42, 43, 44, 45]]
#: A request that keeps being refused gives up after this many tries (the test then fails).
MAX_TRIES = 400


def _request(k: int) -> dict:
    body = {"prompt": PROMPTS[k % len(PROMPTS)], "max_tokens": 4 + 3 * (k % 7)}
    if k % 3 == 0:  # sampled, with a seed of its own
        body |= {"temperature": 1.0, "top_p": 0.9, "seed": k}
    return body


def _ask(client: httpx.Client, url: str, body: dict, stream: bool) -> tuple[int, dict, str]:
    """(status, headers, text or error body) of one request."""
    if not stream:
        r = client.post(url, json=body)
        if r.status_code != 200:
            return r.status_code, dict(r.headers), r.text
        doc = r.json()
        return 200, {"id": doc["id"]}, doc["choices"][0]["text"]
    with client.stream("POST", url, json=body | {"stream": True}) as r:
        if r.status_code != 200:
            r.read()
            return r.status_code, dict(r.headers), r.text
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]", lines[-3:]
    chunks = [json.loads(ln.removeprefix("data: ")) for ln in lines[:-1]]
    assert len({c["id"] for c in chunks}) == 1
    return 200, {"id": chunks[0]["id"]}, "".join(c["choices"][0]["text"] for c in chunks)


def test_concurrent_clients(text_model, text_libs, tmp_path):
    with running_server(text_model, text_libs(1), tmp_path, "--max-queue", "2") as server:
        url = server.url + "/v1/completions"
        with httpx.Client(timeout=60) as c:
            # Each distinct request alone first: what it must get under load too.
            expected = {}
            for k in range(CLIENTS * PER_CLIENT):
                key = json.dumps(_request(k), sort_keys=True)
                if key not in expected:
                    status, _, text = _ask(c, url, _request(k), stream=False)
                    assert status == 200, text
                    expected[key] = text
        answers: dict[int, list[tuple[str, str]]] = {}
        refused: list[dict] = []
        errors: list[str] = []
        running_seen: list[int] = []
        stop = threading.Event()

        def client(i: int) -> None:
            with httpx.Client(timeout=60) as c:
                for j in range(PER_CLIENT):
                    k = i * PER_CLIENT + j
                    for _ in range(MAX_TRIES):
                        status, headers, text = _ask(c, url, _request(k), stream=i % 2 == 1)
                        if status != 429:
                            break
                        refused.append(headers)
                        time.sleep(0.01 * (1 + i))  # (Retry-After is 1 s: too slow here)
                    if status != 200:
                        errors.append(f"request {k}: {status} {text}")
                        continue
                    answers.setdefault(k, []).append((headers["id"], text))

        def watch() -> None:
            with httpx.Client(timeout=10) as c:
                while not stop.is_set():
                    running_seen.append(c.get(server.url + "/health").json()["running"])
                    time.sleep(0.005)

        watcher = threading.Thread(target=watch)
        watcher.start()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        stop.set()
        watcher.join(10)
        assert not any(t.is_alive() for t in threads), "clients still running after 300 s"
        assert not errors, errors[:5]
        # Every request answered exactly once, each with its own id and its own answer.
        assert sorted(answers) == list(range(CLIENTS * PER_CLIENT))
        assert all(len(v) == 1 for v in answers.values())
        assert len({v[0][0] for v in answers.values()}) == CLIENTS * PER_CLIENT
        wrong = [k for k, v in answers.items()
                 if v[0][1] != expected[json.dumps(_request(k), sort_keys=True)]]
        assert not wrong, f"{len(wrong)} answers differ from their prompt's alone, e.g. " \
                          f"{wrong[:5]}"
        # The queue limit held: more clients than places, so some were refused, politely.
        assert refused and all(h.get("retry-after") == "1" for h in refused)
        assert max(running_seen) > 1, "the batch never held two sequences at once"
        metrics = httpx.get(server.url + "/metrics", timeout=30).text
        line = next(ln for ln in metrics.splitlines() if ln.startswith(
            'numaplan_requests_total{endpoint="/v1/completions",status="429"}'))
        assert float(line.split()[-1]) == len(refused)
        assert server.stop() == 0
        assert not server.shm_files()
