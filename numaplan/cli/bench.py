"""``numaplan bench``: the benchmark suite, with the options of ``python -m numaplan.bench``."""

from __future__ import annotations

import argparse

from numaplan.cli.help import HELP


def add_parser(sub: argparse._SubParsersAction) -> None:
    from numaplan.bench import add_arguments

    p = sub.add_parser("bench", help=HELP["bench"], description=HELP["bench"])
    add_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from numaplan.bench import run

    return run(args)
