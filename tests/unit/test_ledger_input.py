"""Bad input never gets into the ledger (src/koinon/ledger/{event,store,node}.py).

Every check the store's docstring lists is exercised with an input that fails exactly that check: the store raises
InvalidEvent with the reason and is left as it was (same count, same heads, same swarm). The same holds on the
network path: a peer serving garbage gets its bad events counted per peer and, past MAX_REJECTS, is ignored until
REJECT_WINDOW_MS has passed on the (fake) clock. Property tests (Hypothesis) feed arbitrary bytes to the decoders and
flip bytes of a valid event. Adversaries follow hivemind's habit: "mallory" signs with the wrong key.
"""

from __future__ import annotations

import hashlib
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from koinon.errors import InvalidEvent
from koinon.ledger import cbor
from koinon.ledger.cuts import leader
from koinon.ledger.event import MAX_EVENT_BYTES, MAX_FUTURE_MS, Event
from koinon.ledger.merkle import leaf_hash
from koinon.ledger.node import MAX_REJECTS, REJECT_WINDOW_MS, LedgerNode
from koinon.ledger.store import LedgerStore
from tests.sim.fakenet import FakeClock, identity_from_seed

ALICE = identity_from_seed("alice")  # founder
BOB = identity_from_seed("bob")
MALLORY = identity_from_seed("mallory")
PROPERTY = settings(
    max_examples=200, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def h(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def commit_body(n: int = 1) -> dict:
    return {
        "round": n,
        "theta": h("theta"),
        "config": h("config"),
        "data": [h("data")],
        "group": [ALICE.member_id],
        "shards": h("shards"),
        "seed": h("seed"),
        "step0": 0,
        "steps": 8,
        "samples": 64,
        "trace": [h("p0"), h("m0")],
        "delta": h(f"d{n}"),
    }


def charter(t: int, founder=ALICE) -> Event:
    body = {"name": "input", "founders": [founder.member_id], "training": {"lr": 1}, "rules": {"epoch_ms": 1000}}
    return Event.create(founder, swarm=b"", seq=1, prev=None, kind="charter", body=body, time_ms=t)


def signed(identity, *, swarm, seq, prev, kind, body, time, parents=(), author=None) -> Event:
    """An event signed by ``identity`` without Event.create's structure check (to build malformed ones), and
    optionally claiming another ``author``."""
    fields = (swarm, author or identity.member_id, seq, prev, tuple(parents), kind, body, time)
    return Event(*fields, sig=identity.sign(Event(*fields).signing_bytes))


class Ledger:
    """A store holding alice's charter and bob's join, on a fake clock."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.store = LedgerStore(":memory:", clock=self.clock.now_s)
        self.charter = charter(self.clock.now_ms())
        self.store.append(self.charter)
        self.swarm = self.charter.id
        self.bob_join = Event.create(
            BOB,
            swarm=self.swarm,
            seq=1,
            prev=None,
            kind="join",
            body={"maddrs": []},
            time_ms=self.clock.now_ms(),
            parents=[self.swarm],
        )
        self.store.append(self.bob_join)

    def event(self, identity=ALICE, **fields) -> Event:
        """Alice's seq 2 commit (valid here) with ``fields`` replaced."""
        base = {
            "swarm": self.swarm,
            "seq": 2,
            "prev": self.swarm,
            "kind": "commit",
            "body": commit_body(),
            "time_ms": self.clock.now_ms(),
            "parents": [self.bob_join.id],
        }
        return Event.create(identity, **{**base, **fields})

    def wire_map(self, event: Event | None = None) -> dict:
        return cbor.decode((event or self.event()).wire)


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


def snapshot(store: LedgerStore) -> tuple:
    return store.count(), store.heads(), store.swarm_id, store.banned()


def assert_refused(store: LedgerStore, item: bytes | Event, reason: str | None) -> None:
    """``item`` raises InvalidEvent matching ``reason`` and leaves the store exactly as it was."""
    before = snapshot(store)
    with pytest.raises(InvalidEvent, match=reason):
        store.append_wire(item) if isinstance(item, bytes) else store.append(item)
    assert snapshot(store) == before
    if isinstance(item, Event):
        assert not store.has(item.id)


def canonical_map_with_order(fields: list[tuple[str, object]]) -> bytes:
    """A CBOR map with its keys in the given (possibly non-canonical) order."""
    assert len(fields) < 24
    return bytes([0xA0 | len(fields)]) + b"".join(cbor.encode(k) + cbor.encode(v) for k, v in fields)


# --- malformed bytes ------------------------------------------------------------------------------------------------

MALFORMED = {
    "empty": (lambda lg: b"", "not canonical CBOR"),
    "truncated": (lambda lg: lg.event().wire[:-1], "not canonical CBOR"),
    "trailing byte": (lambda lg: lg.event().wire + b"\x00", "trailing bytes"),
    "non-minimal integer": (lambda lg: lg.event().wire.replace(b"cseq\x02", b"cseq\x18\x02"), "shortest form"),
    "keys out of order": (lambda lg: canonical_map_with_order(sorted(lg.wire_map().items())), "canonical order"),
    "float time": (lambda lg: lg.event().wire.replace(b"dtime\x1b", b"dtime\xfb"), "float"),
    "tagged value": (lambda lg: lg.event().wire.replace(b"eswarmX ", b"eswarm\xc2X "), "tags"),
    "indefinite array": (lambda lg: lg.event().wire.replace(b"gparents\x81", b"gparents\x9f"), "indefinite"),
    "extra field": (lambda lg: cbor.encode({**lg.wire_map(), "extra": 1}), "exactly the fields"),
    "missing field": (lambda lg: cbor.encode({k: v for k, v in lg.wire_map().items() if k != "time"}), "exactly"),
    "not a map": (lambda lg: cbor.encode([1, 2, 3]), "exactly the fields"),
    "oversized": (
        lambda lg: (
            signed(
                ALICE,
                swarm=lg.swarm,
                seq=2,
                prev=lg.swarm,
                kind="equivocation",
                body={"a": b"x" * MAX_EVENT_BYTES, "b": b""},
                time=lg.clock.now_ms(),
            ).wire
        ),
        "exceeds",
    ),
    "author not a member id": (lambda lg: cbor.encode({**lg.wire_map(), "author": "alice"}), "not a member id"),
    "seq 0": (lambda lg: cbor.encode({**lg.wire_map(), "seq": 0}), "seq must be"),
    "short prev": (lambda lg: cbor.encode({**lg.wire_map(), "prev": b"\x01" * 31}), "prev must be"),
    "unsorted parents": (
        lambda lg: cbor.encode({**lg.wire_map(), "parents": sorted([h("a"), h("b")])[::-1]}),
        "sorted",
    ),
    "short signature": (lambda lg: cbor.encode({**lg.wire_map(), "sig": b"\x00" * 63}), "64-byte"),
    "charter with a swarm id": (lambda lg: cbor.encode({**lg.wire_map(lg.charter), "swarm": h("s")}), "only the"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_bytes_are_refused(ledger, case):
    make, reason = MALFORMED[case]
    data = make(ledger)
    with pytest.raises(InvalidEvent, match=reason):
        Event.from_wire(data)
    assert_refused(ledger.store, data, reason)


def test_the_mutations_above_start_from_a_valid_event(ledger):
    """The byte surgery of MALFORMED finds what it replaces (else a case would test nothing)."""
    wire = ledger.event().wire
    for needle in (b"cseq\x02", b"dtime\x1b", b"eswarmX ", b"gparents\x81"):
        assert wire.count(needle) == 1
    ledger.store.append_wire(wire)


# --- well-formed events that fail a ledger rule -----------------------------------------------------------------------

REFUSED = {
    "mallory signs as alice": (
        lambda lg: signed(
            MALLORY,
            author=ALICE.member_id,
            swarm=lg.swarm,
            seq=2,
            prev=lg.swarm,
            kind="commit",
            body=commit_body(),
            time=lg.clock.now_ms(),
        ),
        "bad signature",
    ),
    "signature of another event": (
        lambda lg: Event(
            *[getattr(lg.event(), f) for f in ("swarm", "author", "seq", "prev", "parents", "kind")],
            commit_body(2),
            lg.clock.now_ms(),
            lg.event().sig,
        ),
        "bad signature",
    ),
    "wrong swarm id": (lambda lg: lg.event(swarm=h("another swarm")), "another swarm"),
    "broken prev link": (lambda lg: lg.event(prev=h("not alice's head")), "prev does not link"),
    "seq gap": (lambda lg: lg.event(seq=3), "seq gap"),
    "unknown parent": (lambda lg: lg.event(parents=[h("ghost")]), "unknown parent"),
    "unknown kind": (lambda lg: lg.event(kind="frobnicate", body={}), "unknown event kind"),
    "body field invalid": (lambda lg: lg.event(body={**commit_body(), "theta": b"\x00" * 31}), "'theta'"),
    "body field missing": (lambda lg: lg.event(kind="join", body={}), "missing \\['maddrs'\\]"),
    "body field extra": (lambda lg: lg.event(kind="join", body={"maddrs": [], "port": 1}), "unexpected \\['port'\\]"),
    "time > 5 minutes ahead": (lambda lg: lg.event(time_ms=lg.clock.now_ms() + MAX_FUTURE_MS + 1), "5 minutes"),
    "equivocation proof of junk": (
        lambda lg: lg.event(kind="equivocation", body={"a": b"junk", "b": b"junk"}),
        "proof",
    ),
    "equivocation proof of two honest events": (
        lambda lg: lg.event(kind="equivocation", body={"a": lg.charter.wire, "b": lg.bob_join.wire}),
        "proof",
    ),
    "second charter (another founder)": (lambda lg: charter(lg.clock.now_ms(), founder=BOB), "already has a charter"),
    "second charter (same founder)": (lambda lg: charter(lg.clock.now_ms() + 1), "already has a charter"),
}


@pytest.mark.parametrize("path", ["event", "wire"])
@pytest.mark.parametrize("case", REFUSED)
def test_events_breaking_a_rule_are_refused(ledger, case, path):
    make, reason = REFUSED[case]
    event = make(ledger)
    assert_refused(ledger.store, event if path == "event" else event.wire, reason)


def test_event_before_any_charter_is_refused():
    clock = FakeClock()
    store = LedgerStore(":memory:", clock=clock.now_s)
    first = charter(clock.now_ms())
    join = Event.create(BOB, swarm=first.id, seq=1, prev=None, kind="join", body={"maddrs": []}, time_ms=clock.now_ms())
    assert_refused(store, join, "no charter yet")
    assert_refused(store, join.wire, "no charter yet")
    assert store.swarm_id is None
    store.append(first)
    store.append(join)


def test_five_minutes_ahead_is_still_accepted(ledger):
    assert ledger.store.append(ledger.event(time_ms=ledger.clock.now_ms() + MAX_FUTURE_MS))


def test_banned_author_is_refused(ledger):
    a, b = ledger.event(), ledger.event(body=commit_body(2))
    ledger.store.append(a)
    with pytest.raises(InvalidEvent, match="two different events"):
        ledger.store.append(b)
    assert ALICE.member_id in ledger.store.banned()
    assert_refused(ledger.store, ledger.event(seq=3, prev=a.id), "banned")


def oversized_charter() -> tuple[LedgerStore, Event]:
    clock = FakeClock()
    body = {"name": "big", "founders": [ALICE.member_id], "training": {"blob": b"x" * MAX_EVENT_BYTES}, "rules": {}}
    with pytest.raises(InvalidEvent, match="cap"):  # Event.create refuses to build it ...
        Event.create(ALICE, swarm=b"", seq=1, prev=None, kind="charter", body=body, time_ms=clock.now_ms())
    unsigned = Event(b"", ALICE.member_id, 1, None, (), "charter", body, clock.now_ms())  # ... so forge one by hand
    event = Event(
        b"", ALICE.member_id, 1, None, (), "charter", body, clock.now_ms(), ALICE.sign(unsigned.signing_bytes)
    )
    return LedgerStore(":memory:", clock=clock.now_s), event


def negative_time() -> tuple[LedgerStore, Event]:
    lg = Ledger()
    return lg.store, signed(ALICE, swarm=lg.swarm, seq=2, prev=lg.swarm, kind="commit", body=commit_body(), time=-1)


BYPASSING_APPEND = {"oversized charter": oversized_charter, "negative time": negative_time}


@pytest.mark.parametrize("case", BYPASSING_APPEND)
def test_append_checks_what_append_wire_checks(case):
    store, event = BYPASSING_APPEND[case]()
    with pytest.raises(InvalidEvent):
        Event.from_wire(event.wire)
    assert_refused(store, event, None)


# --- one event, one leaf ------------------------------------------------------------------------------------------

# Ed25519 signing with a chosen nonce, from RFC 8032 §6 (the reference code). A signer may pick any nonce: every
# such signature verifies, and only the signer can make them (the nonce needs the private key).
_P = 2**255 - 19
_Q = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P


def _add(p1, p2):
    a, b = (p1[1] - p1[0]) * (p2[1] - p2[0]) % _P, (p1[1] + p1[0]) * (p2[1] + p2[0]) % _P
    c, d = 2 * p1[3] * p2[3] * _D % _P, 2 * p1[2] * p2[2] % _P
    e, f, g, hh = b - a, d - c, d + c, b + a
    return e * f, g * hh, f * g, e * hh


def _mul(s, point):
    acc = (0, 1, 1, 0)
    while s:
        if s & 1:
            acc = _add(acc, point)
        point, s = _add(point, point), s >> 1
    return acc


def _compress(point) -> bytes:
    zinv = pow(point[2], _P - 2, _P)
    x, y = point[0] * zinv % _P, point[1] * zinv % _P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def _base():
    y = 4 * pow(5, _P - 2, _P) % _P
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P)
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * pow(2, (_P - 1) // 4, _P) % _P
    x = _P - x if x & 1 else x
    return x, y, 1, x * y % _P


def ed25519_sign(seed: bytes, message: bytes, nonce_salt: bytes = b"") -> bytes:
    """RFC 8032 signing; with ``nonce_salt`` the nonce is another one than the standard's (still a valid signature)."""
    digest = hashlib.sha512(seed).digest()
    a = (int.from_bytes(digest[:32], "little") & ((1 << 254) - 8)) | 1 << 254
    public = _compress(_mul(a, _base()))
    r = int.from_bytes(hashlib.sha512(nonce_salt + digest[32:] + message).digest(), "little") % _Q
    big_r = _compress(_mul(r, _base()))
    k = int.from_bytes(hashlib.sha512(big_r + public + message).digest(), "little") % _Q
    return big_r + ((r + k * a) % _Q).to_bytes(32, "little")


def _seed(label: str) -> bytes:
    return hashlib.sha256(b"koinon-test-identity/" + label.encode()).digest()  # as fakenet.identity_from_seed


def test_one_event_id_has_one_leaf(ledger):
    """A second valid signature of the same message is a different event (its id hashes the wire), so one id never
    stands for two log leaves; a store holding one version sees the other as an equivocation."""
    event = ledger.event()
    assert ed25519_sign(_seed("alice"), event.signing_bytes) == event.sig  # the reference code is right
    other_sig = ed25519_sign(_seed("alice"), event.signing_bytes, nonce_salt=b"another nonce")
    twin = Event.from_wire(cbor.encode({**cbor.decode(event.wire), "sig": other_sig}))
    assert twin.id != event.id
    other = Ledger()
    assert ledger.store.append(event) and other.store.append(twin)  # both verify: each store takes its version
    assert leaf_hash(ledger.store.get(event.id).wire) != leaf_hash(other.store.get(twin.id).wire)
    with pytest.raises(InvalidEvent, match="two different events"):
        ledger.store.append(twin)


# --- an append that fails half-way ------------------------------------------------------------------------------------


class FailingConnection:
    """Wraps the store's SQLite connection; the first statement starting with ``fail_on`` raises like a full disk."""

    def __init__(self, db: sqlite3.Connection, fail_on: str, error: str = "database or disk is full") -> None:
        self.db, self.fail_on, self.error = db, fail_on, error

    def execute(self, sql: str, *args):
        if self.fail_on and sql.lstrip().upper().startswith(self.fail_on):
            self.fail_on = ""
            raise sqlite3.OperationalError(self.error)
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self.db, name)


@pytest.mark.parametrize("fail_on", ["INSERT INTO EVENTS", "COMMIT"])
def test_failed_append_leaves_the_store_unchanged(ledger, fail_on):
    event = ledger.event()
    before = snapshot(ledger.store)
    real, ledger.store._db = ledger.store._db, FailingConnection(ledger.store._db, fail_on)
    with pytest.raises(sqlite3.OperationalError, match="disk is full"):
        ledger.store.append(event)
    assert snapshot(ledger.store) == before and not ledger.store.has(event.id)
    ledger.store._db = real
    assert ledger.store.append(event)  # the store still works once the disk has room again
    assert ledger.store.heads()[ALICE.member_id] == (2, event.id)


def test_failed_charter_append_leaves_no_swarm():
    clock = FakeClock()
    store = LedgerStore(":memory:", clock=clock.now_s)
    first = charter(clock.now_ms())
    real, store._db = store._db, FailingConnection(store._db, "INSERT INTO META")
    with pytest.raises(sqlite3.OperationalError):
        store.append(first)
    assert (store.count(), store.heads(), store.swarm_id) == (0, {}, None)
    store._db = real
    assert store.append(first) and store.swarm_id == first.id


def really_full(tmp_path) -> tuple[LedgerStore, Event]:
    """A store on disk capped at its current size (SQLite's own SQLITE_FULL), and an event that needs a new page."""
    clock = FakeClock()
    store = LedgerStore(tmp_path / "ledger.sqlite", clock=clock.now_s)
    first = charter(clock.now_ms())
    store.append(first)
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")
    participants = sorted(identity_from_seed(f"m{i}").member_id for i in range(200))
    body = {
        "round": 1,
        "height": 1,
        "theta": h("t"),
        "prev_theta": h("p"),
        "state": h("s"),
        "samples": 1,
        "bytes": 1,
        "config": h("c"),
        "gov": None,
        "participants": participants,
    }
    return store, Event.create(
        ALICE, swarm=first.id, seq=2, prev=first.id, kind="round", body=body, time_ms=clock.now_ms()
    )


def test_append_on_a_really_full_database_leaves_it_unchanged(tmp_path):
    store, big = really_full(tmp_path)
    before = snapshot(store)
    with pytest.raises(sqlite3.OperationalError):
        store.append(big)
    assert snapshot(store) == before
    store.close()
    assert snapshot(LedgerStore(tmp_path / "ledger.sqlite")) == before


@pytest.mark.parametrize("fault", ["begin fails: database is locked", "real SQLITE_FULL"])
def test_failed_append_reports_the_real_error(tmp_path, fault):
    if fault.startswith("begin"):
        lg = Ledger()
        store, event, expected = lg.store, lg.event(), "locked"
        store._db = FailingConnection(store._db, "BEGIN", error="database is locked")
    else:
        (store, event), expected = really_full(tmp_path), "full"
    with pytest.raises(sqlite3.OperationalError, match=expected):
        store.append(event)


# --- the network path ---------------------------------------------------------------------------------------------


class Peers:
    """Alice's node (founded) and bob's node (holding alice's charter), on one fake clock."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.alice = self.node(ALICE)
        self.alice.found("input", {}, {})
        self.bob = self.node(BOB)
        assert self.bob.sync_with(ALICE.member_id, self.honest()) == 1

    def node(self, identity) -> LedgerNode:
        return LedgerNode(LedgerStore(":memory:", clock=self.clock.now_s), identity, self.clock.now_ms, epoch_ms=1000)

    def honest(self):
        return lambda request: self.alice.handle(BOB.member_id, request)

    def serving(self, events: list) -> callable:
        """Mallory's server: alice's real heads, and ``events`` for every pull."""

        def call(request: bytes) -> bytes:
            if cbor.decode(request)["op"] == "heads":
                return cbor.encode({"swarm": self.alice.store.swarm_id, "heads": {ALICE.member_id: [9, h("h")]}})
            return cbor.encode({"events": events})

        return call


@pytest.fixture
def peers() -> Peers:
    return Peers()


def rejected(node: LedgerNode, remote: str) -> int:
    assert sum(node.reject_reasons[remote].values()) == len(node.rejects[remote])
    return len(node.rejects[remote])


GARBAGE_REPLIES = {
    "not CBOR": lambda request: b"\xff\xfe garbage",
    "empty": lambda request: b"",
    "a list": lambda request: cbor.encode([1, 2]),
    "heads not a map": lambda request: cbor.encode({"heads": [1]}),
    "malformed head": lambda request: cbor.encode({"heads": {ALICE.member_id: "nine"}}),
    "pull reply not CBOR": lambda request: (
        cbor.encode({"heads": {ALICE.member_id: [9, b""]}}) if b"heads" in request else b"\x1f"
    ),
    "pull reply without events": lambda request: (
        cbor.encode({"heads": {ALICE.member_id: [9, b""]}}) if b"heads" in request else cbor.encode({"events": 3})
    ),
}


@pytest.mark.parametrize("case", GARBAGE_REPLIES)
def test_garbage_replies_are_counted_and_store_nothing(peers, case):
    before = snapshot(peers.bob.store)
    assert peers.bob.sync_with(MALLORY.member_id, GARBAGE_REPLIES[case]) == 0
    assert snapshot(peers.bob.store) == before
    assert rejected(peers.bob, MALLORY.member_id) == 1
    peers.alice.append_own("commit", commit_body())
    assert peers.bob.sync_with(ALICE.member_id, peers.honest()) == 1  # bob keeps working
    assert rejected(peers.bob, ALICE.member_id) == 0


@pytest.mark.parametrize("fail_at", ["heads", "pull"])
def test_a_failing_transport_is_no_progress_not_a_reject(peers, fail_at):
    peers.alice.append_own("commit", commit_body())

    def call(request: bytes) -> bytes:
        if fail_at.encode() in request:
            raise ConnectionError("peer gone")
        return peers.alice.handle(BOB.member_id, request)

    before = snapshot(peers.bob.store)
    assert peers.bob.sync_with(ALICE.member_id, call) == 0
    assert snapshot(peers.bob.store) == before and rejected(peers.bob, ALICE.member_id) == 0
    assert peers.bob.sync_with(ALICE.member_id, peers.honest()) == 1


def test_junk_events_are_rejected_with_their_reasons(peers):
    t = peers.clock.now_ms()
    swarm = peers.alice.store.swarm_id
    forged = signed(
        MALLORY, author=ALICE.member_id, swarm=swarm, seq=2, prev=swarm, kind="join", body={"maddrs": []}, time=t
    )
    alien = Event.create(ALICE, swarm=h("elsewhere"), seq=2, prev=swarm, kind="join", body={"maddrs": []}, time_ms=t)
    schema = Event.create(ALICE, swarm=swarm, seq=2, prev=swarm, kind="join", body={"maddrs": [7]}, time_ms=t)
    junk = [b"junk", 42, "text", forged.wire, alien.wire, schema.wire, forged.wire[:-3]]
    before = snapshot(peers.bob.store)
    assert peers.bob.sync_with(MALLORY.member_id, peers.serving(junk)) == 0
    assert snapshot(peers.bob.store) == before
    assert rejected(peers.bob, MALLORY.member_id) == len(junk)
    reasons = " | ".join(peers.bob.reject_reasons[MALLORY.member_id])
    for part in ("not bytes", "another swarm", "invalid value", "truncated"):
        assert part in reasons, reasons
    assert not peers.bob.is_rate_limited(MALLORY.member_id)
    assert not any(peers.bob.rejects[m] for m in peers.bob.rejects if m != MALLORY.member_id)


def test_a_peer_past_max_rejects_is_ignored_for_the_window(peers):
    assert peers.bob.sync_with(MALLORY.member_id, peers.serving([b"junk"] * (MAX_REJECTS + 5))) == 0
    assert rejected(peers.bob, MALLORY.member_id) == MAX_REJECTS + 5
    assert peers.bob.is_rate_limited(MALLORY.member_id)
    assert not peers.bob.is_rate_limited(ALICE.member_id)

    calls = []
    counting = lambda request: calls.append(request) or peers.alice.handle(BOB.member_id, request)  # noqa: E731
    peers.clock.advance(REJECT_WINDOW_MS // 2)
    assert peers.bob.sync_with(MALLORY.member_id, counting) == 0 and calls == []  # not even asked
    peers.clock.advance(REJECT_WINDOW_MS // 2)
    assert peers.bob.is_rate_limited(MALLORY.member_id)  # the window is REJECT_WINDOW_MS inclusive
    peers.clock.advance(1)
    assert not peers.bob.is_rate_limited(MALLORY.member_id)
    peers.alice.append_own("commit", commit_body())
    assert peers.bob.sync_with(MALLORY.member_id, counting) == 1 and calls


def test_rejects_below_the_limit_do_not_rate_limit(peers):
    assert peers.bob.sync_with(MALLORY.member_id, peers.serving([b"junk"] * (MAX_REJECTS - 1))) == 0
    assert not peers.bob.is_rate_limited(MALLORY.member_id)


def test_a_forged_signature_is_counted_as_one(peers):
    swarm = peers.alice.store.swarm_id
    forged = signed(
        MALLORY,
        author=ALICE.member_id,
        swarm=swarm,
        seq=2,
        prev=swarm,
        kind="join",
        body={"maddrs": []},
        time=peers.clock.now_ms(),
    )
    peers.bob.sync_with(MALLORY.member_id, peers.serving([forged.wire]))
    assert any("bad signature" in reason for reason in peers.bob.reject_reasons[MALLORY.member_id])


def test_garbage_equivocation_proofs_are_rejected_not_raised(peers):
    garbage = lambda request: cbor.encode({"heads": {}, "proofs": [[b"junk", b"junk"]]})  # noqa: E731
    assert peers.bob.sync_with(MALLORY.member_id, garbage) == 0
    assert rejected(peers.bob, MALLORY.member_id) == 1 and not peers.bob.store.banned()


BAD_REQUESTS = {
    "not CBOR": b"\xff",
    "a list": cbor.encode([1]),
    "no op": cbor.encode({}),
    "unknown op": cbor.encode({"op": "drop tables"}),
    "pull without want": cbor.encode({"op": "pull"}),
    "want not pairs": cbor.encode({"op": "pull", "want": [1, 2]}),
    "negative after_seq": cbor.encode({"op": "pull", "want": [[ALICE.member_id, -1]]}),
    "after_seq beyond SQLite's integers": cbor.encode({"op": "pull", "want": [[ALICE.member_id, 2**63]]}),
}


@pytest.mark.parametrize("request_bytes", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_requests_get_an_error_map(peers, request_bytes):
    reply = cbor.decode(peers.alice.handle(MALLORY.member_id, request_bytes))
    assert set(reply) == {"error"}


def test_a_tick_survives_a_leaders_cut_with_an_absurd_frontier():
    """A cut proposal is another peer's input too: a frontier seq no feed can reach is refused, not raised."""
    clock = FakeClock()
    alice = LedgerNode(LedgerStore(":memory:", clock=clock.now_s), ALICE, clock.now_ms, epoch_ms=1000)
    swarm = alice.found("input", {}, {}, founders=[ALICE.member_id, MALLORY.member_id]).id
    while leader(swarm, alice.epoch(), [ALICE.member_id, MALLORY.member_id]) != MALLORY.member_id:
        clock.advance(1000)
    frontier = {ALICE.member_id: [2**63 + 5, h("head")]}
    body = {
        "index": 0,
        "epoch": alice.epoch(),
        "frontier": frontier,
        "prev": None,
        "root": h("r"),
        "size": 1,
        "theta": None,
    }
    with pytest.raises(InvalidEvent, match="frontier"):  # refused at the door: no feed reaches 2**63
        alice._store(
            Event.create(MALLORY, swarm=swarm, seq=1, prev=None, kind="cut", body=body, time_ms=clock.now_ms())
        )
    alice.tick()
    assert not list(alice.store.iter_events(kind="cosign"))


# --- properties -------------------------------------------------------------------------------------------------------

cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1) | st.binary(max_size=40) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)


@PROPERTY
@given(st.binary(max_size=200))
def test_decode_raises_only_noncanonical_or_round_trips(data):
    try:
        value = cbor.decode(data)
    except cbor.NonCanonical:
        return
    assert cbor.encode(value) == data


@PROPERTY
@given(cbor_values)
def test_encode_decode_round_trip(value):
    data = cbor.encode(value)
    assert cbor.decode(data) == value
    assert cbor.encode(cbor.decode(data)) == data


@PROPERTY
@given(cbor_values, st.data())
def test_decode_of_edited_encodings(value, data):
    """Edits of canonical bytes (the inputs most likely to look almost right) decode canonically or not at all."""
    raw = bytearray(cbor.encode(value))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] = data.draw(st.integers(0, 255))
    test_decode_raises_only_noncanonical_or_round_trips.hypothesis.inner_test(bytes(raw))


@PROPERTY
@given(st.binary(max_size=300))
def test_from_wire_raises_only_invalid_event(data):
    try:
        Event.from_wire(data)
    except InvalidEvent:
        pass


small_ints = st.integers(-1000, 1000)
event_fields = st.fixed_dictionaries(
    {
        "swarm": st.sampled_from([b"", h("s")]) | st.binary(max_size=33) | small_ints,
        "author": st.sampled_from([ALICE.member_id, "", "12D3KooW", "é"]) | st.text(max_size=60) | small_ints,
        "seq": st.integers(-2, 2**64 - 1) | st.booleans() | st.none(),
        "prev": st.none() | st.sampled_from([h("p")]) | st.binary(max_size=33) | st.text(max_size=3),
        "parents": st.lists(st.sampled_from([h("a"), h("b")]) | st.binary(max_size=33) | small_ints, max_size=4)
        | small_ints,
        "kind": st.sampled_from(["charter", "commit", ""]) | st.text(max_size=70) | small_ints,
        "body": st.dictionaries(st.text(max_size=5), cbor_values, max_size=3) | cbor_values,
        "time": st.integers(-5, 2**64 - 1) | st.booleans() | st.text(max_size=2),
        "sig": st.binary(min_size=63, max_size=65) | st.none(),
    }
)


@PROPERTY
@given(event_fields)
def test_from_wire_on_event_shaped_maps_raises_only_invalid_event(fields):
    try:
        event = Event.from_wire(cbor.encode(fields))
    except InvalidEvent:
        return
    assert event.wire == cbor.encode(fields)


MUTATION_BASE = Ledger()
MUTATION_EVENT = MUTATION_BASE.event()


def assert_mutation_refused(wire: bytes) -> None:
    if wire == MUTATION_EVENT.wire:
        return
    try:
        event = Event.from_wire(wire)
    except InvalidEvent:
        return
    store = MUTATION_BASE.store
    before = snapshot(store)
    with pytest.raises(InvalidEvent):
        store.append(event)
    assert snapshot(store) == before


@PROPERTY
@given(st.data())
def test_any_single_byte_change_is_never_stored(data):
    wire = bytearray(MUTATION_EVENT.wire)
    i = data.draw(st.integers(0, len(wire) - 1))
    wire[i] = data.draw(st.integers(0, 255).filter(lambda b: b != wire[i]))
    assert_mutation_refused(bytes(wire))


@pytest.mark.parametrize("flip", [0x01, 0x80])
def test_every_position_flipped_is_never_stored(flip):
    wire = MUTATION_EVENT.wire
    for i in range(len(wire)):
        assert_mutation_refused(wire[:i] + bytes([wire[i] ^ flip]) + wire[i + 1 :])
    assert MUTATION_BASE.store.count() == 2
