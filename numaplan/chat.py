"""A multi-turn chat that keeps its history in the KV cache.

Each turn renders the whole conversation with the model's template, tokenizes it, and compares
it with the tokens the cache already holds: the common prefix stays (a long history is not
recomputed), whatever differs is popped (a reply that ended on a stop string, or text the
template renders differently once the turn is closed) and the rest is prefilled before the
reply is generated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from numaplan.conversation import Conversation, Message
from numaplan.generation import GenerationOutput, StepModel, generate
from numaplan.sampling import SamplingParams


class ChatSession:
    """One conversation on one sequence of a model's cache.

    Parameters
    ----------
    model
        A stepping model that can also ``popn`` (forget a sequence's last tokens).
    tokenizer
        The model's :class:`numaplan.tokenizer.Tokenizer`.
    conversation
        The model's template.
    eos_ids
        End tokens besides the template's stop ids.
    seq_id
        The cache sequence the chat lives in.
    """

    def __init__(self, model: StepModel, tokenizer: Any, conversation: Conversation, *,
                 eos_ids: Sequence[int] = (), system: str | None = None,
                 seq_id: int = 0) -> None:
        self.model = model
        self.tok = tokenizer
        self.conv = conversation
        self.eos_ids = tuple(eos_ids)
        self.seq_id = seq_id
        self.messages: list[Message] = []
        if system is not None:
            self.messages.append(Message(role="system", content=system))
        self.cached: list[int] = []
        self.model.add_sequence(seq_id)

    def close(self) -> None:
        """Free the conversation's pages."""
        self.model.remove_sequence(self.seq_id)

    def turn(self, user: str, params: SamplingParams | None = None, *,
             on_text: Callable[[int, str], None] | None = None) -> GenerationOutput:
        """Add a user message and generate the assistant's reply (streamed to ``on_text``)."""
        params = params or SamplingParams(max_new_tokens=256)
        stops = tuple(dict.fromkeys((*params.stop, *self.conv.stop_str)))
        params = params.model_copy(update={
            "stop": stops,
            "stop_token_ids": tuple(dict.fromkeys((*params.stop_token_ids,
                                                    *self.conv.stop_token_ids)))})
        self.messages.append(Message(role="user", content=user))
        ids = self.tok.encode(self.conv.prompt(self.messages), add_special_tokens=False)
        common = 0
        for a, b in zip(self.cached, ids, strict=False):
            if a != b:
                break
            common += 1
        common = min(common, len(ids) - 1)  # at least one token to prefill
        if len(self.cached) > common:
            self.model.popn(self.seq_id, len(self.cached) - common)  # type: ignore[attr-defined]
        out = generate(self.model, [ids[common:]], params, eos_ids=self.eos_ids,
                       tokenizer=self.tok, on_text=on_text, seq_ids=[self.seq_id])[0][0]
        self.cached = ids + list(out.output_ids[:out.cached])
        self.messages.append(Message(role="assistant", content=out.text or ""))
        return out
