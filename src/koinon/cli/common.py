"""What every ``koinon`` command shares: the member folder default and how a subcommand is declared."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from koinon.errors import KoinonError


def default_home() -> Path:
    return Path(os.environ.get("KOINON_HOME", Path.home() / ".koinon"))


def home_option(sp: argparse.ArgumentParser) -> None:
    """``--home``, the member folder, as every command that reads or writes one takes it."""
    sp.add_argument(
        "--home", type=Path, default=default_home(), help="member folder (default: $KOINON_HOME or ~/.koinon)"
    )


def add_command(sub, name: str, help_text: str, epilog: str | None) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` shows its description and examples, with its own ``-v``."""
    sp = sub.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # SUPPRESS: a subcommand's default must not overwrite `koinon -v COMMAND`
    sp.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="show detailed logs and tracebacks"
    )
    return sp


def run_standalone(register, commands: Callable[[], dict], argv: list[str] | None = None) -> int:
    """A ``koinon`` with only one module's commands (``register(sub)``, ``commands()`` → {name: handler}), with the
    same error handling as ``koinon.cli.main.main``: tests call it in-process."""
    parser = argparse.ArgumentParser(prog="koinon", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="show detailed logs and tracebacks")
    register(parser.add_subparsers(dest="command", metavar="COMMAND"))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return commands()[args.command](args)
    except KoinonError as e:
        if getattr(args, "verbose", False):
            raise
        print(f"koinon: error: {e}", file=sys.stderr)
        return 2
