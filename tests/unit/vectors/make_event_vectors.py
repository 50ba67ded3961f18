"""Regenerate ``events.json``, the frozen known answers of src/koinon/ledger/{cbor,event}.py.

    .venv/bin/python tests/unit/vectors/make_event_vectors.py

tests/unit/test_ledger_vectors.py recomputes every answer from the inputs in the file, so rerun this only when a
change of the encoding is intended (and say so in the review): every signed event ever written depends on it, and a
silent regeneration hides a break of the swarm's history.

- ``cbor``: values and their canonical encodings. The ``rfc8949`` ones are RFC 8949 Appendix A's examples that lie in
  Koinon's subset, checked here against the RFC's published hex; the others pin Koinon's choices (map keys by
  encoded length first, shortest-form arguments at every boundary, nesting up to MAX_DEPTH).
- ``cbor_rejects``: byte strings that ``cbor.decode`` must refuse (non-minimal, unsorted, floats, tags, ...).
- ``events``: a charter and two follow-ups signed with fixed Ed25519 seeds (Ed25519 signatures are deterministic),
  with their signing bytes, id, signature, wire and transparency-log leaf, and the log root over the three leaves.

Bytes are written as {"$bytes": hex} (JSON has no byte strings); everything else is plain JSON.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from koinon.identity import Identity
from koinon.ledger import cbor
from koinon.ledger.event import Event
from koinon.ledger.merkle import leaf_hash, root

# RFC 8949 Appendix A, the examples without floats, tags, undefined or indefinite lengths: (value, hex).
RFC8949 = [
    (0, "00"),
    (1, "01"),
    (10, "0a"),
    (23, "17"),
    (24, "1818"),
    (25, "1819"),
    (100, "1864"),
    (1000, "1903e8"),
    (1000000, "1a000f4240"),
    (1000000000000, "1b000000e8d4a51000"),
    (18446744073709551615, "1bffffffffffffffff"),
    (-18446744073709551616, "3bffffffffffffffff"),
    (-1, "20"),
    (-10, "29"),
    (-100, "3863"),
    (-1000, "3903e7"),
    (False, "f4"),
    (True, "f5"),
    (None, "f6"),
    (b"", "40"),
    (bytes.fromhex("01020304"), "4401020304"),
    ("", "60"),
    ("a", "6161"),
    ("IETF", "6449455446"),
    ('"\\', "62225c"),
    ("\u00fc", "62c3bc"),
    ("\u6c34", "63e6b0b4"),
    ("\U00010151", "64f0908591"),
    ([], "80"),
    ([1, 2, 3], "83010203"),
    ([1, [2, 3], [4, 5]], "8301820203820405"),
    (list(range(1, 26)), "98190102030405060708090a0b0c0d0e0f101112131415161718181819"),
    ({}, "a0"),
    ({"a": 1, "b": [2, 3]}, "a26161016162820203"),
    (["a", {"b": "c"}], "826161a161626163"),
    ({"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"}, "a56161614161626142616361436164614461656145"),
]

KOINON = {
    "keys by length first": {"bb": 1, "a": 2, "ccc": 3, "b": 4},
    "keys of equal length bytewise": {"z": 1, "a": 2, "m": 3},
    "two-byte UTF-8 key sorts by its encoded length": {"\u00e9": 1, "z": 2, "aa": 3},
    "uint8 boundary": [255, 256],
    "uint16 boundary": [65535, 65536],
    "uint32 boundary": [4294967295, 4294967296],
    "negative boundaries": [-24, -25, -256, -257, -65536, -65537, -4294967296, -4294967297],
    "byte string of 23 and 24 bytes": [b"\x07" * 23, b"\x07" * 24],
    "text of 255 and 256 bytes": ["x" * 255, "y" * 256],
    "array of 24": [0] * 24,
    "nested": {"a": [1, {"b": [True, False, None]}], "bytes": b"\x00\xff", "neg": -1},
    "deepest nesting allowed (MAX_DEPTH 16)": [[[[[[[[[[[[[[[[0]]]]]]]]]]]]]]]],
    "event-like map": {"seq": 1, "prev": None, "parents": [], "body": {"maddrs": []}, "sig": b"\x01" * 4},
}

REJECTS = [
    ("1801", "1 with a one-byte argument (not shortest form)"),
    ("190017", "23 in two bytes"),
    ("1a0000ffff", "65535 in four bytes"),
    ("1b00000000ffffffff", "2^32-1 in eight bytes"),
    ("3817", "-24 with a one-byte argument"),
    ("5801ff", "byte string length not in shortest form"),
    ("780161", "text length not in shortest form"),
    ("f93c00", "half-precision float"),
    ("fb3ff0000000000000", "double-precision float"),
    ("f7", "undefined"),
    ("f820", "simple value 32"),
    ("c074323031332d30332d32315432303a30343a30305a", "tag 0"),
    ("5f4101ff", "indefinite-length byte string"),
    ("7f6161ff", "indefinite-length text string"),
    ("9f01ff", "indefinite-length array"),
    ("bf616101ff", "indefinite-length map"),
    ("a2616201616101", "map keys out of order"),
    ("a262616101616202", "longer key before a shorter one ({'aa': 1, 'b': 2})"),
    ("a2616101616102", "duplicate map key"),
    ("a10101", "integer map key"),
    ("a1410001", "byte-string map key"),
    ("62c328", "invalid UTF-8"),
    ("0000", "trailing bytes"),
    ("1901", "truncated argument"),
    ("430102", "truncated byte string"),
    ("8201", "truncated array"),
    ("5bffffffffffffffff", "byte string longer than the input"),
    ("9b0000000100000000", "array longer than the input"),
    ("81" * 17 + "00", "nesting deeper than MAX_DEPTH"),
    ("", "empty input"),
    ("ff", "break outside an indefinite item"),
]

T0 = 1_700_000_000_000  # ms


def fixed_identity(name: str) -> tuple[bytes, Identity]:
    seed = hashlib.sha256(b"koinon vectors " + name.encode()).digest()
    return seed, Identity(private_key=Ed25519PrivateKey.from_private_bytes(seed), path=Path("unused"))


def to_json(value):
    if isinstance(value, bytes):
        return {"$bytes": value.hex()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value


def event_vector(name: str, who: str, event: Event) -> dict:
    return {
        "name": name,
        "signer": who,
        "fields": to_json({k: v for k, v in event.unsigned_map().items()}),
        "signing_bytes": event.signing_bytes.hex(),
        "id": event.id.hex(),
        "sig": event.sig.hex(),
        "wire": event.wire.hex(),
        "leaf": leaf_hash(event.wire).hex(),
    }


def vectors() -> dict:
    for value, expected in RFC8949:
        assert cbor.encode(value).hex() == expected, (value, expected)
    alice_seed, alice = fixed_identity("alice")
    bob_seed, bob = fixed_identity("bob")
    charter = Event.create(
        alice,
        swarm=b"",
        seq=1,
        prev=None,
        kind="charter",
        time_ms=T0,
        body={
            "name": "vectors",
            "founders": sorted([alice.member_id, bob.member_id]),
            "training": {"model": "tiny", "lr_milli": 700, "steps": 500},
            "rules": {"epoch_ms": 2000, "quorum": [2, 3]},
        },
    )
    join = Event.create(
        bob,
        swarm=charter.id,
        seq=1,
        prev=None,
        kind="join",
        time_ms=T0 + 1000,
        parents=[charter.id],
        body={"maddrs": ["/ip4/127.0.0.1/tcp/31337"]},
    )
    commit = Event.create(
        alice,
        swarm=charter.id,
        seq=2,
        prev=charter.id,
        kind="commit",
        time_ms=T0 + 2000,
        parents=[join.id],
        body={
            "round": 1,
            "theta": hashlib.sha256(b"theta 1").digest(),
            "config": hashlib.sha256(b"config").digest(),
            "data": [hashlib.sha256(b"data").digest()],
            "group": [alice.member_id],
            "shards": hashlib.sha256(b"shards").digest(),
            "seed": hashlib.sha256(b"seed").digest(),
            "step0": 0,
            "steps": 500,
            "samples": 4000,
            "trace": [hashlib.sha256(b"p0").digest(), hashlib.sha256(b"m0").digest()],
            "delta": hashlib.sha256(b"delta").digest(),
        },
    )
    events = [("charter", "alice", charter), ("bob joins", "bob", join), ("alice commits", "alice", commit)]
    return {
        "about": "Known answers for koinon.ledger.cbor and koinon.ledger.event; made by make_event_vectors.py",
        "cbor": [
            {"name": f"rfc8949 {expected}", "value": to_json(value), "hex": expected} for value, expected in RFC8949
        ]
        + [{"name": name, "value": to_json(value), "hex": cbor.encode(value).hex()} for name, value in KOINON.items()],
        "cbor_rejects": [{"hex": hex_, "why": why} for hex_, why in REJECTS],
        "identities": {
            "alice": {"seed": alice_seed.hex(), "member_id": alice.member_id},
            "bob": {"seed": bob_seed.hex(), "member_id": bob.member_id},
        },
        "events": [event_vector(name, who, e) for name, who, e in events],
        "log_root": root([leaf_hash(e.wire) for _, _, e in events]).hex(),
    }


if __name__ == "__main__":
    out = Path(__file__).with_name("events.json")
    out.write_text(json.dumps(vectors(), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {out}")
