"""``numaplan show PLAN``: a plan as tables, and optionally as a picture of the machine.

matplotlib is imported only when ``--png`` is given (inside ``render_plan_png``).
"""

from __future__ import annotations

import argparse
import sys

from numaplan.cli.help import HELP
from numaplan.plan import read_plan
from numaplan.plan.table import render_plan_table


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``show`` on the subcommand parsers."""
    p = sub.add_parser("show", help=HELP["show"], description=HELP["show"])
    p.add_argument("plan", metavar="PLAN", help=HELP["plan_file"])
    p.add_argument("--png", metavar="FILE", help=HELP["png"])
    p.add_argument("--json", action="store_true", help=HELP["show_json"])
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the plan (tables, or canonical JSON) and draw it when ``--png`` is given.

    Parameters
    ----------
    args
        Parsed arguments (``plan``, ``png``, ``json``).

    Returns
    -------
    int
        0.
    """
    plan = read_plan(args.plan)
    if args.png:
        from numaplan.plan.picture import render_plan_png

        path = render_plan_png(plan, args.png)
        print(f"wrote {path}", file=sys.stderr)
    if args.json:
        sys.stdout.write(plan.to_json())
    else:
        print(render_plan_table(plan))
    return 0
