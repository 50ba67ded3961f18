"""``koinon audit`` and ``koinon ledger …``: audit a ledger offline; list, prove and export this peer's ledger.

``register(sub)`` adds the commands to ``koinon``'s subparsers and :func:`main_commands` maps their names to
handlers; :func:`run` is a stand-alone ``koinon`` with only these commands (``python -m koinon.cli.ledger_cmds``).

Proof files (``koinon ledger proof`` / ``consistency``) are JSON envelopes around the Merkle proof files of
``ledger/merkle.py``::

    {"format": "koinon-proof/v1", "type": "inclusion" | "consistency",
     "proof": {…InclusionProof or ConsistencyProof…},
     "cut": hex wire of the final cut whose root the proof reaches (its author's signed tree head),
     "old_cut": hex wire | null (consistency only: the earlier final cut of that size, when there is one),
     "cosigns": [hex wire, …] (the cut's cosignatures)}

``koinon ledger verify-proof`` checks one offline: the Merkle path, the event's and the cut's signatures, and that
the cut's signed root and size are the proof's. (Whether the cut is final needs the ledger: ``koinon audit``.)
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from koinon.cli.common import add_command, default_home, run_standalone
from koinon.errors import AuditFailure, ConfigError, InvalidEvent, InvalidProof, LedgerError

PROOF_FORMAT = "koinon-proof/v1"
LEDGER_FILE = "ledger.sqlite"

EPILOG = {
    "audit": (
        "examples:\n"
        "  koinon audit                              # this peer's ledger ($KOINON_HOME/ledger.sqlite)\n"
        "  koinon audit --file swarm.ledger          # an export, from anyone\n"
        "exit status: 0 when everything verifies, 1 when the audit fails (the first bad event is named)"
    ),
    "ledger": (
        "examples:\n"
        "  koinon ledger log -n 20                   # the 20 newest events\n"
        "  koinon ledger proof 3f2a9c1e --out p.json # prove an event is in the final log\n"
        "  koinon ledger verify-proof p.json         # check a proof offline\n"
        "  koinon ledger export swarm.ledger         # a file `koinon audit --file` replays"
    ),
    "log": (
        "examples:\n"
        "  koinon ledger log\n"
        "  koinon ledger log --kind round -n 10\n"
        "  koinon ledger log --author 5YcMZFtq       # an author's member id, or its tail"
    ),
    "proof": ("example:\n  koinon ledger proof 3f2a9c1e5b7d --out proof.json && koinon ledger verify-proof proof.json"),
    "consistency": (
        "example:\n  koinon ledger consistency --from-size 120 --out grow.json && koinon ledger verify-proof grow.json"
    ),
    "verify-proof": "examples:\n  koinon ledger verify-proof proof.json\n  koinon ledger verify-proof grow.json",
    "export": "example:\n  koinon ledger export swarm.ledger && koinon audit --file swarm.ledger",
}


def _add(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    return add_command(sub, name, help_text, EPILOG.get(name))


def register(sub) -> None:
    """Add ``audit`` and ``ledger`` to ``koinon``'s subparsers (``argparse._SubParsersAction``)."""

    def home_option(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--home", type=Path, default=default_home(), help="member folder (default: $KOINON_HOME or ~/.koinon)"
        )

    sp = _add(sub, "audit", "Replay a ledger from genesis and verify every signature, link, cut and root.")
    source = sp.add_mutually_exclusive_group()
    source.add_argument(
        "--home", type=Path, default=default_home(), help="audit this member folder's ledger (default: $KOINON_HOME)"
    )
    source.add_argument("--file", type=Path, default=None, metavar="EXPORT", help="audit an export file instead")

    sp = _add(sub, "ledger", "Read this peer's ledger: list events, prove inclusion or consistency, export it.")
    ledger_sub = sp.add_subparsers(dest="ledger_command", metavar="SUBCOMMAND")
    sp.set_defaults(ledger_parser=sp)

    lp = _add(ledger_sub, "log", "List the ledger's events, oldest first: final ones in the total order, then pending.")
    home_option(lp)
    lp.add_argument("--kind", default=None, help="only events of this kind (round, cut, cosign, join, …)")
    lp.add_argument("--author", default=None, help="only events by this member (its id, or the id's last characters)")
    lp.add_argument("-n", type=int, default=None, metavar="N", help="only the N newest matching events")

    lp = _add(ledger_sub, "proof", "Prove that an event is in the log of the latest final cut (JSON proof file).")
    lp.add_argument("event_id", metavar="EVENT_ID", help="the event's id in hex, or a unique prefix of 8+ digits")
    home_option(lp)
    lp.add_argument("--out", type=Path, default=None, metavar="FILE", help="write the proof here (default: stdout)")

    lp = _add(ledger_sub, "consistency", "Prove that the log at an earlier size is a prefix of the latest final log.")
    home_option(lp)
    lp.add_argument("--from-size", type=int, required=True, metavar="N", help="the earlier log size (tree size)")
    lp.add_argument("--out", type=Path, default=None, metavar="FILE", help="write the proof here (default: stdout)")

    lp = _add(ledger_sub, "verify-proof", "Check an inclusion or consistency proof file offline (no swarm needed).")
    lp.add_argument("file", type=Path, metavar="FILE", help="a file written by `koinon ledger proof|consistency`")

    lp = _add(ledger_sub, "export", "Write every event of this peer's ledger to one file that anyone can audit.")
    lp.add_argument("file", type=Path, metavar="FILE", help="the export file to write (replaced atomically)")
    home_option(lp)


def main_commands() -> dict[str, Callable[[argparse.Namespace], int]]:
    """{command name: handler(args) → exit status} for ``koinon``'s dispatch table."""
    return {"audit": cmd_audit, "ledger": cmd_ledger}


def run(argv: list[str] | None = None) -> int:
    """A ``koinon`` with only these commands, with the same error handling as ``koinon.cli.main.main``."""
    return run_standalone(register, main_commands, argv)


# --- audit --------------------------------------------------------------------------------------------------------
def cmd_audit(args: argparse.Namespace) -> int:
    from koinon.ledger.audit import audit, audit_store_file
    from koinon.ledger.export import load_export

    try:
        if args.file is not None:
            swarm, wires, quarantine = load_export(args.file)
            report = audit(wires, expected_swarm=swarm, quarantine=quarantine)
        else:
            report = audit_store_file(_ledger_path(args.home))
    except AuditFailure as e:
        if getattr(args, "verbose", False):
            raise
        print(f"koinon: error: audit failed: {e}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


# --- ledger … -------------------------------------------------------------------------------------------------------
def cmd_ledger(args: argparse.Namespace) -> int:
    handlers = {
        "log": cmd_log,
        "proof": cmd_proof,
        "consistency": cmd_consistency,
        "verify-proof": cmd_verify_proof,
        "export": cmd_export,
    }
    if args.ledger_command is None:
        args.ledger_parser.print_help()
        return 2
    return handlers[args.ledger_command](args)


def _ledger_path(home: Path) -> Path:
    path = Path(home) / LEDGER_FILE
    if not path.is_file():
        raise LedgerError(f"no ledger at {path}: is --home (or $KOINON_HOME) the folder of a peer that has run?")
    return path


def _open_store(home: Path):
    from koinon.ledger.store import LedgerStore

    path = _ledger_path(home)
    try:
        return LedgerStore(path)
    except sqlite3.Error as e:
        raise LedgerError(f"cannot read the ledger {path}: {e}") from None


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _short(data: bytes, n: int = 8) -> str:
    return data.hex()[:n] + "…"


def cut_state(order, cut_id: bytes) -> str:
    """A cut's state in the total order: final, notarized or (only) proposed."""
    if cut_id in order.final_cut_ids:
        return "final"
    return "notarized" if order.chain.notarized(cut_id) else "proposed"


def body_summary(e, order) -> str:
    """One line about an event's body, for `koinon ledger log`."""
    b = e.body
    if e.kind == "charter":
        return f"charter {b['name']!r}, {len(b['founders'])} founder(s)"
    if e.kind == "join":
        return f"join, {len(b['maddrs'])} address(es)"
    if e.kind == "leave":
        return f"leave: {b['reason']}"
    if e.kind == "round":
        return (
            f"round height {b['height']} θ {_short(b['theta'])} ← {_short(b['prev_theta'])}, attempt {b['round']}, "
            f"{len(b['participants'])} contributor(s), {b['samples']} samples"
        )
    if e.kind == "commit":
        return f"commit round {b['round']} θ {_short(b['theta'])}, {len(b['shards'])} shard(s), {b['steps']} steps"
    if e.kind == "cut":
        return (
            f"cut #{b['index']} epoch {b['epoch']} size {b['size']} root {_short(b['root'])} ({cut_state(order, e.id)})"
        )
    if e.kind == "cosign":
        info = order.chain.cuts.get(b["cut"])
        target = f"cut #{info.event.body['index']} ({_short(b['cut'])})" if info else f"cut {_short(b['cut'])}"
        return f"cosign → {target}, epoch {b['epoch']}"
    if e.kind == "equivocation":
        try:
            from koinon.ledger.event import Event

            bad = Event.from_wire(b["a"])
            return f"equivocation by …{bad.author[-8:]} at seq {bad.seq}"
        except InvalidEvent:
            return "equivocation (malformed proof)"
    return ", ".join(sorted(b))


def _load_order(store):
    from koinon.ledger.export import total_order

    return total_order(store)


def cmd_log(args: argparse.Namespace) -> int:
    if args.n is not None and args.n < 0:
        raise ConfigError("-n must be 0 or more")
    store = _open_store(args.home)
    try:
        order = _load_order(store)
        rows = [(i, e) for i, e in enumerate(order.final)] + [(None, e) for e in order.pending]
        if args.kind:
            rows = [(i, e) for i, e in rows if e.kind == args.kind]
        if args.author:
            who = args.author.lstrip("…").lstrip(".")
            rows = [(i, e) for i, e in rows if e.author == who or e.author.endswith(who)]
        total = len(rows)
        if args.n is not None:
            rows = rows[len(rows) - args.n :] if args.n else []
        width = max(len(str(len(order.final))) + 1, 7)
        print(f"{'POS':<{width}} {'TIME (UTC)':<20} {'ID':<12} {'AUTHOR':<9} {'SEQ':>5}  {'KIND':<12} SUMMARY")
        for i, e in rows:
            pos = f"#{i}" if i is not None else "pending"
            print(
                f"{pos:<{width}} {_utc(e.time):<20} {e.id.hex()[:12]} …{e.author[-8:]} {e.seq:>5}  {e.kind:<12} "
                f"{body_summary(e, order)}"
            )
        cut = order.cut
        tail = f"; last final cut #{cut.body['index']} (size {cut.body['size']})" if cut else "; no final cut yet"
        shown = f"{len(rows)} of {total}" if len(rows) != total else f"{total}"
        print(f"{shown} events shown; the ledger has {len(order.final)} final, {len(order.pending)} pending{tail}")
    finally:
        store.close()
    return 0


def _find(order, prefix: str):
    text = prefix.strip().lower()
    try:
        bytes.fromhex(text if len(text) % 2 == 0 else text + "0")
    except ValueError:
        raise ConfigError(f"EVENT_ID {prefix!r} is not hexadecimal; copy it from `koinon ledger log`") from None
    if len(text) < 8:
        raise ConfigError(f"EVENT_ID {prefix!r} is too short: give at least 8 hex digits")
    matches = [e for e in order.final + order.pending if e.id.hex().startswith(text)]
    if not matches:
        raise LedgerError(f"no event with id {text}… in this ledger")
    if len(matches) > 1:
        raise LedgerError(f"{len(matches)} events have ids starting with {text}; give more hex digits")
    return matches[0]


def _envelope(kind: str, proof, cut, store, old_cut=None) -> str:
    cosigns = [e.wire.hex() for e in store.iter_events(kind="cosign") if e.body["cut"] == cut.id]
    obj = {
        "format": PROOF_FORMAT,
        "type": kind,
        "proof": json.loads(proof.to_json()),
        "cut": cut.wire.hex(),
        "cosigns": cosigns,
    }
    if kind == "consistency":
        obj["old_cut"] = old_cut.wire.hex() if old_cut is not None else None
    return json.dumps(obj, indent=2) + "\n"


def _emit(text: str, out: Path | None, what: str) -> None:
    if out is None:
        sys.stdout.write(text)
        return
    from koinon.ledger.export import write_atomically

    try:
        write_atomically(Path(out), text.encode())
    except OSError as e:
        raise ConfigError(f"cannot write {out}: {e.strerror or e}") from None
    print(f"wrote {what} to {out}")


def _final_or_fail(order, store_path: str) -> None:
    from koinon.ledger.merkle import root

    if order.cut is None:
        raise LedgerError("no final cut yet, so nothing can be proven; let the swarm finalise a cut and retry")
    if order.cut.body["root"] != root(order.leaves) or order.cut.body["size"] != len(order.leaves):
        raise LedgerError(f"the final cut's root does not match the log in {store_path}; run `koinon audit`")


def cmd_proof(args: argparse.Namespace) -> int:
    from koinon.ledger.merkle import InclusionProof, inclusion_proof, root

    store = _open_store(args.home)
    try:
        order = _load_order(store)
        event = _find(order, args.event_id)
        _final_or_fail(order, store.path)
        index = order.position().get(event.id)
        if index is None:
            raise LedgerError(
                f"event {event.id.hex()[:16]} ({event.short()}) is not final yet: it enters the log with the next "
                "final cut that covers it; try again later"
            )
        proof = InclusionProof(
            leaf=event.wire,
            index=index,
            tree_size=len(order.leaves),
            path=tuple(inclusion_proof(order.leaves, index)),
            root=root(order.leaves),
        )
        text = _envelope("inclusion", proof, order.cut, store)
    finally:
        store.close()
    _emit(text, args.out, f"the inclusion proof of event {event.id.hex()[:16]} (leaf {index} of {proof.tree_size})")
    return 0


def cmd_consistency(args: argparse.Namespace) -> int:
    from koinon.ledger.merkle import ConsistencyProof, consistency_proof, root

    store = _open_store(args.home)
    try:
        order = _load_order(store)
        _final_or_fail(order, store.path)
        size = len(order.leaves)
        if not 0 <= args.from_size <= size:
            raise ConfigError(f"--from-size must be between 0 and the final log's size {size}")
        proof = ConsistencyProof(
            old_size=args.from_size,
            new_size=size,
            old_root=root(order.leaves[: args.from_size]),
            new_root=root(order.leaves),
            path=tuple(consistency_proof(order.leaves, args.from_size)),
        )
        old_cut = next((c.event for c in order.chain.final_cuts() if c.event.body["size"] == args.from_size), None)
        text = _envelope("consistency", proof, order.cut, store, old_cut)
    finally:
        store.close()
    _emit(text, args.out, f"the consistency proof from size {args.from_size} to {size}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from koinon.ledger.export import export_ledger

    store = _open_store(args.home)
    try:
        try:
            count = export_ledger(store, args.file)
        except OSError as e:
            raise ConfigError(f"cannot write {args.file}: {e.strerror or e}") from None
        swarm = store.swarm_id.hex() if store.swarm_id else "(none)"
    finally:
        store.close()
    print(f"exported {count} events of swarm {swarm} to {args.file}")
    print(f"anyone can check it with: koinon audit --file {args.file}")
    return 0


# --- verify-proof ---------------------------------------------------------------------------------------------------
def _signed_event(hex_wire: object, what: str, kind: str | None = None):
    from koinon.ledger.event import Event, verify_signature_of

    if not isinstance(hex_wire, str):
        raise InvalidProof(f"proof file: {what} is not hex")
    try:
        event = Event.from_wire(bytes.fromhex(hex_wire))
        verify_signature_of(event)
    except ValueError:
        raise InvalidProof(f"proof file: {what} is not hex") from None
    except InvalidEvent as e:
        raise InvalidProof(f"{what}: {e}") from None
    if kind is not None and event.kind != kind:
        raise InvalidProof(f"{what} is a {event.kind} event, not a {kind}")
    return event


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj = dict(pairs)
    if len(obj) != len(pairs):  # json.loads would keep the last silently: two readers could see two proofs
        raise InvalidProof("proof file has a duplicate field")
    return obj


def verify_proof_text(text: str | bytes) -> str:
    """Check a proof file (an envelope, or a bare InclusionProof/ConsistencyProof); return a one-line description
    of what it proves, or raise InvalidProof with the reason."""
    from koinon.ledger.event import Event, verify_signature_of
    from koinon.ledger.merkle import ConsistencyProof, InclusionProof

    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates)
    except InvalidProof:
        raise
    except (ValueError, RecursionError) as e:
        raise InvalidProof(f"proof file is not valid JSON: {e}") from None
    if isinstance(obj, dict) and "format" not in obj:  # a bare merkle.py proof file: the Merkle part only
        if set(obj) == set(InclusionProof._PARSERS):
            cls = InclusionProof
        elif set(obj) == set(ConsistencyProof._PARSERS):
            cls = ConsistencyProof
        else:
            raise InvalidProof(f"not a proof file: neither a Koinon proof ({PROOF_FORMAT}) nor a bare Merkle proof")
        proof = cls.from_json(text)
        proof.verify()
        if cls is InclusionProof:
            return f"proof OK: leaf {proof.index} of the tree of size {proof.tree_size} (root {_short(proof.root, 16)})"
        return f"proof OK: the tree of size {proof.old_size} is a prefix of the tree of size {proof.new_size}"
    expected = {"format", "type", "proof", "cut", "cosigns"}
    if not isinstance(obj, dict) or obj.get("format") != PROOF_FORMAT:
        raise InvalidProof(f"not a Koinon proof file (format {PROOF_FORMAT})")
    if obj.get("type") == "consistency":
        expected.add("old_cut")
    if set(obj) != expected or obj["type"] not in ("inclusion", "consistency"):
        raise InvalidProof(f"proof file must have exactly the fields {', '.join(sorted(expected))}")
    cls = InclusionProof if obj["type"] == "inclusion" else ConsistencyProof
    proof = cls.from_json(json.dumps(obj["proof"]))
    proof.verify()
    cut = _signed_event(obj["cut"], "the cut", "cut")
    size = proof.tree_size if cls is InclusionProof else proof.new_size
    top = proof.root if cls is InclusionProof else proof.new_root
    if cut.body["root"] != top or cut.body["size"] != size:
        raise InvalidProof(
            f"the cut signs root {_short(cut.body['root'], 16)} and size {cut.body['size']}, "
            f"but the proof reaches root {_short(top, 16)} at size {size}"
        )
    if not isinstance(obj["cosigns"], list):
        raise InvalidProof("proof file: cosigns is not a list")
    cosigners = set()
    for i, wire in enumerate(obj["cosigns"]):
        cosign = _signed_event(wire, f"cosign {i}", "cosign")
        if cosign.body["cut"] != cut.id or cosign.swarm != cut.swarm:
            raise InvalidProof(f"cosign {i} is not for this cut")
        cosigners.add(cosign.author)
    signed = (
        f"cut #{cut.body['index']} (epoch {cut.body['epoch']}) by …{cut.author[-8:]} states, "
        f"cosigned by {len(cosigners)} member(s)"
    )
    if cls is InclusionProof:
        try:
            event = Event.from_wire(proof.leaf)
            verify_signature_of(event)
        except InvalidEvent as e:
            raise InvalidProof(f"the leaf is not a validly signed ledger event: {e}") from None
        if (event.swarm or event.id) != cut.swarm:
            raise InvalidProof("the event and the cut belong to different swarms")
        return (
            f"proof OK: event {event.id.hex()[:16]} (…{event.author[-8:]} seq {event.seq}, {event.kind}) is "
            f"leaf {proof.index} of the log of size {size} with root {_short(top, 16)}, as {signed}"
        )
    if obj["old_cut"] is not None:
        old = _signed_event(obj["old_cut"], "the old cut", "cut")
        if old.body["root"] != proof.old_root or old.body["size"] != proof.old_size or old.swarm != cut.swarm:
            raise InvalidProof("the old cut does not sign the proof's old root and size")
    return (
        f"proof OK: the log of size {proof.old_size} (root {_short(proof.old_root, 16)}) is a prefix of the log "
        f"of size {size} (root {_short(top, 16)}), as {signed}"
        + (f"; the old size is final cut #{old.body['index']}" if obj["old_cut"] is not None else "")
    )


def cmd_verify_proof(args: argparse.Namespace) -> int:
    try:
        text = Path(args.file).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {args.file}: {e.strerror or e}") from None
    try:
        message = verify_proof_text(text)
    except InvalidProof as e:
        if getattr(args, "verbose", False):
            raise
        print(f"koinon: error: proof does not verify: {e}", file=sys.stderr)
        return 1
    print(message)
    return 0


if __name__ == "__main__":
    raise SystemExit(run())
