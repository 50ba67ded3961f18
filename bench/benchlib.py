"""What every benchmark script records next to its numbers: the machine's load, the CPU other processes took, the
sources measured and the command that produced them."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def load() -> list[float]:
    """The 1, 5 and 15-minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


def busy_jiffies() -> int | None:
    """Busy CPU time of the whole machine so far (/proc/stat, all but idle and iowait); None where unavailable."""
    try:
        with open("/proc/stat") as f:
            values = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return sum(values) - values[3] - values[4]


def src_digest(files: Iterable[Path]) -> dict:
    """SHA-256 of the sources measured (the repository changes while people work): per file and in all."""
    per_file = {
        str(f.relative_to(REPO)): hashlib.sha256(f.read_bytes()).hexdigest()[:16] if f.exists() else None for f in files
    }
    return {"all": hashlib.sha256(json.dumps(per_file, sort_keys=True).encode()).hexdigest()[:16], "files": per_file}


def command_line() -> str:
    """The command that ran this benchmark, relative to the repository where possible."""
    python = sys.executable
    try:
        python = os.path.relpath(python, REPO) if Path(python).is_relative_to(REPO) else python
    except ValueError:
        pass
    return shlex.join([python, os.path.relpath(Path(sys.argv[0]).resolve(), REPO), *sys.argv[1:]])
