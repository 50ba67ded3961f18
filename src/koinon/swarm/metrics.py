"""A peer's metrics log: one JSON line per event in ``$HOME/metrics.jsonl`` (the demo, the dashboard and the tests
read it), and the one-line console summary of each round.

Separate from the round loop (``peer.py``) because it decides nothing: it only writes down what the loop, the
verification duties and the checkpoint keeper report.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path


class MetricsLog:
    """Appends records to ``path``; ``last_round`` is the last ``round`` record written (``Peer._settle`` writes
    it again with the θ the peer ends on)."""

    def __init__(self, path: Path, logger: logging.Logger) -> None:
        self.path = Path(path)
        self.logger = logger
        self.last_round: dict = {}

    def write(self, **record: object) -> None:
        record.setdefault("time", time.time())
        if record.get("event") == "round":
            self.last_round = dict(record)
        line = json.dumps(record, sort_keys=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")
        if record.get("event") == "round":
            self.logger.info(
                "round %s  loss %.3f  eval %.3f  peers %s  sent %.1f MB  θ %s%s",
                record["round"],
                record["loss"],
                record["eval_loss"],
                record["peers"],
                record["bytes_sent"] / 1e6,
                str(record["theta"])[:12],
                "" if record["in_sync"] else "  (re-synced)" if record["resynced"] else "  (out of sync)",
            )
