"""The dashboard runs the CLI's own commands: the same checks, messages and signing path as `koinon propose`,
`vote`, `proposals --json` … (docs/dashboard.md). A command's output is captured per thread, so the peer's own
printing (in other threads) still goes to the terminal."""

from __future__ import annotations

import io
import json
import sys
import threading

from koinon.errors import KoinonError

_local = threading.local()
_install_lock = threading.Lock()


class _ThreadStream(io.TextIOBase):
    """Writes go to this thread's capture buffer when it has one, else to the original stream."""

    def __init__(self, original) -> None:
        self.original = original

    def write(self, s: str) -> int:
        buffer = getattr(_local, "buffer", None)
        return buffer.write(s) if buffer is not None else self.original.write(s)

    def flush(self) -> None:
        if getattr(_local, "buffer", None) is None:
            self.original.flush()

    def __getattr__(self, name):
        return getattr(self.original, name)


def _install() -> None:
    with _install_lock:
        if not isinstance(sys.stdout, _ThreadStream):
            sys.stdout = _ThreadStream(sys.stdout)


class CommandError(Exception):
    """A command refused (its message is the CLI's ``koinon: error: …`` text)."""


def run_cli(argv: list[str]) -> str:
    """Run ``koinon ARGV`` in this thread; its standard output, or CommandError with the command's error."""
    from koinon.cli.main import _parser, command_table

    _install()
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        raise CommandError(f"bad arguments: {' '.join(argv)}") from None
    _local.buffer = io.StringIO()
    try:
        code = command_table()[args.command](args)
        out = _local.buffer.getvalue()
    except KoinonError as e:
        raise CommandError(str(e)) from None
    finally:
        _local.buffer = None
    if code != 0:
        raise CommandError(out.strip() or f"koinon {argv[0]} exited {code}")
    return out


def run_json(argv: list[str]) -> dict:
    return json.loads(run_cli([*argv, "--json"]))


__all__ = ["CommandError", "run_cli", "run_json"]
