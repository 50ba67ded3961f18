"""Anti-entropy between two nodes when feeds cite each other: a newcomer must get everything, batch by batch."""

from __future__ import annotations

from koinon.ledger.node import PULL_LIMIT, LedgerNode
from koinon.ledger.store import LedgerStore
from tests.sim.fakenet import FakeClock, identity_from_seed

ROUND = {
    "round": 1,
    "height": 1,
    "theta": b"\1" * 32,
    "prev_theta": b"\0" * 32,
    "state": b"\3" * 32,
    "participants": [],
    "samples": 1,
    "bytes": 1,
    "config": b"\2" * 32,
    "gov": None,
}


def node(label: str, clock: FakeClock) -> LedgerNode:
    return LedgerNode(LedgerStore(":memory:", clock=clock.now_s), identity_from_seed(label), clock.now_ms)


def link(a: LedgerNode, b: LedgerNode) -> int:
    return a.sync_with(b.me, lambda request: b.handle(a.me, request))


def test_a_newcomer_pulls_interleaved_feeds_in_bounded_batches():
    clock = FakeClock()
    hub = node("hub", clock)
    hub.found("replication", {}, {})
    writers = [node(f"w{i}", clock) for i in range(3)]
    for _ in range(2 * PULL_LIMIT // 3):  # every event cites the others' heads, so feeds interleave causally
        for w in writers:
            link(w, hub)
            w.append_own("round", ROUND)
            clock.advance(1)
            link(hub, w)
    total = hub.store.count()
    assert total > PULL_LIMIT + 100  # more than one batch, so the order across batches matters
    newcomer = node("newcomer", clock)
    batches = 0
    while link(newcomer, hub):
        batches += 1
    assert newcomer.store.count() == total
    assert batches >= 1
    assert not newcomer.reject_reasons  # nothing honest was refused on the way
