"""The spot-check bookkeeping (koinon.verification.trust) on hand-made cuts: who may answer a check, what is ignored,
expiry, penalties that end, and an early readmission by governance. Events are stand-ins carrying what the state
reads (kind, author, body, id); tests/sim/test_verification_sim.py runs the same state on real signed events.
"""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import pytest

from koinon.config import TrainingConfig
from koinon.governance.charter import training_body
from koinon.governance.effects import apply_effect
from koinon.governance.state import GovState
from koinon.ledger.event import Event
from koinon.verification.trust import EXPIRY_ROUNDS
from tests.sim.fakenet import identity_from_seed

IDS = {n: identity_from_seed(f"trust/{n}") for n in ("ann", "ben", "cat", "dan", "eve")}
M = {n: i.member_id for n, i in IDS.items()}
TRACE = [b"\0" * 32] * 6  # two segments


def state(permille: int = 1000, penalty: int = 2, founders=("ann", "ben", "cat", "dan")) -> GovState:
    config = TrainingConfig(verify_permille=permille, penalty_rounds=penalty)
    body = {"name": "t", "founders": sorted(M[n] for n in founders), "training": training_body(config), "rules": {}}
    charter = Event.create(IDS["ann"], swarm=b"", seq=1, prev=None, kind="charter", body=body, time_ms=0)
    return GovState(charter)


class Cuts:
    def __init__(self, s: GovState) -> None:
        self.s, self.index, self.n = s, 0, 0

    def ev(self, kind: str, who: str, body: dict) -> SimpleNamespace:
        self.n += 1
        return SimpleNamespace(kind=kind, author=M[who], body=body, id=hashlib.sha256(b"%d" % self.n).digest())

    def commit(self, who: str, r: int, trace=TRACE) -> SimpleNamespace:
        return self.ev("commit", who, {"round": r, "samples": 16, "trace": trace})

    def verdict(self, who: str, commit: bytes, ok: bool) -> SimpleNamespace:
        return self.ev("verdict", who, {"commit": commit, "ok": ok, "error": 0 if ok else 10**6, "got": bytes(32)})

    def feed(self, *events) -> None:
        self.s.apply_cut(self.index, list(events), seed=hashlib.sha256(b"seed %d" % self.index).digest())
        self.index += 1

    def name(self, member: str) -> str:
        return next(n for n, m in M.items() if m == member)


def test_only_the_assigned_verifier_settles_a_check_and_only_after_the_assignment():
    c = Cuts(state())
    a, b = c.commit("ann", 1), c.commit("ben", 1)
    c.feed(a, b)
    check = c.s.trust.checks[a.id]
    others = [n for n in ("ben", "cat", "dan") if M[n] != check.verifier]
    c.feed(*[c.verdict(n, a.id, True) for n in others])  # not theirs to answer
    assert a.id in c.s.trust.checks and c.s.credit == {}
    c.feed(c.verdict(c.name(check.verifier), a.id, True))
    assert a.id not in c.s.trust.checks and c.s.credit == {M["ann"]: 16}
    # a verdict in the same cut as its commit comes before any assignment: ignored
    late = c.commit("ann", 2)
    c.feed(late, c.verdict("ben", late.id, True))
    assert late.id in c.s.trust.checks


def test_commits_that_cannot_count_are_ignored():
    c = Cuts(state())
    first = c.commit("ann", 3)
    c.feed(
        first,
        c.commit("ann", 3),  # a second commit for the same round
        c.commit("eve", 3),  # not a member
        c.commit("ben", 3, trace=[b"\0" * 32] * 2),  # no segment in its trace
    )
    assert c.s.trust.stat(M["ann"])["commits"] == 1
    assert c.s.trust.stat(M["eve"])["commits"] == 0 and c.s.trust.stat(M["ben"])["commits"] == 0
    c.feed(c.commit("ann", 2))  # a round before one it already committed
    assert c.s.trust.stat(M["ann"])["commits"] == 1


def test_nobody_else_active_means_no_check_and_no_credit():
    c = Cuts(state())
    a = c.commit("ann", 1)
    c.feed(a)
    assert c.s.trust.checks == {} and c.s.trust.stat(M["ann"])["sampled"] == 0


@pytest.mark.parametrize(("permille", "sampled"), [(0, 0), (1000, 4)])
def test_the_sampling_rate_is_the_configurations(permille, sampled):
    c = Cuts(state(permille))
    c.feed(*[c.commit(n, 1) for n in ("ann", "ben", "cat", "dan")])
    assert len(c.s.trust.checks) == sampled


def test_an_unanswered_check_expires_without_credit():
    c = Cuts(state())
    a = c.commit("ann", 1)
    c.feed(a, c.commit("ben", 1))
    for r in range(2, EXPIRY_ROUNDS + 3):
        c.feed(c.commit("ben", r))
    assert a.id not in c.s.trust.checks
    (expired,) = [x for x in c.s.trust.history if x.commit == a.id]
    assert expired.status == "expired" and M["ann"] not in c.s.credit


def convict(c: Cuts, who: str, r: int) -> None:
    a = c.commit(who, r)
    c.feed(a, *[c.commit(n, r) for n in ("ann", "ben", "cat", "dan") if n != who])
    check = c.s.trust.checks[a.id]
    c.feed(c.verdict(c.name(check.verifier), a.id, False))
    assert c.s.trust.checks[a.id].status == "accused"
    c.feed(*[c.verdict(c.name(m), a.id, False) for m in check.referees])


def test_a_penalty_ends_after_its_rounds_and_governance_can_end_it_early():
    c = Cuts(state(penalty=2))
    convict(c, "dan", 1)
    assert M["dan"] in c.s.excluded() and c.s.trust.penalty[M["dan"]] == 3
    c.feed(*[c.commit(n, 2) for n in ("ann", "ben")])
    c.feed(c.commit("dan", 3))  # excluded: ignored
    assert c.s.trust.stat(M["dan"])["commits"] == 1
    c.feed(c.commit("ann", 4))  # one member ahead does not move the swarm's clock
    assert M["dan"] in c.s.excluded() and c.s.trust.round == 2
    c.feed(c.commit("ben", 4), c.commit("cat", 4))  # most are at round 4 > 3: the penalty is over
    assert M["dan"] not in c.s.excluded()

    c2 = Cuts(state(penalty=50))
    convict(c2, "dan", 1)
    assert M["dan"] in c2.s.excluded()
    assert "readmitted" in apply_effect("admit", {"member": M["dan"]}, c2.s)
    assert M["dan"] not in c2.s.excluded()


def test_a_commit_claiming_a_far_round_changes_nothing():
    """One member claiming round 2^62 must not end penalties, expire checks or move the clock."""
    c = Cuts(state(penalty=5))
    convict(c, "dan", 1)
    a = c.commit("ann", 2)
    c.feed(a, c.commit("ben", 2), c.commit("cat", 2))
    open_before = set(c.s.trust.checks)
    c.feed(c.commit("ben", 2**62), c.commit("cat", 7))  # far ahead: both ignored
    assert c.s.trust.round == 2 and M["dan"] in c.s.excluded()
    assert set(c.s.trust.checks) == open_before and a.id in open_before
    assert c.s.trust.stat(M["ben"])["commits"] == 2
