"""`koinon credit`'s numbers (``gov_cmds.credit_dict``) on a governance state fed hand-made final cuts: shares in
integer permille rounded down, credit descending then member id, only members who committed or hold credit."""

from __future__ import annotations

import hashlib

from koinon.cli.gov_cmds import credit_dict
from koinon.config import TrainingConfig
from koinon.governance.charter import training_body
from koinon.governance.state import GovState
from koinon.ledger.event import Event
from koinon.ledger.kinds import check_body
from tests.sim.fakenet import START_MS, identity_from_seed

IDS = {name: identity_from_seed(f"credit-cli/{name}") for name in ("a", "b", "c", "d", "idle")}
H = bytes(range(32))


class Feeds:
    def __init__(self) -> None:
        self.seq: dict[str, int] = {}
        self.prev: dict[str, bytes | None] = {}
        self.swarm = b""
        self.clock = START_MS

    def event(self, name: str, kind: str, body: dict) -> Event:
        check_body(kind, body)
        self.seq[name] = self.seq.get(name, 0) + 1
        self.clock += 1
        e = Event.create(
            IDS[name],
            swarm=self.swarm,
            seq=self.seq[name],
            prev=self.prev.get(name),
            kind=kind,
            body=body,
            time_ms=self.clock,
        )
        self.prev[name] = e.id
        return e


def commit(feeds: Feeds, name: str, samples: int) -> Event:
    body = {
        "round": 1,
        "theta": H,
        "config": H,
        "data": [],
        "group": [],
        "shards": bytes(32),
        "seed": H,
        "step0": 0,
        "steps": 4,
        "samples": samples,
        "trace": [H] * 4,
        "delta": H,
    }
    return feeds.event(name, "commit", body)


def test_shares_round_down_ties_sort_by_member_and_idle_members_are_left_out() -> None:
    feeds = Feeds()
    config = TrainingConfig(verify_permille=1000)
    body = {
        "name": "credit",
        "founders": sorted(i.member_id for i in IDS.values()),
        "training": training_body(config),
        "rules": {"weight": "quadratic"},
    }
    charter = feeds.event("a", "charter", body)
    feeds.swarm = charter.id
    state = GovState(charter)
    by_id = {i.member_id: name for name, i in IDS.items()}

    commits = {name: commit(feeds, name, 100) for name in ("a", "b", "c", "d")}
    state.apply_cut(0, list(commits.values()), seed=hashlib.sha256(b"cut 0").digest())
    assert len(state.trust.checks) == 4
    d_commit = commits["d"].id
    verdicts = [
        feeds.event(by_id[c.verifier], "verdict", {"commit": c.commit, "ok": True, "error": 0, "got": H})
        for c in state.trust.checks.values()
        if c.commit != d_commit  # nobody answers d's check: d committed but holds no credit yet
    ]
    state.apply_cut(1, verdicts, seed=hashlib.sha256(b"cut 1").digest())

    d = credit_dict(state, checks=2)
    assert (d["round"], d["weight_rule"], d["total"]) == (1, "quadratic", 300)
    ids = {name: IDS[name].member_id for name in IDS}
    tied = sorted(ids[n] for n in ("a", "b", "c"))
    assert [(r["member"], r["credit"], r["share_permille"]) for r in d["members"]] == [
        (tied[0], 100, 333),
        (tied[1], 100, 333),
        (tied[2], 100, 333),
        (ids["d"], 0, 0),
    ]
    assert sum(r["share_permille"] for r in d["members"]) == 999  # rounded down, never over 1000
    assert all(r["commits"] == 1 and r["sampled"] == 1 and r["excluded_until"] is None for r in d["members"])
    assert [r["verified"] for r in d["members"]] == [1, 1, 1, 0]
    assert ids["idle"] not in {r["member"] for r in d["members"]}
    assert len(d["checks"]) == 2 and all(c["status"] == "verified" for c in d["checks"])
    assert [c["commit"] for c in d["checks"]] == [c.commit.hex() for c in state.trust.history[-2:]]
    assert credit_dict(state)["checks"] == []
