"""A free-rider among four real peers (issue 5): it claims a full round of work, does none, and sends a copy of
the last average. The honest peers spot-check its commitments by re-executing a segment of its trace (fetched
from it over libp2p), convict it through the referees, and it ends with no verified credit while every honest
peer earns some and nobody honest is accused. Read back with ``koinon credit --json`` from an honest peer's ledger.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.integration.swarmkit import FAST, PeerProcess, stop_all

pytestmark = pytest.mark.slow

ROUNDS = 14  # P(no conviction) ≈ 0.35^k for k checked rounds; the last few rounds' checks may not be final yet


def test_free_rider_is_convicted_and_earns_no_credit(tmp_path):
    args = ["--wait-for-peers", "4", "--rounds", str(ROUNDS), *FAST]
    honest = [PeerProcess(tmp_path / "honest-0", extra=args)]
    peers = list(honest)
    try:
        boot = honest[0].maddrs()
        honest += [PeerProcess(tmp_path / f"honest-{i}", boot, extra=args) for i in (1, 2)]
        rider = PeerProcess(tmp_path / "rider", boot, extra=[*args, "--attack", "freeride"])
        peers = [*honest, rider]
        deadline = time.monotonic() + 300
        for p in honest:
            code = p.proc.wait(max(1.0, deadline - time.monotonic()))
            assert code == 0, f"{p.home.name} exited {code}:\n{p.log_tail()}"
    finally:
        stop_all(peers)
    out = subprocess.run(
        [sys.executable, "-m", "koinon", "credit", "--home", str(honest[0].home), "--json", "--checks", "256"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    credit = json.loads(out.stdout)
    rows = {r["member"]: r for r in credit["members"]}
    free = rider.metrics("start")[0]["member"]
    mine = [p.metrics("start")[0]["member"] for p in honest]
    assert free in rows, f"the free-rider never committed: {credit}"
    assert rows[free]["failed"] >= 1, f"the free-rider was never convicted: {rows[free]}\n{credit['checks']}"
    assert rows[free]["credit"] == 0
    for m in mine:
        assert rows[m]["credit"] > 0 and rows[m]["verified"] >= 1, rows[m]
        assert rows[m]["failed"] == 0 and rows[m]["false_accusations"] == 0, rows[m]
    convicted = [c for c in credit["checks"] if c["author"] == free and c["status"] == "cheated"]
    assert all(v["member"] in mine for c in convicted for v in c["verdicts"] if not v["ok"])
    # the failing verdicts came from real re-execution in these peer processes (each logs the checks it ran; which
    # honest peers verify or referee is drawn from the cuts, so not necessarily every one of them)
    failing = [r for p in honest for r in p.metrics("verdict") if r["author"] == free and not r["ok"]]
    assert failing, "no honest peer recorded a failing verdict of its own about the free-rider"
