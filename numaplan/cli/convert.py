"""``numaplan convert MODEL.gguf -o DIR``: bring a llama.cpp model into MLC's format."""

from __future__ import annotations

import argparse
import time

from numaplan.cli.help import HELP


def add_parser(sub: argparse._SubParsersAction) -> None:
    from numaplan.convert.gguf_model import QUANTIZATIONS

    p = sub.add_parser("convert", help=HELP["convert"], description=HELP["convert"])
    p.add_argument("gguf", metavar="MODEL.gguf", help=HELP["gguf"])
    p.add_argument("-o", "--output", metavar="DIR", required=True, help=HELP["convert_out"])
    p.add_argument("--quantization", default="q4f16_1", choices=QUANTIZATIONS,
                   help=HELP["convert_quantization"])
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from numaplan.convert.convert import convert_gguf
    from numaplan.plan.formatting import human_bytes

    t0 = time.perf_counter()
    r = convert_gguf(args.gguf, args.output, quantization=args.quantization)
    print(f"converted {args.gguf} -> {r.out_dir}: {r.model_type}, {r.quantization}, "
          f"{r.tensors} tensors, {human_bytes(r.nbytes)} in {r.shards} shard files "
          f"({time.perf_counter() - t0:.1f} s)")
    return 0
