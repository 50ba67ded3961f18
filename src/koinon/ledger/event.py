"""Ledger events: signed, hash-linked records, one feed per author (DESIGN §6, docs/ledger.md §2).

An event is the canonical CBOR map (``ledger/cbor.py``)::

    {"swarm": bytes(32) | b"", "author": text, "seq": uint ≥ 1, "prev": bytes(32) | null,
     "parents": [bytes(32), …] (sorted, unique), "kind": text, "body": map, "time": uint (ms), "sig": bytes(64)}

- ``signing_bytes`` = ``b"koinon/event/v1\\x00"`` ‖ canonical CBOR of the map *without* ``sig``;
  ``sig`` is the author's Ed25519 signature of those bytes; the author is a member id (``identity``).
- ``wire`` = canonical CBOR of the whole map, ``sig`` included: what is stored, replicated and exported, and
  what the transparency log hashes (leaf = SHA-256(0x00 ‖ wire)).
- ``id`` = SHA-256(wire). Over the wire, not the signing bytes: an author can make several valid signatures of one
  message, and each must be a different event (an equivocation), or one id would have several log leaves.
  ``prev`` is the id of the author's event ``seq − 1`` (null for seq 1); ``parents`` are ids of other authors'
  events the author had seen (the causal DAG).
- The genesis event (kind ``charter``) has ``swarm = b""``; its id is the swarm id, and every other event of the
  swarm carries it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from koinon.errors import InvalidEvent
from koinon.identity import Identity, verify_signature
from koinon.identity.keys import public_key_from_member_id
from koinon.ledger import cbor

DOMAIN = b"koinon/event/v1\x00"
MAX_EVENT_BYTES = 1 << 20  # 1 MiB, encoded
MAX_PARENTS = 64
MAX_INT = 1 << 63  # integers that SQLite stores (seq, time)
MAX_FUTURE_MS = 5 * 60 * 1000  # an event may claim a time at most 5 minutes ahead of the receiver's clock
_FIELDS = {"swarm", "author", "seq", "prev", "parents", "kind", "body", "time", "sig"}


@dataclass(frozen=True)
class Event:
    swarm: bytes
    author: str
    seq: int
    prev: bytes | None
    parents: tuple[bytes, ...]
    kind: str
    body: dict
    time: int
    sig: bytes = b""
    _cache: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    # --- encodings -------------------------------------------------------------------------------------------
    def unsigned_map(self) -> dict:
        return {
            "swarm": self.swarm,
            "author": self.author,
            "seq": self.seq,
            "prev": self.prev,
            "parents": list(self.parents),
            "kind": self.kind,
            "body": self.body,
            "time": self.time,
        }

    @property
    def signing_bytes(self) -> bytes:
        if "signing" not in self._cache:
            self._cache["signing"] = DOMAIN + cbor.encode(self.unsigned_map())
        return self._cache["signing"]

    @property
    def id(self) -> bytes:
        if "id" not in self._cache:
            self._cache["id"] = hashlib.sha256(self.wire).digest()
        return self._cache["id"]

    @property
    def wire(self) -> bytes:
        if "wire" not in self._cache:
            self._cache["wire"] = cbor.encode({**self.unsigned_map(), "sig": self.sig})
        return self._cache["wire"]

    def short(self) -> str:
        return f"{self.author[-8:]}#{self.seq}:{self.kind}"

    # --- creation and parsing --------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        identity: Identity,
        *,
        swarm: bytes,
        seq: int,
        prev: bytes | None,
        kind: str,
        body: dict,
        time_ms: int,
        parents: tuple[bytes, ...] | list[bytes] = (),
    ) -> Event:
        unsigned = cls(swarm, identity.member_id, seq, prev, tuple(sorted(set(parents))), kind, body, time_ms)
        signed = cls(**{**unsigned.__dict__, "sig": identity.sign(unsigned.signing_bytes), "_cache": {}})
        check_structure(signed)
        return signed

    @classmethod
    def from_wire(cls, data: bytes) -> Event:
        """Parse and structurally check an event; raise :class:`InvalidEvent` with the reason otherwise.
        (The signature is checked by :func:`verify_signature_of`; links and kinds by the store.)"""
        if len(data) > MAX_EVENT_BYTES:
            raise InvalidEvent(f"event of {len(data)} bytes exceeds the {MAX_EVENT_BYTES}-byte cap")
        try:
            raw = cbor.decode(data)
        except cbor.NonCanonical as e:
            raise InvalidEvent(f"not canonical CBOR: {e}") from None
        if not isinstance(raw, dict) or set(raw) != _FIELDS:
            raise InvalidEvent("an event is a map with exactly the fields " + ", ".join(sorted(_FIELDS)))
        parents = raw["parents"]
        if not isinstance(parents, list):
            raise InvalidEvent("parents must be an array")
        event = cls(
            swarm=raw["swarm"],
            author=raw["author"],
            seq=raw["seq"],
            prev=raw["prev"],
            parents=tuple(parents),
            kind=raw["kind"],
            body=raw["body"],
            time=raw["time"],
            sig=raw["sig"],
        )
        event._cache["wire"] = bytes(data)
        check_structure(event)
        return event


def check_structure(e: Event) -> None:
    """Field types and sizes; raises InvalidEvent naming the field."""
    if len(e.wire) > MAX_EVENT_BYTES:
        raise InvalidEvent(f"event of {len(e.wire)} bytes exceeds the {MAX_EVENT_BYTES}-byte cap")
    if not isinstance(e.swarm, bytes) or len(e.swarm) not in (0, 32):
        raise InvalidEvent("swarm must be 32 bytes (empty only in the charter)")
    if not isinstance(e.author, str):
        raise InvalidEvent("author must be a member id")
    try:
        public_key_from_member_id(e.author)
    except Exception:
        raise InvalidEvent(f"author {e.author!r} is not a member id") from None
    if not isinstance(e.seq, int) or isinstance(e.seq, bool) or not 1 <= e.seq < MAX_INT:
        raise InvalidEvent("seq must be an integer in [1, 2⁶³)")
    if e.seq == 1 and e.prev is not None:
        raise InvalidEvent("the first event of a feed has prev = null")
    if e.seq > 1 and (not isinstance(e.prev, bytes) or len(e.prev) != 32):
        raise InvalidEvent("prev must be the 32-byte id of the author's previous event")
    if len(e.parents) > MAX_PARENTS or not all(isinstance(p, bytes) and len(p) == 32 for p in e.parents):
        raise InvalidEvent(f"parents must be at most {MAX_PARENTS} event ids of 32 bytes")
    if list(e.parents) != sorted(set(e.parents)):
        raise InvalidEvent("parents must be sorted and unique")
    if not isinstance(e.kind, str) or not e.kind or len(e.kind) > 64:
        raise InvalidEvent("kind must be a short text")
    if not isinstance(e.body, dict):
        raise InvalidEvent("body must be a map")
    if not isinstance(e.time, int) or isinstance(e.time, bool) or not 0 <= e.time < MAX_INT:
        raise InvalidEvent("time must be milliseconds since the Unix epoch")
    if not isinstance(e.sig, bytes) or len(e.sig) != 64:
        raise InvalidEvent("sig must be a 64-byte Ed25519 signature")
    if (e.kind == "charter") != (e.swarm == b""):
        raise InvalidEvent("only the charter (genesis) event has an empty swarm id")


def verify_signature_of(e: Event) -> None:
    """Raise InvalidEvent unless ``sig`` is the author's signature of the event."""
    try:
        verify_signature(e.author, e.signing_bytes, e.sig)
    except Exception:
        raise InvalidEvent(f"bad signature on {e.short()}") from None
