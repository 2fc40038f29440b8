"""The generation loop: prompts in, tokens and text out, over any model that steps a paged KV
cache (a single process's :class:`numaplan.runtime.paged_kv.PagedKVModel`, or the pinned
tensor-parallel workers of a session).

All prompts are prefilled together (``batch_prefill``), then every unfinished sequence advances
one token per step (``batch_decode``); a sequence leaves the batch when it meets its model's EOS
(unless ``ignore_eos``), one of its stop ids or stop strings, or its token limit, and its pages
are freed at once. Text is streamed as tokens complete it; text that could be the start of a
stop string is held back until the next token decides.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from numaplan._base import Frozen
from numaplan.errors import RequestError
from numaplan.sampling import SamplingParams, held_back, sample, stop_at

FinishReason = Literal["stop", "length"]


class StepModel(Protocol):
    """What the loop needs of a model (see :class:`numaplan.runtime.paged_kv.PagedKVModel`)."""

    def add_sequence(self, seq_id: int) -> None: ...

    def remove_sequence(self, seq_id: int) -> None: ...

    def prefill(self, seq_ids: Sequence[int], tokens: Sequence[Sequence[int]]) -> np.ndarray: ...

    def decode(self, seq_ids: Sequence[int], tokens: Sequence[int]) -> np.ndarray: ...


class GenerationStats(Frozen):
    """Timings of one generate call (seconds) and the rates they give."""

    prefill_s: float
    decode_s: float
    prompt_tokens: int
    output_tokens: int
    decode_steps: int
    step_s: tuple[float, ...] = ()

    @property
    def decode_tokens_per_s(self) -> float:
        """Output tokens after the first, per second of decode."""
        n = self.output_tokens - 1 if self.output_tokens else 0
        return n / self.decode_s if self.decode_s > 0 else 0.0


class GenerationOutput(Frozen):
    """One sequence's result. ``cached`` is how many of the output tokens the KV cache holds
    (the last sampled token is never fed back, except before a stop token)."""

    prompt_ids: tuple[int, ...]
    output_ids: tuple[int, ...]
    text: str | None = None
    finish_reason: FinishReason
    cached: int = 0
    logits: tuple[tuple[float, ...], ...] | None = None


@dataclass
class SequenceState:
    """One sequence being generated: its prompt, how it samples and stops, what it produced.

    The loop here and the server's scheduler (:mod:`numaplan.serve.scheduler`) both step
    sequences through :func:`new_sequence` and :func:`advance`.
    """

    index: int
    prompt: list[int]
    params: SamplingParams
    stops: frozenset[int]
    rng: np.random.Generator
    out: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    stream: Any = None
    finish: FinishReason | None = None
    fed: int = 0
    logits: list[tuple[float, ...]] = field(default_factory=list)


def generate(model: StepModel, prompts: Sequence[Sequence[int]],
             params: SamplingParams | Sequence[SamplingParams], *,
             eos_ids: Sequence[int] = (), tokenizer: Any = None,
             on_text: Callable[[int, str], None] | None = None,
             on_token: Callable[[int, int], None] | None = None,
             keep_logits: bool = False, first_seq_id: int = 0,
             seq_ids: Sequence[int] | None = None
             ) -> tuple[list[GenerationOutput], GenerationStats]:
    """Generate for several prompts at once.

    Parameters
    ----------
    model
        The stepping model.
    prompts
        Token ids of each prompt (non-empty).
    params
        One :class:`SamplingParams` for all, or one per prompt.
    eos_ids
        The model's end tokens (ignored by requests with ``ignore_eos``).
    tokenizer
        A :class:`numaplan.tokenizer.Tokenizer`: text and stop strings need it.
    on_text, on_token
        Streaming callbacks ``(prompt index, new text)`` / ``(prompt index, token id)``.
    keep_logits
        Return every step's logits (for tests and comparisons; large).
    first_seq_id
        Sequence ids used in the cache are ``first_seq_id + index``.
    seq_ids
        Existing sequences to continue instead (a chat's history stays in the cache): the
        prompts are appended to them, and they are kept afterwards.

    Raises
    ------
    RequestError
        An empty prompt, stop strings without a tokenizer, or what the model refuses.
    """
    per = list(params) if isinstance(params, Sequence) else [params] * len(prompts)
    if len(per) != len(prompts) or not prompts:
        raise RequestError("generate needs at least one prompt and one set of parameters each")
    seqs = [new_sequence(i, prompt, p, eos_ids=eos_ids, tokenizer=tokenizer)
            for i, (prompt, p) in enumerate(zip(prompts, per, strict=True))]
    persistent = seq_ids is not None
    ids = list(seq_ids) if persistent else [first_seq_id + s.index for s in seqs]
    if len(ids) != len(seqs):
        raise RequestError("one sequence id per prompt")
    added: list[int] = []
    try:
        for sid in ([] if persistent else ids):
            model.add_sequence(sid)
            added.append(sid)
        t0 = time.perf_counter()
        logits = model.prefill(ids, [s.prompt for s in seqs])
        prefill_s = time.perf_counter() - t0
        active = list(zip(ids, seqs, strict=True))
        advance(active, logits, keep_logits, on_text, on_token)
        steps: list[float] = []
        while True:
            live = [(sid, s) for sid, s in active if s.finish is None]
            for sid, s in active:
                if s.finish is not None and sid in added:
                    model.remove_sequence(sid)  # free its pages for the others at once
                    added.remove(sid)
            active = live
            if not active:
                break
            t1 = time.perf_counter()
            logits = model.decode([sid for sid, _ in active], [s.out[-1] for _, s in active])
            steps.append(time.perf_counter() - t1)
            for _, s in active:
                s.fed += 1
            advance(active, logits, keep_logits, on_text, on_token)
    finally:
        for sid in added:
            try:
                model.remove_sequence(sid)
            except Exception:  # freeing must not hide the error that got us here
                pass
    outputs = []
    for s in seqs:
        text = None
        if tokenizer is not None:
            cut = stop_at(s.text, s.params.stop)
            text = s.text if cut is None else s.text[:cut]
        outputs.append(GenerationOutput(
            prompt_ids=tuple(s.prompt), output_ids=tuple(s.out), text=text,
            finish_reason=s.finish or "length", cached=s.fed,
            logits=tuple(s.logits) if keep_logits else None))
    stats = GenerationStats(prefill_s=prefill_s, decode_s=sum(steps),
                            prompt_tokens=sum(len(s.prompt) for s in seqs),
                            output_tokens=sum(len(s.out) for s in seqs),
                            decode_steps=len(steps), step_s=tuple(steps))
    return outputs, stats


def new_sequence(index: int, prompt: Sequence[int], params: SamplingParams, *,
                 eos_ids: Sequence[int] = (), tokenizer: Any = None) -> SequenceState:
    """A sequence ready to be prefilled.

    Parameters
    ----------
    index
        The caller's number for it (passed to the streaming callbacks).
    prompt
        Its token ids.
    params
        How it samples (its own seeded generator) and stops.
    eos_ids
        The model's end tokens (ignored with ``ignore_eos``).
    tokenizer
        Text and stop strings need it.

    Raises
    ------
    RequestError
        An empty prompt, or stop strings without a tokenizer.
    """
    if not prompt:
        raise RequestError(f"prompt {index} is empty")
    if params.stop and tokenizer is None:
        raise RequestError("stop strings need the model's tokenizer")
    stops = frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos
                                                else frozenset(eos_ids))
    return SequenceState(index, [int(t) for t in prompt], params, stops,
                         np.random.default_rng(params.seed),
                         stream=tokenizer.stream() if tokenizer is not None else None)


def advance(active: list[tuple[int, SequenceState]], logits: np.ndarray, keep_logits: bool,
            on_text: Callable[[int, str], None] | None,
            on_token: Callable[[int, int], None] | None) -> None:
    """Sample each active sequence's next token from its row of ``logits`` and record it:
    a stop token, stop string or the token limit sets its ``finish``; the text it completes
    is streamed."""
    for row, (_, s) in enumerate(active):
        lg = logits[row]
        if keep_logits:
            s.logits.append(tuple(float(v) for v in lg))
        token = sample(lg, s.params, s.rng)
        if token in s.stops:
            s.finish = "stop"
            _emit(s, on_text, final=True)
            continue
        s.out.append(token)
        if on_token is not None:
            on_token(s.index, token)
        if s.stream is not None:
            s.text += s.stream.push(token)
            if s.params.stop and stop_at(s.text, s.params.stop) is not None:
                s.finish = "stop"
        if s.finish is None and len(s.out) >= s.params.max_new_tokens:
            s.finish = "length"
        _emit(s, on_text, final=s.finish is not None)


def _emit(s: SequenceState, on_text: Callable[[int, str], None] | None, *, final: bool) -> None:
    """Stream the text that can no longer turn into a stop string."""
    if s.stream is None:
        return
    if final:
        s.text += s.stream.flush()
        cut = stop_at(s.text, s.params.stop) if s.params.stop else None
        end = len(s.text) if cut is None else cut
    else:
        end = len(s.text) - held_back(s.text, s.params.stop)
    if on_text is not None and end > s.emitted:
        on_text(s.index, s.text[s.emitted:end])
    s.emitted = max(s.emitted, end)
