"""The HTTP face of the server: OpenAI's endpoints on FastAPI, over the scheduler.

``/v1/chat/completions`` and ``/v1/completions`` (server-sent events with ``stream``),
``/v1/models``, ``/health`` and ``/metrics``. Every error is an OpenAI-style JSON body
(``{"error": {"message", "type", "param", "code"}}``): 400 for a request that cannot be served
(malformed JSON, unknown fields, values out of range, prompt plus ``max_tokens`` beyond the
context), 404/405 for a wrong route, 429 with ``Retry-After`` when the queue is full, 503 once
the model has failed or the server is draining. A client that disconnects is cancelled at once:
its sequence leaves the batch at the next token boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from numaplan.conversation import Conversation
from numaplan.errors import NumaplanError, RequestError, UsageError
from numaplan.openai_api import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatMessage,
    ChatRequest,
    Choice,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Delta,
    ErrorDetail,
    ErrorResponse,
    ModelCard,
    ModelList,
    Usage,
)
from numaplan.serve.metrics import CONTENT_TYPE, ServerMetrics
from numaplan.serve.scheduler import (
    ErrorEvent,
    Event,
    FinishEvent,
    QueueFullError,
    Scheduler,
    TextEvent,
)
from numaplan.serve.scheduler import Request as GenRequest

#: Seconds a refused client is told to wait (``Retry-After``): about one short generation.
RETRY_AFTER_S = 1
#: ``max_tokens`` when a request gives none: OpenAI's 16 for completions; for chat, this many
#: or what the context window leaves.
COMPLETION_DEFAULT_MAX = 16
CHAT_DEFAULT_MAX = 256
#: How often a waiting non-streamed request checks that its client is still there.
DISCONNECT_POLL_S = 0.1


@dataclass
class Service:
    """What the endpoints serve.

    Attributes
    ----------
    scheduler
        The continuous-batching loop (started).
    tokenizer
        The model's :class:`~numaplan.tokenizer.Tokenizer`.
    conversation
        Its chat template.
    model_name
        The id ``/v1/models`` lists and answers carry.
    metrics
        The figures of ``/metrics``.
    runtime_stats
        Reads the workers' measured placement; it runs on the scheduler's thread.
    """

    scheduler: Scheduler
    tokenizer: Any
    conversation: Conversation
    model_name: str
    metrics: ServerMetrics
    runtime_stats: Callable[[], Any] | None = None
    created: int = 0


def error_response(status: int, message: str, *, kind: str, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """An OpenAI-style error answer."""
    body = ErrorResponse(error=ErrorDetail(message=message, type=kind, param=param,
                                           code=str(status)))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


class _Refused(Exception):
    """A request refused before it reached the scheduler (becomes its error answer)."""

    def __init__(self, response: JSONResponse) -> None:
        self.response = response


def create_app(service: Service) -> FastAPI:
    """The ASGI application.

    Parameters
    ----------
    service
        The scheduler and the model's text side.

    Returns
    -------
    FastAPI
        Serve it with uvicorn (:func:`numaplan.serve.server.serve`).
    """
    app = FastAPI(title="numaplan", docs_url=None, redoc_url=None, openapi_url=None)
    sched, metrics = service.scheduler, service.metrics

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        metrics.answered(request.url.path, exc.status_code)
        return error_response(exc.status_code, str(exc.detail), kind="invalid_request_error")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.answered(request.url.path, 400)
        return error_response(400, str(exc), kind="invalid_request_error")

    @app.get("/health")
    async def health() -> Response:
        if sched.fatal is not None:
            return error_response(503, f"the model failed: {sched.fatal}",
                                  kind="service_unavailable")
        return JSONResponse({"status": "ok", "running": sched.running,
                             "queue_depth": sched.queue_depth})

    @app.get("/v1/models")
    async def models() -> Response:
        metrics.answered("/v1/models", 200)
        return JSONResponse(ModelList(data=[ModelCard(id=service.model_name,
                                                      created=service.created)]).model_dump())

    @app.get("/metrics")
    async def metrics_text() -> Response:
        stats = None
        if service.runtime_stats is not None and sched.fatal is None:
            with contextlib.suppress(Exception):  # the counters still answer without them
                stats = await asyncio.wait_for(
                    asyncio.wrap_future(sched.call(service.runtime_stats)), 10.0)
        body = metrics.render(queue_depth=sched.queue_depth, running=sched.running,
                              stats=stats)
        return Response(body, media_type=CONTENT_TYPE)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await _generate(request, "/v1/chat/completions", ChatRequest)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _generate(request, "/v1/completions", CompletionRequest)

    async def _generate(request: Request, endpoint: str, model: type[BaseModel]) -> Response:
        try:
            req = await _parse(request, model)
            ids, params = _prepare(service, req)
        except _Refused as refused:
            metrics.answered(endpoint, refused.response.status_code)
            return refused.response
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()

        def sink(event: Event) -> None:  # the scheduler's thread
            with contextlib.suppress(RuntimeError):  # the event loop is gone (shutdown)
                loop.call_soon_threadsafe(events.put_nowait, event)

        prefix = "chatcmpl" if endpoint.endswith("chat/completions") else "cmpl"
        gen = GenRequest(f"{prefix}-{uuid.uuid4().hex[:24]}", ids, params, sink)
        try:
            sched.submit(gen)
        except QueueFullError as exc:
            metrics.answered(endpoint, 429)
            return error_response(429, str(exc), kind="rate_limit_exceeded",
                                  headers={"Retry-After": str(RETRY_AFTER_S)})
        except RequestError as exc:
            metrics.answered(endpoint, 400)
            return error_response(400, str(exc), kind="invalid_request_error",
                                  param="max_tokens")
        except NumaplanError as exc:
            metrics.answered(endpoint, 503)
            return error_response(503, str(exc), kind="service_unavailable")
        shape = _Shape(gen.request_id, int(time.time()), req.model or service.model_name,
                       chat=isinstance(req, ChatRequest))
        if req.stream:
            metrics.answered(endpoint, 200)
            return StreamingResponse(_sse(sched, gen, events, shape),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return await _whole(request, endpoint, gen, events, shape)

    async def _whole(request: Request, endpoint: str, gen: GenRequest,
                     events: asyncio.Queue[Event], shape: _Shape) -> Response:
        pieces: list[str] = []
        while True:
            try:
                event = await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
            except TimeoutError:
                if await request.is_disconnected():
                    sched.cancel(gen)
                    metrics.answered(endpoint, 499)
                    return Response(status_code=499)
                continue
            if isinstance(event, TextEvent):
                pieces.append(event.text)
            elif isinstance(event, ErrorEvent):
                status = 503 if event.fatal else 500
                metrics.answered(endpoint, status)
                return error_response(status, _failure(event), kind="service_unavailable"
                                      if event.fatal else "server_error")
            else:
                metrics.answered(endpoint, 200)
                return JSONResponse(shape.whole(event).model_dump())

    return app


async def _parse(request: Request, model: type[BaseModel]) -> Any:
    body = await request.body()
    try:
        doc = json.loads(body)
    except ValueError as exc:  # JSONDecodeError and bad UTF-8 alike
        raise _Refused(error_response(400, f"malformed JSON: {exc}",
                                      kind="invalid_request_error")) from None
    if not isinstance(doc, dict):
        raise _Refused(error_response(400, "the request body must be a JSON object",
                                      kind="invalid_request_error"))
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(map(str, first["loc"]))
        raise _Refused(error_response(400, f"{param}: {first['msg']}",
                                      kind="invalid_request_error", param=param)) from None


def _prepare(service: Service, req: Any) -> tuple[list[int], Any]:
    """The request's prompt ids and sampling parameters."""
    tok, conv = service.tokenizer, service.conversation
    try:
        if isinstance(req, ChatRequest):
            ids = tok.encode(conv.prompt(req.messages), add_special_tokens=False)
            stops, stop_ids = tuple(conv.stop_str), tuple(conv.stop_token_ids)
            default = CHAT_DEFAULT_MAX
        else:
            ids = tok.encode(req.prompt) if isinstance(req.prompt, str) else list(req.prompt)
            stops, stop_ids = (), ()
            default = COMPLETION_DEFAULT_MAX
            if any(not 0 <= i < tok.vocab_size for i in ids):
                raise RequestError(f"prompt token ids must be in [0, {tok.vocab_size})")
        window = service.scheduler.context_window
        if req.max_tokens is None and window > 0:
            default = max(1, min(default, window - len(ids) + 1))
        params = req.sampling(default, stops, stop_ids)
        service.scheduler.check(len(ids), params.max_new_tokens)
    except (UsageError, RequestError) as exc:
        raise _Refused(error_response(400, str(exc), kind="invalid_request_error")) from None
    except ValidationError as exc:
        first = exc.errors()[0]
        raise _Refused(error_response(400, f"{'.'.join(map(str, first['loc']))}: "
                                      f"{first['msg']}", kind="invalid_request_error")) \
            from None
    return ids, params


@dataclass
class _Shape:
    """How one request's answer is written (chat or completion)."""

    rid: str
    created: int
    model: str
    chat: bool

    def whole(self, end: FinishEvent) -> BaseModel:
        usage = Usage(prompt_tokens=end.prompt_tokens, completion_tokens=end.completion_tokens,
                      total_tokens=end.prompt_tokens + end.completion_tokens)
        if self.chat:
            return ChatCompletion(id=self.rid, created=self.created, model=self.model,
                                  choices=[Choice(message=ChatMessage(content=end.text),
                                                  finish_reason=end.finish_reason)],
                                  usage=usage)
        return Completion(id=self.rid, created=self.created, model=self.model, usage=usage,
                          choices=[CompletionChoice(text=end.text,
                                                    finish_reason=end.finish_reason)])

    def piece(self, text: str | None, *, first: bool = False, end: FinishEvent | None = None
              ) -> BaseModel:
        usage = None if end is None else Usage(
            prompt_tokens=end.prompt_tokens, completion_tokens=end.completion_tokens,
            total_tokens=end.prompt_tokens + end.completion_tokens)
        reason = None if end is None else end.finish_reason
        if self.chat:
            delta = Delta(role="assistant", content="") if first else Delta(content=text)
            return ChatCompletionChunk(id=self.rid, created=self.created, model=self.model,
                                       usage=usage, choices=[ChunkChoice(
                                           delta=delta, finish_reason=reason)])
        return Completion(id=self.rid, created=self.created, model=self.model, usage=usage,
                          choices=[CompletionChoice(text=text or "", finish_reason=reason)])


def _failure(event: ErrorEvent) -> str:
    what = "the model failed" if event.fatal else "the model refused the step"
    return f"{what}: {event.error}"


def _data(model: BaseModel | dict) -> bytes:
    doc = model.model_dump(exclude_none=False) if isinstance(model, BaseModel) else model
    return f"data: {json.dumps(doc)}\n\n".encode()


async def _sse(sched: Scheduler, gen: GenRequest, events: asyncio.Queue[Event],
               shape: _Shape) -> AsyncIterator[bytes]:
    """Server-sent events of one request; a client that leaves (the response is cancelled)
    cancels it."""
    try:
        if shape.chat:
            yield _data(shape.piece(None, first=True))
        while True:
            event = await events.get()
            if isinstance(event, TextEvent):
                yield _data(shape.piece(event.text))
            elif isinstance(event, ErrorEvent):
                body = ErrorResponse(error=ErrorDetail(
                    message=_failure(event), type="service_unavailable" if event.fatal
                    else "server_error", code="503" if event.fatal else "500"))
                yield _data(body)
                return
            else:
                yield _data(shape.piece("" if not shape.chat else None, end=event))
                yield b"data: [DONE]\n\n"
                return
    finally:
        if not gen.done:
            sched.cancel(gen)
