"""θ lineage on the ledger (ledger/lineage.py) and the strict audit of it (ledger/audit.py).

Round events are signed by fixed member keys; ledgers that must have final cuts are built with real
``LedgerNode``s on a fake clock (found, rounds, ticks and direct syncs), as tests/unit/test_audit.py does.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import pytest

from koinon.errors import AuditFailure, InvalidEvent
from koinon.identity import Identity
from koinon.ledger.audit import audit
from koinon.ledger.event import Event
from koinon.ledger.export import export_wires
from koinon.ledger.kinds import check_body
from koinon.ledger.lineage import CutHeights, claim_of, cut_heights, new_round_chain, round_chain
from koinon.ledger.node import LedgerNode
from koinon.ledger.store import LedgerStore
from koinon.swarm.rounds import governance_in_force
from tests.sim.fakenet import FakeClock, identity_from_seed

EPOCH_MS = 1000
GENESIS_THETA = hashlib.sha256(b"genesis").digest()


def theta(label: str | int) -> bytes:
    return hashlib.sha256(b"theta/%s" % str(label).encode()).digest()


def state(height: int, t: bytes) -> bytes:
    return hashlib.sha256(height.to_bytes(8, "big") + t).digest()


def round_body(height: int, prev: bytes, new: bytes, contributors, attempt: int | None = None) -> dict:
    return {
        "round": height if attempt is None else attempt,
        "height": height,
        "theta": new,
        "prev_theta": prev,
        "state": state(height, new),
        "participants": sorted(contributors),
        "samples": 64,
        "bytes": 1000,
        "config": b"\x01" * 32,
        "gov": None,
    }


# --- events without a store: the certificate rule read off signed events ------------------------------------------
class Feeds:
    """Signed events of several members of one swarm, each author's feed in order (no store, no cuts)."""

    def __init__(self, labels: list[str], rules: dict | None = None, founders: int | None = None) -> None:
        self.ids: list[Identity] = [identity_from_seed(x) for x in labels]
        self.members = [i.member_id for i in self.ids]
        self.time = 1_700_000_000_000
        body = {
            "name": "lineage",
            "founders": sorted(self.members[: founders or len(self.members)]),
            "training": {},
            "rules": rules or {"epoch_ms": EPOCH_MS},
        }
        self.charter = Event.create(self.ids[0], swarm=b"", seq=1, prev=None, kind="charter", body=body, time_ms=1)
        self.heads: dict[str, tuple[int, bytes]] = {self.members[0]: (1, self.charter.id)}
        self.feeds: dict[str, list[Event]] = {m: [] for m in self.members}

    def sign(self, who: int, height: int, prev: bytes, new: bytes, contributors: list[int], attempt=None) -> Event:
        identity = self.ids[who]
        seq, head = self.heads.get(identity.member_id, (0, None))
        self.time += 1
        body = round_body(height, prev, new, [self.members[c] for c in contributors], attempt)
        e = Event.create(
            identity,
            swarm=self.charter.id,
            seq=seq + 1,
            prev=head,
            kind="round",
            body=body,
            time_ms=self.time,
            parents=[self.charter.id] if head is None and who != 0 else [],
        )
        self.heads[identity.member_id] = (seq + 1, e.id)
        self.feeds[identity.member_id].append(e)
        return e

    def interleaving(self, rng: random.Random) -> list[Event]:
        """All round events in a random order that keeps each author's own order."""
        queues = {m: list(f) for m, f in self.feeds.items() if f}
        out = []
        while queues:
            m = rng.choice(sorted(queues))
            out.append(queues[m].pop(0))
            if not queues[m]:
                del queues[m]
        return out


def cert_keys(chain) -> list[tuple]:
    return [(c.height, c.prev, c.theta, c.state, c.contributors, c.electorate) for c in chain.certs]


def test_claim_of_reads_a_round_event_and_refuses_other_kinds() -> None:
    f = Feeds(["a", "b", "c"])
    e = f.sign(1, 1, GENESIS_THETA, theta(1), [0, 1, 2], attempt=7)
    claim = claim_of(e)
    assert (claim.author, claim.height, claim.prev, claim.theta) == (f.members[1], 1, GENESIS_THETA, theta(1))
    assert claim.state == state(1, theta(1)) and claim.contributors == tuple(sorted(f.members))
    with pytest.raises(ValueError, match="not a round event"):
        claim_of(f.charter)


def test_the_round_body_is_canonical() -> None:
    f = Feeds(["a", "b", "c"])
    for bad in ({"height": 0}, {"participants": sorted(f.members, reverse=True)}, {"participants": [f.members[0]] * 2}):
        body = round_body(1, GENESIS_THETA, theta(1), f.members) | bad
        with pytest.raises(InvalidEvent, match="round body"):
            check_body("round", body)
    check_body("round", round_body(1, GENESIS_THETA, theta(1), f.members))


def test_the_charter_sets_the_first_electorate_and_k() -> None:
    f = Feeds(["a", "b", "c", "d"], rules={"epoch_ms": EPOCH_MS, "min_contributors": 2}, founders=3)
    chain = new_round_chain(f.charter)
    assert chain.founders == frozenset(f.members[:3]) and chain.k == 2
    assert new_round_chain(Feeds(["a"], rules={"min_contributors": "many"}).charter).k == 3  # a bad rule: default


def test_a_chain_of_agreeing_rounds_is_certified_height_by_height() -> None:
    f = Feeds(["a", "b", "c"])
    prev = GENESIS_THETA
    for h in range(1, 4):
        for who in range(3):
            f.sign(who, h, prev, theta(h), [0, 1, 2])
        prev = theta(h)
    chain = round_chain([f.charter, *f.interleaving(random.Random(0))])
    assert chain.height == 3 and [c.theta for c in chain.certs] == [theta(1), theta(2), theta(3)]
    assert chain.electorate(1) == frozenset(f.members) and chain.electorate(2) == frozenset(f.members)


def test_a_minority_of_the_electorate_certifies_nothing() -> None:
    f = Feeds(["a", "b", "c", "d", "e", "x", "y", "z"], founders=5)  # E_1 = a…e; x, y, z are not founders
    # 2 of 5 founders and 3 outsiders sign θ_bad with 5 contributors (k = 3 holds): 2 of 5 is no majority
    for who in (0, 1, 5, 6, 7):
        f.sign(who, 1, GENESIS_THETA, theta("bad"), [0, 1, 5, 6, 7])
    chain = round_chain([f.charter, *f.interleaving(random.Random(1))])
    assert chain.height == 0 and not chain.produced(theta("bad"))
    # a and b's second claims in the same attempt never count: the other three founders alone certify θ_1
    for who in (0, 1, 2, 3, 4):
        f.sign(who, 1, GENESIS_THETA, theta(1), [0, 1, 2, 3, 4])
    for seed in range(5):
        chain = round_chain([f.charter, *f.interleaving(random.Random(seed))])
        assert chain.height == 1 and chain.head.theta == theta(1)
        assert chain.head.signers == frozenset(f.members[2:5]) and not chain.produced(theta("bad"))
    # at height 2 the electorate is height 1's contributors: two of them (a minority of 5) certify nothing, in any
    # number of attempts, with any number of outsiders signing along
    for attempt in (2, 3):
        for who in (0, 1, 5, 6, 7):
            f.sign(who, 2, theta(1), theta("two"), [0, 1, 5, 6, 7], attempt=attempt)
    for seed in range(5):
        chain = round_chain([f.charter, *f.interleaving(random.Random(seed))])
        assert chain.height == 1 and not chain.certified(2, theta("two"))


def test_a_claim_in_a_new_attempt_counts() -> None:
    f = Feeds(["a", "b", "c", "d", "e"])
    # attempt 1: c and d sign θ_1 (2 of 5: no majority, below k = 3); a signed another θ in attempt 1
    f.sign(0, 1, GENESIS_THETA, theta("split"), [0, 1, 2, 3, 4], attempt=1)
    for who in (2, 3):
        f.sign(who, 1, GENESIS_THETA, theta(1), [0, 1, 2, 3, 4], attempt=1)
    f.sign(0, 1, GENESIS_THETA, theta(1), [0, 1, 2, 3, 4], attempt=1)  # a's second claim in attempt 1: no vote
    assert round_chain([f.charter, *f.interleaving(random.Random(0))]).height == 0
    # attempt 2 (after a revert): a's claim is a new vote, and with c and d it makes 3 of 5
    f.sign(0, 1, GENESIS_THETA, theta(1), [0, 1, 2, 3, 4], attempt=2)
    for seed in range(5):
        chain = round_chain([f.charter, *f.interleaving(random.Random(seed))])
        assert chain.height == 1 and chain.head.theta == theta(1)
        assert chain.head.signers == frozenset(f.members[i] for i in (0, 2, 3))


def test_a_later_attempt_that_also_passes_is_a_fork_not_the_certificate() -> None:
    f = Feeds(["a", "b", "c", "d", "e"])
    first = [f.sign(who, 1, GENESIS_THETA, theta(1), [0, 1, 2, 3, 4], attempt=1) for who in (0, 1, 2)]
    # c, d and e sign another θ_1 in attempt 2 (a withheld vote, a revert): it passes too, after θ_1 was certified
    late = [f.sign(who, 1, GENESIS_THETA, theta("1'"), [0, 1, 2, 3, 4], attempt=2) for who in (2, 3, 4)]
    chain = round_chain([f.charter, *first])
    cert = chain.certificate(1)
    assert cert.theta == theta(1) and chain.certified(1, theta(1)) and not chain.certified(1, theta("1'"))
    for e in late:
        assert chain.add(claim_of(e)) == []  # a late certificate completes nothing
    assert chain.certificate(1) == cert and chain.height == 1
    assert chain.certified(1, theta("1'")) and not chain.produced(theta("1'")) and chain.produced(theta(1))
    assert not chain.certified(1, theta("nowhere")) and not chain.certified(2, theta("1'"))
    # in the other order the other key comes first: "first" is the order's, which is why the final log decides
    other = round_chain([f.charter, *late, *first])
    assert other.certificate(1).theta == theta("1'") and other.certified(1, theta(1))
    assert not other.produced(theta(1))
    # height 2 may only build on the canonical θ_1: claims from the fork certify nothing on this chain
    for who in (0, 1, 2):
        chain.add(claim_of(f.sign(who, 2, theta("1'"), theta(2), [0, 1, 2, 3, 4], attempt=3)))
    assert chain.height == 1


def test_every_order_that_keeps_each_authors_order_gives_the_same_certificates() -> None:
    f = Feeds(["a", "b", "c", "d", "e"])
    every = [0, 1, 2, 3, 4]
    prev = GENESIS_THETA
    for h in range(1, 6):
        if h % 2 == 0:  # a split first: two members try θ_h' with a group below k, then everyone agrees on θ_h
            for who in (3, 4):
                f.sign(who, h, prev, theta(f"{h}'"), [3, 4], attempt=10 * h)
            group = [0, 1, 2]
        else:
            group = every
        for who in group:
            f.sign(who, h, prev, theta(h), group, attempt=10 * h + 1)
        prev = theta(h)
    f.sign(4, 7, theta(6), theta(7), every)  # a claim above the head: certifies nothing
    reference = round_chain([f.charter, *(e for m in f.members for e in f.feeds[m])])
    assert reference.height == 5 and [c.theta for c in reference.certs] == [theta(h) for h in range(1, 6)]
    for seed in range(20):
        chain = round_chain([f.charter, *f.interleaving(random.Random(seed))])
        assert cert_keys(chain) == cert_keys(reference), seed


def test_cut_heights_of_a_small_final_log() -> None:
    f = Feeds(["a", "b", "c"])
    ev = [f.charter]
    # k = 3 signers are needed (a majority of the electorate is not enough alone: rounds.RoundChain._passing)
    ev += [f.sign(w, 1, GENESIS_THETA, theta(1), [0, 1, 2]) for w in (0, 1)]  # 1, 2: two of three signers
    ev += [f.sign(2, 1, GENESIS_THETA, theta(1), [0, 1, 2])]  # 3: the third: height 1 at event 3
    ev += [f.sign(w, 2, theta(1), theta(2), [0, 1, 2]) for w in (0, 1, 2)]  # 4, 5, 6: height 2 at event 6
    ev += [f.sign(0, 3, theta(2), theta(3), [0, 1, 2])]  # 7: one vote of three
    sizes = [1, 2, 3, 5, 6, 8]  # final cut i ends after event sizes[i] − 1
    assert cut_heights(ev, sizes) == [0, 0, 0, 1, 1, 2]

    tracker = CutHeights(f.charter)
    by_id = {e.id: e for e in ev}
    ids = [e.id for e in ev]
    assert tracker.follow(ids[:3], sizes[:2], by_id.get) == [0, 0] and tracker.position == 2
    assert tracker.follow(ids, sizes, by_id.get) == [0, 0, 0, 1, 1, 2] and tracker.height == 2
    assert tracker.follow(ids, sizes, by_id.get) == [0, 0, 0, 1, 1, 2] and tracker.position == 8  # nothing new
    with pytest.raises(ValueError, match="ends at 7"):
        tracker.follow(ids, [*sizes, 7], by_id.get)  # a cut that ends before what was read
    with pytest.raises(KeyError):
        CutHeights(f.charter).follow(ids, sizes, {}.get)
    # governance after cut i applies GOV_DELAY heights after the height its final log certifies
    assert governance_in_force(tracker.heights, 11, delay=10) == (4, True)  # cut 5 (height 2) applies from 12 on
    assert governance_in_force(tracker.heights, 12, delay=10) == (5, False)  # not settled: a later cut may certify more
    assert governance_in_force(tracker.heights, 4, delay=3) == (4, True)  # the rule for any delay
    assert governance_in_force(tracker.heights, 5, delay=3) == (5, False)


# --- real ledgers with final cuts: the strict audit -----------------------------------------------------------------
@dataclass
class Ledger:
    nodes: list[LedgerNode]
    clock: FakeClock

    @classmethod
    def build(cls, size: int = 3) -> Ledger:
        clock = FakeClock()
        nodes = [
            LedgerNode(
                LedgerStore(":memory:", clock=clock.now_s), identity_from_seed(f"m{i}"), clock.now_ms, epoch_ms=EPOCH_MS
            )
            for i in range(size)
        ]
        nodes[0].found("lineage", {"model": "tiny"}, {"epoch_ms": EPOCH_MS}, founders=[n.me for n in nodes])
        ledger = cls(nodes, clock)
        ledger.sync()
        return ledger

    @property
    def members(self) -> list[str]:
        return sorted(n.me for n in self.nodes)

    def sync(self) -> None:
        for x in self.nodes:
            for y in self.nodes:
                if x is not y:
                    x.sync_with(y.me, lambda request, x=x, y=y: y.handle(x.me, request))

    def sign(self, who: int, height: int, prev: bytes, new: bytes, attempt: int | None = None) -> Event:
        return self.nodes[who].append_own("round", round_body(height, prev, new, self.members, attempt))

    def settle(self) -> None:
        """Ticks and syncs until what was signed is final."""
        for _ in range(12):
            self.clock.advance(EPOCH_MS // 4)
            for n in self.nodes:
                n.tick()
            self.sync()

    def rounds(self, heights: int) -> None:
        prev = GENESIS_THETA
        for h in range(1, heights + 1):
            for who in range(len(self.nodes)):
                self.sign(who, h, prev, theta(h))
            prev = theta(h)
            self.settle()


def test_a_clean_chain_of_certified_heights_audits_ok() -> None:
    ledger = Ledger.build()
    ledger.rounds(4)
    node = ledger.nodes[0]
    report = audit(export_wires(node.store))
    assert report.height == 4 and report.head["theta"] == theta(4).hex() and report.min_contributors == 3
    assert report.head["contributors"] == ledger.members and len(report.head["signers"]) >= 2
    assert report.uncertified == 0 and report.lineage_breaks == []
    assert sum(r["final"] for r in report.rounds) == 12 and all(r["certified"] for r in report.rounds if r["final"])
    # the heights through each final cut: what the running peer gets incrementally from its chain
    assert report.cut_heights == CutHeights(node.store.charter()).follow_chain(node.chain)
    assert report.cut_heights == sorted(report.cut_heights) and report.cut_heights[-1] == 4
    text = report.summary()
    assert text.startswith("ledger audit: OK") and "θ lineage     unbroken" in text
    assert f"height 4 certified: θ {theta(4).hex()[:16]}" in text and "12 final round events" in text
    # the same chain from the whole store (insertion order)
    assert [c.theta for c in round_chain(node.store).certs] == [theta(h) for h in range(1, 5)]


def test_a_final_round_from_an_uncertified_theta_fails_the_audit_naming_it() -> None:
    ledger = Ledger.build()
    ledger.rounds(2)
    ledger.sign(0, 3, theta(2), theta(3))
    ledger.sign(1, 3, theta(2), theta(3))
    bad = ledger.sign(2, 3, theta("nowhere"), theta(3))  # height 3 from a θ that no certificate produced
    wires = export_wires(ledger.nodes[0].store)
    assert audit(wires).rounds  # not final yet: a pending event does not break the lineage
    ledger.settle()
    wires = export_wires(ledger.nodes[0].store)
    index = next(i for i, w in enumerate(wires) if Event.from_wire(w).id == bad.id)
    with pytest.raises(AuditFailure) as caught:
        audit(wires)
    message = str(caught.value)
    assert caught.value.index == index and message.startswith(f"event #{index + 1} (…{bad.author[-8:]} seq ")
    assert f"θ lineage break: round event {bad.id.hex()[:16]} (final position {index})" in message
    assert f"makes height 3 from θ {theta('nowhere').hex()[:16]}…" in message
    assert f"the θ certified at height 2 is {theta(2).hex()[:16]}…" in message
    assert [b["id"] for b in caught.value.lineage_breaks] == [bad.id.hex()]


def test_a_final_round_above_the_certified_head_fails_the_audit() -> None:
    ledger = Ledger.build()
    ledger.rounds(1)
    bad = ledger.sign(1, 3, theta(2), theta(3))  # height 2 was never certified
    ledger.settle()
    with pytest.raises(AuditFailure, match="height 2 is not certified by the final events before it") as caught:
        audit(export_wires(ledger.nodes[0].store))
    assert bad.id.hex()[:16] in str(caught.value)


def test_an_uncertified_attempt_is_allowed_and_counted() -> None:
    ledger = Ledger.build()
    ledger.rounds(1)
    ledger.sign(2, 2, theta(1), theta("split"), attempt=5)  # a group that split: nobody else signed θ_split
    ledger.sign(0, 2, theta(1), theta(2), attempt=6)
    ledger.sign(1, 2, theta(1), theta(2), attempt=6)
    ledger.settle()
    report = audit(export_wires(ledger.nodes[0].store))
    assert report.height == 1 and report.uncertified == 3  # 2 signers of 3: below k = 3
    ledger.sign(2, 2, theta(1), theta(2), attempt=6)  # the split member's claim in its next attempt counts
    ledger.settle()
    report = audit(export_wires(ledger.nodes[0].store))
    assert report.height == 2 and report.head["theta"] == theta(2).hex() and report.uncertified == 1
    assert len(report.head["signers"]) == 3
    assert "1 agree with no certificate" in report.summary()
