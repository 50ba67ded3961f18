"""Verification end to end without a network: five in-process members train real inner steps (a tiny model),
commit to their traces, and answer the spot-checks the governance state assigns, through the same
``verify_commit`` the peer uses. One is a free-rider (``--attack freeride``'s made-up trace), one accuses falsely
whenever it verifies. Cuts are fed to :class:`GovState` as the ledger's Chain would; the cut seeds are fixed, so
the run is deterministic. Then the same cuts, with each cut's events shuffled, must give the identical state.
"""

from __future__ import annotations

import hashlib
import random

import pytest
import torch

from koinon.config import TrainingConfig
from koinon.governance.charter import training_body
from koinon.governance.state import GovState
from koinon.ledger.event import Event
from koinon.ledger.kinds import check_body
from koinon.training.data import Corpus
from koinon.training.diloco import InnerTrainer
from koinon.training.model import build_model, flat_parameters
from koinon.verification.worker import BlobStore, commitment, fetch_blob, made_up_trace, verify_commit
from tests.sim.fakenet import START_MS, identity_from_seed

pytestmark = pytest.mark.slow

CONFIG = TrainingConfig(inner_steps=4, batch_size=2, seq_len=32, inner_warmup=0, verify_segments=4, penalty_rounds=3)
NAMES = ("ann", "ben", "cat", "free", "liar")
ROUNDS = 8


class Member:
    def __init__(self, name: str, corpus: Corpus) -> None:
        self.name = name
        self.identity = identity_from_seed(f"verification-sim/{name}")
        self.id = self.identity.member_id
        self.trainer = InnerTrainer(build_model(CONFIG), CONFIG)
        self.blobs = BlobStore()
        self.seq, self.prev = 0, None
        self.corpus = corpus

    def event(self, swarm: bytes, kind: str, body: dict, clock: int) -> Event:
        check_body(kind, body)
        self.seq += 1
        e = Event.create(self.identity, swarm=swarm, seq=self.seq, prev=self.prev, kind=kind, body=body, time_ms=clock)
        self.prev = e.id
        return e


class Swarm:
    def __init__(self, corpus: Corpus) -> None:
        self.members = {n: Member(n, corpus) for n in NAMES}
        self.by_id = {m.id: m for m in self.members.values()}
        self.corpus = corpus
        founder = self.members["ann"]
        body = {
            "name": "verification sim",
            "founders": sorted(m.id for m in self.members.values()),
            "training": training_body(CONFIG),
            "rules": {"weight": "contribution"},
        }
        check_body("charter", body)
        self.charter = founder.event(b"", "charter", body, START_MS)
        self.state = GovState(self.charter)
        self.clock = START_MS
        self.cuts: list[list[Event]] = []
        self.theta = flat_parameters(build_model(CONFIG))

    def fetch(self, key: bytes, sources: list[str]) -> bytes:
        for s in sources:
            try:
                return fetch_blob(self.by_id[s].blobs.handle, key)
            except LookupError:
                continue
        raise LookupError("nobody has it")

    def feed(self, events: list[Event]) -> None:
        index = len(self.cuts)
        self.cuts.append(events)
        self.state.apply_cut(index, events, seed=hashlib.sha256(b"cut %d" % index).digest())

    def commits(self, r: int) -> list[Event]:
        out, deltas = [], []
        group = sorted(self.by_id)
        excluded = set(self.state.excluded())
        for m in self.members.values():
            if m.id in excluded:
                continue
            blocks = self.corpus.shard(m.id, r, group)
            batches = self.corpus.batches(blocks, f"{m.id}|{r}".encode(), CONFIG.inner_steps, 2, 32)
            bounds, step0 = CONFIG.segment_bounds(), m.trainer.steps_done
            if m.name == "free":
                delta = torch.zeros_like(self.theta)
                trace = made_up_trace(self.theta, m.trainer.moments(), bounds, delta)
            else:
                delta, _, _, trace = m.trainer.run_round(self.theta, batches, bounds)
                deltas.append(delta)
            hashes = m.blobs.add_round(r, trace)
            body = commitment(
                member=m.id,
                round_no=r,
                theta=self.theta,
                config=CONFIG,
                data=self.corpus.source_ids,
                group=group,
                shards=blocks,
                step0=step0,
                samples=CONFIG.inner_steps * CONFIG.batch_size,
                trace=hashes,
                delta=delta,
            )
            self.clock += 1
            out.append(m.event(self.charter.id, "commit", body, self.clock))
        self.theta = self.theta - torch.stack(deltas).mean(0)
        return out

    def verdicts(self) -> list[Event]:
        out = []
        for m in self.members.values():
            for check in self.state.trust.tasks_for(m.id):
                if m.name == "liar" and check.verifier == m.id:
                    body = {"commit": check.commit, "ok": False, "error": 10**9, "got": bytes(32)}
                elif m.name == "free":  # a lazy verifier: says yes without looking
                    body = {"commit": check.commit, "ok": True, "error": 0, "got": bytes(32)}
                else:
                    commit = next(e for cut in self.cuts for e in cut if e.id == check.commit)
                    sources = [check.author] + ([check.accuser] if check.accuser else [])
                    outcome = verify_commit(
                        commit.body,
                        check.author,
                        check.segment,
                        fetch=lambda key, s=sources: self.fetch(key, s),
                        corpus=self.corpus,
                        config=CONFIG,
                        trainer_factory=lambda cfg: InnerTrainer(build_model(cfg), cfg),
                    )
                    assert outcome is not None
                    body = {"commit": check.commit, "ok": outcome.ok, "error": outcome.error_ppm, "got": outcome.got}
                self.clock += 1
                out.append(m.event(self.charter.id, "verdict", body, self.clock))
        return out


@pytest.fixture(scope="module")
def run():
    torch.manual_seed(0)
    swarm = Swarm(Corpus.default())
    for r in range(1, ROUNDS + 1):
        swarm.feed(swarm.commits(r))
        swarm.feed(swarm.verdicts())  # verifiers answer; accusations get their referees
        swarm.feed(swarm.verdicts())  # referees answer
    return swarm


def outcomes(state: GovState, swarm: Swarm, name: str) -> list[tuple[int, str]]:
    mid = swarm.members[name].id
    return [(c.round, c.status) for c in state.trust.history if c.author == mid]


def test_the_free_rider_is_caught_within_five_rounds_and_earns_nothing(run):
    free = run.members["free"].id
    caught = [r for r, status in outcomes(run.state, run, "free") if status == "cheated"]
    assert caught and caught[0] <= 5, outcomes(run.state, run, "free")
    assert run.state.credit.get(free, 0) == 0
    assert run.state.trust.stat(free)["failed"] >= 1
    assert run.state.weight(free) == 0  # contribution-weighted governance: no verified credit, no vote


def test_a_free_rider_is_excluded_for_the_penalty_rounds():
    """With a fresh swarm: right after the conviction, the free-rider is excluded and its commits are ignored."""
    swarm = Swarm(Corpus.default())
    free = swarm.members["free"].id
    for r in range(1, ROUNDS + 1):
        swarm.feed(swarm.commits(r))
        swarm.feed(swarm.verdicts())
        swarm.feed(swarm.verdicts())
        if free in swarm.state.excluded():
            until = swarm.state.trust.penalty[free]
            assert until == swarm.state.trust.round + CONFIG.penalty_rounds
            break
    else:
        pytest.fail("the free-rider was never excluded")
    committed = swarm.state.trust.stat(free)["commits"]
    swarm.feed(swarm.commits(r + 1))  # it does not commit while excluded (Swarm.commits skips it) ...
    assert swarm.state.trust.stat(free)["commits"] == committed


def test_a_false_accusation_is_penalised_and_the_accused_keeps_its_credit(run):
    liar = run.members["liar"].id
    false = [c for c in run.state.trust.history if c.accuser == liar]
    assert false, "the liar was never the verifier of an honest commit; pick other seeds"
    assert all(c.status == "verified" for c in false if c.author != run.members["free"].id)
    assert run.state.trust.stat(liar)["false_accusations"] >= 1
    assert liar in run.state.trust.penalty


def test_honest_members_earn_exactly_their_verified_samples(run):
    t = run.state.trust
    for name in ("ann", "ben", "cat"):
        mid = run.members[name].id
        verified = [c for c in t.history if c.author == mid and c.status == "verified"]
        assert verified, f"{name} has no verified commit"
        assert run.state.credit[mid] == sum(c.samples for c in verified) == t.stat(mid)["verified_samples"]
        assert run.state.weight(mid) == run.state.credit[mid]
    assert not [c for c in t.history if c.status == "cheated" and c.author != run.members["free"].id]


def test_the_same_cuts_in_any_order_give_the_same_trust_state(run):
    def digest(state: GovState) -> tuple:
        t = state.trust
        return (
            sorted(state.credit.items()),
            sorted(t.penalty.items()),
            sorted(t.stats.items()),
            sorted(c.to_dict()["commit"] + c.status for c in t.history),
            sorted(c.commit for c in t.checks.values()),
            state.excluded(),
        )

    want = digest(run.state)
    for seed in range(3):
        rng = random.Random(seed)
        state = GovState(run.charter)
        for index, events in enumerate(run.cuts):
            shuffled = list(events)
            rng.shuffle(shuffled)
            state.apply_cut(index, shuffled, seed=hashlib.sha256(b"cut %d" % index).digest())
        assert digest(state) == want


def test_another_cut_seed_chooses_other_verifiers(run):
    a = GovState(run.charter)
    b = GovState(run.charter)
    a.apply_cut(0, run.cuts[0], seed=b"\x01" * 32)
    b.apply_cut(0, run.cuts[0], seed=b"\x02" * 32)
    pick = lambda s: sorted((c.commit, c.verifier, c.segment) for c in s.trust.checks.values())  # noqa: E731
    assert pick(a) != pick(b)
