"""Ledger exports: one self-contained file that anyone can audit offline (DESIGN §6, ``koinon ledger export``).

An export is one canonical CBOR map (``ledger/cbor.py``)::

    {"format": "koinon-ledger/v1", "swarm": bytes(32) | b"", "events": [wire, …]}

with the events in an order that replays from genesis: first the **total order** (the charter, then the batches
of every final cut, exactly as :meth:`~koinon.ledger.node.LedgerNode.final_log` gives it), then every other
stored event (not final yet, or on a branch that lost) in canonical causal order — parents and ``prev`` first,
smallest id first among the ready — so two peers holding the same events write the same bytes.

Also here: :func:`total_order` (the final log of a store, for the CLI and the export) and
:func:`iter_store_wires`, which reads a peer's ``ledger.sqlite`` row by row for an audit without trusting
anything but the signed bytes.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from koinon.errors import AuditFailure
from koinon.ledger import cbor
from koinon.ledger.cuts import GENESIS, Chain, canonical_order
from koinon.ledger.event import Event
from koinon.ledger.merkle import leaf_hash
from koinon.ledger.store import LedgerStore

FORMAT = "koinon-ledger/v1"


@dataclass
class TotalOrder:
    """A store's view of the ledger: its chain of cuts, the final log and the events not final yet."""

    chain: Chain
    final: list[Event]  # the total order (final events), oldest first
    leaves: list[bytes]  # RFC 9162 leaf hashes of ``final``
    cut: Event | None  # the last final cut (its body has root/size of ``leaves``); None before the first
    pending: list[Event]  # every other stored event, in canonical causal order
    final_cut_ids: set[bytes]  # ids of the final cuts

    def position(self) -> dict[bytes, int]:
        """{event id: index in the total order} of the final events."""
        return {e.id: index for index, e in enumerate(self.final)}


def load_chain(store: LedgerStore) -> tuple[Chain, list[Event]]:
    """A :class:`Chain` fed with every stored event (as a ledger node builds its own), and those events."""
    chain = Chain(store)
    events = list(store.iter_events())
    for e in events:
        chain.observe(e)
    return chain, events


def total_order(store: LedgerStore) -> TotalOrder:
    """The final log of ``store`` (mirrors ``LedgerNode.final_log``, which needs an identity) and the rest."""
    chain, events = load_chain(store)
    final = chain.final_cuts()
    ids = chain.order_through(final[-1].id if final else GENESIS)
    by_id = {e.id: e for e in events}
    # a running peer may store events while we read: the chain reads the store live, so fetch any newcomer
    ordered = [by_id[i] if i in by_id else store.get(i) for i in ids]
    leaves = [leaf_hash(e.wire) for e in ordered]
    final_ids = set(ids)
    pending = canonical_order([e for e in events if e.id not in final_ids], final_ids)
    cut = final[-1].event if final else None
    return TotalOrder(chain, ordered, leaves, cut, pending, {c.id for c in final})


def export_wires(store: LedgerStore) -> list[bytes]:
    """Every stored event's wire bytes, in replay order (the total order first, then the pending events)."""
    order = total_order(store)
    return [e.wire for e in order.final + order.pending]


def export_ledger(store: LedgerStore, path: Path | str) -> int:
    """Write the export file atomically (temporary file, fsync, rename, fsync of the folder); returns the number of
    events written. A crash leaves either the old file or the new one, never half of one."""
    wires = export_wires(store)
    obj = {"format": FORMAT, "swarm": store.swarm_id or b"", "events": wires}
    quarantined = store.quarantined_wires()
    if quarantined:  # an equivocator's events that honest events cite as parents (docs/ledger.md §4)
        obj["quarantine"] = quarantined
    data = cbor.encode(obj)
    write_atomically(Path(path), data)
    return len(wires)


def write_atomically(path: Path, data: bytes) -> None:
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def load_export(path: Path | str) -> tuple[bytes, list[bytes], list[bytes]]:
    """(swarm id, event wires, quarantined wires) of an export file; AuditFailure if it is not an export."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise AuditFailure(f"cannot read export file {path}: {e.strerror or e}") from None
    try:
        obj = cbor.decode(data)
    except cbor.NonCanonical as e:
        raise AuditFailure(f"export file {path} is not canonical CBOR: {e}") from None
    if not isinstance(obj, dict) or not {"format", "swarm", "events"} <= set(obj) <= {
        "format",
        "swarm",
        "events",
        "quarantine",
    }:
        raise AuditFailure(f"export file {path} is not a Koinon ledger export (a map of format, swarm, events)")
    if obj["format"] != FORMAT:
        raise AuditFailure(f"export file {path} has format {obj['format']!r}; this version reads {FORMAT!r}")
    swarm, events = obj["swarm"], obj["events"]
    if not isinstance(swarm, bytes) or len(swarm) not in (0, 32):
        raise AuditFailure(f"export file {path}: swarm is not a 32-byte id")
    if not isinstance(events, list):
        raise AuditFailure(f"export file {path}: events is not an array")
    for index, wire in enumerate(events):
        if not isinstance(wire, bytes):
            raise AuditFailure(f"export file {path}: event #{index + 1} is not a byte string")
    quarantine = obj.get("quarantine", [])
    if not isinstance(quarantine, list) or not all(isinstance(w, bytes) for w in quarantine):
        raise AuditFailure(f"export file {path}: quarantine is not an array of byte strings")
    return swarm, events, quarantine


def store_quarantine(path: Path | str) -> list[bytes]:
    """The quarantined wires of a peer's ledger.sqlite (an equivocator's events, kept for parent resolution)."""
    db = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True)
    try:
        return [w for (w,) in db.execute("SELECT wire FROM quarantine ORDER BY id")]
    except sqlite3.Error:
        return []  # a ledger written before quarantine existed
    finally:
        db.close()


def iter_store_wires(path: Path | str) -> Iterator[tuple[int, bytes, bytes]]:
    """(rowid, stored id, wire) of every row of a ``ledger.sqlite``, in the order the store inserted them.

    The file is opened read-only and nothing but the bytes is trusted: the audit recomputes each id from the wire
    and compares. Insertion (rowid) order replays, since the store inserts an event only after its parents;
    the ``received`` column has millisecond ties, so it is not used."""
    path = Path(path)
    if not path.is_file():
        raise AuditFailure(f"no ledger at {path}")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise AuditFailure(f"cannot open {path}: {e}") from None
    try:
        try:
            cursor = db.execute("SELECT rowid, id, wire FROM events ORDER BY rowid")
        except sqlite3.Error as e:
            raise AuditFailure(f"{path} is not a Koinon ledger: {e}") from None
        yield from cursor
    finally:
        db.close()
