"""Signed DHT records (src/koinon/swarm/announce.py) against an in-memory DHT, and what a mallory can do to them."""

from __future__ import annotations

import http.server
import json
import logging
import struct
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hivemind.dht.storage import DHTLocalStorage, DictionaryDHTValue
from hivemind.utils import MSGPackSerializer, get_dht_time
from hivemind.utils.timed_storage import ValueWithExpiration
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from koinon.identity import Identity
from koinon.serve.client import discover_urls, probe, serve_key
from koinon.swarm.announce import (
    ANNOUNCE_TTL,
    FIELD_TYPES,
    MAX_SUBKEYS,
    Announcer,
    check_record,
    live_records,
    record_key,
    signing_bytes,
)

SWARM = "ab" * 32
KEY = record_key(SWARM, "peers")
TTL = ANNOUNCE_TTL


class FakeDHT:
    """The two calls of ``hivemind.DHT`` that announce.py makes, on hivemind's own local storage: values go through
    msgpack as on the wire, a subkey keeps the entry with the latest expiration, expired entries vanish, and
    ``get`` answers ``ValueWithExpiration({subkey: ValueWithExpiration(value, expiration)}, latest expiration)``
    as ``DHTNode.get`` does for a dictionary value (None when nothing is stored)."""

    def __init__(self) -> None:
        self.storage = DHTLocalStorage()
        self.fail = False

    def store(self, key, value, expiration_time, subkey=None, return_future=False):
        stored = self.storage.store(key, MSGPackSerializer.dumps(value), expiration_time, subkey=subkey)
        if return_future:
            from concurrent.futures import Future

            future: Future = Future()
            future.set_result(stored)
            return future
        return stored

    def get(self, key, latest=False, return_future=False):
        if self.fail:
            raise TimeoutError("no peer answered")
        found = self.storage.get(key)
        if found is None:
            return None
        if isinstance(found.value, DictionaryDHTValue):
            entries = {sk: ValueWithExpiration(MSGPackSerializer.loads(v), exp) for sk, (v, exp) in found.value.items()}
            return ValueWithExpiration(entries, found.expiration_time)
        return ValueWithExpiration(MSGPackSerializer.loads(found.value), found.expiration_time)


def new_identity() -> Identity:
    return Identity(private_key=Ed25519PrivateKey.generate(), path=Path("/nonexistent/identity.key"))


def signed(signer: Identity, key: str = KEY, expires: float | None = None, member: str | None = None, **fields):
    """A record as Announcer publishes it, signed by ``signer`` (``member`` defaults to the signer's id)."""
    record = {"round": 3, "done": 2, "eta": 12.5, "state": "s", "theta": "t", **fields}
    record.update(member=member or signer.member_id, key=key)
    record["expires"] = float(expires if expires is not None else get_dht_time() + TTL)
    record["sig"] = signer.sign(signing_bytes(record))
    return record


def put(dht: FakeDHT, record, subkey, expiration: float | None = None, key: str = KEY) -> None:
    if expiration is None:
        expires = record.get("expires") if isinstance(record, dict) else None
        expiration = expires if isinstance(expires, float) else get_dht_time() + TTL
    assert dht.store(key, record, expiration, subkey=subkey)


def live(dht: FakeDHT, key: str = KEY) -> dict[str, dict]:
    return live_records(dht, key, "round", ttl=TTL, types=FIELD_TYPES["peers"])


@pytest.fixture
def alice() -> Identity:
    return new_identity()


@pytest.fixture
def mallory() -> Identity:
    return new_identity()


@pytest.fixture
def dht(alice: Identity) -> FakeDHT:
    """A DHT holding one honest record (alice's)."""
    d = FakeDHT()
    put(d, signed(alice), alice.member_id)
    return d


# --- the honest path ---------------------------------------------------------------------------------------------
def test_announced_record_is_returned_signed_and_bound_to_its_key(alice: Identity):
    dht = FakeDHT()
    announcer = Announcer(dht, SWARM, alice.member_id, sign=alice.sign)
    try:
        announcer.announce(round=4, done=3, eta=time.time() + 5, state="pre", theta="th")
        records = announcer.live_peers()
    finally:
        announcer.stop()
    assert list(records) == [alice.member_id]
    record = records[alice.member_id]
    assert (record["round"], record["done"], record["member"], record["key"]) == (4, 3, alice.member_id, KEY)
    assert len(record["sig"]) == 64
    stored = dht.get(KEY, latest=True).value[alice.member_id]
    assert stored.expiration_time == record["expires"], "stored with exactly the expiration it signed"


def test_announcer_requires_a_signing_function(alice: Identity):
    with pytest.raises(TypeError):
        Announcer(FakeDHT(), SWARM, alice.member_id)  # type: ignore[call-arg]


def test_announce_refuses_a_record_it_cannot_sign_and_keeps_the_last_good_one(alice: Identity):
    dht = FakeDHT()
    announcer = Announcer(dht, SWARM, alice.member_id, sign=alice.sign)
    try:
        announcer.announce(round=1)
        with pytest.raises(TypeError):
            announcer.announce(round=2, nested={"eta": 1.5})  # floats are only allowed at the top level
        assert announcer.live_peers()[alice.member_id]["round"] == 1
    finally:
        announcer.stop()


def test_signing_bytes_are_domain_separated_and_independent_of_field_order(alice: Identity):
    record = signed(alice)
    reordered = dict(reversed(list(record.items())))
    assert signing_bytes(record) == signing_bytes(reordered)
    assert signing_bytes(record).startswith(b"koinon-dht-record-v1\x00")
    assert signing_bytes(record) == signing_bytes({k: v for k, v in record.items() if k != "sig"})


def test_server_records_are_discovered(alice: Identity):
    dht = FakeDHT()
    announcer = Announcer(dht, serve_key(SWARM), alice.member_id, kind="servers", required="load", sign=alice.sign)
    try:
        announcer.announce(load=0, url="http://127.0.0.1:1234", model="m", model_hash="h", release=None, capacity=2)
        assert discover_urls(dht, SWARM) == ["http://127.0.0.1:1234"]
    finally:
        announcer.stop()


# --- mallory -------------------------------------------------------------------------------------------------------
def test_record_signed_by_another_key_under_the_victims_subkey_is_skipped(
    dht: FakeDHT, alice: Identity, mallory: Identity
):
    bob = new_identity()
    put(dht, signed(mallory, member=bob.member_id), bob.member_id)
    assert list(live(dht)) == [alice.member_id]


def test_tampered_field_is_skipped(dht: FakeDHT, alice: Identity):
    bob = new_identity()
    record = signed(bob)
    record["done"] = 99  # "I am far ahead: sync from me"
    put(dht, record, bob.member_id)
    assert list(live(dht)) == [alice.member_id]


def test_float_passed_off_as_its_bytes_is_skipped(dht: FakeDHT, alice: Identity):
    bob = new_identity()
    record = signed(bob, speed=1.5)  # a field live_records has no type for
    record["speed"] = struct.pack(">d", record["speed"])  # the same signed bytes, were floats not listed as such
    put(dht, record, bob.member_id)
    assert list(live(dht)) == [alice.member_id]


def test_record_replayed_under_another_swarms_key_is_skipped(dht: FakeDHT, alice: Identity):
    bob = new_identity()
    other = signed(bob, key=record_key("cd" * 32, "peers"))
    put(dht, other, bob.member_id)
    assert list(live(dht)) == [alice.member_id]
    # and a peers record is no servers record either
    server_key = record_key(serve_key(SWARM), "servers")
    put(dht, signed(bob, load=0), bob.member_id, key=server_key)
    assert live_records(dht, server_key, "load") == {}


def test_record_restored_with_a_later_expiration_is_skipped(dht: FakeDHT, alice: Identity):
    bob = new_identity()
    record = signed(bob, expires=get_dht_time() + 5)
    put(dht, record, bob.member_id, expiration=record["expires"] + 10)
    assert list(live(dht)) == [alice.member_id]


def test_record_signed_to_live_absurdly_long_is_skipped(dht: FakeDHT, alice: Identity):
    bob = new_identity()
    put(dht, signed(bob, expires=get_dht_time() + 3 * TTL), bob.member_id)
    assert list(live(dht)) == [alice.member_id]


def test_expired_record_is_rejected(alice: Identity):
    record = signed(alice, expires=100.0)
    assert check_record(record, alice.member_id, KEY, "round", 100.0, now=90.0) is None
    assert check_record(record, alice.member_id, KEY, "round", 100.0, now=101.0) == "expired"
    assert check_record(record, alice.member_id, KEY, "round", 100.0, now=100.0 - 2 * TTL - 1) == "expiration too far"
    assert check_record(record, alice.member_id, KEY, "round", 100.5, now=90.0) == (
        "stored with a later expiration than signed"
    )


@pytest.mark.parametrize(
    ("junk", "reason"),
    [
        ("not a dict", "not a dict"),
        (["round", 3], "not a dict"),
        (None, "not a dict"),
        ({"member": "X", "round": 3}, "member is not the subkey"),
        ("huge", "too large"),
        ("no sig", "no signature"),
        ("garbled sig", "bad signature"),
        ("short sig", "no signature"),
        ("sig not bytes", "no signature"),
        ("round not int", "round is not an integer"),
        ("round is bool", "round is not an integer"),
        ("done not int", "done has the wrong type"),
        ("eta not a number", "eta has the wrong type"),
        ("member not an id", "bad signature"),
        ("expires not a float", "no expiration"),
        ("deep", "not encodable"),
    ],
)
def test_malformed_record_is_skipped_and_the_others_still_returned(
    dht: FakeDHT, alice: Identity, junk, reason: str, caplog: pytest.LogCaptureFixture
):
    bob = new_identity()
    sub = bob.member_id
    value: object = junk
    if junk == "huge":
        value = signed(bob, blob="x" * 5000)
    elif junk == "no sig":
        value = {k: v for k, v in signed(bob).items() if k != "sig"}
    elif junk == "garbled sig":
        value = signed(bob)
        value["sig"] = bytes(64)
    elif junk == "short sig":
        value = signed(bob)
        value["sig"] = value["sig"][:63]
    elif junk == "sig not bytes":
        value = signed(bob)
        value["sig"] = value["sig"].hex()
    elif junk == "round not int":
        value = signed(bob, round="3")
    elif junk == "round is bool":
        value = signed(bob, round=True)
    elif junk == "done not int":
        value = signed(bob, done="many")  # a valid signature: bob may sign nonsense, readers must not crash on it
    elif junk == "eta not a number":
        value = signed(bob, eta="soon")
    elif junk == "member not an id":
        sub = "not-a-member-id"
        value = {**signed(bob), "member": sub}
    elif junk == "expires not a float":
        value = {**signed(bob), "expires": "later"}
    elif junk == "deep":
        nested: object = 1
        for _ in range(40):
            nested = [nested]
        value = signed(bob)
        value["nested"] = nested
    with caplog.at_level(logging.DEBUG, logger="koinon.swarm"):
        put(dht, value, sub)
        assert list(live(dht)) == [alice.member_id]
    assert f"skipping the record under {sub!r}: {reason}" in caplog.text


def test_non_string_subkeys_and_items_without_value_are_skipped(dht: FakeDHT, alice: Identity):
    put(dht, signed(alice), 42)
    put(dht, signed(alice), b"raw")
    found = dht.get(KEY, latest=True)
    found.value["odd"] = "no .value here"
    dht.get = lambda key, latest=False: found  # type: ignore[method-assign]
    assert list(live(dht)) == [alice.member_id]


def test_a_failing_or_empty_dht_gives_no_records(dht: FakeDHT):
    assert live(FakeDHT()) == {}
    dht.fail = True
    assert live(dht) == {}
    plain = FakeDHT()
    plain.store(KEY, "a plain value, not a dictionary", get_dht_time() + TTL)
    assert live(plain) == {}


def test_only_the_first_subkeys_are_looked_at():
    dht = FakeDHT()
    signers = [new_identity() for _ in range(MAX_SUBKEYS + 20)]
    for s in signers:
        put(dht, signed(s), s.member_id)
    assert len(live(dht)) == MAX_SUBKEYS


# --- junk never makes a reader raise ------------------------------------------------------------------------------
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=70),
)
_junk = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), st.sampled_from(["member", "round", "sig", "key"])), inner),
    ),
    max_leaves=20,
)
_fields = st.fixed_dictionaries(
    {},
    optional={
        "member": st.one_of(_scalars, st.just("ALICE")),
        "round": _scalars,
        "done": _scalars,
        "eta": _scalars,
        "key": st.one_of(_scalars, st.just(KEY)),
        "expires": st.one_of(_scalars, st.floats(min_value=0, max_value=4e9)),
        "sig": st.one_of(_scalars, st.binary(min_size=64, max_size=64)),
        "extra": _junk,
    },
)


@settings(derandomize=True, max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    entries=st.lists(
        st.tuples(st.one_of(st.text(max_size=10), st.integers(), st.just("ALICE")), st.one_of(_junk, _fields)),
        max_size=6,
    ),
    expiration_offset=st.floats(min_value=1, max_value=100),
)
def test_junk_never_makes_live_records_raise(entries, expiration_offset):
    alice = new_identity()
    dht = FakeDHT()
    put(dht, signed(alice), alice.member_id)
    for subkey, value in entries:
        if subkey == "ALICE":
            continue  # alice's own subkey: overwriting it is the DoS the module docstring admits
        if isinstance(value, dict) and value.get("member") == "ALICE":
            value["member"] = alice.member_id
        dht.store(KEY, value, get_dht_time() + expiration_offset, subkey=subkey)
    records = live(dht)
    assert list(records) == [alice.member_id]


# --- the client ----------------------------------------------------------------------------------------------------
def test_discover_skips_a_server_record_with_a_malformed_load(alice: Identity, caplog: pytest.LogCaptureFixture):
    key = record_key(serve_key(SWARM), "servers")
    dht = FakeDHT()
    good = signed(alice, key=key, load=1, url="http://good:1", model_hash="h")
    put(dht, good, alice.member_id, key=key)
    bob, carol = new_identity(), new_identity()
    put(dht, signed(bob, key=key, load="lots", url="http://bad:1"), bob.member_id, key=key)
    put(dht, signed(carol, key=key, load=0, capacity=[1], url="http://bad:2"), carol.member_id, key=key)
    with caplog.at_level(logging.DEBUG, logger="koinon.swarm"):
        assert discover_urls(dht, SWARM) == ["http://good:1"]
    assert "load is not an integer" in caplog.text or "wrong type" in caplog.text


@pytest.mark.parametrize(
    ("health", "ok"),
    [
        ({"model_hash": "h", "load": 1, "capacity": 2}, True),
        ({"model_hash": "h", "load": "many", "capacity": 2}, False),
        ({"model_hash": "h", "load": 1, "capacity": None}, False),
        ({"model_hash": "h", "load": 1.5}, False),
        ({"model_hash": "h", "release": ["v1"]}, False),
    ],
)
def test_probe_skips_a_server_with_malformed_health(health: dict, ok: bool, caplog: pytest.LogCaptureFixture):
    body = json.dumps(health).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        with caplog.at_level(logging.WARNING, logger="koinon.serve"):
            found = probe(f"http://127.0.0.1:{server.server_address[1]}", timeout=5)
    finally:
        server.shutdown()
        server.server_close()
    assert (found is not None) == ok
    if not ok:
        assert "malformed /health" in caplog.text
