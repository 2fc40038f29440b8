"""``numaplan serve``: the OpenAI-compatible server (the proposal's ``mlc_llm serve``)."""

from __future__ import annotations

import argparse
import socket
import sys

from numaplan.cli._planning import parse_affinity, parse_nodes
from numaplan.cli.help import HELP
from numaplan.cost import DEFAULT_PENALTY, check_penalty
from numaplan.errors import NumaplanError, UsageError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help=HELP["serve"], description=HELP["serve"])
    p.add_argument("model_dir", metavar="MODEL_DIR", help=HELP["run_model"])
    p.add_argument("--lib", metavar="SO", help=HELP["serve_lib"])
    p.add_argument("--host", default="127.0.0.1", help=HELP["host"])
    p.add_argument("--port", type=int, default=8000, help=HELP["port"])
    p.add_argument("--mode", choices=("local", "interactive", "server"), default="local",
                   help=HELP["mode"])
    p.add_argument("--max-queue", type=int, metavar="N", help=HELP["max_queue"])
    p.add_argument("--max-seq-len", type=int, metavar="N", help=HELP["serve_max_seq_len"])
    g = p.add_argument_group("placement (MLC proposal names)")
    g.add_argument("--tensor-parallel-shards", "--tp", type=int, metavar="W", help=HELP["tp"])
    g.add_argument("--numa-tensor-parallel", action="store_true",
                   help=HELP["numa_tensor_parallel"])
    g.add_argument("--numa-nodes", metavar="LIST", help=HELP["numa_nodes"])
    g.add_argument("--numa-inter-node-penalty", type=float, default=DEFAULT_PENALTY,
                   metavar="P", help=HELP["penalty"])
    g.add_argument("--no-prefer-local-memory", action="store_true",
                   help=HELP["no_prefer_local"])
    g.add_argument("--node-affinity", metavar="W:N,...", help=HELP["node_affinity"])
    g.add_argument("--cost", metavar="JSON", help=HELP["cost"])
    g.add_argument("--oversubscribe", action="store_true", help=HELP["oversubscribe"])
    g.add_argument("--cache-dir", metavar="DIR", help=HELP["cache_dir"])
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from numaplan.engine import EngineConfig
    from numaplan.serve.server import ServerConfig, serve

    check_penalty(args.numa_inter_node_penalty)
    if not 0 <= args.port < 65536:
        raise UsageError(f"--port must be in 0..65535, got {args.port}")
    if args.max_queue is not None and args.max_queue < 0:
        raise UsageError(f"--max-queue must be >= 0, got {args.max_queue}")
    if args.max_seq_len is not None and args.max_seq_len < 1:
        raise UsageError(f"--max-seq-len must be >= 1, got {args.max_seq_len}")
    _check_address(args.host, args.port)
    try:
        engine = EngineConfig(
            model=args.model_dir, model_lib=args.lib, mode=args.mode,
            tensor_parallel_shards=args.tensor_parallel_shards,
            numa_tensor_parallel=args.numa_tensor_parallel,
            numa_nodes=list(parse_nodes(args.numa_nodes) or ()) or None,
            numa_inter_node_penalty=args.numa_inter_node_penalty,
            numa_prefer_local_memory=not args.no_prefer_local_memory,
            node_affinity=parse_affinity(args.node_affinity), cost_model=args.cost,
            cache_dir=args.cache_dir, oversubscribe=args.oversubscribe,
            max_seq_len=args.max_seq_len)
    except ValueError as exc:
        err = exc.errors()[0] if hasattr(exc, "errors") else None  # pydantic
        raise UsageError(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}" if err
                         else str(exc)) from None

    def ready(eng, sched) -> None:
        print(f"numaplan serve: {args.model_dir} on http://{args.host}:{args.port} "
              f"(mode {args.mode}: {sched.max_batch} sequences, {sched.max_total_tokens} KV "
              f"tokens, queue {sched.max_queue}; {len(eng.plan.workers)} worker(s)"
              f"{', library compiled' if eng.compiled else ''})", file=sys.stderr, flush=True)

    serve(engine, ServerConfig(host=args.host, port=args.port, max_queue=args.max_queue),
          on_ready=ready)
    return 0


def _check_address(host: str, port: int) -> None:
    """Fail before the engine starts (planning and compiling take minutes) when the address
    cannot be listened on."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"--host {host}: {exc.strerror}") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind(addr)
        except OSError as exc:
            raise NumaplanError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
