"""Continuous batching: one loop owns the model and moves every request through its KV cache.

Requests wait in a bounded queue. At every token boundary the loop (one thread, the only one
that touches the model) frees the sequences that finished or whose client left, admits waiting
requests while a sequence slot and their worst-case KV pages are free (prompt plus
``max_new_tokens`` in whole pages, so a running sequence never finds the cache full), prefills
the newcomers
together (``batch_prefill``), then advances every running sequence by one token in one
``batch_decode``. Each sequence samples with its own parameters and seeded generator
(:func:`numaplan.generation.advance`); its text and end reach its request through the
request's ``sink``, called on the loop's thread.

A model failure that is not a request's fault (a worker died: :class:`WorkerDiedError`, or
any other error of the step) fails every request the loop holds, running or waiting, and stops
the loop: :attr:`Scheduler.fatal` holds the error and ``on_fatal`` is called once. A step the
model refuses before running it (a :class:`RequestError`: the cache validates every step
first) fails the running requests only, and the loop goes on.

Nothing here knows HTTP; :mod:`numaplan.serve.app` turns sinks into responses.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from numaplan.errors import NumaplanError, RequestError
from numaplan.generation import SequenceState, StepModel, advance, new_sequence
from numaplan.sampling import SamplingParams

log = logging.getLogger(__name__)


class QueueFullError(NumaplanError):
    """The waiting queue is at its limit: the client should retry later (HTTP 429)."""


@dataclass(frozen=True)
class TextEvent:
    """New text of a request (never part of a stop string)."""

    text: str


@dataclass(frozen=True)
class FinishEvent:
    """A request's end: why, and its token counts."""

    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int
    text: str


@dataclass(frozen=True)
class ErrorEvent:
    """A request failed; ``fatal`` when the model itself failed (the server stops)."""

    error: BaseException
    fatal: bool


Event = TextEvent | FinishEvent | ErrorEvent


@dataclass
class Request:
    """One generation request as the scheduler holds it.

    Attributes
    ----------
    request_id
        The caller's id (unique while the request lives).
    prompt
        Token ids.
    params
        Sampling and stopping.
    sink
        Called with every :data:`Event` of the request, on the loop's thread; the last is a
        :class:`FinishEvent` or an :class:`ErrorEvent`.
    """

    request_id: str
    prompt: list[int]
    params: SamplingParams
    sink: Callable[[Event], None]
    submitted_s: float = field(default_factory=time.perf_counter)
    first_token_s: float | None = None
    last_token_s: float | None = None
    cancelled: bool = False
    done: bool = False


@dataclass
class _Running:
    req: Request
    seq_id: int
    state: SequenceState
    reserved: int


class SchedulerObserver:
    """What the loop reports as it runs (the server's metrics implement it; the default
    does nothing)."""

    def first_token(self, seconds: float) -> None:
        """A request's first token came ``seconds`` after it was submitted."""

    def next_token(self, seconds: float) -> None:
        """A request's later token came ``seconds`` after its previous one."""

    def finished(self, reason: str) -> None:
        """A request ended (``stop``, ``length``, ``cancelled`` or ``error``)."""


class Scheduler:
    """The continuous-batching loop over one stepping model.

    Parameters
    ----------
    model
        A :class:`numaplan.generation.StepModel` (the session's pinned workers, or one
        process's paged-KV model); only the loop's thread calls it.
    max_batch
        Sequences in the KV cache at once.
    max_total_tokens
        Tokens the KV cache holds over all sequences.
    page_tokens
        Tokens per page of the KV cache: a sequence holds whole pages.
    context_window
        Tokens one sequence may hold (prompt + new tokens - 1); ``<= 0``: no limit.
    max_queue
        Requests that may wait; one more is refused with :class:`QueueFullError`.
    eos_ids
        The model's end tokens.
    tokenizer
        For text and stop strings.
    observer
        Gets timings as tokens come (:class:`SchedulerObserver`).
    on_fatal
        Called once, from the loop's thread, when the model fails.
    health_check
        Raises when the model can no longer run (a worker died); called between steps and
        every ``idle_check_s`` while idle, so a death is noticed without a request.
    idle_check_s
        See ``health_check``.

    Examples
    --------
    >>> sched = Scheduler(model, max_batch=4, max_total_tokens=2048,    # doctest: +SKIP
    ...                   context_window=2048, max_queue=16)
    >>> sched.start()                                                   # doctest: +SKIP
    >>> sched.submit(Request("r1", [1, 2, 3], SamplingParams(), print))  # doctest: +SKIP
    """

    def __init__(self, model: StepModel, *, max_batch: int, max_total_tokens: int,
                 page_tokens: int = 1, context_window: int, max_queue: int,
                 eos_ids: Sequence[int] = (),
                 tokenizer: Any = None, observer: SchedulerObserver | None = None,
                 on_fatal: Callable[[BaseException], None] | None = None,
                 health_check: Callable[[], None] | None = None,
                 idle_check_s: float = 0.2) -> None:
        if max_batch < 1 or max_total_tokens < 1 or max_queue < 0:
            raise ValueError("max_batch and max_total_tokens must be >= 1, max_queue >= 0")
        self.model = model
        self.max_batch = max_batch
        self.max_total_tokens = max_total_tokens
        self.page_tokens = page_tokens
        self.context_window = context_window
        self.max_queue = max_queue
        self.eos_ids = tuple(eos_ids)
        self.tokenizer = tokenizer
        self.observer = observer or SchedulerObserver()
        self.on_fatal = on_fatal
        self.health_check = health_check
        self.idle_check_s = idle_check_s
        self.fatal: BaseException | None = None
        self.steps = 0
        self._waiting: collections.deque[Request] = collections.deque()
        self._running: list[_Running] = []
        self._calls: collections.deque[tuple[Callable[[], Any], concurrent.futures.Future]] = \
            collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._next_seq_id = 0
        self._thread: threading.Thread | None = None

    # -- from any thread ------------------------------------------------------------------------
    def check(self, prompt_tokens: int, max_new_tokens: int) -> None:
        """Refuse a request that could never run.

        Raises
        ------
        RequestError
            Prompt plus new tokens beyond the context window or the whole KV cache.
        """
        need = prompt_tokens + max_new_tokens - 1  # the last token is never fed back
        if prompt_tokens < 1:
            raise RequestError("the prompt is empty")
        if self.context_window > 0 and need > self.context_window:
            raise RequestError(f"{prompt_tokens} prompt tokens + max_tokens {max_new_tokens} "
                               f"exceed the model's context window of {self.context_window} "
                               "tokens")
        if self._pages(prompt_tokens + max_new_tokens) > self.max_total_tokens:
            raise RequestError(f"{prompt_tokens} prompt tokens + max_tokens {max_new_tokens} "
                               f"exceed the KV cache's {self.max_total_tokens} tokens")

    def submit(self, req: Request) -> None:
        """Queue a request (its events go to ``req.sink``).

        Raises
        ------
        RequestError
            See :meth:`check`.
        QueueFullError
            ``max_queue`` requests are already waiting.
        NumaplanError
            The scheduler has stopped (or its model failed).
        """
        self.check(len(req.prompt), req.params.max_new_tokens)
        with self._cond:
            if self.fatal is not None:
                raise NumaplanError(f"the model failed: {self.fatal}")
            if self._stopping:
                raise NumaplanError("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError(f"{len(self._waiting)} requests are waiting (the limit); "
                                     "retry later")
            self._waiting.append(req)
            self._cond.notify()

    def cancel(self, req: Request) -> None:
        """Drop a request (its client left): its sequence is freed at the next token
        boundary, and it gets no more events."""
        with self._cond:
            req.cancelled = True
            self._cond.notify()

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run ``fn`` on the loop's thread between two steps (the model's owner: statistics
        of the workers must not interleave with a step)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self.fatal is not None or self._thread is None:
                fut.set_exception(NumaplanError("the scheduler is not running"))
                return fut
            self._calls.append((fn, fut))
            self._cond.notify()
        return fut

    @property
    def queue_depth(self) -> int:
        """Requests waiting."""
        return len(self._waiting)

    @property
    def running(self) -> int:
        """Sequences in the batch."""
        return len(self._running)

    @property
    def reserved_tokens(self) -> int:
        """KV tokens the running sequences may still grow into."""
        return sum(r.reserved for r in self._running)

    def start(self) -> Scheduler:
        """Start the loop's thread."""
        self._thread = threading.Thread(target=self.run, name="numaplan-scheduler",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, *, drain: bool = True, timeout_s: float | None = None) -> None:
        """Stop taking requests; with ``drain``, finish those already taken first."""
        with self._cond:
            self._stopping = True
            if not drain:
                for r in [*self._waiting, *(x.req for x in self._running)]:
                    r.cancelled = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # -- the loop (one thread) ------------------------------------------------------------------
    def run(self) -> None:
        """Step until stopped and drained, or until the model fails."""
        while True:
            with self._cond:
                if not (self._waiting or self._running or self._calls or self._stopping):
                    self._cond.wait(self.idle_check_s)
                if self._stopping and not (self._waiting or self._running):
                    self._run_calls()
                    self._fail_calls(NumaplanError("the scheduler stopped"))
                    return
            try:
                if self.health_check is not None:
                    self.health_check()
                self._run_calls()
                if self._waiting or self._running:
                    self.step()
            except RequestError as exc:
                self._fail_running(exc)
            except Exception as exc:
                self._die(exc)
                return

    def step(self) -> None:
        """One token boundary: free, admit and prefill, decode (see the module doc)."""
        self._free_finished()
        new = self._admit()
        if new:
            logits = self.model.prefill([r.seq_id for r in new], [r.req.prompt for r in new])
            self._advance(new, logits)
            self._free_finished()
        live = [r for r in self._running if not r.req.done and not r.req.cancelled]
        if live:
            logits = self.model.decode([r.seq_id for r in live],
                                       [r.state.out[-1] for r in live])
            for r in live:
                r.state.fed += 1
            self._advance(live, logits)
            self._free_finished()
        self.steps += 1

    def _admit(self) -> list[_Running]:
        new: list[_Running] = []
        with self._cond:
            while self._waiting and len(self._running) < self.max_batch:
                req = self._waiting[0]
                if req.cancelled:
                    self._waiting.popleft()
                    self.observer.finished("cancelled")
                    continue
                need = self._pages(len(req.prompt) + req.params.max_new_tokens)
                if self.reserved_tokens + need > self.max_total_tokens:
                    break  # first come, first served: it waits for pages to free up
                self._waiting.popleft()
                seq_id, self._next_seq_id = self._next_seq_id, self._next_seq_id + 1
                # the state's index is its sequence id: the callbacks of advance() name it
                state = new_sequence(seq_id, req.prompt, req.params, eos_ids=self.eos_ids,
                                     tokenizer=self.tokenizer)
                run = _Running(req, seq_id, state, need)
                self._running.append(run)
                new.append(run)
        for r in new:
            self.model.add_sequence(r.seq_id)
        return new

    def _pages(self, tokens: int) -> int:
        """``tokens`` rounded up to whole pages."""
        return -(-tokens // self.page_tokens) * self.page_tokens

    def _advance(self, batch: list[_Running], logits: Any) -> None:
        texts: dict[int, list[str]] = {}
        stamps: list[int] = []
        advance([(r.seq_id, r.state) for r in batch], logits, False,
                lambda sid, t: texts.setdefault(sid, []).append(t),
                lambda sid, _t: stamps.append(sid))
        now = time.perf_counter()
        by_id = {r.seq_id: r for r in batch}
        for sid in stamps:
            req = by_id[sid].req
            if req.first_token_s is None:
                req.first_token_s = now
                self.observer.first_token(now - req.submitted_s)
            else:
                self.observer.next_token(now - (req.last_token_s or now))
            req.last_token_s = now
        for r in batch:
            req = r.req
            if req.cancelled:
                continue
            if r.seq_id in texts:
                req.sink(TextEvent("".join(texts[r.seq_id])))
            if r.state.finish is not None:
                req.done = True
                self.observer.finished(r.state.finish)
                # the text streamed in all: without the stop string and what followed it
                req.sink(FinishEvent(r.state.finish, len(req.prompt), len(r.state.out),
                                     r.state.text[:r.state.emitted]))

    def _free_finished(self) -> None:
        keep = []
        for r in self._running:
            if r.req.done or r.req.cancelled:
                if r.req.cancelled and not r.req.done:
                    self.observer.finished("cancelled")
                self.model.remove_sequence(r.seq_id)  # its pages go to the others at once
            else:
                keep.append(r)
        with self._cond:
            self._running = keep

    def _run_calls(self) -> None:
        while True:
            with self._cond:
                if not self._calls:
                    return
                fn, fut = self._calls.popleft()
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except Exception as exc:
                    fut.set_exception(exc)

    def _fail_calls(self, exc: BaseException) -> None:
        with self._cond:
            calls, self._calls = list(self._calls), collections.deque()
        for _, fut in calls:
            if not fut.done():
                fut.set_exception(exc)

    def _fail_running(self, exc: RequestError) -> None:
        """The model refused a step before running it: the running requests fail, their
        sequences are freed, and the loop goes on."""
        log.error("the model refused a step; failing the running requests: %s", exc)
        with self._cond:
            running, self._running = self._running, []
        for r in running:
            if not r.req.done and not r.req.cancelled:
                r.req.done = True
                self.observer.finished("error")
                r.req.sink(ErrorEvent(exc, fatal=False))
            try:
                self.model.remove_sequence(r.seq_id)
            except RequestError:
                pass  # never added (the refused step was its admission)

    def _die(self, exc: BaseException) -> None:
        log.error("the model failed; failing every request: %s", exc)
        with self._cond:
            self.fatal = exc
            reqs = [*self._waiting, *(r.req for r in self._running)]
            self._waiting.clear()
            self._running = []
        for req in reqs:
            if not req.done and not req.cancelled:
                req.done = True
                self.observer.finished("error")
                req.sink(ErrorEvent(exc, fatal=True))
        self._fail_calls(exc)
        if self.on_fatal is not None:
            self.on_fatal(exc)
