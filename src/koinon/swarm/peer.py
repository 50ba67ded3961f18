"""One training peer: joins the swarm, trains DiLoCo rounds, averages pseudo-gradients exactly, stays in sync.

Round ``r`` on a peer (DESIGN §4; docs/training.md has the full protocol and why it converges):

1. Announce ``(round r, eta)`` in the DHT; train H inner steps on this round's shard (or, on the first round
   after joining late, contribute nothing: weight 0, Δ = 0).
2. Average Δ with the round's group through :class:`~koinon.swarm.averaging.ExactAverager`, weighted by samples.
   Everyone schedules the all-reduce at the latest announced eta, so one slow peer does not split the round.
   The all-gather carries each member's pre-round state hash (round, θ, outer momentum).
3. Apply the outer Nesterov step to the identical Δ̄ → bit-identical θ_r on every member that started equal.
4. The group's *canonical* pre-round state is the one most members held (ties: higher round, then smaller
   hash); every member computes the same choice from the same gathered data. A member that held another state
   (it missed a round, or a round split in two) downloads the state of a canonical member and continues from it.
   A member whose averaging failed entirely does the same with the most advanced live peer.

Every round appends one JSON line to ``$HOME/metrics.jsonl`` (the demo and the tests read it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from koinon.config import TrainingConfig
from koinon.errors import HashMismatch, KoinonError, SwarmError
from koinon.governance.charter import charter_from_toml, default_charter_text, training_body
from koinon.identity import Identity, short_id
from koinon.ledger.node import LedgerNode
from koinon.ledger.outbox import HomeLock, Outbox
from koinon.ledger.p2p import LedgerService
from koinon.ledger.store import LedgerStore
from koinon.store.checkpoint import save_checkpoint, save_content
from koinon.store.fetch import (
    CheckpointServer,
    FetchError,
    content_of,
    fetch_checkpoint,
    finish_fetch,
    make_manifest,
    manifest_id,
)
from koinon.swarm import node
from koinon.swarm.announce import Announcer
from koinon.swarm.attacks import AttackContext, apply_attack, check_attack
from koinon.swarm.averaging import GATHER_KEYS, ExactAverager, canonical_key, group_decision
from koinon.swarm.compression import get_compression, roundtrip
from koinon.training.data import Corpus
from koinon.training.diloco import InnerTrainer, OuterOptimizer
from koinon.training.model import build_model, flat_parameters, theta_hash
from koinon.verification.worker import BlobStore, Outcome, commitment, fetch_blob, made_up_trace, verify_commit

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
    max_rounds: int | None = None
    wait_for_peers: int = 1  # before round 1, wait (up to ``wait_timeout``) until this many peers are announced
    wait_timeout: float = 60.0
    matchmaking_time: float = 2.0
    averaging_timeout: float = 30.0
    threads: int = 0  # torch threads; 0 keeps torch's default
    checkpoint_every: int = 10
    attack: str | None = None
    epoch_ms: int = 2000  # ledger cut epochs (a charter rule: joiners take the founder's value)
    swarm_id: str | None = None  # hex: refuse to join a swarm whose charter has another id
    charter: dict | None = None  # the genesis body to found with (None: the example charter with ``config``)


def state_hash(round_no: int, theta: torch.Tensor, momentum: torch.Tensor) -> str:
    h = hashlib.sha256(round_no.to_bytes(8, "big"))
    h.update(theta.numpy().tobytes())
    h.update(momentum.numpy().tobytes())
    return h.hexdigest()


def choose_canonical(gathered: dict[str, dict]) -> tuple[str, int]:
    """The pre-round state most members held: (state hash, round). Ties: higher round, then smaller hash."""
    votes: dict[tuple[str, int], int] = {}
    for info in gathered.values():
        key = (str(info["state"]), int(info["round"]))
        votes[key] = votes.get(key, 0) + 1
    return min(votes, key=lambda k: (-votes[k], -k[1], k[0]))


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
        self.metrics_path = self.home / "metrics.jsonl"
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
        self.round = 0
        self.last_group: list[str] = [self.member]
        self.step_time = 0.1  # seconds per inner step, refined every round
        self._theta_hex = theta_hash(self.theta)
        self._bytes_recorded = 0
        self._last_round_record: dict = {}
        self.tokens = 0
        self.rounds_synced_from_peers = 0
        self.data_paths: list[Path] = list(options.data) if options.data else [Path("<stdlib>")]
        self.gov_index = -1  # the final cut whose governance state is in force (-1: the charter)
        self.gov = None  # that GovState (set once the charter is here)
        self.pending_gov: int | None = None  # final cut count agreed in the last round, in force from the next
        self.config_known = False
        self.last_contributors: list[str] = []
        self._round_gov: int | None = None  # the final cut index in force during the current round (None: charter)
        self.last_average: torch.Tensor | None = None  # (P,) the last Δ̄ applied; kept only for `--attack alie`
        self.blobs = BlobStore()  # our trace states by hash (verifiers fetch them), and evidence we pinned
        self.known_configs: dict[str, TrainingConfig] = {self.config.config_hash(): self.config}
        self._answered: dict[bytes, int] = {}  # checks we answered (value -1) or tried to (attempts so far)
        self._verify_trainer: InnerTrainer | None = None
        self.checkpoints = CheckpointServer(self.home / "checkpoints")
        self._ckpt_parent: bytes | None = None  # lineage since the last checkpoint we recorded
        self._ckpt_contributors: set[str] = set()
        self._ckpt_samples = 0
        self._fetching: threading.Thread | None = None
        self._fetch_failed: dict[bytes, float] = {}

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
        self.averager.set_state_provider(self._serve_state)
        self.announcer = Announcer(self.dht, o.swarm, self.member)

    @property
    def swarm_id(self) -> str | None:
        sid = self.ledger.store.swarm_id
        return sid.hex() if sid else None

    def _record(self, kind: str, body: dict) -> None:
        """Append to our ledger feed and push it out at once."""
        try:
            self.ledger.append_own(kind, body)
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

    # --- governance --------------------------------------------------------------------------------------------
    def _final_count(self) -> int:
        """How many cuts are final in our ledger (the governance state after the last one is the newest)."""
        return len(self.ledger.chain.final_cuts())

    def _use_governance(self, index: int, gov) -> None:
        """Train from the next round under the governance state after final cut ``index`` (-1: the charter):
        its configuration, its excluded members, its data sources. Every member of a round's group calls this
        with the same index (chosen from the round's all-gather), so all switch at the same round."""
        self.gov_index, self.gov = index, gov
        if gov.config is not None and gov.config != self.config:
            if self.config_known and index >= 0:
                logger.info(
                    "governance (final cut %d): configuration %s in force from round %d",
                    index,
                    gov.config.config_hash()[:12],
                    self.round + 1,
                )
            self.config = gov.config
            self.known_configs[gov.config.config_hash()] = gov.config
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

    def _governance_after_round(self, gathered: dict[str, dict]) -> None:
        """After round r's all-gather, every member of the group computes the same final cut count: the lower
        median of the counts the canonical members reported, never below the one in force. That state takes
        effect from round r + 2, one round later, so a member whose ledger is a little behind has a whole round
        to fetch the cuts before it needs them. (The count agreed in round r - 1 takes effect now.)"""
        pending, self.pending_gov = self.pending_gov, None
        if pending is not None:
            self._switch_governance(pending)
        key = canonical_key(gathered)
        members = [
            v for v in gathered.values() if key is None or (v.get("state"), v.get("round"), v.get("config")) == key
        ]
        in_force = max((int(v["g"]) for v in members if isinstance(v.get("g"), int)), default=0)
        seen = sorted(int(v["gov"]) for v in members if isinstance(v.get("gov"), int))
        count = max(in_force, seen[(len(seen) - 1) // 2] if seen else 0)
        if count > self.gov_index + 1:
            self.pending_gov = count

    def _switch_governance(self, count: int, timeout: float = 10.0) -> bool:
        """Use the governance state after the first ``count`` final cuts (waiting a little for our ledger)."""
        if count <= self.gov_index + 1:
            return True
        deadline = time.monotonic() + timeout
        while self._final_count() < count and time.monotonic() < deadline and not self.stop_event.is_set():
            self.ledger_service.kick.set()  # the others have it final: fetch their cuts
            time.sleep(0.1)
        gov = self.ledger.chain.final_governance(count - 1)
        if gov is None:
            logger.warning("round %d: our ledger lacks final cut %d that the group agreed on", self.round, count - 1)
            return False
        self._use_governance(count - 1, gov)
        return True

    def _gather(self, samples: int, pre_state: str) -> dict:
        gov = self.gov
        return dict(
            member=self.member,
            round=self.round,
            state=pre_state,
            samples=samples,
            config=self.config.config_hash(),
            compression=self.config.compression,
            reducer=self.config.reducer,
            excluded=gov.excluded() if gov is not None else [],
            gov=self._final_count(),
            g=self.gov_index + 1,
        )

    # --- DHT announcements -------------------------------------------------------------------------------------
    def _announce(self, **info: object) -> None:
        if self.announcer is not None:
            self.announcer.announce(**info)

    def live_peers(self) -> dict[str, dict]:
        return self.announcer.live_peers() if self.announcer is not None else {}

    # --- state sharing -----------------------------------------------------------------------------------------
    def _serve_state(self) -> tuple[dict, list[torch.Tensor]]:
        with self._lock:
            theta, momentum, r, g = self.theta.clone(), self.outer.buffer.clone(), self.round, self.gov_index
            pending = self.pending_gov
        meta = dict(
            pending=pending,
            round=r,
            theta=theta_hash(theta),
            state=state_hash(r, theta, momentum),
            config=self.config.config_hash(),
            gov=g,
        )
        return meta, [theta, momentum]

    def _adopt_state(self, peer: str, min_round: int, timeout: float = 15.0) -> bool:
        """Download (round, θ, momentum) from ``peer`` once it has reached ``min_round``; verify, then adopt."""
        from hivemind.p2p import PeerID

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stop_event.is_set():
            got = self.averager.download_state(PeerID.from_base58(peer), timeout=10.0)
            if got is not None:
                meta, tensors = got
                if meta.get("round", -1) >= min_round and len(tensors) == 2:
                    theta, momentum = (t.to(torch.float32).reshape(-1) for t in tensors)
                    if theta.shape != self.theta.shape or momentum.shape != self.theta.shape:
                        raise HashMismatch(f"peer {short_id(peer)} sent a state of the wrong shape")
                    if theta_hash(theta) != meta.get("theta"):
                        raise HashMismatch(f"state from {short_id(peer)} does not match the hash it announced")
                    self._follow_governance_of(peer, meta)
                    with self._lock:
                        self.theta.copy_(theta)
                        self.outer.buffer = momentum.clone()
                        self.round = int(meta["round"])
                        self._theta_hex = theta_hash(self.theta)
                    self.rounds_synced_from_peers += 1
                    return True
            time.sleep(0.3)
        return False

    def _follow_governance_of(self, peer: str, meta: dict) -> None:
        """Adopting a peer's state means adopting the governance state it trains under (final cut ``gov``) and
        the one its group agreed on for the round after next (``pending``)."""
        g = meta.get("gov")
        if isinstance(g, int) and g > self.gov_index:
            self._switch_governance(g + 1)
        pending = meta.get("pending")
        self.pending_gov = pending if isinstance(pending, int) and pending > self.gov_index + 1 else None
        if meta.get("config") != self.config.config_hash():
            raise HashMismatch(
                f"state from {short_id(peer)} was trained under configuration {str(meta.get('config'))[:12]}, "
                f"which our ledger does not (yet) have in force"
            )

    def _sync_from_best(self, exclude_round_below: int = 0) -> bool:
        peers = {m: v for m, v in self.live_peers().items() if m != self.member}
        for m, v in sorted(peers.items(), key=lambda kv: -int(kv[1].get("done", -1))):
            if int(v.get("done", -1)) >= max(exclude_round_below, self.round + 1 if self.round else 0):
                try:
                    if self._adopt_state(m, min_round=int(v["done"]), timeout=10.0):
                        return True
                except HashMismatch as e:
                    logger.warning("%s", e)
        return False

    # --- the round loop -----------------------------------------------------------------------------------------
    def join(self) -> bool:
        """Before the first round: wait for the expected peers, then load the swarm's state if it has one.
        Returns True when this peer joined a running swarm (its first round then contributes nothing)."""
        o = self.options
        self._join_ledger()
        deadline = time.monotonic() + o.wait_timeout
        self._announce(round=0, done=0, eta=0.0, state="")
        while time.monotonic() < deadline and not self.stop_event.is_set():
            peers = self.live_peers()
            if any(int(v.get("done", 0)) > 0 for m, v in peers.items() if m != self.member):
                break
            if len(peers) >= o.wait_for_peers:
                break
            time.sleep(0.5)
        if any(int(v.get("done", 0)) > 0 for m, v in self.live_peers().items() if m != self.member):
            if self._sync_from_best():
                self._log(event="joined", round=self.round, theta=theta_hash(self.theta))
                return True
        return False

    def run(self) -> None:
        late = self.join()
        self._log(event="start", member=self.member, late=late, eval_loss=self.evaluate(), theta=theta_hash(self.theta))
        while not self.stop_event.is_set():
            if self.options.max_rounds is not None and self.round >= self.options.max_rounds:
                break
            if self._stop_after() is not None and self.round >= self._stop_after():
                break
            if late:
                self._catch_up()
            self.run_round(contribute=not late)
            late = False
        if not self.stop_event.is_set():
            self._settle()
        self.save_checkpoint()

    def _settle(self, timeout: float = 30.0) -> None:
        """Before a planned stop (``--rounds``, ``STOP_AFTER``): the last round has no next all-gather to reveal a
        split, so compare our θ with what the other peers announced for the same round and adopt the majority's."""
        deadline = time.monotonic() + min(timeout, 3 * self.config.inner_steps * self.step_time + 5)
        votes: dict[str, list[str]] = {}
        while time.monotonic() < deadline:
            peers = {m: v for m, v in self.live_peers().items() if m != self.member}
            busy = [
                v
                for v in peers.values()
                if int(v.get("done", -1)) < self.round and int(v.get("round", -1)) >= self.round
            ]
            votes = {}
            for m, v in peers.items():
                if int(v.get("done", -1)) == self.round and v.get("theta"):
                    votes.setdefault(str(v["theta"]), []).append(m)
            if not busy:
                break
            time.sleep(0.5)
        mine = theta_hash(self.theta)
        votes.setdefault(mine, []).append(self.member)
        best = min(votes, key=lambda t: (-len(votes[t]), t))
        if best != mine:
            logger.info("round %d: the other peers ended with another θ; adopting theirs", self.round)
            for donor in votes[best]:
                if self._adopt_state(donor, min_round=self.round, timeout=10.0):
                    # the round's record again, with the θ we end on (readers keep a round's last record)
                    last = dict(self._last_round_record, event="round", round=self.round, resynced=True)
                    last.update(
                        theta=theta_hash(self.theta), eval_loss=self.evaluate(), in_sync=False, time=time.time()
                    )
                    self._log(**last)
                    break

    def _catch_up(self, attempts: int = 3) -> None:
        """A joiner's downloaded state may be a round old by the time it is ready: fetch again while others are
        ahead, so that its first round is the one they are in."""
        for _ in range(attempts):
            ahead = max((int(v.get("done", 0)) for m, v in self.live_peers().items() if m != self.member), default=0)
            if ahead <= self.round or not self._sync_from_best():
                return

    def _stop_after(self) -> int | None:
        """A round number written to ``$HOME/STOP_AFTER`` (by ``koinon demo``) ends the run after that round."""
        try:
            return int((self.home / "STOP_AFTER").read_text())
        except (OSError, ValueError):
            return None

    def evaluate(self) -> float:
        return self.inner.evaluate(self.theta, self.eval_set)

    def run_round(self, contribute: bool = True) -> None:
        c = self.config
        r = self.round + 1
        self._fetch_releases()
        self._round_gov = self.gov_index if self.gov_index >= 0 else None
        pre_state = state_hash(self.round, self.theta, self.outer.buffer)
        started = time.time()
        self._announce(
            round=r,
            done=self.round,
            eta=started + (c.inner_steps * self.step_time if contribute else 0),
            state=pre_state,
            theta=theta_hash(self.theta),
        )
        loss, samples = float("nan"), 0
        delta = torch.zeros_like(self.theta)
        if self.gov is not None and self.member in self.gov.excluded():
            if contribute:
                logger.warning(
                    "round %d: this member is excluded (expelled, or serving a penalty); contributing nothing", r
                )
            contribute = False
        if not self.data_paths:
            contribute = False
        if contribute:
            blocks = self.corpus.shard(self.member, r, self.last_group)
            seed = f"{self.member}|{r}".encode()
            batches = self.corpus.batches(blocks, seed, c.inner_steps, c.batch_size, c.seq_len)
            t0 = time.time()
            step0, bounds = self.inner.steps_done, c.segment_bounds()
            if self.options.attack == "freeride":  # no work at all; a made-up trace (swarm/attacks.py)
                delta, loss, samples, trace = (
                    torch.zeros_like(self.theta),
                    float("nan"),
                    c.inner_steps * c.batch_size,
                    [],
                )
            else:
                delta, loss, samples, trace = self.inner.run_round(self.theta, self._until_stopped(batches), bounds)
            if self.stop_event.is_set():
                return  # leaving: an unfinished round is neither averaged nor recorded
            if self.options.attack is not None:  # a testing tool: Byzantine on purpose, samples still reported
                delta = apply_attack(self.options.attack, delta, AttackContext(self.member, r, self.last_average))
                if self.options.attack == "freeride":
                    trace = made_up_trace(self.theta, self.inner.moments(), bounds, delta)
            self._commit(r, blocks, step0, samples, trace, delta)
            # the commitment's hashing is part of a round's time as the others see it (the next ETA)
            self.step_time = 0.5 * self.step_time + 0.5 * (time.time() - t0) / c.inner_steps
            if not torch.isfinite(delta).all() and self.options.attack is None:
                logger.warning("round %d: our pseudo-gradient is not finite; contributing nothing", r)
                delta, samples = torch.zeros_like(delta), 0
        self.tokens += samples * c.seq_len

        gathered = self._average(r, delta, samples, pre_state)
        if self.stop_event.is_set():
            return
        round_config = self.config  # the configuration this round trained under (a decision applies from the next)
        resynced = False
        if gathered is None:
            # no group at all (or every attempt failed): catch up from the most advanced live peer
            resynced = self._sync_from_best(exclude_round_below=r)
            if not resynced:
                # nobody finished round r either: θ stays as it was and the next round tries again
                self._log(event="round_failed", round=r, seconds=round(time.time() - started, 3))
                self.last_group = [self.member]  # whoever we expected is gone: next round may run alone
                logger.info("round %d: no group and nobody ahead of us; trying again next round", r)
                return None
        else:
            with self.averager.get_tensors() as (buffer,):
                avg = buffer.clone()
            canonical_state, canonical_round, canonical_config = canonical_key(gathered) or (pre_state, self.round, "")
            decision = group_decision(gathered)
            in_sync = pre_state == canonical_state and canonical_config in ("", self.config.config_hash())
            with self._lock:
                self.outer.step(self.theta, avg)
                self.round = r
            if self.options.attack is not None:
                self.last_average = avg
            self.last_group = sorted(gathered)
            self.last_contributors = sorted(decision.contributors) if decision is not None else sorted(gathered)
            if not in_sync:
                donors = [m for m, v in gathered.items() if v["state"] == canonical_state and m != self.member]
                logger.info("round %d: our state was not the group's; syncing from %s", r, short_id(donors[0]))
                for donor in donors:
                    if self._adopt_state(donor, min_round=canonical_round + 1):
                        resynced = True
                        break
            self._governance_after_round(gathered)
            return self._finish_round(
                r,
                loss,
                gathered,
                started,
                group=self.last_group,
                in_sync=in_sync,
                resynced=resynced,
                config=round_config,
            )
        return self._finish_round(
            r, loss, None, started, group=[], in_sync=False, resynced=resynced, config=round_config
        )

    # --- verification (koinon.verification; docs/verification.md) ----------------------------------------------
    def _commit(self, r: int, blocks: list[int], step0: int, samples: int, trace, delta: torch.Tensor) -> None:
        """Before averaging: keep the round's trace states (to serve them) and sign a commitment to them."""
        if not trace or samples == 0:
            return
        hashes = self.blobs.add_round(r, trace)
        body = commitment(
            member=self.member,
            round_no=r,
            theta=self.theta,
            config=self.config,
            data=self.corpus.source_ids,
            group=self.last_group,
            shards=blocks,
            step0=step0,
            samples=samples,
            trace=hashes,
            delta=delta,
        )
        self._record("commit", body)

    def _verify_pending(self, budget: int = 2) -> None:
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
                corpus=self.corpus,
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
        self._record(
            "verdict", {"commit": check.commit, "ok": outcome.ok, "error": outcome.error_ppm, "got": outcome.got}
        )
        self._log(
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
                return fetch_blob(lambda req, p=peer: self.ledger_service.call(p, self._blob_protocol, req), key)
            except Exception as e:
                last = e
        raise LookupError(f"no source served blob {key.hex()[:12]}: {last!r}")

    def _until_stopped(self, batches):
        for batch in batches:
            if self.stop_event.is_set():
                return
            yield batch

    def _average(self, r: int, delta: torch.Tensor, samples: int, pre_state: str) -> dict[str, dict] | None:
        from hivemind.utils import get_dht_time

        o = self.options
        companions = [m for m in self.last_group if m != self.member]
        for _attempt in range(3):
            peers = self.live_peers()
            others = {m: v for m, v in peers.items() if m != self.member}
            same_round = [v for v in others.values() if int(v.get("round", -1)) == r]
            # peers still finishing round r-1 will be here soon: wait for them too (a stale record of a dead peer
            # costs at most one such wait per round until its announcement expires)
            behind = [v for v in others.values() if int(v.get("round", -1)) == r - 1]
            if same_round or behind or not companions:
                break
            # last round's group is nowhere to be seen: a DHT lookup can fail under load, so look again before
            # concluding we are alone (going solo by mistake would split the swarm's θ)
            time.sleep(0.5)
        else:
            # still nobody: expect last round's companions anyway; if they really left, matchmaking fails within
            # the deadline and we catch up from whoever is ahead (a failed round is safe, a wrong solo round is not)
            behind = [{"member": m} for m in companions]
        gather = self._gather(samples, pre_state)
        if not same_round and not behind:
            if samples == 0:
                return None  # nothing of ours to apply alone (a late joiner's first round): catch up instead
            # alone in this round: the "average" is our own Δ as it would come back from the wire
            with self.averager.get_tensors() as (buffer,):
                buffer.copy_(roundtrip(delta, get_compression(self.config.compression)))
            return {self.member: gather}
        with self.averager.get_tensors() as (buffer,):
            buffer.copy_(delta)
        self.averager.configure_matchmaking(min_group_size=2, target_group_size=len(same_round) + len(behind) + 1)
        now = get_dht_time()
        etas = [float(v.get("eta", 0.0)) for v in same_round]
        if behind:
            etas.append(now + self.config.inner_steps * self.step_time + 1.0)
        scheduled = min(max([now, *etas]), now + o.averaging_timeout) + 0.25
        logger.debug(
            "round %d: %d live peers, %d in this round, %d finishing the last; all-reduce scheduled in %.2f s",
            r,
            len(peers),
            len(same_round),
            len(behind),
            scheduled - now,
        )
        try:
            control = self.averager.step(
                gather=gather,
                weight=float(samples),
                scheduled_time=scheduled,
                timeout=scheduled - now + o.matchmaking_time + o.averaging_timeout,
                wait=False,
            )
            while not control.done():
                if self.stop_event.wait(0.1):
                    control.cancel()
                    return None
            result = control.result()
        except Exception as e:
            logger.info("round %d: averaging failed: %r", r, e)
            return None
        if not result:
            return None
        gathered: dict[str, dict] = {}
        for peer_id, info in result.items():
            if isinstance(info, dict) and set(GATHER_KEYS) <= set(info):
                gathered[peer_id.to_base58()] = info
        if self.member not in gathered:
            return None
        return gathered

    def _finish_round(self, r, loss, gathered, started, group, in_sync, resynced, config) -> None:
        eval_loss = self.evaluate()
        theta = theta_hash(self.theta)
        sent = int(self.averager.bytes_sent.value)
        samples = sum(int(v["samples"]) for m, v in (gathered or {}).items() if m in set(self.last_contributors))
        if gathered:
            self._ckpt_contributors |= set(self.last_contributors)
            self._ckpt_samples += samples
        self._record(
            "round",
            {
                "round": self.round,
                "theta": bytes.fromhex(theta),
                "prev_theta": bytes.fromhex(self._theta_hex),
                "participants": sorted(group),
                "samples": samples,
                "bytes": sent - self._bytes_recorded,
                "config": bytes.fromhex(config.config_hash()),
                "gov": self._round_gov,
            },
        )
        self._theta_hex, self._bytes_recorded = theta, sent
        # checks go here, while our announcement still says we are finishing this round: peers starting the next
        # one count us as "behind" and wait for us, and the ETA below includes the time the checks took
        self._verify_pending()
        self._announce(
            round=self.round + 1,
            done=self.round,
            eta=time.time() + self.config.inner_steps * self.step_time,
            theta=theta,
            state=state_hash(self.round, self.theta, self.outer.buffer),
        )
        self._log(
            event="round",
            round=self.round,
            attempted=r,
            loss=loss,
            eval_loss=eval_loss,
            theta=theta,
            group=group,
            contributors=self.last_contributors if gathered else [],
            peers=len(group),
            config=config.config_hash(),
            inner_steps=config.inner_steps,
            gov=self._round_gov,
            in_sync=in_sync,
            resynced=resynced,
            tokens=self.tokens,
            bytes_sent=int(self.averager.bytes_sent.value),
            rejected=int(self.averager.rejected.value),
            seconds=round(time.time() - started, 3),
        )
        if self.options.checkpoint_every and self.round % self.options.checkpoint_every == 0:
            self.save_checkpoint()

    def save_checkpoint(self) -> Path:
        with self._lock:
            theta, r = self.theta.clone(), self.round
        path = save_checkpoint(self.home / "checkpoints", self.model, theta, r, self.config)
        self._log(event="checkpoint", round=r, path=str(path), theta=theta_hash(theta))
        if r > 0 and self.ledger.store.swarm_id is not None:
            content = content_of(theta)
            manifest = make_manifest(content, r, self.config)
            self._record(
                "checkpoint",
                {
                    "theta": manifest["theta"],
                    "round": r,
                    "parent": self._ckpt_parent,
                    "config": bytes.fromhex(self.config.config_hash()),
                    "gov": self.gov_index if self.gov_index >= 0 else None,
                    "contributors": sorted(self._ckpt_contributors)[:4096],
                    "data": [bytes.fromhex(d) for d in self.corpus.source_ids][:64],
                    "samples": self._ckpt_samples,
                    "manifest": manifest_id(manifest),
                    "size": len(content),
                },
            )
            self._ckpt_parent, self._ckpt_contributors, self._ckpt_samples = manifest["theta"], set(), 0
        return path

    # --- releases: fetch the checkpoints governance released that we lack (docs/models.md) -------------------------
    def _fetch_releases(self) -> None:
        """Start fetching (in the background, one at a time) a released checkpoint this peer does not hold, in
        chunks from the members that recorded it."""
        if self._fetching is not None and self._fetching.is_alive():
            return
        gov = self.gov
        if gov is None or not gov.releases:
            return
        folder = self.home / "checkpoints"
        for tag, release in sorted(gov.releases.items()):
            theta = bytes.fromhex(release["checkpoint"])
            if (folder / f"{theta.hex()[:16]}.safetensors").exists():
                continue
            if time.monotonic() - self._fetch_failed.get(theta, -1e9) < 60:
                continue
            self._fetching = threading.Thread(
                target=self._fetch_one, args=(tag, theta), daemon=True, name="koinon-fetch"
            )
            self._fetching.start()
            return

    def _fetch_one(self, tag: str, theta: bytes) -> None:
        holders: set[str] = set()
        claims: dict[tuple[bytes, int], int] = {}  # (manifest id, size) → how many members recorded it
        for e in self.ledger.store.iter_events(kind="checkpoint"):
            if e.body["theta"] == theta and e.author != self.member:
                holders.add(e.author)
                key = (e.body["manifest"], e.body["size"])
                claims[key] = claims.get(key, 0) + 1
        sources = {h: (lambda req, h=h: self.ledger_service.call(h, self._ckpt_protocol, req)) for h in sorted(holders)}
        folder = self.home / "checkpoints"
        try:
            if not sources:
                raise FetchError("no member recorded this checkpoint on the ledger")
            last: Exception | None = None
            for manifest_hash, size in sorted(claims, key=lambda k: (-claims[k], k)):  # most recorded first
                try:
                    content, manifest, report = fetch_checkpoint(
                        theta,
                        sources,
                        folder / "partial",
                        manifest_hash=manifest_hash,
                        size=size,
                        stop=self.stop_event,
                    )
                    break
                except FetchError as e:
                    last = e
            else:
                raise last or FetchError("no manifest")
            config = TrainingConfig(**json.loads(manifest["config"]))
            save_content(folder, content, int(manifest["round"]), config)
            finish_fetch(folder / "partial", theta)
            logger.info("release %s: fetched checkpoint %s from %d peer(s)", tag, theta.hex()[:12], len(report["from"]))
            self._log(event="fetched", tag=tag, theta=theta.hex(), report=report)
        except Exception as e:
            self._fetch_failed[theta] = time.monotonic()
            logger.warning("release %s: could not fetch checkpoint %s: %s", tag, theta.hex()[:12], e)

    def _log(self, **record: object) -> None:
        record.setdefault("time", time.time())
        if record.get("event") == "round":
            self._last_round_record = dict(record)
        line = json.dumps(record, sort_keys=True)
        with open(self.metrics_path, "a") as f:
            f.write(line + "\n")
        if record.get("event") == "round":
            logger.info(
                "round %s  loss %.3f  eval %.3f  peers %s  sent %.1f MB  θ %s%s",
                record["round"],
                record["loss"],
                record["eval_loss"],
                record["peers"],
                record["bytes_sent"] / 1e6,
                str(record["theta"])[:12],
                "" if record["in_sync"] else "  (re-synced)" if record["resynced"] else "  (out of sync)",
            )
