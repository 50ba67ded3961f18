"""One training peer: the driver of the round protocol (``swarm/rounds.py``) over hivemind.

Each attempt (docs/training.md §2 has the protocol and its safety argument):

1. Take the governance state the final ledger puts in force for the height we work toward
   (``rounds.governance_in_force``): a pure function of final ledger data, the same on every peer.
2. Announce that height and our ETA in the DHT (a scheduling hint), train H inner steps from our θ, commit.
3. Do what the protocol asks first (``RoundProtocol.before_gather``): wait for our last result's certificate,
   go back to our last certified state if it does not come, or sync to a certified state from one of its
   signers (``sync.py``: checked against the certificate's hashes).
4. Fold our pending contributions (staleness-weighted) into one, sign a gather, all-reduce (``exchange.py``).
5. The group's decision (``rounds.decide_group``, the same on every member): a candidate group's members apply
   the outer step (θ_{h+1}, optimistic until its certificate is on our ledger) and its contributors sign a
   ``round`` event; everybody else keeps its work pending for the next attempt.

Every attempt appends JSON lines to ``$HOME/metrics.jsonl`` (the demo, the tests and the benchmarks read it).
This class decides nothing: the decisions are in ``rounds.py``. What the peer trains and how is ``trainer.py``;
the DHT, the ledger service, the averager and leaving are ``services.py``; verification duties, checkpoints and
metrics live in ``verification/duties.py``, ``store/releases.py`` and ``metrics.py``.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from koinon.identity import Identity
from koinon.ledger.lineage import round_body
from koinon.ledger.node import LedgerNode
from koinon.ledger.outbox import HomeLock
from koinon.ledger.store import LedgerStore
from koinon.store.releases import CheckpointKeeper
from koinon.swarm.averaging import group_decision
from koinon.swarm.chainview import ChainView
from koinon.swarm.metrics import MetricsLog
from koinon.swarm.options import PeerOptions
from koinon.swarm.rounds import Certificate, GroupDecision, RoundClaim, RoundProtocol, sign_gather
from koinon.swarm.services import PeerServices
from koinon.swarm.sync import Snapshot, StateSync
from koinon.swarm.trainer import LocalTrainer, combine
from koinon.verification.duties import VerificationDuties

logger = logging.getLogger("koinon.peer")


class Peer:
    def __init__(self, options: PeerOptions) -> None:
        self.options = options
        self.home = Path(options.home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.identity, _ = Identity.load_or_create(self.home)
        self.member = self.identity.member_id
        self.stop_event = threading.Event()
        self.metrics = MetricsLog(self.home / "metrics.jsonl", logger)
        self.home_lock = HomeLock(self.home)  # one peer per home; the CLI then appends through our outbox
        (self.home / "STOP_AFTER").unlink(missing_ok=True)  # left over from an earlier demo run

        self.trainer = LocalTrainer(  # the model, θ and its optimizers, the data, the governance state in force
            member=self.member,
            config=options.config,
            data=options.data,
            stop_event=self.stop_event,
            attack=options.attack,
            slowdown=options.slowdown,
            threads=options.threads,
        )
        self.ledger = LedgerNode(
            LedgerStore(self.home / "ledger.sqlite"), self.identity, lambda: int(time.time() * 1000), options.epoch_ms
        )
        self.services = PeerServices(  # the DHT, the ledger service and its protocols, the averager; started later
            options=options,
            identity=self.identity,
            ledger=self.ledger,
            stop_event=self.stop_event,
            theta=lambda: bytes.fromhex(self.trainer.theta_hex),
        )
        self._bytes_recorded = 0
        self.verification = VerificationDuties(  # commitments, and the checks the ledger assigns to us
            ledger=self.ledger,
            member=self.member,
            record=self.services.record,
            log=self.metrics.write,
            blobs=self.services.blobs,
            call_blob=self.services.call_blob,
            corpus=lambda: self.trainer.corpus,
            stop_event=self.stop_event,
            config=self.trainer.config,
        )
        t = self.trainer
        self.protocol = RoundProtocol(self.member, theta=bytes.fromhex(t.theta_hex))
        self.chains: ChainView | None = None  # the certified rounds our ledger proves (once the charter is here)
        signers = lambda h, s: self.chains.signers_of(h, s) if self.chains is not None else None
        self.sync = StateSync(self.member, Snapshot.of(0, t.theta, t.outer.buffer, ()), signers)
        self.protocol.state = self.sync.certified.state
        self.checkpoint_keeper = CheckpointKeeper(  # our checkpoints and their lineage; released ones we lack
            folder=self.home / "checkpoints",
            ledger=self.ledger,
            member=self.member,
            record=self.services.record,
            log=self.metrics.write,
            call_ckpt=self.services.call_ckpt,
            stop_event=self.stop_event,
        )

    # --- lifecycle -------------------------------------------------------------------------------------------
    @property
    def swarm_id(self) -> str | None:
        sid = self.ledger.store.swarm_id
        return sid.hex() if sid else None

    def start(self) -> list[str]:
        """Start the DHT and the ledger service (founding the swarm if we start alone); our visible multiaddrs."""
        return self.services.start(self.trainer.config)

    def _join_ledger(self) -> None:
        """Get the swarm's charter (from the initial peers), check it, and record our join."""
        self.services.fetch_charter()
        genesis = self.ledger.chain.final_governance(-1)
        for problem in genesis.problems:
            logger.warning("charter: %s", problem)
        if genesis.config is not None and genesis.config != self.trainer.config:
            logger.info(
                "training with the swarm's configuration %s (flags such as --inner-steps only apply when founding)",
                genesis.config.config_hash()[:12],
            )
        self._use_governance(-1, genesis)
        self.chains = ChainView(self.ledger)
        self.protocol.electorate = self.chains.founders
        self.services.start_averager(self.trainer.theta, self.trainer.config.compression, self.sync.serve)
        self.services.record("join", {"maddrs": self.services.maddrs()[:16]})

    def close(self) -> None:
        self.stop_event.set()
        self.services.close()
        self.ledger.store.close()  # after the ledger service: its thread writes to the store until it stops
        self.home_lock.release()

    @property
    def round(self) -> int:
        """The height of the θ this peer holds: how many certified rounds it descends from."""
        return self.protocol.height

    @round.setter
    def round(self, height: int) -> None:
        self.protocol.height = height

    def live_peers(self) -> dict[str, dict]:
        return self.services.live_peers()

    # --- governance: the state the final ledger puts in force for a height ---------------------------------------
    def _governance_for(self, height: int) -> None:
        """Use the governance state in force for the round that makes θ_height (``ChainView.governance``)."""
        index, gov = self.chains.governance(height, self.services.kick, self.stop_event)
        if index != self.trainer.gov_index and gov is not None:
            self._use_governance(index, gov)

    def _use_governance(self, index: int, gov) -> None:
        """Train from the next round under the governance state after final cut ``index`` (``LocalTrainer``).
        Every member of a round's group calls this with the same index (``rounds.governance_in_force``), so all
        switch at the same height."""
        if self.trainer.use_governance(index, gov, self.round + 1):
            self.verification.add_config(gov.config)

    def _gather(self, weight: int) -> dict:
        p, t = self.protocol, self.trainer
        fields = dict(
            member=self.member,
            swarm=self.services.prefix,
            attempt=p.attempt,
            height=p.height,
            state=p.state,
            electorate=sorted(p.electorate),
            k=self.chains.k if self.chains is not None else 1,
            config=t.config.config_hash(),
            gov=t.gov_index + 1,
            excluded=sorted(t.gov.excluded()) if t.gov is not None else [],
            compression=t.config.compression,
            reducer=t.config.reducer,
            samples=weight,
        )
        return sign_gather(fields, self.identity.sign)

    # --- the round loop -----------------------------------------------------------------------------------------
    def join(self) -> None:
        """Before the first round: wait for the expected peers, then sync to the certified head if there is one."""
        self._join_ledger()
        deadline = time.monotonic() + self.options.wait_timeout
        self.services.announce(height=1, eta=0.0)
        while time.monotonic() < deadline and not self.stop_event.is_set():
            if len(self.live_peers()) >= self.options.wait_for_peers or self.chains.live().height > 0:
                break
            time.sleep(0.5)
        self._resolve(timeout=self.options.wait_timeout)
        if self.round > 0:
            self.metrics.write(event="joined", round=self.round, theta=self.trainer.theta_hex)

    def run(self) -> None:
        self.join()
        late, t = self.round > 0, self.trainer
        self.metrics.write(event="start", member=self.member, late=late, eval_loss=t.evaluate(), theta=t.theta_hex)
        while not self.stop_event.is_set() and not self._stop_now():
            self.attempt()
        if not self.stop_event.is_set():
            self._resolve(timeout=30.0)  # end on a certified θ (the last round's certificate, or the swarm's)
            self._linger()
        self.protocol.finish()
        self.metrics.write(event="goodput", height=self.round, goodput=self.protocol.goodput, **self.protocol.stats)
        self.save_checkpoint()

    def _stop_now(self) -> bool:
        """A planned stop (``--rounds``, ``STOP_AFTER``) once we, or the certified chain, reached its height: a
        peer that fell behind at the end syncs to the last height in ``run``, it does not train another round."""
        reached = max(self.round, self.chains.live().height if self.chains is not None else 0)
        return any(limit is not None and reached >= limit for limit in (self.options.max_rounds, self._stop_after()))

    def _linger(self) -> None:
        """Before a planned stop, stay (serving our certified state) while a peer still announces that it works
        toward a height we hold, so that it can sync to the swarm's last θ instead of finding no donor; at most as
        long as such a peer may still wait for a group (it gives up once it sees the height certified)."""
        o = self.options
        deadline = time.monotonic() + o.matchmaking_time + o.averaging_timeout + 10
        while time.monotonic() < deadline and not self.stop_event.is_set():
            behind = [v for m, v in self.live_peers().items() if m != self.member and v.get("height", 0) <= self.round]
            if not behind:
                return
            self.stop_event.wait(0.5)

    def _stop_after(self) -> int | None:
        """A height written to ``$HOME/STOP_AFTER`` (by ``koinon demo``) ends the run once it is reached."""
        try:
            return int((self.home / "STOP_AFTER").read_text())
        except (OSError, ValueError):
            return None

    def attempt(self) -> None:
        p, t, exchange = self.protocol, self.trainer, self.services.exchange
        p.attempt += 1
        self._governance_for(p.height + 1)
        c = t.config  # after the switch: this attempt trains (and announces its ETA) under the H in force
        self.checkpoint_keeper.fetch_releases(t.gov, self.chains.live().produced)
        started = time.time()
        if self.chains.live().height > p.height and not self._resolve(timeout=30.0):
            # the swarm is ahead and nobody served its state yet: training from our old θ would only make stale work
            reason = "behind the certified chain"
            return self.metrics.write(event="round_failed", round=p.height + 1, attempted=p.attempt, reason=reason)
        if self._stop_now():
            return
        self.services.announce(height=p.height + 1, eta=started + c.inner_steps * t.step_time, state=p.state)
        delta, loss, samples = t.train(p.attempt, exchange.last_group, self.verification)
        if self.stop_event.is_set():
            return  # leaving: an unfinished round is neither averaged nor recorded
        p.trained(samples, delta)
        self._catch_up_hint()
        if not self._resolve(timeout=p.cert_timeout + 30):
            reason = "no certified state"
            return self.metrics.write(event="round_failed", round=p.height + 1, attempted=p.attempt, reason=reason)
        if self._stop_now():
            return  # a sync brought us to the planned last height: nobody will average the next one with us
        self._governance_for(p.height + 1)  # a sync or revert may have moved us
        keep, weight = p.contribution()
        contribution = combine(keep, t.theta)
        if p.in_flight is not None:
            p.in_flight.ref = contribution
        round_s = c.inner_steps * t.step_time
        target, chains = p.height + 1, self.chains
        gathered = exchange.run(
            target,
            contribution,
            weight,
            self._gather(weight),
            round_s,
            self.stop_event,
            lambda: chains.height() >= target,
        )
        if self.stop_event.is_set():
            return
        decision = group_decision(gathered) if gathered else None
        outcome = p.after_group(decision)
        if outcome.apply:
            self._apply(decision, gathered, loss, started, outcome.record)
        else:
            logger.info("height %d, attempt %d: %s; our work stays pending", p.height + 1, p.attempt, outcome.reason)
            self.metrics.write(event="round_failed", round=p.height + 1, attempted=p.attempt, reason=outcome.reason)
        # checks go here, while our announcement still says we are finishing this height: peers starting the next
        # one count us as "behind" and wait for us, and the ETA below includes the time the checks took
        self.verification.verify_pending()
        self.services.announce(height=p.height + 1, eta=time.time() + c.inner_steps * t.step_time, state=p.state)

    def _resolve(self, timeout: float) -> bool:
        """Act on ``RoundProtocol.before_gather`` (wait, revert, sync) until it says go; False if it never did."""
        deadline = time.monotonic() + timeout
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            optimistic = self.protocol.optimistic_since is not None
            chain = self.chains.live()
            action = self.protocol.before_gather(chain, time.monotonic())
            if optimistic and self.protocol.optimistic_since is None:  # our last result was just certified
                self._keep_certified(chain.certificate(self.round).signers)
            if action.kind == "go":
                return True
            if action.kind == "wait":
                self.services.kick()
                self.stop_event.wait(0.2)
            elif action.kind == "revert":
                s = self.sync.certified
                logger.warning("%s: back to certified height %d", action.reason, s.height)
                self.trainer.adopt(s)
                electorate = chain.electorate(s.height + 1) if s.height <= chain.height else s.electorate
                self.protocol.reverted(s.height, s.state, bytes.fromhex(self.trainer.theta_hex), electorate)
            elif action.kind == "sync":
                logger.info("%s: syncing from its signers", action.reason)
                size = self.trainer.theta.numel()
                got = self.sync.fetch(
                    action.cert,
                    lambda member, size=size: self.services.download_state(member, size),
                    size,
                    self.stop_event,
                    self._certificate,
                )
                if got is None:
                    logger.info("height %d: no signer served its certified state; trying later", action.cert.height)
                    return False
                snapshot, cert = got
                self.trainer.adopt(snapshot)
                self.protocol.synced(cert, self.chains.live())
                self.sync.keep(snapshot)
                self._governance_for(cert.height)  # the record says what made θ_h: the governance in force for h
                self._log_round(loss=float("nan"), started=time.time(), group=[], contributors=[], resynced=True)
        return False

    def _catch_up_hint(self) -> None:
        """Peers announcing a later height (a hint) mean our ledger lags: give it a moment to show their certificate
        before we gather, rather than meeting them with a stale state and averaging for nothing."""
        ahead = [v["height"] for m, v in self.live_peers().items() if m != self.member and "height" in v]
        if ahead and max(ahead) > self.round + 1:
            self._certificate(min(max(ahead) - 1, self.round + 1))

    def _certificate(self, height: int) -> Certificate | None:
        return self.chains.wait_for(height, self.services.kick, self.stop_event)

    def _keep_certified(self, signers: frozenset[str]) -> None:
        self.sync.keep(self.trainer.snapshot(self.round, self.protocol.electorate, signers))
        if self.options.checkpoint_every and self.round % self.options.checkpoint_every == 0:
            self.save_checkpoint()

    def _apply(self, decision: GroupDecision, gathered: dict, loss: float, started: float, record: bool) -> None:
        """The group is a candidate and we hold its key: the outer step on the identical average → θ_{h+1}."""
        t, prev = self.trainer, self.trainer.theta_hex
        state = t.outer_step(self.services.average(), decision.height + 1)
        contributors = sorted(decision.contributors)
        samples = sum(int(gathered[m]["samples"]) for m in contributors)  # type: ignore[index]
        theta = bytes.fromhex(t.theta_hex)
        self.protocol.applied(decision.height + 1, state, theta, contributors, time.monotonic(), record)
        self.sync.hold(t.snapshot(self.round, contributors))
        self.checkpoint_keeper.note_round(contributors, samples)
        sent = self.services.bytes_sent
        if record:
            claim = RoundClaim(
                self.member,
                self.round,
                bytes.fromhex(prev),
                theta,
                bytes.fromhex(state),
                tuple(contributors),
                self.protocol.attempt,
            )
            gov = t.gov_index if t.gov_index >= 0 else None
            body = round_body(
                claim,
                samples=samples,
                sent=sent - self._bytes_recorded,
                config=bytes.fromhex(t.config.config_hash()),
                gov=gov,
            )
            # the signers of the certificate we built on are cited: their round events must precede ours in every order
            self.services.record("round", body, cite=self.sync.certified.signers)
            self._bytes_recorded = sent
        self._log_round(loss, started, sorted(gathered), contributors, resynced=False)

    def _log_round(
        self, loss: float, started: float, group: list[str], contributors: list[str], resynced: bool
    ) -> None:
        self.metrics.write(
            event="round",
            round=self.round,
            attempted=self.protocol.attempt,
            loss=loss,
            group=group,
            contributors=contributors,
            peers=len(group),
            in_sync=not resynced,
            resynced=resynced,
            seconds=round(time.time() - started, 3),
            bytes_sent=self.services.bytes_sent,
            rejected=self.services.rejected,
            **self.trainer.summary(),  # eval loss, θ, configuration and governance in force, tokens
            **{k: int(v) for k, v in self.protocol.stats.items()},
        )

    def save_checkpoint(self) -> Path:
        """Save (and record on the ledger) the last θ the ledger certified to us, never an optimistic one."""
        s, t = self.sync.certified, self.trainer
        return self.checkpoint_keeper.save(t.model, s.theta, s.height, t.config, t.gov_index, t.corpus.source_ids)
