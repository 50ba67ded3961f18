"""An in-memory network and a manual clock for ledger simulations (STYLE.md: fake network, fake clock).

Nothing here sleeps or starts a thread: time moves only when a test calls :meth:`FakeClock.advance`, and every
random choice (who syncs with whom, in which order, which calls are lost) comes from one seeded
:class:`random.Random`, so a scenario replays exactly from its seed.

A request travels as ``call(request_bytes) -> response_bytes`` into the remote node's :meth:`LedgerNode.handle`,
exactly what the hivemind transport (``ledger/p2p.py``) does. A lost request (dropped, or between two sides of a
partition) raises :class:`ConnectionError`, like a real transport. ``LedgerNode.sync_with`` turns a failed call into
"no progress" itself; :meth:`FakeNetwork.sync` still catches a ConnectionError that would escape it, and counts it
(``stats["failed syncs"]``), as ``LedgerService`` would log it.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from koinon.identity import Identity
from koinon.ledger.node import LedgerNode
from koinon.ledger.store import LedgerStore

START_MS = 1_700_000_000_000  # 2023-11-14: any fixed instant will do; events carry it in `time`


def identity_from_seed(label: str) -> Identity:
    """A member key derived from ``label``: the same member id in every run, so scenarios replay byte for byte."""
    seed = hashlib.sha256(b"koinon-test-identity/" + label.encode()).digest()
    return Identity(private_key=Ed25519PrivateKey.from_private_bytes(seed), path=Path("unused"))


class FakeClock:
    """Milliseconds since the Unix epoch, moved only by :meth:`advance`. ``now_s`` is the store's clock."""

    def __init__(self, start_ms: int = START_MS) -> None:
        self.ms = start_ms

    def advance(self, ms: int) -> None:
        if ms < 0:
            raise ValueError(f"time does not go backwards (advance by {ms} ms)")
        self.ms += ms

    def now_ms(self) -> int:
        return self.ms

    def now_s(self) -> float:
        return self.ms / 1000


class FakeNetwork:
    """Ledger nodes by member id, reachable through lossy, partitionable in-memory calls."""

    def __init__(self, clock: FakeClock, seed: int, drop: float = 0.0) -> None:
        self.clock = clock
        self.rng = random.Random(seed)
        self.drop = drop
        self.nodes: dict[str, LedgerNode] = {}
        self._side: dict[str, int] = {}  # member → side of the current partition (absent: side 0)
        self.stats: Counter[str] = Counter()

    # --- membership ----------------------------------------------------------------------------------------------
    def add_node(self, identity: Identity, epoch_ms: int) -> LedgerNode:
        """A new node with an empty in-memory store, both driven by this network's clock."""
        store = LedgerStore(":memory:", clock=self.clock.now_s)
        node = LedgerNode(store, identity, self.clock.now_ms, epoch_ms=epoch_ms)
        self.nodes[node.me] = node
        return node

    # --- faults --------------------------------------------------------------------------------------------------
    def partition(self, *sides: Iterable[str]) -> None:
        """Split the network: members on different sides cannot reach each other. Unnamed members form side 0."""
        self._side = {m: i + 1 for i, side in enumerate(sides) for m in side}

    def heal(self) -> None:
        self._side = {}

    def reachable(self, src: str, dst: str) -> bool:
        return self._side.get(src, 0) == self._side.get(dst, 0)

    def caller(self, src: str, dst: str) -> Callable[[bytes], bytes]:
        """The transport from ``src`` to ``dst``: each request may be lost (ConnectionError), never corrupted."""

        def call(request: bytes) -> bytes:
            if not self.reachable(src, dst):
                self.stats["unreachable"] += 1
                raise ConnectionError(f"{dst[-8:]} is on the other side of a partition")
            if self.rng.random() < self.drop:
                self.stats["dropped"] += 1
                raise ConnectionError(f"request to {dst[-8:]} dropped")
            self.stats["delivered"] += 1
            return self.nodes[dst].handle(src, request)

        return call

    # --- driving -------------------------------------------------------------------------------------------------
    def sync(self, src: str, dst: str) -> int:
        """One anti-entropy exchange; a lost call means no (further) progress, as in ``LedgerService``."""
        try:
            return self.nodes[src].sync_with(dst, self.caller(src, dst))
        except ConnectionError:
            self.stats["failed syncs"] += 1
            return 0

    def gossip(self, fanout: int) -> int:
        """Every node, in a random order, pulls from ``fanout`` random others. Returns the events stored."""
        members = list(self.nodes)
        self.rng.shuffle(members)
        added = 0
        for src in members:
            for dst in self.rng.sample([m for m in members if m != src], min(fanout, len(members) - 1)):
                added += self.sync(src, dst)
        return added

    def tick_all(self) -> None:
        """Run every node's consensus step, in a random order."""
        members = list(self.nodes)
        self.rng.shuffle(members)
        for m in members:
            self.nodes[m].tick()

    def step(self, ms: int, fanout: int) -> int:
        """Advance the clock, tick everyone, gossip once."""
        self.clock.advance(ms)
        self.tick_all()
        return self.gossip(fanout)
