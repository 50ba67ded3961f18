"""The network side of a peer's life: its DHT node; the ledger service and the protocols it answers (ledger, blob,
checkpoint); founding the swarm when a peer starts alone; once the charter is here, the averager, the DHT announcer
and the all-reduce (``exchange.py``); and leaving, in the order hivemind needs.

Separate from the round loop (``peer.py``) because none of it is a round-protocol decision: it starts and stops
processes and services, and hands the loop, the verification duties and the checkpoint keeper what they need from
the network: record on the ledger and push it out, ask another peer's blob or checkpoint protocol, announce,
download a state, read the group's average.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from koinon.config import TrainingConfig
from koinon.errors import KoinonError, SwarmError
from koinon.governance.charter import charter_from_toml, default_charter_text, training_body
from koinon.identity import Identity
from koinon.ledger.node import LedgerNode
from koinon.ledger.outbox import Outbox
from koinon.ledger.p2p import LedgerService
from koinon.store.fetch import CheckpointServer
from koinon.swarm import node
from koinon.swarm.announce import Announcer
from koinon.swarm.averaging import ExactAverager
from koinon.swarm.compression import get_compression
from koinon.swarm.exchange import Exchange
from koinon.swarm.options import PeerOptions
from koinon.verification.worker import BlobStore

logger = logging.getLogger("koinon.peer")  # the peer's logger: its messages read as they did from peer.py


class PeerServices:
    def __init__(
        self,
        *,
        options: PeerOptions,
        identity: Identity,
        ledger: LedgerNode,
        stop_event: threading.Event,
        theta: Callable[[], bytes],
    ) -> None:
        self.options = options
        self.identity = identity
        self.member = identity.member_id
        self.ledger = ledger
        self.stop_event = stop_event
        self.theta = theta  # our θ's hash, as the ledger service tells other peers
        self.blobs = BlobStore()  # our trace states by hash (verifiers fetch them), and evidence we pinned
        self.checkpoints = CheckpointServer(Path(options.home) / "checkpoints")
        self.dht = None
        self.averager = None
        self.announcer: Announcer | None = None
        self.exchange: Exchange | None = None
        self.ledger_service: LedgerService | None = None

    @property
    def prefix(self) -> str:
        """The averaging group key: the swarm's name and id. Peers that disagree on the configuration in force
        may still meet; the group's all-gather then leaves the minority's contributions out (group_decision)."""
        sid = self.ledger.store.swarm_id
        return f"{self.options.swarm}_{(sid.hex() if sid else '')[:16]}"

    def start(self, config: TrainingConfig) -> list[str]:
        """The DHT and the ledger service; alone and without a ledger, found the swarm first (``config``: the
        founding configuration when no charter was given). Our visible multiaddrs."""
        o = self.options
        threading.excepthook = self._thread_excepthook  # inherited by hivemind's forked children
        self.dht = node.start_dht(self.identity, o.listen, o.initial_peers, o.announce)
        if not o.initial_peers and self.ledger.store.swarm_id is None:
            charter = o.charter or charter_from_toml(default_charter_text(), self.member)
            if o.charter is None:  # `koinon start` flags set the founding configuration
                charter["training"] = training_body(config)
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
            theta=self.theta,
            outbox=Outbox(Path(o.home), lambda kind, body: self.ledger.append_own(kind, body)),
            handlers={self._blob_protocol: self.blobs.handle, self._ckpt_protocol: self.checkpoints.handle},
        )
        self.ledger_service.start()
        return self.maddrs()

    def maddrs(self) -> list[str]:
        return [str(m) for m in self.dht.get_visible_maddrs()]

    @property
    def _blob_protocol(self) -> str:
        return f"koinon/blob/{self.options.swarm}"

    @property
    def _ckpt_protocol(self) -> str:
        return f"koinon/ckpt/{self.options.swarm}"

    def call_blob(self, peer: str, request: bytes) -> bytes:
        return self.ledger_service.call(peer, self._blob_protocol, request)

    def call_ckpt(self, peer: str, request: bytes) -> bytes:
        return self.ledger_service.call(peer, self._ckpt_protocol, request)

    def fetch_charter(self) -> None:
        """Get the swarm's charter (from the initial peers) and check that it is the swarm we were asked to join."""
        deadline = time.monotonic() + self.options.wait_timeout
        while self.ledger.store.swarm_id is None and time.monotonic() < deadline and not self.stop_event.is_set():
            self.kick()
            time.sleep(0.2)
        if self.ledger.store.swarm_id is None:
            raise SwarmError(
                "could not fetch the swarm's ledger (its charter) from the initial peers; are they Koinon peers?"
            )
        swarm_id = self.ledger.store.swarm_id.hex()
        if self.options.swarm_id and swarm_id != self.options.swarm_id.lower():
            raise SwarmError(f"the initial peers belong to swarm {swarm_id}, not {self.options.swarm_id}")
        charter = self.ledger.store.charter()
        self.ledger.epoch_ms = int(charter.body["rules"].get("epoch_ms", self.ledger.epoch_ms))

    def start_averager(self, like: torch.Tensor, compression: str, serve: Callable) -> None:
        """Once the swarm id is known (the charter is here), so the averaging prefix names the swarm. ``like``: θ
        (the shape of what is averaged); ``serve``: the state-download provider (``StateSync.serve``)."""
        o = self.options
        self.averager = node.start_averager(
            ExactAverager,
            [torch.zeros_like(like)],
            self.dht,
            start=True,
            prefix=self.prefix,
            min_group_size=2,
            min_matchmaking_time=o.matchmaking_time,
            request_timeout=min(1.0, o.matchmaking_time / 2),
            next_chunk_timeout=5.0,
            allreduce_timeout=o.averaging_timeout,
            compression=get_compression(compression),
            state_compression=get_compression("none"),
            declare_state_period=5.0,
        )
        self.averager.set_state_provider(serve)
        self.announcer = Announcer(self.dht, o.swarm, self.member, sign=self.identity.sign, required="height")
        self.exchange = Exchange(self.averager, self.announcer, self.member, o.matchmaking_time, o.averaging_timeout)

    def record(self, kind: str, body: dict, cite: frozenset[str] = frozenset()) -> None:
        """Append to our ledger feed (citing the heads of ``cite``) and push it out at once."""
        try:
            self.ledger.append_own(kind, body, cite)
        except KoinonError as e:
            logger.warning("could not record %s on the ledger: %s", kind, e)
            return
        if self.ledger_service is not None:
            self.ledger_service.kick.set()

    def kick(self) -> None:
        """Exchange ledger events with our neighbours now, rather than at the next sync interval."""
        self.ledger_service.kick.set()

    def announce(self, **info: object) -> None:
        if self.announcer is not None:
            self.announcer.announce(**info)

    def live_peers(self) -> dict[str, dict]:
        return self.announcer.live_peers() if self.announcer is not None else {}

    def download_state(self, member: str, size: int):
        """``member``'s served state (metadata, tensors) for a model of ``size`` parameters, or None
        (``StateSync.fetch`` checks it)."""
        from hivemind.p2p import PeerID

        return self.averager.download_state(PeerID.from_base58(member), timeout=10.0, size=size)

    def average(self) -> torch.Tensor:
        """The group's average Δ̄ that the last all-reduce left in the averager's buffer (a copy)."""
        with self.averager.get_tensors() as (buffer,):
            return buffer.clone()

    @property
    def bytes_sent(self) -> int:
        return int(self.averager.bytes_sent.value)

    @property
    def rejected(self) -> int:
        return int(self.averager.rejected.value)

    def _thread_excepthook(self, args: threading.ExceptHookArgs) -> None:
        # On Ctrl-C the terminal signals the whole process group, p2pd included, so hivemind's threads may fail
        # to reach a daemon that is already gone while we leave: expected then, and not worth a traceback.
        if self.stop_event.is_set() or isinstance(args.exc_value, (FileNotFoundError, ConnectionError)):
            logger.debug("background thread ended during shutdown: %r", args.exc_value)
            return
        threading.__excepthook__(args)

    def close(self) -> None:
        """Leave (the peer has set ``stop_event``). The announcer first: peers stop counting on us. Our ``leave``
        event while the ledger service can still push it out, then the ledger service, which talks through the
        DHT's p2p daemon; the averager and the DHT last, in that order (``node.shutdown``)."""
        if self.announcer is not None:
            self.announcer.stop()
        if self.ledger_service is not None:
            if self.ledger.store.swarm_id is not None:
                self.record("leave", {"reason": "clean exit"})
                time.sleep(min(1.0, self.ledger_service.sync_interval * 2))  # let the leave event go out
            self.ledger_service.stop()
        node.shutdown(self.averager, self.dht)
