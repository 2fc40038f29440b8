"""``numaplan serve``: an OpenAI-compatible HTTP server with continuous batching on the pinned
workers.

- :mod:`numaplan.serve.scheduler`: the continuous-batching loop (no HTTP);
- :mod:`numaplan.serve.metrics`: the Prometheus figures;
- :mod:`numaplan.serve.app`: the FastAPI application (OpenAI's endpoints);
- :mod:`numaplan.serve.server`: engine + scheduler + uvicorn, start to shutdown.

The mode -> capacity mapping is the engine's (:func:`numaplan.engine.run_capacity`) and the
planner's (:func:`numaplan.plan.settings.mode_batch_size`).
"""
