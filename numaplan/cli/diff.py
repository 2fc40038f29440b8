"""``numaplan diff A B``: what moved between two plans, in words a reviewer reads.

Exit 0 on success whether or not the plans differ (the diff is a report); ``--exit-code`` makes
it exit 1 when they differ, like ``git diff --exit-code``. An unreadable plan exits 1 with one
line (through ``numaplan.cli.main``).
"""

from __future__ import annotations

import argparse
import json

from numaplan.cli.help import HELP
from numaplan.plan import read_plan
from numaplan.plan.diff import diff_plans, render_diff


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``diff`` on the subcommand parsers."""
    p = sub.add_parser("diff", help=HELP["diff"], description=HELP["diff"])
    p.add_argument("a", metavar="A", help=HELP["diff_a"])
    p.add_argument("b", metavar="B", help=HELP["diff_b"])
    p.add_argument("--exit-code", action="store_true", help=HELP["exit_code"])
    p.add_argument("--json", action="store_true", help=HELP["diff_json"])
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the diff of plans ``args.a`` and ``args.b``.

    Parameters
    ----------
    args
        Parsed arguments (``a``, ``b``, ``exit_code``, ``json``).

    Returns
    -------
    int
        0, or 1 with ``--exit-code`` when the plans differ.
    """
    a, b = read_plan(args.a), read_plan(args.b)
    d = diff_plans(a, b, a_label=args.a, b_label=args.b)
    if args.json:
        print(json.dumps({"a": d.a_label, "b": d.b_label, "equal": d.equal,
                          "items": [i.model_dump() for i in d.items]}, indent=2))
    else:
        print(render_diff(d))
    return 1 if args.exit_code and not d.equal else 0
