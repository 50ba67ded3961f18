"""What every ``koinon`` command shares: the member folder default and how a subcommand is declared."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def default_home() -> Path:
    return Path(os.environ.get("KOINON_HOME", Path.home() / ".koinon"))


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
