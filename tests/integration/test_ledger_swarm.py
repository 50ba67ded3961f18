"""The ledger with real peers: events replicate to every peer, an offline peer catches up, final logs agree,
and a byte changed in a stored event makes `koinon audit` fail and name it."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from koinon.identity import Identity
from koinon.ledger.node import LedgerNode
from koinon.ledger.store import LedgerStore
from tests.integration.swarmkit import FAST, PeerProcess, stop_all, wait_until

pytestmark = pytest.mark.slow


def stored(home: Path) -> dict[bytes, tuple[str, int, str]]:
    """{event id: (author, seq, kind)} read from a peer's ledger while it runs (WAL allows a concurrent reader)."""
    db = sqlite3.connect(f"file:{home / 'ledger.sqlite'}?mode=ro", uri=True)
    try:
        return {bytes(i): (a, s, k) for i, a, s, k in db.execute("SELECT id, author, seq, kind FROM events")}
    finally:
        db.close()


def final_log(home: Path) -> list[bytes]:
    """The total order a stopped peer's ledger finalised (recomputed from its store)."""
    store = LedgerStore(home / "ledger.sqlite")
    try:
        identity = Identity.load(home)
        ids, _, _ = LedgerNode(store, identity, lambda: int(time.time() * 1000)).final_log()
        return ids
    finally:
        store.close()


def test_ledger_replicates_catches_up_and_audits(tmp_path):
    args = ["--wait-for-peers", "3", *FAST]
    # two contributors make a round: the swarm goes on while peer-2 is offline
    peers = [PeerProcess(tmp_path / "peer-0", extra=[*args, "--min-contributors", "2"])]
    try:
        boot = peers[0].maddrs()
        peers += [PeerProcess(tmp_path / f"peer-{i}", boot, extra=args) for i in (1, 2)]
        wait_until(lambda: all(p.last_round() >= 2 for p in peers), 180, "2 rounds everywhere", *peers)

        # every peer's round events reach every other peer
        def all_rounds_everywhere() -> bool:
            views = [{(a, s) for a, s, k in stored(p.home).values() if k == "round"} for p in peers]
            common = set.intersection(*views)
            authors = [a for a, _ in common]
            return len(set(authors)) == 3 and all(authors.count(a) >= 2 for a in set(authors))

        wait_until(all_rounds_everywhere, 60, "round events of all peers on all peers", *peers)

        # peer-2 goes offline; the others go on; it comes back and catches up
        offline = peers.pop()
        assert offline.stop() == 0
        mark = max(p.last_round() for p in peers)
        wait_until(lambda: all(p.last_round() >= mark + 3 for p in peers), 180, "3 rounds without peer-2", *peers)
        missed = {i for i, (a, s, k) in stored(peers[0].home).items()} - set(stored(offline.home))
        assert missed, "the others recorded nothing while peer-2 was away"
        back = PeerProcess(offline.home, boot, extra=FAST)
        peers.append(back)
        wait_until(lambda: missed <= set(stored(back.home)), 120, "peer-2 to catch up on what it missed", *peers)
    finally:
        codes = stop_all(peers)
    assert codes == [0] * len(codes), codes

    # after everyone stopped, the final logs are one a prefix of another (safety), and all non-empty
    logs = [final_log(p.home) for p in peers]
    shortest = min(logs, key=len)
    assert len(shortest) > 10
    for log in logs:
        assert log[: len(shortest)] == shortest

    # an honest copy audits; one changed byte in one stored event fails and is named
    home = peers[0].home
    ok = subprocess.run([sys.executable, "-m", "koinon", "audit", "--home", str(home)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    forged = tmp_path / "forged"
    forged.mkdir()
    shutil.copy(home / "ledger.sqlite", forged / "ledger.sqlite")
    db = sqlite3.connect(forged / "ledger.sqlite")
    author, seq, wire = db.execute(
        "SELECT author, seq, wire FROM events WHERE kind = 'round' ORDER BY received LIMIT 1 OFFSET 2"
    ).fetchone()
    wire = bytearray(wire)
    wire[len(wire) // 2] ^= 0x01
    db.execute("UPDATE events SET wire = ? WHERE author = ? AND seq = ?", (bytes(wire), author, seq))
    db.commit()
    db.close()
    bad = subprocess.run(
        [sys.executable, "-m", "koinon", "audit", "--home", str(forged)], capture_output=True, text=True
    )
    assert bad.returncode != 0
    assert author[-8:] in bad.stderr + bad.stdout and f"seq {seq}" in bad.stderr + bad.stdout, bad.stderr
