"""`koinon audit` and `koinon ledger …` as a user types them, against a member folder the test prepares.

The folder holds the founder's key and a real ``ledger.sqlite`` written by ``LedgerNode`` (three members with
fixed keys on a fake clock, synced directly until cuts are final). Each command runs in a fresh interpreter with
``KOINON_HOME`` pointing there. Until ``koinon.cli.main`` registers these commands, the same code runs through
``python -m koinon.cli.ledger_cmds`` (the stand-alone entry point), and the test that needs the real ``koinon``
parser is skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from koinon.identity import Identity
from koinon.ledger.event import Event
from koinon.ledger.export import total_order
from koinon.ledger.node import LedgerNode
from koinon.ledger.store import LedgerStore


def _registered() -> bool:
    from koinon.cli import main

    parser = main._parser()
    return any(
        isinstance(action, argparse._SubParsersAction) and {"audit", "ledger"} <= set(action.choices)
        for action in parser._actions
    )


REGISTERED = _registered()
ENTRY = ["-m", "koinon"] if REGISTERED else ["-m", "koinon.cli.ledger_cmds"]


def koinon(*args: object, home: Path, timeout: float = 120.0) -> subprocess.CompletedProcess:
    env = dict(os.environ, KOINON_HOME=str(home), PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, *ENTRY, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=home.parent,
    )


def one_error_line(result: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("koinon: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# --- the member folder ----------------------------------------------------------------------------------------------
def _key(index: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"koinon-e2e-member-%d" % index).digest())


def _prepare_home(home: Path) -> None:
    home.mkdir(parents=True)
    key = _key(0)
    seed = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    (home / "identity.key").write_bytes(bytes([0x08, 0x01, 0x12, 0x40]) + seed + public)
    now = [1_700_000_000_000]
    clock = lambda: now[0]
    identities = [Identity.load(home)] + [Identity(_key(i), home / f"unused-{i}") for i in (1, 2)]
    stores = [LedgerStore(home / "ledger.sqlite", clock=lambda: now[0] / 1000)]
    stores += [LedgerStore(":memory:", clock=lambda: now[0] / 1000) for _ in (1, 2)]
    nodes = [LedgerNode(s, i, clock, epoch_ms=1000) for s, i in zip(stores, identities, strict=True)]

    def sync() -> None:
        for x in nodes:
            for y in nodes:
                if x is not y:
                    x.sync_with(y.me, lambda request, x=x, y=y: y.handle(x.me, request))

    nodes[0].found("e2e", {"model": "tiny"}, {"epoch_ms": 1000})
    sync()
    for n in nodes[1:]:
        n.append_own("join", {"maddrs": []})
    theta = b"\x00" * 32
    for r in range(1, 4):
        new = hashlib.sha256(theta).digest()
        for n in nodes:
            participants = sorted(m.me for m in nodes)
            n.append_own(
                "round",
                {"round": r, "height": r, "theta": new, "prev_theta": theta, "participants": participants}
                | {"state": hashlib.sha256(b"state" + new).digest(), "samples": 8, "bytes": 10}
                | {"config": b"\x02" * 32, "gov": None},
            )
        theta = new
        for _ in range(8):
            now[0] += 250
            for n in nodes:
                n.tick(theta)
            sync()
    for s in stores:
        s.close()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("ledger-cli") / "home"
    _prepare_home(home)
    return home


@pytest.fixture
def home(prepared: Path, tmp_path: Path) -> Path:
    """A private copy of the prepared member folder (tests may tamper with it)."""
    folder = tmp_path / "home"
    shutil.copytree(prepared, folder)
    return folder


def _order(home: Path):
    store = LedgerStore(home / "ledger.sqlite")
    try:
        return total_order(store)
    finally:
        store.close()


# --- tests ----------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(
    not REGISTERED, reason="koinon.cli.main does not register ledger_cmds yet (see ledger_cmds.register)"
)
def test_koinon_lists_the_ledger_commands(home: Path) -> None:
    result = koinon("--help", home=home)
    assert result.returncode == 0 and "audit" in result.stdout and "ledger" in result.stdout


@pytest.mark.parametrize(
    "argv", [["audit"], ["ledger"], *[["ledger", c] for c in ("log", "proof", "consistency", "verify-proof", "export")]]
)
def test_every_command_has_help_with_an_example(home: Path, argv: list[str]) -> None:
    result = koinon(*argv, "--help", home=home)
    assert result.returncode == 0, result.stderr
    assert "example" in result.stdout and "koinon " in result.stdout.split("example")[-1]


def test_audit_of_the_member_folder_passes(home: Path) -> None:
    result = koinon("audit", home=home)  # --home defaults to $KOINON_HOME
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ledger audit: OK") and result.stderr == ""
    assert "members       3:" in result.stdout and "'e2e'" in result.stdout


def test_export_then_audit_the_file(home: Path) -> None:
    export = home.parent / "swarm.ledger"
    result = koinon("ledger", "export", export, home=home)
    assert result.returncode == 0 and export.is_file(), result.stderr
    result = koinon("audit", "--file", export, home=home.parent / "nobody")
    assert result.returncode == 0 and "ledger audit: OK" in result.stdout, result.stderr


def test_a_tampered_ledger_fails_the_audit_naming_the_row(home: Path) -> None:
    path = home / "ledger.sqlite"
    with sqlite3.connect(path) as db:
        rowid, event_id, wire = db.execute(
            "SELECT rowid, id, wire FROM events WHERE kind = 'round' ORDER BY rowid LIMIT 1 OFFSET 2"
        ).fetchone()
        e = Event.from_wire(wire)
        bad = bytearray(wire)
        bad[wire.index(e.sig) + 7] ^= 0x40
        db.execute("UPDATE events SET wire = ? WHERE id = ?", (bytes(bad), event_id))
    line = one_error_line(koinon("audit", "--home", home, home=home), 1, "audit failed")
    # the flipped byte changes the event's hash, so the stored id no longer matches: the row is named either way
    prefix = f"koinon: error: audit failed: event #{rowid} (row {rowid}: …{e.author[-8:]} seq {e.seq}, round): "
    assert line.startswith(prefix), line
    assert line[len(prefix) :].startswith(("stored id", "bad signature")), line


def test_log_lists_events_with_positions(home: Path) -> None:
    result = koinon("ledger", "log", home=home)
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and lines[0].startswith("POS")
    assert lines[1].startswith("#0 ") and "charter 'e2e'" in lines[1]
    assert any(line.startswith("pending") for line in lines) and any(" cosign → cut #" in line for line in lines)
    result = koinon("ledger", "log", "--kind", "round", "-n", "3", home=home)
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 5


def test_inclusion_proof_round_trip_and_a_tampered_copy(home: Path) -> None:
    event = next(e for e in _order(home).final if e.kind == "round")
    proof = home.parent / "proof.json"
    result = koinon("ledger", "proof", event.id.hex()[:12], "--out", proof, home=home)
    assert result.returncode == 0, result.stderr
    result = koinon("ledger", "verify-proof", proof, home=home.parent / "nobody")
    assert result.returncode == 0 and result.stdout.startswith(f"proof OK: event {event.id.hex()[:16]}")
    obj = json.loads(proof.read_text())
    obj["proof"]["index"] += 1
    proof.write_text(json.dumps(obj))
    one_error_line(koinon("ledger", "verify-proof", proof, home=home), 1, "proof does not verify")


def test_consistency_proof_round_trip(home: Path) -> None:
    proof = home.parent / "grow.json"
    result = koinon("ledger", "consistency", "--from-size", 3, "--out", proof, home=home)
    assert result.returncode == 0, result.stderr
    result = koinon("ledger", "verify-proof", proof, home=home)
    assert result.returncode == 0 and result.stdout.startswith("proof OK: the log of size 3 ")


def test_proof_of_a_pending_event_is_a_clear_error(home: Path) -> None:
    pending = _order(home).pending[-1]
    one_error_line(koinon("ledger", "proof", pending.id.hex(), home=home), 2, "not final yet")
    one_error_line(koinon("ledger", "proof", "deadbeef00", home=home), 2, "no event with id deadbeef00")
