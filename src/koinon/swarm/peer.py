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
This class decides nothing: the decisions are in ``rounds.py``; verification duties, checkpoints and metrics
live in ``verification/duties.py``, ``store/releases.py`` and ``metrics.py``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from koinon.config import TrainingConfig
from koinon.errors import KoinonError, SwarmError
from koinon.governance.charter import charter_from_toml, default_charter_text, training_body
from koinon.identity import Identity
from koinon.ledger.node import LedgerNode
from koinon.ledger.outbox import HomeLock, Outbox
from koinon.ledger.p2p import LedgerService
from koinon.ledger.store import LedgerStore
from koinon.store.fetch import CheckpointServer
from koinon.store.releases import CheckpointKeeper
from koinon.swarm import node
from koinon.swarm.announce import Announcer
from koinon.swarm.attacks import AttackContext, apply_attack, check_attack
from koinon.swarm.averaging import ExactAverager, group_decision
from koinon.swarm.chainview import ChainView
from koinon.swarm.compression import get_compression
from koinon.swarm.exchange import Exchange
from koinon.swarm.metrics import MetricsLog
from koinon.swarm.rounds import (
    Certificate,
    GroupDecision,
    Pending,
    RoundProtocol,
    governance_in_force,
    sign_gather,
)
from koinon.swarm.sync import Snapshot, StateSync, state_hash
from koinon.training.data import Corpus
from koinon.training.diloco import InnerTrainer, OuterOptimizer
from koinon.training.model import build_model, flat_parameters, theta_hash
from koinon.verification.duties import VerificationDuties
from koinon.verification.worker import BlobStore, made_up_trace

logger = logging.getLogger("koinon.peer")


@dataclass
class PeerOptions:
    home: Path
    data: list[Path] | None = None  # None: the Python standard library
    initial_peers: list[str] = field(default_factory=list)
    listen: list[str] = field(default_factory=lambda: ["/ip4/0.0.0.0/tcp/0"])
    announce: list[str] = field(default_factory=list)
    config: TrainingConfig = field(default_factory=TrainingConfig)
    swarm: str = "koinon"
    max_rounds: int | None = None  # stop once the swarm's θ has this many certified rounds
    wait_for_peers: int = 1  # before round 1, wait (up to ``wait_timeout``) until this many peers are announced
    wait_timeout: float = 60.0
    matchmaking_time: float = 2.0
    averaging_timeout: float = 30.0
    threads: int = 0  # torch threads; 0 keeps torch's default
    checkpoint_every: int = 10
    attack: str | None = None
    slowdown: float = 1.0  # testing tool: each inner step takes this many times as long (a slow machine)
    epoch_ms: int = 2000  # ledger cut epochs (a charter rule: joiners take the founder's value)
    swarm_id: str | None = None  # hex: refuse to join a swarm whose charter has another id
    charter: dict | None = None  # the genesis body to found with (None: the example charter with ``config``)
    min_contributors: int | None = None  # founding without a charter: the rule (None: the example charter's)


class Peer:
    def __init__(self, options: PeerOptions) -> None:
        self.options = options
        self.config = options.config
        self.home = Path(options.home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.identity, _ = Identity.load_or_create(self.home)
        self.member = self.identity.member_id
        self.stop_event = threading.Event()
        self.dht = None
        self.averager = None
        self._lock = threading.Lock()
        self.announcer: Announcer | None = None
        self.metrics = MetricsLog(self.home / "metrics.jsonl", logger)
        self.home_lock = HomeLock(self.home)  # one peer per home; the CLI then appends through our outbox
        (self.home / "STOP_AFTER").unlink(missing_ok=True)  # left over from an earlier demo run

        if options.attack is not None:
            check_attack(options.attack)
        if options.threads:
            torch.set_num_threads(options.threads)
        self.corpus = Corpus.from_paths(options.data) if options.data else Corpus.default()
        self.eval_set = self.corpus.eval_batches(self.config.batch_size, self.config.seq_len)
        self.model = build_model(self.config)
        self.theta = flat_parameters(self.model)  # θ: shape (P,)
        self.outer = OuterOptimizer(self.config.outer_lr, self.config.outer_momentum, self.theta.numel())
        self.inner = InnerTrainer(self.model, self.config)
        self.ledger = LedgerNode(
            LedgerStore(self.home / "ledger.sqlite"), self.identity, lambda: int(time.time() * 1000), options.epoch_ms
        )
        self.ledger_service: LedgerService | None = None
        self.step_time = 0.1  # seconds per inner step, refined every round
        self._theta_hex = theta_hash(self.theta)
        self._bytes_recorded = 0
        self.tokens = 0
        self.data_paths: list[Path] = list(options.data) if options.data else [Path("<stdlib>")]
        self.gov_index = -1  # the final cut whose governance state is in force (-1: the charter)
        self.gov = None  # that GovState (set once the charter is here)
        self.config_known = False
        self.last_average: torch.Tensor | None = None  # (P,) the last Δ̄ applied; kept only for `--attack alie`
        self.blobs = BlobStore()  # our trace states by hash (verifiers fetch them), and evidence we pinned
        self.verification = VerificationDuties(  # commitments, and the checks the ledger assigns to us
            ledger=self.ledger,
            member=self.member,
            record=self._record,
            log=self._log,
            blobs=self.blobs,
            call_blob=lambda peer, req: self.ledger_service.call(peer, self._blob_protocol, req),
            corpus=lambda: self.corpus,
            stop_event=self.stop_event,
            config=self.config,
        )
        self.protocol = RoundProtocol(self.member, theta=bytes.fromhex(self._theta_hex))
        self.sync = StateSync(self.member, Snapshot.of(0, self.theta, self.outer.buffer, ()), self._signers_of)
        self.protocol.state = self.sync.certified.state
        self.chains: ChainView | None = None  # the certified rounds our ledger proves (once the charter is here)
        self.exchange: Exchange | None = None
        self.checkpoints = CheckpointServer(self.home / "checkpoints")
        self.checkpoint_keeper = CheckpointKeeper(  # our checkpoints and their lineage; released ones we lack
            folder=self.home / "checkpoints",
            ledger=self.ledger,
            member=self.member,
            record=self._record,
            log=self._log,
            call_ckpt=lambda peer, req: self.ledger_service.call(peer, self._ckpt_protocol, req),
            stop_event=self.stop_event,
        )

    # --- lifecycle -------------------------------------------------------------------------------------------
    @property
    def prefix(self) -> str:
        """The averaging group key: the swarm's name and id. Peers that disagree on the configuration in force
        may still meet; the group's all-gather then leaves the minority's contributions out (group_decision)."""
        return f"{self.options.swarm}_{(self.swarm_id or '')[:16]}"

    def start(self) -> list[str]:
        o = self.options
        threading.excepthook = self._thread_excepthook  # inherited by hivemind's forked children
        self.dht = node.start_dht(self.identity, o.listen, o.initial_peers, o.announce)
        if not o.initial_peers and self.ledger.store.swarm_id is None:
            charter = o.charter or charter_from_toml(default_charter_text(), self.member)
            if o.charter is None:  # `koinon start` flags set the founding configuration
                charter["training"] = training_body(self.config)
                if o.min_contributors is not None:
                    charter["rules"]["min_contributors"] = o.min_contributors
            self.ledger.found(
                charter["name"] if o.charter else o.swarm,
                training=charter["training"],
                rules=charter["rules"],
                founders=charter["founders"],
            )
        self.ledger_service = LedgerService(
            self.dht,
            self.ledger,
            protocol=f"koinon/ledger/{o.swarm}",
            theta=lambda: bytes.fromhex(self._theta_hex),
            outbox=Outbox(self.home, self._append_from_cli),
            handlers={self._blob_protocol: self.blobs.handle, self._ckpt_protocol: self.checkpoints.handle},
        )
        self.ledger_service.start()
        return [str(m) for m in self.dht.get_visible_maddrs()]

    @property
    def _blob_protocol(self) -> str:
        return f"koinon/blob/{self.options.swarm}"

    @property
    def _ckpt_protocol(self) -> str:
        return f"koinon/ckpt/{self.options.swarm}"

    def _append_from_cli(self, kind: str, body: dict):
        return self.ledger.append_own(kind, body)

    def _start_averager(self) -> None:
        """Once the swarm id is known (the charter is here), so the averaging prefix names the swarm."""
        o = self.options
        self.averager = node.start_averager(
            ExactAverager,
            [torch.zeros_like(self.theta)],
            self.dht,
            start=True,
            prefix=self.prefix,
            min_group_size=2,
            min_matchmaking_time=o.matchmaking_time,
            request_timeout=min(1.0, o.matchmaking_time / 2),
            next_chunk_timeout=5.0,
            allreduce_timeout=o.averaging_timeout,
            compression=get_compression(self.config.compression),
            state_compression=get_compression("none"),
            declare_state_period=5.0,
        )
        self.averager.set_state_provider(self.sync.serve)
        self.announcer = Announcer(self.dht, o.swarm, self.member, sign=self.identity.sign, required="height")
        self.exchange = Exchange(self.averager, self.announcer, self.member, o.matchmaking_time, o.averaging_timeout)

    @property
    def swarm_id(self) -> str | None:
        sid = self.ledger.store.swarm_id
        return sid.hex() if sid else None

    def _record(self, kind: str, body: dict, cite: frozenset[str] = frozenset()) -> None:
        """Append to our ledger feed (citing the heads of ``cite``) and push it out at once."""
        try:
            self.ledger.append_own(kind, body, cite)
        except KoinonError as e:
            logger.warning("could not record %s on the ledger: %s", kind, e)
            return
        if self.ledger_service is not None:
            self.ledger_service.kick.set()

    def _join_ledger(self) -> None:
        """Get the swarm's charter (from the initial peers), check it, and record our join."""
        deadline = time.monotonic() + self.options.wait_timeout
        while self.ledger.store.swarm_id is None and time.monotonic() < deadline and not self.stop_event.is_set():
            self.ledger_service.kick.set()
            time.sleep(0.2)
        if self.ledger.store.swarm_id is None:
            raise SwarmError(
                "could not fetch the swarm's ledger (its charter) from the initial peers; are they Koinon peers?"
            )
        if self.options.swarm_id and self.swarm_id != self.options.swarm_id.lower():
            raise SwarmError(f"the initial peers belong to swarm {self.swarm_id}, not {self.options.swarm_id}")
        charter = self.ledger.store.charter()
        self.ledger.epoch_ms = int(charter.body["rules"].get("epoch_ms", self.ledger.epoch_ms))
        genesis = self.ledger.chain.final_governance(-1)
        for problem in genesis.problems:
            logger.warning("charter: %s", problem)
        if genesis.config is not None and genesis.config != self.config:
            logger.info(
                "training with the swarm's configuration %s (flags such as --inner-steps only apply when founding)",
                genesis.config.config_hash()[:12],
            )
        self._use_governance(-1, genesis)
        self.chains = ChainView(self.ledger)
        self.protocol.electorate = self.chains.founders
        self._start_averager()
        self._record("join", {"maddrs": [str(m) for m in self.dht.get_visible_maddrs()][:16]})

    def _thread_excepthook(self, args: threading.ExceptHookArgs) -> None:
        # On Ctrl-C the terminal signals the whole process group, p2pd included, so hivemind's threads may fail
        # to reach a daemon that is already gone while we leave: expected then, and not worth a traceback.
        if self.stop_event.is_set() or isinstance(args.exc_value, (FileNotFoundError, ConnectionError)):
            logger.debug("background thread ended during shutdown: %r", args.exc_value)
            return
        threading.__excepthook__(args)

    def close(self) -> None:
        self.stop_event.set()
        if self.announcer is not None:
            self.announcer.stop()
        if self.ledger_service is not None:
            if self.ledger.store.swarm_id is not None:
                self._record("leave", {"reason": "clean exit"})
                time.sleep(min(1.0, self.ledger_service.sync_interval * 2))  # let the leave event go out
            self.ledger_service.stop()
        node.shutdown(self.averager, self.dht)
        self.ledger.store.close()
        self.home_lock.release()

    @property
    def round(self) -> int:
        """The height of the θ this peer holds: how many certified rounds it descends from."""
        return self.protocol.height

    @round.setter
    def round(self, height: int) -> None:
        self.protocol.height = height

    # --- governance: the state the final ledger puts in force for a height ---------------------------------------
    def _governance_for(self, height: int) -> None:
        """Use the governance state in force for the round that makes θ_height; if our final ledger cannot tell
        yet, wait a little for it (then use the best it knows: a mismatch only leaves us out of a group)."""
        deadline = time.monotonic() + 2 * self.ledger.epoch_ms / 1000 + 1
        while True:
            index, settled = governance_in_force(self.chains.cut_heights(), height)
            if settled or time.monotonic() > deadline or self.stop_event.is_set():
                break
            self.ledger_service.kick.set()
            self.stop_event.wait(0.2)
        if index != self.gov_index:
            gov = self.ledger.chain.final_governance(index)
            if gov is not None:
                self._use_governance(index, gov)

    def _use_governance(self, index: int, gov) -> None:
        """Train from the next round under the governance state after final cut ``index`` (-1: the charter):
        its configuration, its excluded members, its data sources. Every member of a round's group calls this
        with the same index (``rounds.governance_in_force``), so all switch at the same height."""
        self.gov_index, self.gov = index, gov
        if gov.config is not None and gov.config != self.config:
            if self.config_known and index >= 0:
                logger.info(
                    "governance (final cut %d): configuration %s in force from height %d",
                    index,
                    gov.config.config_hash()[:12],
                    self.round + 1,
                )
            self.config = gov.config
            self.verification.add_config(gov.config)
            self.inner.set_config(gov.config)
            self.outer.set_hyperparameters(gov.config.outer_lr, gov.config.outer_momentum)
        self.config_known = True
        allowed = [p for p, h in zip(self.data_paths, self.corpus.source_ids, strict=False) if gov.data_allowed(h)]
        if self.options.data and len(allowed) != len(self.data_paths):
            logger.info("governance: training only on the allowed data sources: %s", ", ".join(map(str, allowed)))
            self.data_paths = allowed
            if allowed:
                self.corpus = Corpus.from_paths(allowed)
        elif not self.options.data and self.corpus.source_ids and not gov.data_allowed(self.corpus.source_ids[0]):
            self.data_paths = []
        if not self.data_paths:
            logger.warning(
                "governance: none of this peer's data sources is allowed in this swarm; contributing nothing"
            )

    def _gather(self, weight: int) -> dict:
        p, gov = self.protocol, self.gov
        fields = dict(
            member=self.member,
            swarm=self.prefix,
            attempt=p.attempt,
            height=p.height,
            state=p.state,
            electorate=sorted(p.electorate),
            k=self.chains.k if self.chains is not None else 1,
            config=self.config.config_hash(),
            gov=self.gov_index + 1,
            excluded=sorted(gov.excluded()) if gov is not None else [],
            compression=self.config.compression,
            reducer=self.config.reducer,
            samples=weight,
        )
        return sign_gather(fields, self.identity.sign)

    def _announce(self, **info: object) -> None:
        if self.announcer is not None:
            self.announcer.announce(**info)

    def live_peers(self) -> dict[str, dict]:
        return self.announcer.live_peers() if self.announcer is not None else {}

    # --- the round loop -----------------------------------------------------------------------------------------
    def join(self) -> None:
        """Before the first round: wait for the expected peers, then sync to the certified head if there is one."""
        self._join_ledger()
        deadline = time.monotonic() + self.options.wait_timeout
        self._announce(height=1, eta=0.0)
        while time.monotonic() < deadline and not self.stop_event.is_set():
            if len(self.live_peers()) >= self.options.wait_for_peers or self.chains.live().height > 0:
                break
            time.sleep(0.5)
        self._resolve(timeout=self.options.wait_timeout)
        if self.round > 0:
            self._log(event="joined", round=self.round, theta=self._theta_hex)

    def run(self) -> None:
        self.join()
        late = self.round > 0
        self._log(event="start", member=self.member, late=late, eval_loss=self.evaluate(), theta=self._theta_hex)
        while not self.stop_event.is_set() and not self._stop_now():
            self.attempt()
        if not self.stop_event.is_set():
            self._resolve(timeout=30.0)  # end on a certified θ (the last round's certificate, or the swarm's)
        self.protocol.finish()
        self._log(event="goodput", height=self.round, goodput=self.protocol.goodput, **self.protocol.stats)
        self.save_checkpoint()

    def _stop_now(self) -> bool:
        limits = [self.options.max_rounds, self._stop_after()]
        return any(limit is not None and self.round >= limit for limit in limits)

    def _stop_after(self) -> int | None:
        """A height written to ``$HOME/STOP_AFTER`` (by ``koinon demo``) ends the run once it is reached."""
        try:
            return int((self.home / "STOP_AFTER").read_text())
        except (OSError, ValueError):
            return None

    def evaluate(self) -> float:
        return self.inner.evaluate(self.theta, self.eval_set)

    def attempt(self) -> None:
        p, c = self.protocol, self.config
        p.attempt += 1
        self._governance_for(p.height + 1)
        self.checkpoint_keeper.fetch_releases(self.gov, self.chains.live().produced)
        started = time.time()
        self._announce(height=p.height + 1, eta=started + c.inner_steps * self.step_time, state=p.state)
        delta, loss, samples = self._train(p.attempt)
        if self.stop_event.is_set():
            return  # leaving: an unfinished round is neither averaged nor recorded
        p.trained(samples, delta)
        self._catch_up_hint()
        if not self._resolve(timeout=p.cert_timeout + 30):
            return self._log(event="round_failed", round=p.height + 1, attempted=p.attempt, reason="no certified state")
        self._governance_for(p.height + 1)  # a sync or revert may have moved us
        keep, weight = p.contribution()
        contribution = _combine(keep, self.theta)
        if p.in_flight is not None:
            p.in_flight.ref = contribution
        round_s = c.inner_steps * self.step_time
        gathered = self.exchange.run(p.height + 1, contribution, weight, self._gather(weight), round_s, self.stop_event)
        if self.stop_event.is_set():
            return
        decision = group_decision(gathered) if gathered else None
        outcome = p.after_group(decision)
        if outcome.apply:
            self._apply(decision, gathered, loss, started, outcome.record)
        else:
            logger.info("height %d, attempt %d: %s; our work stays pending", p.height + 1, p.attempt, outcome.reason)
            self._log(event="round_failed", round=p.height + 1, attempted=p.attempt, reason=outcome.reason)
        # checks go here, while our announcement still says we are finishing this height: peers starting the next
        # one count us as "behind" and wait for us, and the ETA below includes the time the checks took
        self.verification.verify_pending()
        self._announce(height=p.height + 1, eta=time.time() + c.inner_steps * self.step_time, state=p.state)

    def _train(self, r: int) -> tuple[torch.Tensor, float, int]:
        """H inner steps from θ on this attempt's shard, committed on the ledger: (Δ, mean loss, samples)."""
        c, nothing = self.config, (torch.zeros_like(self.theta), float("nan"), 0)
        if self.gov is not None and self.member in self.gov.excluded():
            logger.warning(
                "attempt %d: this member is excluded (expelled, or serving a penalty); contributing nothing", r
            )
            return nothing
        if not self.data_paths:
            return nothing
        blocks = self.corpus.shard(self.member, r, self.exchange.last_group)
        batches = self.corpus.batches(blocks, f"{self.member}|{r}".encode(), c.inner_steps, c.batch_size, c.seq_len)
        t0 = time.time()
        step0, bounds = self.inner.steps_done, c.segment_bounds()
        if self.options.attack == "freeride":  # no work at all; a made-up trace (swarm/attacks.py)
            delta, loss, samples, trace = torch.zeros_like(self.theta), float("nan"), c.inner_steps * c.batch_size, []
        else:
            delta, loss, samples, trace = self.inner.run_round(self.theta, self._until_stopped(batches), bounds)
        if self.stop_event.is_set():
            return nothing
        if self.options.attack is not None:  # a testing tool: Byzantine on purpose, samples still reported
            delta = apply_attack(self.options.attack, delta, AttackContext(self.member, r, self.last_average))
            if self.options.attack == "freeride":
                trace = made_up_trace(self.theta, self.inner.moments(), bounds, delta)
        group = self.exchange.last_group
        self.verification.commit(
            r,
            theta=self.theta,
            config=c,
            group=group,
            blocks=blocks,
            step0=step0,
            samples=samples,
            trace=trace,
            delta=delta,
        )
        # the commitment's hashing is part of a round's time as the others see it (the next ETA)
        self.step_time = 0.5 * self.step_time + 0.5 * (time.time() - t0) / c.inner_steps
        if not torch.isfinite(delta).all() and self.options.attack is None:
            logger.warning("attempt %d: our pseudo-gradient is not finite; contributing nothing", r)
            return nothing
        self.tokens += samples * c.seq_len
        return delta, loss, samples

    def _until_stopped(self, batches):
        last = time.monotonic()
        for batch in batches:
            if self.options.slowdown > 1:  # --slowdown: a slower machine, for the benchmarks
                time.sleep((self.options.slowdown - 1) * (time.monotonic() - last))
            if self.stop_event.is_set():
                return
            last = time.monotonic()
            yield batch

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
                self.ledger_service.kick.set()
                self.stop_event.wait(0.2)
            elif action.kind == "revert":
                s = self.sync.certified
                logger.warning("%s: back to certified height %d", action.reason, s.height)
                self._adopt(s)
                electorate = chain.electorate(s.height + 1) if s.height <= chain.height else s.electorate
                self.protocol.reverted(s.height, s.state, bytes.fromhex(self._theta_hex), electorate)
            elif action.kind == "sync":
                logger.info("%s: syncing from its signers", action.reason)
                download = lambda m: self.averager.download_state(_peer_id(m), timeout=10.0)  # noqa: E731
                got = self.sync.fetch(action.cert, download, self.theta.numel(), self.stop_event, self._certificate)
                if got is None:
                    logger.info("height %d: no signer served its certified state; trying later", action.cert.height)
                    return False
                snapshot, cert = got
                self._adopt(snapshot)
                self.protocol.synced(cert, self.chains.live())
                self.sync.keep(snapshot)
                self._log_round(loss=float("nan"), started=time.time(), group=[], contributors=[], resynced=True)
        return False

    def _signers_of(self, height: int, state: str) -> frozenset[str] | None:
        """Who signed the certificate of ``state`` at ``height`` on our ledger (None: not certified)."""
        if self.chains is None:
            return None
        cert = self.chains.live().certificate(height)
        return cert.signers if cert is not None and cert.state.hex() == state else None

    def _catch_up_hint(self) -> None:
        """Peers announcing a later height (a hint) mean our ledger lags: give it a moment to show their certificate
        before we gather, rather than meeting them with a stale state and averaging for nothing."""
        ahead = [v["height"] for m, v in self.live_peers().items() if m != self.member and "height" in v]
        if ahead and max(ahead) > self.round + 1:
            self._certificate(min(max(ahead) - 1, self.round + 1))

    def _certificate(self, height: int, wait: float = 3.0) -> Certificate | None:
        """Height ``height``'s certificate on our ledger, waiting up to ``wait`` s for the events to arrive."""
        deadline = time.monotonic() + wait
        while (cert := self.chains.live().certificate(height)) is None and time.monotonic() < deadline:
            self.ledger_service.kick.set()
            if self.stop_event.wait(0.2):
                break
        return cert

    def _adopt(self, s: Snapshot) -> None:
        with self._lock:
            self.theta.copy_(s.theta)
            self.outer.buffer = s.momentum.clone()
        self._theta_hex = theta_hash(self.theta)

    def _keep_certified(self, signers: frozenset[str]) -> None:
        with self._lock:
            snapshot = Snapshot.of(self.round, self.theta, self.outer.buffer, self.protocol.electorate, signers)
        self.sync.keep(snapshot)
        if self.options.checkpoint_every and self.round % self.options.checkpoint_every == 0:
            self.save_checkpoint()

    def _apply(self, decision: GroupDecision, gathered: dict, loss: float, started: float, record: bool) -> None:
        """The group is a candidate and we hold its key: the outer step on the identical average → θ_{h+1}."""
        with self.averager.get_tensors() as (buffer,):
            avg = buffer.clone()
        prev = self._theta_hex
        with self._lock:
            self.outer.step(self.theta, avg)
            state = state_hash(decision.height + 1, self.theta, self.outer.buffer)
        self._theta_hex = theta_hash(self.theta)
        if self.options.attack is not None:
            self.last_average = avg
        contributors = sorted(decision.contributors)
        samples = sum(int(gathered[m]["samples"]) for m in contributors)  # type: ignore[index]
        self.protocol.applied(
            decision.height + 1, state, bytes.fromhex(self._theta_hex), contributors, time.monotonic(), record
        )
        with self._lock:
            self.sync.hold(Snapshot.of(self.round, self.theta, self.outer.buffer, contributors))
        self.checkpoint_keeper.note_round(contributors, samples)
        sent = int(self.averager.bytes_sent.value)
        if record:
            self._record(
                "round",
                {
                    "round": self.protocol.attempt,
                    "height": self.round,
                    "theta": bytes.fromhex(self._theta_hex),
                    "prev_theta": bytes.fromhex(prev),
                    "state": bytes.fromhex(state),
                    "participants": contributors,
                    "samples": samples,
                    "bytes": sent - self._bytes_recorded,
                    "config": bytes.fromhex(self.config.config_hash()),
                    "gov": self.gov_index if self.gov_index >= 0 else None,
                },
                cite=self.sync.certified.signers,  # their round events must precede ours in every order
            )
            self._bytes_recorded = sent
        self._log_round(loss, started, sorted(gathered), contributors, resynced=False)

    def _log_round(
        self, loss: float, started: float, group: list[str], contributors: list[str], resynced: bool
    ) -> None:
        self._log(
            event="round",
            round=self.round,
            attempted=self.protocol.attempt,
            loss=loss,
            eval_loss=self.evaluate(),
            theta=self._theta_hex,
            group=group,
            contributors=contributors,
            peers=len(group),
            config=self.config.config_hash(),
            inner_steps=self.config.inner_steps,
            gov=self.gov_index if self.gov_index >= 0 else None,
            in_sync=not resynced,
            resynced=resynced,
            tokens=self.tokens,
            bytes_sent=int(self.averager.bytes_sent.value),
            rejected=int(self.averager.rejected.value),
            seconds=round(time.time() - started, 3),
            **{k: int(v) for k, v in self.protocol.stats.items()},
        )

    def save_checkpoint(self) -> Path:
        """Save (and record on the ledger) the last θ the ledger certified to us, never an optimistic one."""
        s = self.sync.certified
        return self.checkpoint_keeper.save(
            self.model, s.theta, s.height, self.config, self.gov_index, self.corpus.source_ids
        )

    def _log(self, **record: object) -> None:
        self.metrics.write(**record)


def _combine(keep: list[tuple[Pending, float]], like: torch.Tensor) -> torch.Tensor:
    """Σ wᵢ·sᵢ·Δᵢ / Σ wᵢ·sᵢ over the pending contributions to send (zeros if none): one vector, one weight."""
    out = torch.zeros_like(like)
    total = sum(w * p.samples for p, w in keep)
    for p, w in keep:
        out.add_(p.ref, alpha=w * p.samples / total)
    return out


def _peer_id(member: str):
    from hivemind.p2p import PeerID

    return PeerID.from_base58(member)
