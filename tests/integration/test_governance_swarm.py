"""Governance in a live swarm: 3 real peers (separate processes on loopback) vote, and the decisions take effect.

- a set-config proposal (H 10 → 5) passes and every peer trains with H = 5 from the same round, with identical θ;
- a release passes for a checkpoint one peer has lost: its running peer fetches it in chunks from the others;
- an expel proposal passes and the expelled peer's contributions stop counting on the others.

Proposals and votes reach each running peer through its outbox (``koinon.ledger.outbox``), as the CLI's do.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from koinon.governance.state import GovState
from koinon.identity import Identity
from koinon.ledger.node import LedgerNode
from koinon.ledger.outbox import submit
from koinon.ledger.store import LedgerStore
from koinon.store.checkpoint import read_checkpoint
from koinon.training.model import theta_hash
from tests.integration.swarmkit import PeerProcess, stop_all, wait_until

pytestmark = pytest.mark.slow

CHARTER = """
name = "governance-test"
[rules]
epoch_ms = 500
delay = 1
window = 40
timelock = 1
quorum = "1/3"
threshold = "1/2"
# three members, one of whom is expelled: the two left must still make rounds (docs/training.md §2)
min_contributors = 2
[training]
inner_steps = 10
"""
ARGS = ["--threads", "1", "--matchmaking-time", "1", "--averaging-timeout", "20"]


def final_state(home: Path) -> GovState | None:
    """The final governance state of a (running) peer's ledger, read from its SQLite file."""
    store = LedgerStore(home / "ledger.sqlite")
    try:
        if store.swarm_id is None:
            return None
        identity, _ = Identity.load_or_create(home)
        return LedgerNode(store, identity, lambda: int(time.time() * 1000)).chain.final_governance()
    finally:
        store.close()


def no_direct(kind: str, body: dict) -> bytes:
    raise AssertionError("the peer is running: the event must go through its outbox")


def propose(home: Path, action: str, effect: dict, text: str) -> bytes:
    event_id, via_peer = submit(home, "proposal", {"action": action, "effect": effect, "text": text}, no_direct)
    assert via_peer
    return event_id


def vote_when_open(homes: list[Path], pid: bytes, choices: list[str], peers: list[PeerProcess]) -> None:
    wait_until(
        lambda: all(
            (s := final_state(h)) is not None and pid in s.proposals and s.proposals[pid].state == "active"
            for h in homes
        ),
        90,
        "the proposal to open",
        *peers,
    )
    for home, choice in zip(homes, choices, strict=True):
        submit(home, "vote", {"proposal": pid, "choice": choice}, no_direct)


def recorded_checkpoints(home: Path) -> dict[bytes, set[str]]:
    """θ hash → the members whose ``checkpoint`` events for it this peer's ledger holds."""
    store = LedgerStore(home / "ledger.sqlite")
    try:
        out: dict[bytes, set[str]] = {}
        for e in store.iter_events(kind="checkpoint"):
            out.setdefault(e.body["theta"], set()).add(e.author)
        return out
    finally:
        store.close()


def executed(home: Path, pid: bytes) -> bool:
    s = final_state(home)
    return s is not None and pid in s.proposals and s.proposals[pid].state == "executed"


@pytest.fixture
def swarm(tmp_path):
    (tmp_path / "charter.toml").write_text(CHARTER)
    founder = PeerProcess(
        tmp_path / "peer-0", extra=[*ARGS, "--wait-for-peers", "3", "--charter", str(tmp_path / "charter.toml")]
    )
    boot = founder.maddrs()
    peers = [founder] + [
        PeerProcess(tmp_path / f"peer-{i}", boot, extra=[*ARGS, "--wait-for-peers", "3"]) for i in (1, 2)
    ]
    try:
        wait_until(lambda: all(p.last_round() >= 2 for p in peers), 180, "3 peers to run 2 rounds", *peers)
        yield peers
    finally:
        stop_all(peers)


def test_set_config_then_expel_take_effect_in_the_running_swarm(swarm):
    peers = swarm
    homes = [p.home for p in peers]

    # --- set-config: H 10 → 5 (shorter rounds also keep the rest of this test short) ----------------------------
    pid = propose(homes[0], "set-config", {"changes": {"inner_steps": 5}}, "Shorter rounds\n\nH = 5: fresher averages.")
    vote_when_open(homes, pid, ["yes", "yes", "no"], peers)
    wait_until(lambda: all(executed(h, pid) for h in homes), 120, "the set-config proposal to execute", *peers)
    tally = final_state(homes[1]).proposals[pid].result
    assert (tally.yes, tally.no, tally.abstain, tally.total) == (2, 1, 0, 3)
    wait_until(
        lambda: all(any(r.get("inner_steps") == 5 for r in p.metrics("round")) for p in peers),
        120,
        "every peer to train a round with H = 5",
        *peers,
    )
    switch = []
    for p in peers:
        rounds = p.rounds()
        first = min(r for r, rec in rounds.items() if rec.get("inner_steps") == 5)
        assert all(rec["inner_steps"] == 10 for r, rec in rounds.items() if r < first)
        assert all(rec["inner_steps"] == 5 for r, rec in rounds.items() if r > first)
        switch.append(first)
    assert len(set(switch)) == 1, f"peers switched to H = 5 at different rounds: {switch}"
    a, b, c = (p.rounds() for p in peers)
    for r in sorted(set(a) & set(b) & set(c)):
        assert a[r]["theta"] == b[r]["theta"] == c[r]["theta"], f"round {r}: θ differs"
        assert a[r]["config"] == b[r]["config"] == c[r]["config"], f"round {r}: configuration differs"

    # --- release a checkpoint peer 2 has lost, and expel peer 2 (both proposals run at once) --------------------
    members = [p.metrics("start")[0]["member"] for p in peers]
    wait_until(
        lambda: any({members[0], members[1]} <= who for who in recorded_checkpoints(homes[0]).values()),
        120,
        "a checkpoint recorded by peers 0 and 1",
        *peers,
    )
    theta = next(t for t, who in recorded_checkpoints(homes[0]).items() if {members[0], members[1]} <= who)
    lost = homes[2] / "checkpoints" / f"{theta.hex()[:16]}.safetensors"
    lost.unlink(missing_ok=True)
    rid = propose(homes[0], "release", {"checkpoint": theta, "tag": "v1", "license": "Apache-2.0"}, "First release")
    target = members[2]
    pid = propose(homes[0], "expel", {"member": target}, "Expel peer 2")
    vote_when_open(homes[:2], rid, ["yes", "yes"], peers)
    vote_when_open(homes[:2], pid, ["yes", "yes"], peers)
    wait_until(lambda: lost.exists() and peers[2].metrics("fetched"), 150, "peer 2 to fetch the release", *peers)
    fetched = peers[2].metrics("fetched")[0]
    assert fetched["tag"] == "v1" and fetched["theta"] == theta.hex()
    assert sum(fetched["report"]["from"].values()) == fetched["report"]["chunks"]
    assert theta_hash(read_checkpoint(lost)[0]) == theta.hex()
    wait_until(lambda: executed(homes[0], pid) and executed(homes[1], pid), 120, "the expel to execute", *peers)
    executed_at = max(p.last_round() for p in peers[:2])
    wait_until(
        lambda: all(p.last_round() >= executed_at + 4 for p in peers[:2]), 120, "4 more rounds after the expel", *peers
    )
    for p in peers[:2]:
        later = [rec for r, rec in p.rounds().items() if r >= executed_at + 3]
        assert later and all(target not in rec["contributors"] for rec in later), "the expelled peer still counts"
        # a round whose all-reduce failed under load re-syncs from a peer and records no contributors; most must
        # have averaged (the two remaining members, or one of them with the expelled peer weighted 0)
        averaged = [rec for rec in later if rec["contributors"]]
        assert len(averaged) * 2 >= len(later), [(rec["round"], rec["group"], rec["contributors"]) for rec in later]
    a, b = peers[0].rounds(), peers[1].rounds()
    for r in sorted(set(a) & set(b)):
        assert a[r]["theta"] == b[r]["theta"], f"round {r}: θ differs after the expel"
    assert "this member is excluded (expelled, or serving a penalty)" in (peers[2].home / "peer.log").read_text()
