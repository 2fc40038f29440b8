"""Entry point of the ``numaplan`` command: argument parsing and the one place that maps errors
to exit codes.

Exit codes: 0 success; 1 a user error (:class:`~numaplan.errors.NumaplanError`: bad input,
impossible request, stale plan); 2 bad command line; 3 an internal error (a bug: please report);
130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from collections.abc import Callable, Sequence

from numaplan._version import __version__
from numaplan.cli.help import HELP
from numaplan.errors import NumaplanError

#: Subcommand name -> module under numaplan.cli exposing add_parser(subparsers) and run(args).
COMMANDS = {
    "topology": "numaplan.cli.topology",
    "probe": "numaplan.cli.probe",
    "compile": "numaplan.cli.compile",
    "check": "numaplan.cli.check",
    "diff": "numaplan.cli.diff",
    "show": "numaplan.cli.show",
    "run": "numaplan.cli.run",
    "chat": "numaplan.cli.chat",
    "serve": "numaplan.cli.serve",
    "convert": "numaplan.cli.convert",
    "bench": "numaplan.cli.bench",
}

EXIT_OK, EXIT_USER, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so main() owns every exit code."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{self.prog}: {message}")


class _UsageError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (subcommand modules are imported here, each stays light)."""
    parser = _Parser(prog="numaplan", description=HELP["prog"])
    parser.add_argument("--version", action="version", version=f"numaplan {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help=HELP["verbose"])
    parser.add_argument("--debug", action="store_true", help=HELP["debug"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module in COMMANDS.items():
        importlib.import_module(module).add_parser(sub)
    return parser


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="numaplan: %(levelname)s: %(message)s",
                        stream=sys.stderr, force=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code (never raises for user errors).

    Parameters
    ----------
    argv
        Arguments without the program name (default: ``sys.argv[1:]``).
    """
    args: argparse.Namespace | None = None

    def command() -> int:
        nonlocal args
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except _UsageError as exc:
            print(f"{exc}\n(see `numaplan --help`)", file=sys.stderr)
            return EXIT_USAGE
        _setup_logging(args.verbose)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        return int(args.run(args) or 0)

    return exit_code(command, debug=lambda: args is not None and args.debug)


def exit_code(call: Callable[[], int | None], *, debug: Callable[[], bool] = lambda: False
              ) -> int:
    """Run ``call`` and map its outcome to an exit code, reporting an error in one line.

    The one place errors become exit codes: :func:`main` runs every command through it, and the
    input fuzz tests run each file reader through it.

    Parameters
    ----------
    call
        The work; its return value (``None`` meaning 0) is the exit code when it returns.
    debug
        Asked after an internal error: whether to print its traceback (``--debug``).
    """
    try:
        return int(call() or 0)
    except NumaplanError as exc:
        print(f"numaplan: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("numaplan: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:
        if debug():
            traceback.print_exc()
        print(f"numaplan: internal error: {type(exc).__name__}: {exc} "
              f"(a bug; rerun with --debug for a traceback and please report it)", file=sys.stderr)
        return EXIT_INTERNAL


def console_main() -> None:
    """``numaplan`` console script."""
    sys.exit(main())
