"""The ledger store: SQLite in WAL mode, one file per peer (``$HOME/ledger.sqlite``), verify-before-store.

Every append runs in one ``BEGIN IMMEDIATE`` transaction: it either stores the event completely or leaves the
previous state untouched (SQLite's atomic commit; a crash or a full disk mid-way rolls back). An event is
stored only after all of these hold (docs/ledger.md §4):

1. it parses as canonical CBOR with the event fields (``Event.from_wire``), ≤ 1 MiB;
2. its swarm id is ours (only a ``charter`` is accepted before we have one, and only one charter ever);
3. its author is not banned for equivocation;
4. the signature verifies;
5. its kind is registered and the body matches the kind's schema;
6. its time is at most 5 minutes ahead of our clock;
7. ``seq`` is the author's next one and ``prev`` is the id of the author's current head;
8. every parent is already stored.

An event with an (author, seq) we already hold under another id is an **equivocation**: the store records a
proof (both events), bans the author and raises :class:`~koinon.errors.Equivocation` carrying the proof.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import koinon.governance  # noqa: F401  (registers the governance event kinds)
from koinon.errors import Equivocation, InvalidEvent
from koinon.ledger.event import MAX_FUTURE_MS, Event, check_structure, verify_signature_of
from koinon.ledger.kinds import check_body

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id BLOB PRIMARY KEY,
    author TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    time INTEGER NOT NULL,
    wire BLOB NOT NULL,
    received INTEGER NOT NULL,
    UNIQUE (author, seq)
);
CREATE INDEX IF NOT EXISTS events_kind ON events (kind);
CREATE TABLE IF NOT EXISTS banned (author TEXT PRIMARY KEY, a BLOB NOT NULL, b BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS quarantine (id BLOB PRIMARY KEY, wire BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
"""


def check_equivocation_proof(a: bytes, b: bytes, swarm: bytes | None) -> Event:
    """Raise InvalidEvent unless ``a`` and ``b`` are two different, validly signed events of one author with the
    same seq (in ``swarm`` when given); return one of them."""
    try:
        if not isinstance(a, bytes) or not isinstance(b, bytes):
            raise InvalidEvent("it is not two encoded events")
        ea, eb = Event.from_wire(a), Event.from_wire(b)
        verify_signature_of(ea)
        verify_signature_of(eb)
        if ea.author != eb.author or ea.seq != eb.seq or ea.id == eb.id or ea.swarm != eb.swarm:
            raise InvalidEvent("not an equivocation: the events differ in author, seq or swarm, or are equal")
        if swarm is not None and ea.swarm != swarm:
            raise InvalidEvent("it is about another swarm")
    except InvalidEvent as e:
        raise InvalidEvent(f"equivocation proof does not hold: {e}") from None
    return ea


class LedgerStore:
    """Verified events of one swarm. Thread-safe (one connection, one lock)."""

    def __init__(self, path: Path | str, clock: Callable[[], float] = time.time) -> None:
        self.path = str(path)
        self.clock = clock
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._heads: dict[str, tuple[int, bytes]] = {
            a: (s, i)
            for a, s, i in self._db.execute(
                "SELECT author, seq, id FROM events e WHERE seq = (SELECT MAX(seq) FROM events WHERE author = e.author)"
            )
        }
        self._banned = {a for (a,) in self._db.execute("SELECT author FROM banned")}
        row = self._db.execute("SELECT value FROM meta WHERE key = 'swarm'").fetchone()
        self.swarm_id: bytes | None = row[0] if row else None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- appending -------------------------------------------------------------------------------------------
    def append(self, event: Event, *, verify_signatures: bool = True) -> bool:
        """Verify and store ``event``. Returns False if it is already stored; raises InvalidEvent (with the
        reason) or Equivocation otherwise. ``verify_signatures=False`` is for a caller that has verified every
        signature itself (the audit does it on all cores first)."""
        with self._lock:
            if self.has(event.id):
                return False
            self._check(event, verify_signatures)
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "INSERT INTO events (id, author, seq, kind, time, wire, received) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (event.id, event.author, event.seq, event.kind, event.time, event.wire, int(self.clock() * 1000)),
                )
                if event.kind == "charter":
                    self._db.execute("INSERT INTO meta (key, value) VALUES ('swarm', ?)", (event.id,))
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a failed BEGIN (locked, disk full) has nothing to roll back
                    self._db.execute("ROLLBACK")
                raise
            self._heads[event.author] = (event.seq, event.id)
            if event.kind == "charter":
                self.swarm_id = event.id
            return True

    def append_wire(self, data: bytes) -> Event:
        event = Event.from_wire(data)
        self.append(event)
        return event

    def _check(self, e: Event, verify_signatures: bool = True) -> None:
        try:
            check_structure(e)  # events built in memory skip Event.from_wire's checks
        except (TypeError, ValueError) as error:
            raise InvalidEvent(f"malformed event: {error}") from None
        if self.swarm_id is None:
            if e.kind != "charter":
                raise InvalidEvent(f"{e.short()}: no charter yet; the genesis event must come first")
        elif e.kind == "charter":
            raise InvalidEvent(f"{e.short()}: this ledger already has a charter")
        elif e.swarm != self.swarm_id:
            raise InvalidEvent(f"{e.short()}: belongs to another swarm ({e.swarm.hex()[:12]})")
        if e.author in self._banned:
            self.quarantine(e)
            raise InvalidEvent(f"{e.short()}: author is banned for equivocation")
        if verify_signatures:
            verify_signature_of(e)
        check_body(e.kind, e.body)
        if e.kind == "equivocation":
            # a false "proof" would exclude an honest member from the cosigners (or break every peer's chain)
            check_equivocation_proof(e.body["a"], e.body["b"], self.swarm_id)
        if e.time > self.clock() * 1000 + MAX_FUTURE_MS:
            raise InvalidEvent(f"{e.short()}: time is more than 5 minutes in the future")
        existing = self._db.execute(
            "SELECT wire FROM events WHERE author = ? AND seq = ?", (e.author, e.seq)
        ).fetchone()
        if existing is not None:
            self._record_equivocation(e, Event.from_wire(existing[0]))
        head = self._heads.get(e.author)
        expected = 1 if head is None else head[0] + 1
        if e.seq != expected:
            raise InvalidEvent(f"{e.short()}: seq gap (expected seq {expected})")
        if e.seq > 1 and e.prev != head[1]:
            raise InvalidEvent(f"{e.short()}: prev does not link to the author's previous event")
        for parent in e.parents:
            if not self.has(parent) and not self.is_quarantined(parent):
                raise InvalidEvent(f"{e.short()}: unknown parent {parent.hex()[:12]}")

    def _record_equivocation(self, new: Event, old: Event) -> None:
        a, b = sorted([new.wire, old.wire])
        self._db.execute("INSERT OR IGNORE INTO banned (author, a, b) VALUES (?, ?, ?)", (new.author, a, b))
        self._banned.add(new.author)
        self._quarantine_wires(a, b)
        raise Equivocation(f"{new.author[-8:]} signed two different events with seq {new.seq}: banned", a, b)

    def record_equivocation_proof(self, a: bytes, b: bytes) -> str:
        """Check a proof received from a peer (two validly signed, different events, same author and seq) and
        ban its author. Returns the author; raises InvalidEvent if the proof does not hold."""
        ea = check_equivocation_proof(a, b, self.swarm_id)
        with self._lock:
            a, b = sorted([a, b])
            self._db.execute("INSERT OR IGNORE INTO banned (author, a, b) VALUES (?, ?, ?)", (ea.author, a, b))
            self._banned.add(ea.author)
            self._quarantine_wires(a, b)
        return ea.author

    # --- reading ---------------------------------------------------------------------------------------------
    # --- quarantine: an equivocator's events, kept out of the ledger -----------------------------------------------
    # Honest events written before the ban was known may cite an equivocator's events as parents, and a peer may
    # hold either version. Validly signed events of banned authors are kept here only so that such parents resolve;
    # they are never in the ledger, the log or a cut.
    def quarantine(self, e: Event) -> bool:
        """Keep a banned author's validly signed event for parent resolution. Returns True if it was kept."""
        if e.author not in self._banned:
            return False
        try:
            verify_signature_of(e)
        except InvalidEvent:
            return False
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO quarantine (id, wire) VALUES (?, ?)", (e.id, e.wire))
        return True

    def _quarantine_wires(self, *wires: bytes) -> None:
        for wire in wires:
            e = Event.from_wire(wire)
            self._db.execute("INSERT OR IGNORE INTO quarantine (id, wire) VALUES (?, ?)", (e.id, e.wire))

    def quarantined_wires(self) -> list[bytes]:
        with self._lock:
            return [w for (w,) in self._db.execute("SELECT wire FROM quarantine ORDER BY id")]

    def is_quarantined(self, event_id: bytes) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM quarantine WHERE id = ?", (event_id,)).fetchone() is not None

    def wire_of(self, event_id: bytes) -> bytes | None:
        """The wire of a stored or quarantined event (for peers resolving a parent)."""
        with self._lock:
            row = self._db.execute(
                "SELECT wire FROM events WHERE id = ? UNION ALL SELECT wire FROM quarantine WHERE id = ?",
                (event_id, event_id),
            ).fetchone()
        return row[0] if row else None

    def has(self, event_id: bytes) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM events WHERE id = ?", (event_id,)).fetchone() is not None

    def get(self, event_id: bytes) -> Event | None:
        with self._lock:
            row = self._db.execute("SELECT wire FROM events WHERE id = ?", (event_id,)).fetchone()
        return Event.from_wire(row[0]) if row else None

    def get_many(self, ids: list[bytes]) -> dict[bytes, Event]:
        return {i: e for i in ids if (e := self.get(i)) is not None}

    def id_at(self, author: str, seq: int) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT id FROM events WHERE author = ? AND seq = ?", (author, seq)).fetchone()
        return row[0] if row else None

    def heads(self) -> dict[str, tuple[int, bytes]]:
        with self._lock:
            return dict(self._heads)

    def banned(self) -> dict[str, tuple[bytes, bytes]]:
        with self._lock:
            return {a: (x, y) for a, x, y in self._db.execute("SELECT author, a, b FROM banned")}

    def events_after(self, author: str, after_seq: int, limit: int) -> list[Event]:
        with self._lock:
            rows = self._db.execute(
                "SELECT wire FROM events WHERE author = ? AND seq > ? ORDER BY seq LIMIT ?", (author, after_seq, limit)
            ).fetchall()
        return [Event.from_wire(w) for (w,) in rows]

    def rows_after(self, author: str, after_seq: int, limit: int) -> list[tuple[int, bytes]]:
        """(rowid, wire) of an author's events after ``after_seq``; rowid order is the order we stored them in."""
        with self._lock:
            return self._db.execute(
                "SELECT rowid, wire FROM events WHERE author = ? AND seq > ? ORDER BY seq LIMIT ?",
                (author, after_seq, limit),
            ).fetchall()

    def wire_after(self, author: str, after_seq: int, limit: int) -> list[bytes]:
        with self._lock:
            rows = self._db.execute(
                "SELECT wire FROM events WHERE author = ? AND seq > ? ORDER BY seq LIMIT ?", (author, after_seq, limit)
            ).fetchall()
        return [w for (w,) in rows]

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    def iter_events(self, kind: str | None = None, author: str | None = None) -> Iterator[Event]:
        query, args = "SELECT wire FROM events WHERE 1=1", []
        if kind:
            query += " AND kind = ?"
            args.append(kind)
        if author:
            query += " AND author = ?"
            args.append(author)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY rowid", args).fetchall()  # insertion order: replayable
        for (w,) in rows:
            yield Event.from_wire(w)

    def charter(self) -> Event | None:
        return self.get(self.swarm_id) if self.swarm_id else None
