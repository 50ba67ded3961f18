"""Short-lived, signed DHT records by which peers find each other's progress (DESIGN §3).

Each peer keeps one record under ``<swarm>_peers`` (subkey: its member id), refreshed every ``ttl / 4`` and
expiring after ``ttl`` seconds: the round it works on, when it expects to finish (``eta``), the round it last
finished (``done``) and its θ and state hashes. ``koinon serve`` keeps one under ``koinon_<swarm>_servers`` the
same way. Records only steer scheduling, state sync and discovery; nothing in them is trusted for θ itself (a
state download is checked against its hash, a server's model against the release's).

**Signed.** DHT values are last-writer-wins and anyone can write any subkey (HIVEMIND.md trap 10), so every
record carries, besides its fields and ``member`` (its author, also its subkey):

- ``key``: the DHT key it was published under, so a record signed for one swarm or kind cannot be replayed under
  another;
- ``expires``: the expiration time it was stored with; a reader rejects the record when the DHT item outlives it
  (an old record re-stored with a later expiration) or when it lies more than ``2 × ttl`` ahead;
- ``sig``: the author's Ed25519 signature of :func:`signing_bytes` — the domain tag ``koinon-dht-record-v1\\0``
  followed by the canonical CBOR (:mod:`koinon.ledger.cbor`) of ``{"fields": F, "floats": [names]}``, where F is the
  record without ``sig`` in which each top-level float (such as ``eta``, ``expires``) is replaced by its 8-byte
  IEEE 754 big-endian encoding and ``floats`` lists, sorted, the names so replaced (so a float cannot be passed
  off as the byte string, nor the other way round). Floats nested deeper are not allowed.

:func:`live_records` returns only records that pass all of this, with their known fields of the right type
(:data:`FIELD_TYPES`), and skips the rest (logged at debug level and counted in :data:`SKIPPED`); it never
raises. A signature proves who wrote a record and that it is current, not that what it says is true: records
still only hint. What signing cannot prevent is a writer overwriting (or crowding out) another member's subkey
with garbage of a later expiration: that record is skipped, so the member looks absent until its next refresh.
"""

from __future__ import annotations

import collections
import logging
import math
import struct
import threading
import time
from collections.abc import Callable, Mapping

from koinon.identity import verify_signature
from koinon.ledger import cbor

logger = logging.getLogger("koinon.swarm")

ANNOUNCE_TTL = 20.0
MAX_SUBKEYS = 1024  # subkeys of one key looked at by live_records; the rest are ignored
MAX_RECORD_BYTES = 4096  # a record whose signed encoding is larger is skipped
MAX_FIELDS = 64
DOMAIN = b"koinon-dht-record-v1\x00"

# The type every known field must have when present (bool is not an int here); a record breaking this is skipped,
# so that callers can use int(v["done"]), float(v["eta"]), … without guarding each read.
_NUMBER = (int, float)
FIELD_TYPES: dict[str, dict[str, type | tuple[type, ...]]] = {
    "peers": {"round": int, "done": int, "height": int, "eta": _NUMBER, "state": str, "theta": str},
    "servers": {
        "load": int,
        "capacity": int,
        "url": str,
        "model": str,
        "model_hash": str,
        "release": (str, type(None)),
    },
}

SKIPPED: collections.Counter[str] = collections.Counter()  # why records were skipped, for tests and diagnostics


class Announcer:
    """One signed record under ``<swarm>_<kind>``: ``peers`` for training peers (``round`` required), ``servers``
    for ``koinon serve`` (koinon.serve; ``load`` required). ``sign`` is the Ed25519 signing function of the key
    whose member id is ``member`` (``Identity.sign``)."""

    def __init__(
        self,
        dht,
        swarm: str,
        member: str,
        ttl: float = ANNOUNCE_TTL,
        kind: str = "peers",
        required: str = "round",
        *,
        sign: Callable[[bytes], bytes],
    ) -> None:
        self.dht, self.key, self.member, self.ttl = dht, record_key(swarm, kind), member, ttl
        self.required, self.kind, self.sign = required, kind, sign
        self._record: dict = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._refresh_loop, daemon=True, name="koinon-announce").start()

    def announce(self, **info: object) -> None:
        """Update our record with ``info`` and publish it now. Raises TypeError/ValueError for a record that
        cannot be signed (a nested float, an integer over 64 bits, …)."""
        with self._lock:
            record = dict(self._record)
            record.update(info)
            record["member"] = self.member
            signing_bytes(record)  # refuse what we could not sign before it replaces the good record
            self._record = record
        self._publish()

    def signed(self, expires: float) -> dict:
        """Our current record, bound to our key and ``expires``, with its signature ({} before any announce)."""
        with self._lock:
            value = dict(self._record)
        if not value:
            return {}
        value.update(key=self.key, expires=float(expires))
        value["sig"] = bytes(self.sign(signing_bytes(value)))
        return value

    def _publish(self) -> None:
        from hivemind.utils import get_dht_time

        try:
            expires = get_dht_time() + self.ttl
            value = self.signed(expires)
            if value:
                self.dht.store(self.key, value, expires, subkey=self.member, return_future=True)
        except Exception as e:  # the next refresh retries
            logger.debug("announce failed: %r", e)

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            self._publish()

    def stop(self) -> None:
        self._stop.set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True once the announcer is stopped (for loops that update the record)."""
        return self._stop.wait(seconds)

    def live_peers(self) -> dict[str, dict]:
        """Valid records of live peers (this one included), by member id; forged and malformed ones are skipped."""
        return live_records(self.dht, self.key, self.required, ttl=self.ttl, types=FIELD_TYPES.get(self.kind))


def record_key(swarm: str, kind: str) -> str:
    return f"{swarm}_{kind}"


def signing_bytes(record: Mapping) -> bytes:
    """The bytes a record's ``sig`` signs (see the module docstring): everything but ``sig``, canonically encoded.
    Raises TypeError or ValueError for what has no such encoding."""
    fields: dict = {}
    floats: list[str] = []
    for name, value in record.items():
        if name == "sig":
            continue
        if isinstance(value, float):
            floats.append(name)
            value = struct.pack(">d", value)
        fields[name] = value
    return DOMAIN + cbor.encode({"fields": fields, "floats": sorted(floats)})


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _has_type(value: object, expected: type | tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in (expected if isinstance(expected, tuple) else (expected,))
    return isinstance(value, expected)


def _fits(value: object, budget: int) -> bool:
    """Whether ``value`` plausibly encodes in at most ``budget`` bytes: a walk that stops as soon as the budget is
    spent (every item costs at least one byte), so a huge or deeply nested value costs little to reject."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, (str, bytes, bytearray)):
            budget -= 1 + len(item)
        elif isinstance(item, dict):
            budget -= 1 + len(item)
            if budget >= 0:
                stack.extend(item.keys())
                stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            budget -= 1 + len(item)
            if budget >= 0:
                stack.extend(item)
        else:
            budget -= 1
        if budget < 0:
            return False
    return True


def check_record(
    value: object,
    subkey: object,
    key: str,
    required: str,
    item_expiration: object,
    now: float,
    ttl: float = ANNOUNCE_TTL,
    types: Mapping[str, type | tuple[type, ...]] | None = None,
) -> str | None:
    """Why the record ``value`` stored under ``key``/``subkey`` (its DHT item expiring at ``item_expiration``) is
    not valid at ``now``, or None when it is."""
    if not isinstance(value, dict):
        return "not a dict"
    if len(value) > MAX_FIELDS:
        return "too many fields"
    member = value.get("member")
    if not isinstance(member, str) or member != subkey:
        return "member is not the subkey"
    if not _is_int(value.get(required)):
        return f"{required} is not an integer"
    if value.get("key") != key:
        return "signed for another key"
    expires = value.get("expires")
    if not isinstance(expires, float) or not math.isfinite(expires):
        return "no expiration"
    if expires < now:
        return "expired"
    if expires > now + 2 * ttl:
        return "expiration too far"
    if not isinstance(item_expiration, (int, float)) or isinstance(item_expiration, bool):
        return "no item expiration"
    if item_expiration > expires:
        return "stored with a later expiration than signed"
    for name, expected in (types or {}).items():
        if name in value and not _has_type(value[name], expected):
            return f"{name} has the wrong type"
    sig = value.get("sig")
    if not isinstance(sig, bytes) or len(sig) != 64:
        return "no signature"
    if not _fits(value, MAX_RECORD_BYTES):
        return "too large"
    try:
        message = signing_bytes(value)
    except (TypeError, ValueError):
        return "not encodable"
    if len(message) > MAX_RECORD_BYTES:
        return "too large"
    try:
        verify_signature(member, message, sig)
    except Exception:  # IdentityError (bad signature, or a member id that is no Ed25519 key), or anything odd
        return "bad signature"
    return None


def live_records(
    dht,
    key: str,
    required: str,
    ttl: float = ANNOUNCE_TTL,
    types: Mapping[str, type | tuple[type, ...]] | None = None,
) -> dict[str, dict]:
    """The valid, unexpired records under ``key`` (see :func:`check_record`), by subkey: each signed by the member
    named in its subkey, for this key, with an integer ``required`` field and its ``types`` respected. A reader
    that announces nothing itself, such as ``koinon ask``, calls this directly. Never raises."""
    try:
        found = dht.get(key, latest=True)
        items = found.value if found is not None else None
    except Exception as e:
        logger.debug("DHT lookup of %s failed: %r", key, e)
        return {}
    if not isinstance(items, dict):
        return {}
    try:
        from hivemind.utils import get_dht_time

        now = get_dht_time()
    except Exception:
        now = time.time()
    out: dict[str, dict] = {}
    for n, (subkey, item) in enumerate(items.items()):
        if n >= MAX_SUBKEYS:
            SKIPPED["too many subkeys"] += len(items) - n
            logger.debug("%s: ignoring %d subkeys beyond the first %d", key, len(items) - n, MAX_SUBKEYS)
            break
        try:
            value = getattr(item, "value", None)
            why = check_record(value, subkey, key, required, getattr(item, "expiration_time", None), now, ttl, types)
        except Exception as e:  # check_record should not raise; a reader must survive it if it does
            why = f"check failed: {e!r}"
        if why is None:
            out[subkey] = value
        else:
            SKIPPED[why] += 1
            logger.debug("%s: skipping the record under %.80r: %s", key, subkey, why)
    return out


__all__ = [
    "ANNOUNCE_TTL",
    "FIELD_TYPES",
    "Announcer",
    "check_record",
    "live_records",
    "record_key",
    "signing_bytes",
]
