"""OpenAI's chat-completion and completion protocols (the field names MLC's MLCEngine also
uses), as pydantic models, and ``engine.chat.completions.create`` on top of the engine. The
server (:mod:`numaplan.serve.app`) speaks the same models over HTTP.

``create(messages=[...])`` returns a :class:`ChatCompletion`; ``create(..., stream=True)``
returns an iterator of :class:`ChatCompletionChunk` whose ``choices[0].delta.content`` carry the
text as it is generated (generation runs in a thread; the iterator reads its queue).
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from numaplan.conversation import Message, conversation_from_config
from numaplan.errors import UsageError
from numaplan.sampling import SamplingParams


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChatMessage(_Model):
    """A message of a completion."""

    role: Literal["assistant"] = "assistant"
    content: str


class Delta(_Model):
    """The new part of a streamed message."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class Usage(_Model):
    """Token counts."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Choice(_Model):
    """One answer."""

    index: int = 0
    message: ChatMessage
    finish_reason: Literal["stop", "length"]


class ChunkChoice(_Model):
    """One answer's new text."""

    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletion(_Model):
    """A whole answer."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class ChatCompletionChunk(_Model):
    """A streamed piece of an answer."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class _SamplingFields(_Model):
    """The sampling fields both endpoints take (unknown fields are refused, not ignored)."""

    model: str | None = None
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=1)

    def sampling(self, default_max: int, conv_stops: tuple[str, ...] = (),
                 conv_stop_ids: tuple[int, ...] = ()) -> SamplingParams:
        """The request as sampling parameters (the template's stops added)."""
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(max_new_tokens=self.max_tokens or default_max,
                              temperature=self.temperature or 0.0, top_p=self.top_p or 1.0,
                              seed=self.seed, stop=tuple(dict.fromkeys([*stops, *conv_stops])),
                              stop_token_ids=conv_stop_ids)


class ChatRequest(_SamplingFields):
    """A chat completion request (``/v1/chat/completions``)."""

    messages: list[Message] = Field(min_length=1)


class CompletionRequest(_SamplingFields):
    """A text completion request (``/v1/completions``): the prompt as text or token ids."""

    prompt: str | list[int] = Field(min_length=1)


class CompletionChoice(_Model):
    """One completed text."""

    index: int = 0
    text: str
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class Completion(_Model):
    """A whole completion (also the shape of each streamed piece, as OpenAI sends them)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(_Model):
    """One entry of ``/v1/models``."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "numaplan"


class ModelList(_Model):
    """``/v1/models``."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(_Model):
    """What went wrong, in OpenAI's error fields."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(_Model):
    """An error answer's body."""

    error: ErrorDetail


class Completions:
    """``engine.chat.completions``."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def create(self, **fields: Any) -> ChatCompletion | Iterator[ChatCompletionChunk]:
        """OpenAI's ``chat.completions.create`` (``messages``, ``stream``, ``max_tokens``,
        ``temperature``, ``top_p``, ``stop``, ``seed``, ``n=1``).

        Raises
        ------
        UsageError
            A field numaplan does not know or a value out of range.
        """
        try:
            req = ChatRequest(**fields)
        except ValueError as exc:
            first = exc.errors()[0] if hasattr(exc, "errors") else None
            raise UsageError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}" if first
                             else str(exc)) from None
        eng = self.engine
        doc = eng.chat_config
        conv = conversation_from_config(doc)
        ids = eng.tokenizer.encode(conv.prompt(req.messages), add_special_tokens=False)
        params = req.sampling(256, tuple(conv.stop_str), tuple(conv.stop_token_ids))
        name = req.model or doc.get("model_type", "numaplan")
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if not req.stream:
            outs, _ = eng.runtime.run([ids], params, tokenizer=eng.tokenizer,
                                      eos_ids=eng.eos_ids)
            out = outs[0]
            return ChatCompletion(
                id=cid, created=created, model=name,
                choices=[Choice(message=ChatMessage(content=out.text or ""),
                                finish_reason=out.finish_reason)],
                usage=Usage(prompt_tokens=len(ids), completion_tokens=len(out.output_ids),
                            total_tokens=len(ids) + len(out.output_ids)))
        return self._stream(ids, params, cid, created, name)

    def _stream(self, ids: list[int], params: SamplingParams, cid: str, created: int,
                name: str) -> Iterator[ChatCompletionChunk]:
        eng = self.engine
        pieces: queue.Queue = queue.Queue()
        result: dict[str, Any] = {}

        def work() -> None:
            try:
                outs, _ = eng.runtime.run([ids], params, tokenizer=eng.tokenizer,
                                          eos_ids=eng.eos_ids,
                                          on_text=lambda _i, t: pieces.put(t))
                result["out"] = outs[0]
            except BaseException as exc:  # handed to the reader, raised there
                result["error"] = exc
            finally:
                pieces.put(None)

        thread = threading.Thread(target=work, name="numaplan-chat-stream", daemon=True)
        thread.start()

        def chunk(delta: Delta, finish: str | None = None, usage: Usage | None = None):
            return ChatCompletionChunk(id=cid, created=created, model=name, usage=usage,
                                       choices=[ChunkChoice(delta=delta,
                                                            finish_reason=finish)])

        yield chunk(Delta(role="assistant", content=""))
        while (piece := pieces.get()) is not None:
            yield chunk(Delta(content=piece))
        thread.join()
        if "error" in result:
            raise result["error"]
        out = result["out"]
        yield chunk(Delta(), out.finish_reason,
                    Usage(prompt_tokens=len(ids), completion_tokens=len(out.output_ids),
                          total_tokens=len(ids) + len(out.output_ids)))


class Chat:
    """``engine.chat``."""

    def __init__(self, engine: Any) -> None:
        self.completions = Completions(engine)
