"""``numaplan bench``: the benchmark suite (same as ``python -m numaplan.bench``)."""

from __future__ import annotations

import argparse

from numaplan.cli.help import HELP


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help=HELP["bench"], description=HELP["bench"],
                       add_help=False)
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from numaplan.bench import main

    return main(args.bench_args)
