"""Start and stop a server: the engine (plan, compile when no library is given, pinned
workers), the scheduler over its session, the ASGI app on uvicorn.

Shutdown: on SIGTERM (or SIGINT) uvicorn stops accepting connections and waits for the
requests in flight, which the scheduler finishes; then the scheduler stops and the workers are
stopped (their shared memory removed). When the model fails (a worker died), every request in
flight is answered 503, the server stops, and :func:`serve` raises the error, so the command
exits non-zero.
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from typing import Any

from numaplan._base import Frozen
from numaplan.conversation import conversation_from_config
from numaplan.engine import Engine, EngineConfig
from numaplan.serve.app import Service, create_app
from numaplan.serve.metrics import ServerMetrics
from numaplan.serve.scheduler import Scheduler

log = logging.getLogger(__name__)


class ServerConfig(Frozen):
    """Where and how the HTTP side listens.

    Attributes
    ----------
    host, port
        The address (default loopback only).
    max_queue
        Requests that may wait for a place in the batch; more are answered 429 (default: four
        times the batch).
    drain_timeout_s
        How long a shutdown waits for the requests in flight.
    log_level
        uvicorn's log level.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_queue: int | None = None
    drain_timeout_s: float = 300.0
    log_level: str = "warning"


def serve(engine_config: EngineConfig, server: ServerConfig, *,
          on_ready: Any = None) -> None:
    """Serve until stopped.

    Parameters
    ----------
    engine_config
        The model, its library (compiled and cached when absent), placement and ``mode``.
    server
        Address and limits.
    on_ready
        Called with ``(engine, scheduler)`` once the server listens (the CLI prints the
        address).

    Raises
    ------
    NumaplanError
        The engine cannot start, or the model failed while serving (a worker died).
    """
    import uvicorn

    engine = Engine(engine_config)
    try:
        rt = engine.runtime
        model_name = Path(engine_config.model).resolve().name
        conv = conversation_from_config(engine.chat_config)
        metrics = ServerMetrics()
        window = engine.workload.context_window_size
        http: uvicorn.Server | None = None

        def on_fatal(exc: BaseException) -> None:
            log.error("stopping the server: %s", exc)
            if http is not None:
                http.should_exit = True

        def health_check() -> None:
            if rt.supervisor.dead is not None:
                raise rt.supervisor.died()

        sched = Scheduler(rt.model, max_batch=engine.max_batch,
                          max_total_tokens=engine.max_total_tokens,
                          page_tokens=engine.kv_page_tokens, context_window=window,
                          max_queue=server.max_queue if server.max_queue is not None
                          else 4 * engine.max_batch,
                          eos_ids=engine.eos_ids, tokenizer=engine.tokenizer,
                          observer=metrics, on_fatal=on_fatal,
                          health_check=health_check).start()
        service = Service(scheduler=sched, tokenizer=engine.tokenizer, conversation=conv,
                          model_name=model_name, metrics=metrics, runtime_stats=rt.stats,
                          created=int(time.time()))
        config = uvicorn.Config(create_app(service), host=server.host, port=server.port,
                                log_level=server.log_level, lifespan="off",
                                timeout_graceful_shutdown=int(server.drain_timeout_s))
        http = uvicorn.Server(config)
        _announce_when_started(http, lambda: on_ready(engine, sched) if on_ready else None)
        # uvicorn raises the signal it caught again once it has drained; a handler of ours
        # makes that harmless, so the workers are stopped below instead of the process dying.
        previous = signal.signal(signal.SIGTERM, lambda *_: None)
        try:
            http.run()
        finally:
            signal.signal(signal.SIGTERM, previous)
            sched.stop(drain=sched.fatal is None, timeout_s=server.drain_timeout_s)
        if sched.fatal is not None:
            raise sched.fatal
    finally:
        engine.close()


def _announce_when_started(http: Any, announce: Any) -> None:
    """Call ``announce`` once uvicorn listens (its startup sets ``started``)."""
    original = http.startup

    async def startup(*args: Any, **kwargs: Any) -> None:
        await original(*args, **kwargs)
        if http.started:
            announce()

    http.startup = startup
