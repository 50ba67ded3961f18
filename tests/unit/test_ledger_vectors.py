"""Frozen known answers for the ledger's encodings (tests/unit/vectors/events.json, made by make_event_vectors.py).

Everything a member signs is canonical CBOR (src/koinon/ledger/cbor.py) wrapped in an event (event.py); another
implementation, or this one after a refactor, must produce the same bytes, or signatures and ids stop matching and
the swarm's history no longer verifies. So every answer here is recomputed from the inputs in the file: values to
bytes and back, byte strings that must be refused, and three events signed with fixed seeds (Ed25519 is
deterministic) down to the signature, the id, the wire and the transparency-log leaf.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from koinon.identity import Identity
from koinon.ledger import cbor
from koinon.ledger.event import Event, verify_signature_of
from koinon.ledger.merkle import leaf_hash, root
from koinon.ledger.store import LedgerStore

VECTORS = json.loads((Path(__file__).parent / "vectors" / "events.json").read_text())


def from_json(value):
    """JSON → CBOR value: {"$bytes": hex} is a byte string."""
    if isinstance(value, dict):
        if set(value) == {"$bytes"}:
            return bytes.fromhex(value["$bytes"])
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def identity(name: str) -> Identity:
    seed = bytes.fromhex(VECTORS["identities"][name]["seed"])
    return Identity(private_key=Ed25519PrivateKey.from_private_bytes(seed), path=Path("unused"))


@pytest.mark.parametrize("vector", VECTORS["cbor"], ids=lambda v: v["name"])
def test_cbor_encoding(vector):
    value, data = from_json(vector["value"]), bytes.fromhex(vector["hex"])
    assert cbor.encode(value).hex() == vector["hex"]
    assert cbor.decode(data) == value


@pytest.mark.parametrize("vector", VECTORS["cbor_rejects"], ids=lambda v: v["why"])
def test_cbor_rejects(vector):
    with pytest.raises(cbor.NonCanonical):
        cbor.decode(bytes.fromhex(vector["hex"]))


def test_the_file_covers_what_it_claims():
    names = " ".join(v["name"] for v in VECTORS["cbor"])
    assert names.count("rfc8949") >= 30 and "keys by length first" in names
    assert len(VECTORS["cbor_rejects"]) >= 25
    assert [e["name"] for e in VECTORS["events"]] == ["charter", "bob joins", "alice commits"]


@pytest.mark.parametrize("name", ["alice", "bob"])
def test_member_ids(name):
    assert identity(name).member_id == VECTORS["identities"][name]["member_id"]


@pytest.mark.parametrize("vector", VECTORS["events"], ids=lambda v: v["name"])
def test_event_encoding(vector):
    fields = from_json(vector["fields"])
    signer = identity(vector["signer"])
    assert fields["author"] == signer.member_id
    event = Event.create(
        signer,
        swarm=fields["swarm"],
        seq=fields["seq"],
        prev=fields["prev"],
        kind=fields["kind"],
        body=fields["body"],
        time_ms=fields["time"],
        parents=fields["parents"],
    )
    assert event.unsigned_map() == fields
    assert event.signing_bytes.hex() == vector["signing_bytes"]
    assert event.signing_bytes.startswith(b"koinon/event/v1\x00")
    assert event.id.hex() == vector["id"]
    assert event.sig.hex() == vector["sig"]
    assert event.wire.hex() == vector["wire"]
    assert leaf_hash(event.wire).hex() == vector["leaf"]

    parsed = Event.from_wire(bytes.fromhex(vector["wire"]))
    assert parsed == event and parsed.id == event.id and parsed.wire == event.wire
    verify_signature_of(parsed)


def test_events_chain_and_log_root():
    """The three events link up (swarm id = charter id, prev, parents), a store accepts them in order, and the
    transparency log over them has the frozen root."""
    events = [Event.from_wire(bytes.fromhex(v["wire"])) for v in VECTORS["events"]]
    charter, join, commit = events
    assert join.swarm == commit.swarm == charter.id
    assert commit.prev == charter.id and join.parents == (charter.id,) and commit.parents == (join.id,)
    store = LedgerStore(":memory:", clock=lambda: commit.time / 1000)
    for e in events:
        assert store.append(e)
    assert store.swarm_id == charter.id
    assert root([leaf_hash(e.wire) for e in events]).hex() == VECTORS["log_root"]
