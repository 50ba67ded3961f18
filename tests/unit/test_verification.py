"""Re-execution of committed segments (koinon.verification.worker): honest work passes, made-up or altered work
fails with a reason, and what we can't judge (another configuration, data set, or missing states) gets no verdict.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from koinon.config import TrainingConfig
from koinon.ledger import cbor
from koinon.training.data import Corpus
from koinon.training.diloco import InnerTrainer
from koinon.training.model import build_model, flat_parameters
from koinon.verification import worker
from koinon.verification.worker import (
    TOLERANCE_PPM,
    BlobStore,
    blob_hash,
    commitment,
    fetch_blob,
    made_up_trace,
    shard_hash,
    verify_commit,
)

CONFIG = TrainingConfig(inner_steps=6, batch_size=2, seq_len=32, inner_warmup=2, verify_segments=3)
ME = "12D3KooWCcheZucmPJ7FvxPTBrLvRWcpqMmevXB7fFiqphBMzNeU"
OTHER = "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo"


CORPUS = Corpus.default()


@pytest.fixture(scope="module")
def corpus():
    return CORPUS


class Work:
    """One member's round: trained (or made up), committed, and its states in a BlobStore."""

    def __init__(self, corpus, *, freeride: bool = False, round_no: int = 2, warm: bool = True) -> None:
        torch.manual_seed(0)
        self.trainer = InnerTrainer(build_model(CONFIG), CONFIG)
        self.theta = flat_parameters(self.trainer.model)
        group = [ME, OTHER]
        if warm:  # a round before, so AdamW's moments and step count are not zero
            blocks = corpus.shard(ME, round_no - 1, group)
            self.trainer.run_round(self.theta, corpus.batches(blocks, b"warm", 3, 2, 32))
        self.blocks = corpus.shard(ME, round_no, group)
        bounds, step0 = CONFIG.segment_bounds(), self.trainer.steps_done
        batches = corpus.batches(self.blocks, f"{ME}|{round_no}".encode(), CONFIG.inner_steps, 2, 32)
        if freeride:
            self.delta = torch.zeros_like(self.theta)
            self.trace = made_up_trace(self.theta, self.trainer.moments(), bounds, self.delta)
        else:
            self.delta, _, _, self.trace = self.trainer.run_round(self.theta, batches, bounds)
        self.blobs = BlobStore()
        hashes = self.blobs.add_round(round_no, self.trace)
        self.body = commitment(
            member=ME,
            round_no=round_no,
            theta=self.theta,
            config=CONFIG,
            data=corpus.source_ids,
            group=group,
            shards=self.blocks,
            step0=step0,
            samples=CONFIG.inner_steps * CONFIG.batch_size,
            trace=hashes,
            delta=self.delta,
        )
        self.fetched: list[bytes] = []

    def fetch(self, key: bytes) -> bytes:
        self.fetched.append(key)
        return fetch_blob(self.blobs.handle, key)

    def verify(self, corpus, segment: int, body: dict | None = None, config: TrainingConfig = CONFIG):
        return verify_commit(
            body or self.body,
            ME,
            segment,
            fetch=self.fetch,
            corpus=corpus,
            config=config,
            trainer_factory=lambda cfg: InnerTrainer(build_model(cfg), cfg),
        )


@pytest.fixture(scope="module")
def honest(corpus):
    return Work(corpus)


@pytest.mark.parametrize("segment", [0, 1, 2])
def test_every_segment_of_honest_work_verifies_bit_identically(corpus, honest, segment):
    honest.fetched.clear()
    out = honest.verify(corpus, segment)
    assert out is not None and out.ok, out
    assert out.error_ppm == 0
    assert out.got == honest.body["trace"][2 * segment + 2]
    # the start state is fetched; the end state is not needed when the re-execution hashes the same
    assert honest.body["trace"][2 * segment] in honest.fetched
    assert honest.body["trace"][2 * segment + 2] not in honest.fetched


def test_another_thread_count_stays_within_the_tolerance(corpus, honest):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        honest.fetched.clear()
        out = honest.verify(corpus, 1)
    finally:
        torch.set_num_threads(threads)
    assert out is not None and out.ok and out.error_ppm <= TOLERANCE_PPM


def test_a_free_riders_made_up_trace_fails_on_every_segment(corpus):
    work = Work(corpus, freeride=True)
    for segment in range(3):
        out = work.verify(corpus, segment)
        assert out is not None and not out.ok
        assert out.error_ppm >= 10**5, out  # its claimed update is nothing like the real one
        assert out.evidence, "an accusation keeps the states it was judged on"


def test_fewer_steps_than_claimed_fail_where_the_steps_are_missing(corpus):
    work = Work(corpus)
    # it trained segments 0 and 1, then stopped: the last state is a copy of the one before
    work.trace[-1] = work.trace[-2]
    work.body = dict(work.body, trace=[h for p, m in work.trace for h in (blob_hash(p), blob_hash(m))])
    work.body["delta"] = blob_hash(torch.sub(work.theta, work.trace[-1][0]))
    assert work.verify(corpus, 0).ok and work.verify(corpus, 1).ok
    assert not work.verify(corpus, 2).ok


def test_a_sent_delta_other_than_the_traced_one_fails_on_the_last_segment(corpus, honest):
    body = dict(honest.body, delta=blob_hash(honest.delta * -4.0))  # sign_flip: commits what it sends
    assert honest.verify(corpus, 0, body).ok  # the steps themselves were honest
    out = honest.verify(corpus, 2, body)
    assert not out.ok and "Δ" in out.reason


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda b: dict(b, seed=hashlib.sha256(b"mine").digest()), "seed"),
        (lambda b: dict(b, shards=shard_hash(CORPUS.shard(OTHER, 2, [ME, OTHER]))), "not the one dealt"),
        (lambda b: dict(b, shards=shard_hash(CORPUS.shard(ME, 2, [ME, OTHER])[:-1])), "not the one dealt"),
        (lambda b: dict(b, group=[ME]), "not the one dealt"),  # a group of one deals it every block
        (lambda b: dict(b, group=[OTHER]), "not in the group"),
        (lambda b: dict(b, samples=b["samples"] * 2), "samples"),
        (lambda b: dict(b, trace=b["trace"][:-2]), "trace"),
        (lambda b: dict(b, theta=hashlib.sha256(b"stale").digest()), "θ"),
    ],
)
def test_a_commitment_that_breaks_the_rules_fails_without_re_execution(corpus, honest, change, reason):
    honest.fetched.clear()
    out = honest.verify(corpus, 0, change(honest.body))
    assert out is not None and not out.ok and reason in out.reason
    assert honest.fetched == []


def test_what_we_cannot_judge_gets_no_verdict(corpus, honest):
    assert honest.verify(corpus, 0, config=CONFIG.replace(inner_lr=2e-3)) is None  # another configuration
    assert honest.verify(corpus, 0, dict(honest.body, data=[hashlib.sha256(b"x").digest()])) is None  # other data
    gone = Work.__new__(Work)
    gone.__dict__.update(honest.__dict__, blobs=BlobStore(), fetched=[])
    assert gone.verify(corpus, 0) is None  # the author no longer serves its states


def test_a_corrupt_state_is_refused_by_its_hash(honest, monkeypatch):
    key = honest.body["trace"][2]
    bad = BlobStore()
    data = bytearray(honest.blobs.get(key))
    data[5] ^= 1
    bad._blobs[key] = bytes(data)
    with pytest.raises(ValueError, match="hash"):
        fetch_blob(bad.handle, key)


def test_blobs_come_in_chunks_and_old_rounds_are_dropped(monkeypatch):
    monkeypatch.setattr(worker, "CHUNK", 1000)
    store = BlobStore(keep_rounds=2)
    tensors = {r: torch.full((700,), float(r)) for r in (1, 2, 3)}
    calls = []

    def call(req):
        calls.append(req)
        return store.handle(req)

    for r, t in tensors.items():
        store.add_round(r, [(t, t + 0.5)])
    evidence = store.pin(torch.arange(10.0).numpy().tobytes())
    assert fetch_blob(call, blob_hash(tensors[3])) == tensors[3].numpy().tobytes()
    assert len(calls) == 3  # 2,800 bytes in chunks of 1,000
    with pytest.raises(LookupError):
        fetch_blob(store.handle, blob_hash(tensors[1]))  # round 1 is gone (two rounds kept)
    assert store.get(evidence) is not None
    assert cbor.decode(store.handle(b"\xff not cbor")) == {"error": "malformed blob request"}


@pytest.mark.parametrize(
    "state",
    [b"\x00" * 7, torch.full((10,), float("nan")).numpy().tobytes(), b""],
    ids=["odd length", "NaN", "empty"],
)
def test_a_malformed_committed_state_fails_the_check_instead_of_crashing_the_verifier(corpus, honest, state):
    key = honest.blobs.pin(state)
    trace = list(honest.body["trace"])
    trace[2] = key  # segment 1 starts from this "state"
    out = honest.verify(corpus, 1, dict(honest.body, trace=trace))
    assert out is not None and not out.ok and "can't be re-executed" in out.reason
