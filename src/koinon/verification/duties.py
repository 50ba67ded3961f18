"""A training peer's verification duties (docs/verification.md): commit to each round's trace, and answer the
checks the final ledger assigns to this member, as verifier or referee, by re-executing a segment.

Separate from the round loop (``swarm/peer.py``) because none of it is a round-protocol decision: the loop only
says when (commit before averaging; answer checks after a round, before announcing the next) and hands over what
it trained. Everything else comes in through the constructor: the ledger, a way to record and to log, the blob
store, a way to ask another peer's blob protocol, and the corpus (a callable: governance may change the data).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import torch

from koinon.config import TrainingConfig
from koinon.identity import short_id
from koinon.ledger.node import LedgerNode
from koinon.training.data import Corpus
from koinon.training.diloco import InnerTrainer
from koinon.training.model import build_model
from koinon.verification.worker import BlobStore, Outcome, commitment, fetch_blob, verify_commit

logger = logging.getLogger("koinon.peer")  # the peer's logger: its messages read as they did from peer.py


class VerificationDuties:
    def __init__(
        self,
        *,
        ledger: LedgerNode,
        member: str,
        record: Callable[[str, dict], None],
        log: Callable[..., None],
        blobs: BlobStore,
        call_blob: Callable[[str, bytes], bytes],
        corpus: Callable[[], Corpus],
        stop_event: threading.Event,
        config: TrainingConfig,
    ) -> None:
        self.ledger = ledger
        self.member = member
        self.record = record  # append to our ledger feed (and push it out)
        self.log = log  # a metrics record
        self.blobs = blobs  # our trace states by hash (verifiers fetch them), and evidence we pinned
        self.call_blob = call_blob  # (peer, request) → that peer's answer on the blob protocol
        self.corpus = corpus
        self.stop_event = stop_event
        self.known_configs: dict[str, TrainingConfig] = {config.config_hash(): config}
        self._answered: dict[bytes, int] = {}  # checks we answered (value -1) or tried to (attempts so far)
        self._verify_trainer: InnerTrainer | None = None

    def add_config(self, config: TrainingConfig) -> None:
        """A configuration that came into force: commitments made under it can now be re-executed."""
        self.known_configs[config.config_hash()] = config

    def commit(
        self,
        r: int,
        *,
        theta: torch.Tensor,
        config: TrainingConfig,
        group: list[str],
        blocks: list[int],
        step0: int,
        samples: int,
        trace,
        delta: torch.Tensor,
    ) -> None:
        """Before averaging: keep the round's trace states (to serve them) and sign a commitment to them."""
        if not trace or samples == 0:
            return
        hashes = self.blobs.add_round(r, trace)
        body = commitment(
            member=self.member,
            round_no=r,
            theta=theta,
            config=config,
            data=self.corpus().source_ids,
            group=group,
            shards=blocks,
            step0=step0,
            samples=samples,
            trace=hashes,
            delta=delta,
        )
        self.record("commit", body)

    def verify_pending(self, budget: int = 2) -> None:
        """Answer up to ``budget`` of the checks the final ledger assigns to us (as verifier or referee). Called
        after a round, before we announce the next one: meanwhile the others see us finishing the round and wait
        for us, and the ETA we then announce starts after the checks, so they never make us late for an all-reduce
        the others scheduled."""
        try:
            with self.ledger._lock:  # the ledger thread extends the chain meanwhile
                gov = self.ledger.chain.final_governance()
        except Exception as e:
            logger.warning("verification: %r", e)
            return
        if gov is None:
            return
        for check in gov.trust.tasks_for(self.member):
            if budget <= 0 or self.stop_event.is_set():
                return
            tries = self._answered.get(check.commit, 0)
            if tries < 0:
                continue
            budget -= 1
            try:
                self._answer(check)
            except Exception as e:  # a bug here must not stop the peer, nor block the checks behind this one
                logger.warning("verification of %s: %r", check.commit.hex()[:12], e)
                self._answered[check.commit] = -1 if tries + 1 >= 3 else tries + 1

    def _answer(self, check) -> None:
        event = self.ledger.store.get(check.commit)
        if event is None:
            return
        body = event.body
        config = self.known_configs.get(body["config"].hex())
        outcome: Outcome | None = None
        if config is not None:
            if self._verify_trainer is None or self._verify_trainer.config != config:
                self._verify_trainer = InnerTrainer(build_model(config), config)
            sources = [check.author] + ([check.accuser] if check.accuser else [])
            outcome = verify_commit(
                body,
                check.author,
                check.segment,
                fetch=lambda key: self._fetch(key, sources),
                corpus=self.corpus(),
                config=config,
                trainer_factory=lambda cfg: self._verify_trainer,
            )
        if outcome is None:
            tries = self._answered.get(check.commit, 0) + 1
            self._answered[check.commit] = -1 if tries >= 10 else tries
            return
        self._answered[check.commit] = -1
        if not outcome.ok:
            for blob in outcome.evidence:
                self.blobs.pin(blob)  # so the referees can fetch the evidence from us as well
        role = "verifier" if check.verifier == self.member else "referee"
        (logger.info if outcome.ok else logger.warning)(
            "round %d: as %s of %s's commitment: %s", body["round"], role, short_id(check.author), outcome.reason
        )
        self.record(
            "verdict", {"commit": check.commit, "ok": outcome.ok, "error": outcome.error_ppm, "got": outcome.got}
        )
        self.log(
            event="verdict",
            round=body["round"],
            author=check.author,
            role=role,
            ok=outcome.ok,
            error_ppm=outcome.error_ppm,
            reason=outcome.reason,
        )

    def _fetch(self, key: bytes, sources: list[str]) -> bytes:
        local = self.blobs.get(key)
        if local is not None:
            return local
        last: Exception | None = None
        for peer in sources:
            if peer == self.member:
                continue
            try:
                return fetch_blob(lambda req, p=peer: self.call_blob(p, req), key)
            except Exception as e:
                last = e
        raise LookupError(f"no source served blob {key.hex()[:12]}: {last!r}")
