"""The offline audit, the export file and the proof files (ledger/audit.py, ledger/export.py, cli/ledger_cmds.py).

A small real ledger is built in memory: three members with fixed keys on a fake clock (``LedgerNode``: found,
joins, rounds, ticks and direct syncs) until cuts are final. Honest exports and stores must audit clean; every
kind of tampering must fail, naming exactly the first bad event.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from koinon.errors import AuditFailure
from koinon.identity import Identity
from koinon.ledger import audit as audit_module
from koinon.ledger import (
    cbor,
    merkle,  # noqa: I001
)
from koinon.ledger.audit import audit, audit_store_file, verify_signatures
from koinon.ledger.cuts import leader
from koinon.ledger.event import Event
from koinon.ledger.export import FORMAT, export_ledger, export_wires, iter_store_wires, load_export
from koinon.ledger.merkle import leaf_hash, root
from koinon.ledger.node import LedgerNode
from koinon.ledger.store import LedgerStore

EPOCH_MS = 1000
START_MS = 1_700_000_000_000


class FakeClock:
    def __init__(self) -> None:
        self.ms = START_MS

    def __call__(self) -> int:
        return self.ms

    def seconds(self) -> float:
        return self.ms / 1000


def identity(index: int, home: Path | None = None) -> Identity:
    """A fixed key per index; written to ``home/identity.key`` (libp2p format) when a home is given."""
    key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"koinon-test-member-%d" % index).digest())
    if home is None:
        return Identity(key, Path(f"/nonexistent/member-{index}/identity.key"))
    home.mkdir(parents=True, exist_ok=True)
    seed = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    (home / "identity.key").write_bytes(bytes([0x08, 0x01, 0x12, 0x40]) + seed + public)
    return Identity.load(home)


@dataclass
class Swarm:
    nodes: list[LedgerNode]
    clock: FakeClock

    def sync(self) -> None:
        for x in self.nodes:
            for y in self.nodes:
                if x is not y:
                    x.sync_with(y.me, lambda request, x=x, y=y: y.handle(x.me, request))

    def member(self, member_id: str) -> Identity:
        return next(n.identity for n in self.nodes if n.me == member_id)


def build_swarm(
    home: Path | None = None, rounds: int = 4, training: dict | None = None, config: bytes = b"\x01" * 32
) -> Swarm:
    """Member 0 founds (its store is ``home/ledger.sqlite`` if given), 1 and 2 join; ``rounds`` rounds, each
    recorded by all three, with ticks and syncs until the cuts covering them are final."""
    clock = FakeClock()
    if home is not None:
        home.mkdir(parents=True, exist_ok=True)
    nodes = []
    for i in range(3):
        path = home / "ledger.sqlite" if home is not None and i == 0 else ":memory:"
        store = LedgerStore(path, clock=clock.seconds)
        nodes.append(LedgerNode(store, identity(i, home if i == 0 else None), clock, epoch_ms=EPOCH_MS))
    swarm = Swarm(nodes, clock)
    a, b, c = nodes
    a.found("audit-test", training or {"model": "tiny"}, {"epoch_ms": EPOCH_MS})
    swarm.sync()
    b.append_own("join", {"maddrs": ["/ip4/127.0.0.1/tcp/31337"]})
    c.append_own("join", {"maddrs": []})
    theta = hashlib.sha256(b"initial").digest()
    for r in range(1, rounds + 1):
        new = hashlib.sha256(theta).digest()
        for n in nodes:
            body = {
                "round": r,
                "height": r,
                "theta": new,
                "prev_theta": theta,
                "state": hashlib.sha256(b"state" + new).digest(),
                "participants": sorted(m.me for m in nodes),
                "samples": 64,
                "bytes": 1000,
                "config": config,
                "gov": None,
            }
            n.append_own("round", body)
        theta = new
        for _ in range(8):
            clock.ms += EPOCH_MS // 4
            for n in nodes:
                n.tick(theta)
            swarm.sync()
    return swarm


@pytest.fixture(scope="module")
def swarm() -> Swarm:
    return build_swarm()


@pytest.fixture(scope="module")
def wires(swarm: Swarm) -> list[bytes]:
    return export_wires(swarm.nodes[0].store)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A member folder with the founder's key and its ledger.sqlite (store closed, so the WAL is merged)."""
    folder = tmp_path / "home"
    built = build_swarm(folder)
    for n in built.nodes:
        n.store.close()
    return folder


def events_of(wires: list[bytes]) -> list[Event]:
    return [Event.from_wire(w) for w in wires]


def resign(e: Event, who: Identity, **changes) -> Event:
    """The event with fields changed, signed again by ``who`` (a forger holding the author's key)."""
    fields = {
        "swarm": e.swarm,
        "seq": e.seq,
        "prev": e.prev,
        "kind": e.kind,
        "body": e.body,
        "time_ms": e.time,
        "parents": e.parents,
    }
    fields.update(changes)
    return Event.create(who, **fields)


def expect_failure(wires: list[bytes], index: int, *fragments: str, **options) -> AuditFailure:
    with pytest.raises(AuditFailure) as caught:
        audit(wires, **options)
    error = caught.value
    assert error.index == index, str(error)
    assert str(error).startswith(f"event #{index + 1} ("), str(error)
    for fragment in fragments:
        assert fragment in str(error)
    return error


# --- honest ledgers pass --------------------------------------------------------------------------------------------
def test_the_test_ledger_has_final_cuts_and_pending_events(swarm: Swarm, wires: list[bytes]) -> None:
    ids, _, cut = swarm.nodes[0].final_log()
    assert cut is not None and cut.body["index"] >= 3
    assert len(ids) < len(wires)  # some events are still pending: the export must carry them too


def test_export_then_audit_passes_and_rederives_the_state(swarm: Swarm, wires: list[bytes], tmp_path: Path) -> None:
    a = swarm.nodes[0]
    path = tmp_path / "swarm.ledger"
    assert export_ledger(a.store, path) == a.store.count()
    assert not [p for p in tmp_path.iterdir() if p.name != "swarm.ledger"]  # no temporary file left behind
    swarm_id, loaded, _ = load_export(path)
    assert swarm_id == a.store.swarm_id and loaded == wires
    assert len(set(loaded)) == len(loaded) == a.store.count()

    report = audit(loaded, expected_swarm=swarm_id)
    ids, leaves, cut = a.final_log()
    assert report.swarm == a.store.swarm_id.hex() and report.name == "audit-test"
    assert report.events == a.store.count()
    assert report.final_events == len(ids) == cut.body["size"]
    assert report.log_root == root(leaves).hex() == cut.body["root"].hex()
    assert report.final_cut == {
        "index": cut.body["index"],
        "epoch": cut.body["epoch"],
        "size": cut.body["size"],
        "root": cut.body["root"].hex(),
        "id": cut.id.hex(),
        "author": cut.author,
    }
    assert report.members == sorted(n.me for n in swarm.nodes)
    assert report.founders == [a.me]
    assert report.equivocators == [] and report.excluded == 0
    assert sum(report.kinds.values()) == report.events
    assert report.kinds["charter"] == 1 and report.kinds["join"] == 2 and report.kinds["round"] == 3 * 4
    final_rounds = [r for r in report.rounds if r["final"]]
    assert len(report.rounds) == 12 and final_rounds
    assert [r["round"] for r in final_rounds] == sorted(r["round"] for r in final_rounds)  # the total order
    assert {r["round"] for r in final_rounds} == set(range(1, max(r["round"] for r in final_rounds) + 1))
    assert report.lineage_breaks == []
    assert report.cuts["final"] == len(a.chain.final_cuts()) and report.cuts["proposed"] == len(a.chain.cuts)

    text = report.summary()
    assert text.startswith("ledger audit: OK")
    assert "members       3:" in text and "(founder)" in text
    assert f"final cut     #{cut.body['index']} " in text and report.log_root in text
    assert "equivocators  none" in text and "θ lineage     unbroken" in text


def test_every_peer_exports_the_same_bytes(swarm: Swarm, tmp_path: Path) -> None:
    exports = []
    for i, n in enumerate(swarm.nodes):
        export_ledger(n.store, tmp_path / f"peer{i}.ledger")
        exports.append((tmp_path / f"peer{i}.ledger").read_bytes())
    assert exports[0] == exports[1] == exports[2]


def test_the_export_starts_with_the_total_order(swarm: Swarm, wires: list[bytes]) -> None:
    ids, leaves, _ = swarm.nodes[0].final_log()
    assert [leaf_hash(w) for w in wires[: len(ids)]] == leaves
    assert Event.from_wire(wires[0]).kind == "charter"


def test_a_home_store_audits_row_by_row(home: Path) -> None:
    rows = list(iter_store_wires(home / "ledger.sqlite"))
    assert [r for r, _, _ in rows] == list(range(1, len(rows) + 1))
    assert all(Event.from_wire(w).id == i for _, i, w in rows)
    report = audit_store_file(home / "ledger.sqlite")
    assert report.events == len(rows) and len(report.members) == 3


def test_audit_uses_the_ledger_clock_not_the_wall_clock(wires: list[bytes]) -> None:
    # the test ledger is dated November 2023: a store on today's clock accepts it; one dated before does not
    # matter, because the audit's clock follows the newest event
    assert audit(wires).events == len(wires)


# --- tampering fails at the first bad event -------------------------------------------------------------------------
def _position(wires: list[bytes], kind: str, nth: int = 0) -> int:
    return [i for i, e in enumerate(events_of(wires)) if e.kind == kind][nth]


@pytest.mark.parametrize("kind", ["charter", "round", "cut", "cosign"])
def test_a_flipped_signature_byte_names_that_event(wires: list[bytes], kind: str) -> None:
    k = _position(wires, kind, 0 if kind == "charter" else 2)
    e = Event.from_wire(wires[k])
    offset = wires[k].index(e.sig) + 10
    bad = bytearray(wires[k])
    bad[offset] ^= 0x01
    tampered = [*wires[:k], bytes(bad), *wires[k + 1 :]]
    error = expect_failure(tampered, k, f"…{e.author[-8:]} seq {e.seq}, {kind}): bad signature")
    assert str(error) == f"event #{k + 1} (…{e.author[-8:]} seq {e.seq}, {kind}): bad signature"


def test_a_changed_body_byte_breaks_the_signature(wires: list[bytes]) -> None:
    k = _position(wires, "round", 3)
    e = Event.from_wire(wires[k])
    bad = bytearray(wires[k])
    bad[wires[k].index(e.body["theta"])] ^= 0x80
    expect_failure([*wires[:k], bytes(bad), *wires[k + 1 :]], k, "bad signature")


def test_a_broken_encoding_names_the_event_even_unparsed(wires: list[bytes]) -> None:
    k = _position(wires, "round", 1)
    tampered = [*wires[:k], wires[k][:-3], *wires[k + 1 :]]
    expect_failure(tampered, k, "not canonical CBOR")


def test_a_byte_flipped_in_the_sqlite_file_names_the_row(home: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.sqlite"
    shutil.copy(home / "ledger.sqlite", copy)
    rows = list(iter_store_wires(copy))
    rowid, event_id, wire = next(r for r in rows if Event.from_wire(r[2]).kind == "round")
    e = Event.from_wire(wire)
    bad = bytearray(wire)
    bad[wire.index(e.sig)] ^= 0xFF
    with sqlite3.connect(copy) as db:
        db.execute("UPDATE events SET wire = ? WHERE id = ?", (bytes(bad), event_id))
    with pytest.raises(AuditFailure) as caught:
        audit_store_file(copy)
    assert caught.value.index == rowid - 1
    # the event is named; the reason is whichever check meets the flipped byte first (its id, then its signature)
    prefix = f"event #{rowid} (row {rowid}: …{e.author[-8:]} seq {e.seq}, round): "
    assert str(caught.value).startswith(prefix), str(caught.value)
    assert str(caught.value)[len(prefix) :].startswith(("bad signature", "stored id")), str(caught.value)


def test_a_forged_id_column_is_caught(home: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.sqlite"
    shutil.copy(home / "ledger.sqlite", copy)
    rowid, event_id, _ = list(iter_store_wires(copy))[5]
    with sqlite3.connect(copy) as db:
        db.execute("UPDATE events SET id = ? WHERE id = ?", (b"\x00" * 32, event_id))
    with pytest.raises(AuditFailure, match=r"row 6: .*stored id 0000000000000000 is not the event's hash"):
        audit_store_file(copy)


def test_two_events_of_one_feed_swapped_fail_at_the_first_out_of_place(wires: list[bytes]) -> None:
    events = events_of(wires)
    author = events[-1].author
    feed = [i for i, e in enumerate(events) if e.author == author]
    i, j = feed[3], feed[4]
    tampered = list(wires)
    tampered[i], tampered[j] = tampered[j], tampered[i]
    expect_failure(tampered, i, f"seq {events[j].seq},", f"seq gap (expected seq {events[i].seq})")


def test_a_dropped_event_fails_where_it_is_first_needed(wires: list[bytes]) -> None:
    events = events_of(wires)
    k = _position(wires, "round", 4)
    dropped = events[k].id
    tampered = wires[:k] + wires[k + 1 :]
    first_user = next(
        i for i, e in enumerate(events_of(tampered)) if i >= k and (e.prev == dropped or dropped in e.parents)
    )
    error = expect_failure(tampered, first_user)
    assert "seq gap" in str(error) or "unknown parent" in str(error)


def test_a_prefix_of_the_total_order_audits_as_a_shorter_ledger(swarm: Swarm, wires: list[bytes]) -> None:
    ids, _, _ = swarm.nodes[0].final_log()
    report = audit(wires[: len(ids)])
    assert report.events == len(ids) and report.final_events < len(ids)


def test_missing_charter_fails_at_the_first_event(wires: list[bytes]) -> None:
    expect_failure(wires[1:], 0, "no charter yet")


def test_a_duplicate_event_is_named(wires: list[bytes]) -> None:
    expect_failure([*wires, wires[7]], len(wires), "duplicate of event #8")


def test_an_export_of_another_swarm_fails_at_its_charter(wires: list[bytes]) -> None:
    expect_failure(wires, 0, "the source says swarm 0000000000000000", expected_swarm=b"\x00" * 32)


def _cut_in_the_middle(swarm: Swarm, wires: list[bytes]) -> int:
    """Position of a final cut with a final cut after it, whose parent has all three members eligible."""
    chain = swarm.nodes[0].chain
    final = chain.final_cuts()
    events = events_of(wires)
    for info in final[1:-1]:
        if len(chain.members(info.parent)) == 3:
            return next(i for i, e in enumerate(events) if e.id == info.id)
    raise AssertionError("the test ledger has no suitable cut")


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("root", b"\x11" * 32, "bad cut: log root or size does not match"),
        ("size", None, "bad cut: log root or size does not match"),
        ("index", None, "bad cut: index"),
    ],
)
def test_a_cut_resigned_with_a_forged_value_fails_at_that_cut(
    swarm: Swarm, wires: list[bytes], field: str, value: object, reason: str
) -> None:
    k = _cut_in_the_middle(swarm, wires)
    cut = Event.from_wire(wires[k])
    body = dict(cut.body)
    body[field] = value if value is not None else body[field] + 1
    forged = resign(cut, swarm.member(cut.author), body=body)
    expect_failure([*wires[:k], forged.wire, *wires[k + 1 :]], k, f"seq {cut.seq}, cut): {reason}")


def test_a_cut_by_someone_who_does_not_lead_its_epoch_fails(swarm: Swarm, wires: list[bytes]) -> None:
    k = _cut_in_the_middle(swarm, wires)
    cut = Event.from_wire(wires[k])
    chain = swarm.nodes[0].chain
    eligible = chain.members(chain.cuts[cut.id].parent)
    epoch = next(
        e for e in range(cut.body["epoch"] + 1, cut.body["epoch"] + 100) if leader(cut.swarm, e, eligible) != cut.author
    )
    forged = resign(cut, swarm.member(cut.author), body={**cut.body, "epoch": epoch})
    expect_failure([*wires[:k], forged.wire, *wires[k + 1 :]], k, f"cut proposed in epoch {epoch}")


def _next_event(swarm: Swarm, wires: list[bytes], author: str, kind: str, body: dict) -> Event:
    """A new, validly signed event at the end of ``author``'s feed in ``wires``."""
    head = [e for e in events_of(wires) if e.author == author][-1]
    return Event.create(
        swarm.member(author),
        swarm=head.swarm,
        seq=head.seq + 1,
        prev=head.id,
        kind=kind,
        body=body,
        time_ms=head.time + 1,
    )


def test_a_second_cosign_in_one_epoch_fails(swarm: Swarm, wires: list[bytes]) -> None:
    cosign = [e for e in events_of(wires) if e.kind == "cosign"][-1]
    extra = _next_event(swarm, wires, cosign.author, "cosign", {"epoch": cosign.body["epoch"], "cut": b"\x07" * 32})
    expect_failure([*wires, extra.wire], len(wires), f"a second cosign in epoch {cosign.body['epoch']}")


def test_equivocation_is_reported_not_failed(swarm: Swarm, wires: list[bytes]) -> None:
    last = events_of(wires)[-1]
    twin = resign(last, swarm.member(last.author), time_ms=last.time + 5)
    report = audit([*wires, twin.wire])
    assert report.equivocators == [last.author]
    assert report.excluded == 1
    assert f"equivocators  …{last.author[-8:]}" in report.summary()


def test_an_equivocation_event_with_a_valid_proof_names_the_equivocator(swarm: Swarm, wires: list[bytes]) -> None:
    events = events_of(wires)
    c = swarm.nodes[2].me
    original = [e for e in events if e.author == c][3]
    twin = resign(original, swarm.member(c), body={**original.body}, time_ms=original.time + 1)
    a, b = sorted([original.wire, twin.wire])
    proof = _next_event(swarm, wires, swarm.nodes[1].me, "equivocation", {"a": a, "b": b})
    report = audit([*wires, proof.wire])
    assert report.equivocators == [c]


@pytest.mark.parametrize("broken", ["same", "garbage"])
def test_an_equivocation_event_with_a_bad_proof_fails(swarm: Swarm, wires: list[bytes], broken: str) -> None:
    original = events_of(wires)[5]
    body = {"a": original.wire, "b": original.wire} if broken == "same" else {"a": b"\x01", "b": b"\x02"}
    proof = _next_event(swarm, wires, swarm.nodes[1].me, "equivocation", body)
    # the replay store itself refuses a proof that does not hold, naming the event
    expect_failure([*wires, proof.wire], len(wires), "equivocation proof does not hold")


def test_an_empty_ledger_fails() -> None:
    with pytest.raises(AuditFailure, match="empty"):
        audit([])


# --- the export file ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\x00", "not canonical CBOR"),
        (cbor.encode([1, 2]), "not a Koinon ledger export"),
        (cbor.encode({"format": "other/v9", "swarm": b"", "events": []}), "has format 'other/v9'"),
        (cbor.encode({"format": FORMAT, "swarm": b"x", "events": []}), "swarm is not a 32-byte id"),
        (cbor.encode({"format": FORMAT, "swarm": b"", "events": [b"ok", 3]}), "event #2 is not a byte string"),
    ],
)
def test_a_malformed_export_file_is_an_audit_failure(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.ledger"
    path.write_bytes(content)
    with pytest.raises(AuditFailure, match=message):
        load_export(path)


def test_a_missing_export_file_is_an_audit_failure(tmp_path: Path) -> None:
    with pytest.raises(AuditFailure, match="cannot read export file"):
        load_export(tmp_path / "nope.ledger")


def test_iter_store_wires_refuses_a_file_that_is_not_a_ledger(tmp_path: Path) -> None:
    with pytest.raises(AuditFailure, match="no ledger"):
        list(iter_store_wires(tmp_path / "missing.sqlite"))
    (tmp_path / "x.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(AuditFailure):
        list(iter_store_wires(tmp_path / "x.sqlite"))


# --- the pieces ---------------------------------------------------------------------------------------------------------
def test_the_compact_range_root_is_the_rfc_9162_root() -> None:
    leaves = [leaf_hash(bytes([i])) for i in range(70)]
    compact: list = []
    for n in range(len(leaves) + 1):
        assert merkle.range_root(compact) == root(leaves[:n]), n
        if n < len(leaves):
            compact = merkle.extend_range(compact, [leaves[n]])
    assert merkle.range_root(merkle.extend_range([], leaves)) == root(leaves)


@pytest.mark.parametrize("workers", [1, 2])
def test_signatures_verify_in_parallel_chunks(wires: list[bytes], workers: int) -> None:
    many = (wires * (2 * audit_module.CHUNK // len(wires) + 2))[: 2 * audit_module.CHUNK + 17]
    bad = bytearray(many[1500])
    bad[bytes(bad).index(Event.from_wire(many[1500]).sig)] ^= 0x01
    many[1500] = bytes(bad)
    many[3] = b"\x00garbage"
    ok = verify_signatures(many, workers=workers)
    assert len(ok) == len(many)
    assert [i for i, good in enumerate(ok) if not good] == [3, 1500]


# --- the CLI, in-process (cli/ledger_cmds.run) ----------------------------------------------------------------------
def cli(capsys, *argv: str) -> tuple[int, str, str]:
    from koinon.cli.ledger_cmds import run

    code = run([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_audit_home_and_file(home: Path, tmp_path: Path, capsys) -> None:
    code, out, err = cli(capsys, "audit", "--home", home)
    assert code == 0 and out.startswith("ledger audit: OK") and err == ""
    export = tmp_path / "swarm.ledger"
    code, out, _ = cli(capsys, "ledger", "export", export, "--home", home)
    assert code == 0 and "exported" in out
    code, out, _ = cli(capsys, "audit", "--file", export)
    assert code == 0 and "members       3" in out


def test_cli_audit_failure_exits_1_with_one_line(home: Path, tmp_path: Path, capsys) -> None:
    swarm_id, wires = load_export_from_home(home, tmp_path)
    k = _position(wires, "cosign", 1)
    bad = bytearray(wires[k])
    bad[-1] ^= 0x01
    tampered = tmp_path / "tampered.ledger"
    tampered.write_bytes(
        cbor.encode({"format": FORMAT, "swarm": swarm_id, "events": [*wires[:k], bytes(bad), *wires[k + 1 :]]})
    )
    code, out, err = cli(capsys, "audit", "--file", tampered)
    assert code == 1 and out == ""
    assert err.startswith(f"koinon: error: audit failed: event #{k + 1} (") and err.count("\n") == 1


def load_export_from_home(home: Path, tmp_path: Path) -> tuple[bytes, list[bytes]]:
    store = LedgerStore(home / "ledger.sqlite")
    try:
        export_ledger(store, tmp_path / "h.ledger")
    finally:
        store.close()
    return load_export(tmp_path / "h.ledger")[:2]


def test_cli_log_lists_final_then_pending(home: Path, capsys) -> None:
    code, out, _ = cli(capsys, "ledger", "log", "--home", home)
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("POS")
    assert lines[1].startswith("#0 ") and " charter " in lines[1] and "'audit-test'" in lines[1]
    assert any(line.startswith("pending ") for line in lines)
    assert any(" round height 2 θ " in line for line in lines) and any("(final)" in line for line in lines)
    assert "2023-11-14T22:13:20Z" in lines[1]
    code, out, _ = cli(capsys, "ledger", "log", "--home", home, "--kind", "round", "-n", "2")
    body = out.splitlines()[1:-1]
    assert code == 0 and len(body) == 2 and all(" round " in line for line in body)
    assert out.splitlines()[-1].startswith("2 of 12 events shown")
    tail = identity(0).member_id[-8:]
    code, out, _ = cli(capsys, "ledger", "log", "--home", home, "--author", tail, "--kind", "charter")
    assert code == 0 and len(out.splitlines()) == 3


def _final_event_id(home: Path, kind: str) -> str:
    from koinon.ledger.export import total_order

    store = LedgerStore(home / "ledger.sqlite")
    try:
        order = total_order(store)
        return next(e for e in order.final if e.kind == kind).id.hex()
    finally:
        store.close()


def test_cli_inclusion_proof_verifies_and_tampering_fails(home: Path, tmp_path: Path, capsys) -> None:
    event_id = _final_event_id(home, "round")
    proof = tmp_path / "proof.json"
    code, out, _ = cli(capsys, "ledger", "proof", event_id[:10], "--home", home, "--out", proof)
    assert code == 0 and f"wrote the inclusion proof of event {event_id[:16]}" in out
    code, out, err = cli(capsys, "ledger", "verify-proof", proof)
    assert code == 0 and out.startswith(f"proof OK: event {event_id[:16]}") and err == ""
    code, out, _ = cli(capsys, "ledger", "proof", event_id, "--home", home)  # to stdout
    assert code == 0 and json.loads(out)["type"] == "inclusion"

    original = json.loads(proof.read_text())
    other_cut = [e for e in events_of(load_export_from_home(home, tmp_path)[1]) if e.kind == "cut"][0]

    def flip_hex(text: str, at: int = 0) -> str:
        return text[:at] + ("1" if text[at] == "0" else "0") + text[at + 1 :]

    tamperings = {
        "index": lambda o: o["proof"].update(index=o["proof"]["index"] + 1),
        "path": lambda o: o["proof"]["path"].__setitem__(0, flip_hex(o["proof"]["path"][0])),
        "leaf": lambda o: o["proof"].update(leaf=flip_hex(o["proof"]["leaf"], 40)),
        "root": lambda o: o["proof"].update(root=flip_hex(o["proof"]["root"])),
        "cut signature": lambda o: o.update(cut=flip_hex(o["cut"], len(o["cut"]) - 2)),
        "another cut": lambda o: o.update(cut=other_cut.wire.hex()),
        "a cosign": lambda o: o["cosigns"].__setitem__(0, other_cut.wire.hex()),
        "missing field": lambda o: o.pop("cosigns"),
        "format": lambda o: o.update(format="koinon-proof/v0"),
    }
    for name, tamper in tamperings.items():
        changed = json.loads(json.dumps(original))
        tamper(changed)
        proof.write_text(json.dumps(changed))
        code, out, err = cli(capsys, "ledger", "verify-proof", proof)
        assert code == 1, name
        assert out == "" and err.startswith("koinon: error: proof does not verify: "), (name, err)
    proof.write_text('{"format": "koinon-proof/v1", "format": "koinon-proof/v1"}')
    assert cli(capsys, "ledger", "verify-proof", proof)[0] == 1
    proof.write_text("not json")
    assert cli(capsys, "ledger", "verify-proof", proof)[0] == 1


def test_cli_a_bare_merkle_proof_file_verifies_too(home: Path, tmp_path: Path, capsys) -> None:
    proof = tmp_path / "proof.json"
    assert cli(capsys, "ledger", "proof", _final_event_id(home, "join"), "--home", home, "--out", proof)[0] == 0
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(json.loads(proof.read_text())["proof"]))
    code, out, _ = cli(capsys, "ledger", "verify-proof", bare)
    assert code == 0 and out.startswith("proof OK: leaf")


def test_cli_consistency_proof_verifies_and_tampering_fails(home: Path, tmp_path: Path, capsys) -> None:
    proof = tmp_path / "grow.json"
    for size in (0, 1, 5):
        code, _, err = cli(capsys, "ledger", "consistency", "--home", home, "--from-size", size, "--out", proof)
        assert code == 0, err
        code, out, err = cli(capsys, "ledger", "verify-proof", proof)
        assert code == 0 and out.startswith(f"proof OK: the log of size {size} "), err
    original = json.loads(proof.read_text())
    tamperings = {
        "old size": lambda o: o["proof"].update(old_size=4),
        "new size": lambda o: o["proof"].update(new_size=o["proof"]["new_size"] + 1),
        "old root": lambda o: o["proof"].update(old_root="00" * 32),
        "path": lambda o: o["proof"]["path"].__setitem__(-1, "ab" * 32),
        "cut": lambda o: o.update(cut=o["cut"][:-2] + ("00" if o["cut"][-2:] != "00" else "01")),
    }
    for name, tamper in tamperings.items():
        changed = json.loads(json.dumps(original))
        tamper(changed)
        proof.write_text(json.dumps(changed))
        code, _, err = cli(capsys, "ledger", "verify-proof", proof)
        assert code == 1 and err.startswith("koinon: error: proof does not verify: "), name


def test_cli_consistency_from_an_earlier_final_cut_includes_it(home: Path, tmp_path: Path, capsys) -> None:
    store = LedgerStore(home / "ledger.sqlite")
    try:
        from koinon.ledger.export import total_order

        earlier = total_order(store).chain.final_cuts()[1].event
    finally:
        store.close()
    proof = tmp_path / "grow.json"
    size = earlier.body["size"]
    assert cli(capsys, "ledger", "consistency", "--home", home, "--from-size", size, "--out", proof)[0] == 0
    obj = json.loads(proof.read_text())
    assert obj["old_cut"] == earlier.wire.hex()
    assert cli(capsys, "ledger", "verify-proof", proof)[0] == 0
    obj["proof"]["old_root"], obj["proof"]["path"] = "11" * 32, obj["proof"]["path"]
    proof.write_text(json.dumps(obj))
    assert cli(capsys, "ledger", "verify-proof", proof)[0] == 1


def test_cli_proof_errors_are_one_line(home: Path, capsys) -> None:
    from koinon.ledger.export import total_order

    store = LedgerStore(home / "ledger.sqlite")
    try:
        pending = total_order(store).pending[-1].id.hex()
    finally:
        store.close()
    cases = {
        (pending[:12],): "is not final yet",
        ("00000000",): "no event with id 00000000",
        ("abc",): "at least 8 hex digits",
        ("zzzzzzzzzz",): "not hexadecimal",
    }
    for argv, message in cases.items():
        code, _, err = cli(capsys, "ledger", "proof", *argv, "--home", home)
        assert code == 2 and err.startswith("koinon: error: ") and message in err and err.count("\n") == 1
    code, _, err = cli(capsys, "ledger", "consistency", "--home", home, "--from-size", 10**6)
    assert code == 2 and "--from-size must be between 0 and" in err


def test_cli_without_a_ledger_says_where_it_looked(tmp_path: Path, capsys) -> None:
    for argv in (["ledger", "log"], ["ledger", "export", tmp_path / "x"], ["audit"]):
        code, _, err = cli(capsys, *argv, "--home", tmp_path / "empty")
        assert code == 2 and "no ledger at" in err and err.count("\n") == 1, argv
    assert not (tmp_path / "empty").exists()  # reading never creates a ledger


def test_audit_checks_each_round_against_the_configuration_in_force():
    from koinon.config import TrainingConfig
    from koinon.governance.charter import training_body

    config = TrainingConfig(inner_steps=7)
    honest = build_swarm(rounds=2, training=training_body(config), config=bytes.fromhex(config.config_hash()))
    report = audit(export_wires(honest.nodes[0].store))
    assert report.governance["config"] == config.config_hash()
    assert report.governance["config_mismatches"] == []
    assert "every final round trained under the configuration in force" in report.summary()

    lying = build_swarm(rounds=2, training=training_body(config), config=b"\x01" * 32)
    report = audit(export_wires(lying.nodes[0].store))
    bad = report.governance["config_mismatches"]
    assert bad and {m["round"] for m in bad} <= {1, 2} and all(m["claimed"] == "01" * 32 for m in bad)
    assert all(m["in_force"] == config.config_hash() for m in bad)
    assert "claims configuration 010101010101" in report.summary()
