"""Choosing the next token from logits: greedy by default, or temperature / top-k / top-p
sampling from a seeded generator (the OpenAI and MLC field names).

Sampling runs in the controller on worker 0's logits (after the final all-reduce every worker
holds the same ones); the chosen id is what ``embed`` broadcasts to every worker next step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import Field, field_validator

from numaplan._base import Frozen


class SamplingParams(Frozen):
    """How to pick tokens and when to stop.

    ``temperature == 0`` (the default) is greedy decoding; ``top_k == 0`` and ``top_p == 1``
    disable those filters. ``stop`` strings end the text before them; ``stop_token_ids`` (and
    the model's EOS unless ``ignore_eos``) end it at the token.
    """

    max_new_tokens: int = Field(default=128, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=100.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if any(s == "" for s in v):
            raise ValueError("a stop string must not be empty")
        return v

    @property
    def greedy(self) -> bool:
        """Whether the choice is the argmax."""
        return self.temperature == 0.0 or self.top_k == 1


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """One token id from ``logits`` (float ``[vocab]``)."""
    if params.greedy:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / params.temperature
    if params.top_k and params.top_k < z.size:
        cut = np.partition(z, -params.top_k)[-params.top_k]
        z = np.where(z >= cut, z, -np.inf)
    p = np.exp(z - z.max())
    p /= p.sum()
    if params.top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        keep = np.cumsum(p[order]) - p[order] < params.top_p  # the smallest nucleus
        mask = np.zeros_like(p, dtype=bool)
        mask[order[keep]] = True
        p = np.where(mask, p, 0.0)
        p /= p.sum()
    return int(rng.choice(p.size, p=p))


def stop_at(text: str, stops: Sequence[str]) -> int | None:
    """Index of the earliest stop string in ``text`` (``None`` when there is none)."""
    hits = [i for s in stops if (i := text.find(s)) >= 0]
    return min(hits) if hits else None


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of ``text`` could be the start of a stop string (they are
    not streamed until the next token tells)."""
    keep = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                keep = max(keep, n)
                break
    return keep
