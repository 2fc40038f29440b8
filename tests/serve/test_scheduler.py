"""The continuous-batching loop without HTTP, stepped by hand on the pinned worker of the small
model: requests join a running batch at a token boundary and leave it when done, each with the
tokens it gets alone; the KV pages and the queue bound admission; a cancelled request frees its
sequence at the next step. (A model that fails: tests/serve/test_lifecycle.py kills a real
worker.)"""

from __future__ import annotations

import pytest

from numaplan.errors import RequestError
from numaplan.generation import generate
from numaplan.sampling import SamplingParams
from numaplan.serve.scheduler import (
    FinishEvent,
    QueueFullError,
    Request,
    Scheduler,
    TextEvent,
)

pytestmark = [pytest.mark.tvm, pytest.mark.slow]


@pytest.fixture(scope="module")
def runtime(text_model, text_libs):
    from numaplan.runtime.session import NumaRuntime, RunOptions

    with NumaRuntime(text_model, text_libs(1), options=RunOptions(max_batch=4)) as rt:
        yield rt


@pytest.fixture(scope="module")
def tokenizer(text_model):
    from numaplan.tokenizer import Tokenizer

    return Tokenizer(text_model)


class Collect:
    """A request's events, in order."""

    def __init__(self) -> None:
        self.events: list = []

    def __call__(self, event) -> None:
        self.events.append(event)

    @property
    def end(self):
        return self.events[-1] if self.events and not isinstance(self.events[-1], TextEvent) \
            else None

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, TextEvent))


def _sched(rt, tokenizer, **kw) -> Scheduler:
    args = {"max_batch": 4, "max_total_tokens": 256, "context_window": 256, "max_queue": 8,
            "tokenizer": tokenizer} | kw
    return Scheduler(rt.model, **args)


def _alone(rt, tokenizer, prompt, params) -> str:
    outs, _ = generate(rt.model, [prompt], params, tokenizer=tokenizer, first_seq_id=1000)
    return outs[0].text


def test_requests_join_and_leave_at_token_boundaries(runtime, tokenizer):
    sched = _sched(runtime, tokenizer)
    a_params = SamplingParams(max_new_tokens=30)
    b_params = SamplingParams(max_new_tokens=5, temperature=1.0, seed=7)
    a, b, c = Collect(), Collect(), Collect()
    sched.submit(Request("a", [7], a_params, a))
    for _ in range(3):
        sched.step()
    assert sched.running == 1 and len(a.events) >= 3 and a.end is None
    sched.submit(Request("b", [1, 5, 9], b_params, b))
    sched.submit(Request("c", [3, 4, 5, 6], SamplingParams(max_new_tokens=8), c))
    sched.step()  # b and c are prefilled into the running batch
    assert sched.running == 3 and b.events and c.events and a.end is None
    steps = 0
    while sched.running and steps < 100:
        sched.step()
        steps += 1
    assert sched.running == 0 and sched.reserved_tokens == 0
    for got, prompt, params in ((a, [7], a_params), (b, [1, 5, 9], b_params),
                                (c, [3, 4, 5, 6], SamplingParams(max_new_tokens=8))):
        assert isinstance(got.end, FinishEvent)
        assert got.text == got.end.text == _alone(runtime, tokenizer, prompt, params)
    assert b.end.completion_tokens == 5 and b.end.finish_reason == "length"


def test_admission_waits_for_kv_pages_and_the_queue_is_bounded(runtime, tokenizer):
    sched = _sched(runtime, tokenizer, max_total_tokens=64, max_queue=1)
    first, second = Collect(), Collect()
    sched.submit(Request("1", [7], SamplingParams(max_new_tokens=40), first))
    sched.step()
    # 1 + 40 tokens are reserved: 1 + 40 more do not fit in 64, so this one waits.
    sched.submit(Request("2", [7], SamplingParams(max_new_tokens=40), second))
    with pytest.raises(QueueFullError):
        sched.submit(Request("3", [7], SamplingParams(max_new_tokens=2), Collect()))
    sched.step()
    assert sched.running == 1 and sched.queue_depth == 1 and not second.events
    while first.end is None:
        sched.step()
    sched.step()
    assert sched.running == 1 and second.events  # admitted once the pages were freed
    while sched.running:
        sched.step()
    with pytest.raises(RequestError, match="context window"):
        sched.check(200, 100)
    with pytest.raises(RequestError, match="KV cache"):
        _sched(runtime, tokenizer, max_total_tokens=64).check(30, 40)
    # A sequence holds whole pages: 1 + 64 tokens take 5 pages of 16, more than 64 tokens.
    paged = _sched(runtime, tokenizer, max_total_tokens=64, page_tokens=16)
    paged.check(1, 63)
    with pytest.raises(RequestError, match="KV cache"):
        paged.check(1, 64)


def test_a_cancelled_request_leaves_at_the_next_step(runtime, tokenizer):
    sched = _sched(runtime, tokenizer)
    gone, stays = Collect(), Collect()
    r = Request("gone", [7], SamplingParams(max_new_tokens=100), gone)
    sched.submit(r)
    sched.submit(Request("stays", [1, 5, 9], SamplingParams(max_new_tokens=10), stays))
    sched.step()
    seen = len(gone.events)
    sched.cancel(r)
    sched.step()
    assert sched.running == 1 and len(gone.events) == seen and gone.end is None
    while sched.running:
        sched.step()
    assert isinstance(stays.end, FinishEvent)

