"""Ledger benchmark: append, replication, audit and proofs (docs/benchmarks-ledger.md reads the numbers).

    .venv/bin/python bench/ledger_bench.py [--events 1000000] [--replicate-events 20000] ...

Writes bench/results/ledger.json and bench/results/ledger.md. In one run:

1. **Append**: ``LedgerStore.append`` of pre-signed events (``Event.create`` by a few ``Identity`` keys: a charter,
   joins, ``round`` events whose parents are the other members' heads) into a store file (WAL,
   synchronous=FULL), and ``append_wire`` (parse + verify + store, what a receiving peer does); raw Ed25519
   sign/s and verify/s on one core for context.
2. **Replication** over real hivemind P2P on loopback (``bench/ledger_p2p.py``): peer A holds N events, peer B is
   empty, ``LedgerService`` on both; time until B holds all N. Two ledgers: one member's (one feed) and four
   members' (feeds linked by parents); plus a direct-call regression check of a multi-author backlog stall
   found with an earlier node.py.
3. **Audit**: a ledger of ``--events`` events generated without ``LedgerStore`` (``bench/ledger_gen.py``: signed
   wires, hash-linked feeds, parents, charter, cuts with recomputed roots by each epoch's leader, cosigned by every
   eligible member in consecutive epochs), written as an export file in a temporary folder, loaded back and
   audited with ``koinon.ledger.audit.audit``; next to it the raw Ed25519 verification ceiling on every core
   (``bench/ledger_verify.py``). Target: audit ≥ 80 % of the ceiling.
4. **Proofs**: RFC 9162 inclusion and consistency proofs in a tree of ``--proof-leaves`` leaves: bytes (raw path,
   JSON proof file) and µs per verification (median of many).
5. **Profile**: cProfile of the audit of a ``--profile-events`` ledger, its stages timed without the profiler,
   and single-core costs of the operations the audit repeats per event.

Every timing is wall-clock on a machine that may be shared: the load average before and after each section is
recorded beside it. Nothing is extrapolated: every number is for the size stated next to it.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import json
import os
import platform
import pstats
import random
import resource
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from benchlib import command_line, load
from koinon.identity import Identity
from koinon.identity.keys import public_key_from_member_id
from koinon.ledger import cbor, merkle
from koinon.ledger.audit import audit, verify_signatures
from koinon.ledger.event import Event
from koinon.ledger.export import FORMAT, load_export
from koinon.ledger.kinds import check_body
from koinon.ledger.store import LedgerStore
from ledger_gen import LedgerBuilder, build_ledger, make_identities, unsplice_signature
from ledger_verify import verify_all_cores, verify_one_core

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
START_MS = 1_700_000_000_000


def src_digest() -> dict:
    """SHA-256 of the ledger sources measured (the repository changes while people work; no git here)."""
    files = sorted((REPO / "src" / "koinon" / "ledger").glob("*.py")) + [
        REPO / "src" / "koinon" / "identity" / "keys.py"
    ]
    per_file = {str(f.relative_to(REPO)): hashlib.sha256(f.read_bytes()).hexdigest()[:16] for f in files}
    return {"all": hashlib.sha256(json.dumps(per_file, sort_keys=True).encode()).hexdigest()[:16], "files": per_file}


def log(message: str) -> None:
    print(f"[ledger-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else float("inf")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- 1. append -------------------------------------------------------------------------------------------------------
def realistic_events(identities: list[Identity], count: int) -> list[Event]:
    """``count`` events made with ``Event.create``: charter, joins, then ``round`` events in turn."""
    members = [i.member_id for i in identities]
    charter = Event.create(
        identities[0],
        swarm=b"",
        seq=1,
        prev=None,
        kind="charter",
        body={
            "name": "ledger-bench-append",
            "founders": [members[0]],
            "training": {"config": '{"model":"tiny"}', "hash": hashlib.sha256(b"config").digest()},
            "rules": {"epoch_ms": 2000, "admission": "open"},
        },
        time_ms=START_MS,
    )
    events, heads = [charter], {members[0]: (1, charter.id)}

    def add(identity: Identity, kind: str, body: dict) -> None:
        seq, prev = heads.get(identity.member_id, (0, None))
        parents = [i for a, (_, i) in heads.items() if a != identity.member_id]
        e = Event.create(
            identity,
            swarm=charter.id,
            seq=seq + 1,
            prev=prev,
            kind=kind,
            body=body,
            time_ms=START_MS + len(events),
            parents=parents,
        )
        heads[identity.member_id] = (seq + 1, e.id)
        events.append(e)

    for identity in identities[1:]:
        add(identity, "join", {"maddrs": ["/ip4/10.0.0.2/tcp/31337"]})
    theta = hashlib.sha256(b"theta-0").digest()
    round_number = 0
    while len(events) < count:
        round_number += 1
        prev_theta, theta = theta, hashlib.sha256(b"theta-%d" % round_number).digest()
        for identity in identities:
            if len(events) >= count:
                break
            add(
                identity,
                "round",
                {
                    "round": round_number,
                    "height": round_number,
                    "theta": theta,
                    "prev_theta": prev_theta,
                    "state": hashlib.sha256(b"state" + theta).digest(),
                    "participants": sorted(members),
                    "samples": 50 * 8 * len(members),
                    "bytes": 4_800_000,
                    "config": hashlib.sha256(b"config").digest(),
                    "gov": None,
                },
            )
    return events


def bench_append(identities: list[Identity], tmp: Path, count: int) -> dict:
    log(f"append: creating {count} events with Event.create")
    started = time.perf_counter()
    events = realistic_events(identities, count)
    create_s = time.perf_counter() - started
    # a fresh parse of each event, so no cached encoding helps the "receiving peer" path
    wires = [e.wire for e in events]

    path = tmp / "append.sqlite"
    store = LedgerStore(path)
    started = time.perf_counter()
    for e in events:
        store.append(e)
    append_s = time.perf_counter() - started
    store.close()

    path_wire = tmp / "append-wire.sqlite"
    store = LedgerStore(path_wire)
    started = time.perf_counter()
    for wire in wires:
        store.append_wire(wire)
    append_wire_s = time.perf_counter() - started
    store.close()

    import sqlite3

    with sqlite3.connect(path) as db:
        journal = db.execute("PRAGMA journal_mode").fetchone()[0]

    keys = {i.member_id: i.private_key for i in identities}
    messages = [(keys[e.author], e.signing_bytes) for e in events]
    started = time.perf_counter()
    for key, message in messages:
        key.sign(message)
    sign_s = time.perf_counter() - started
    public = [i.public_key for i in identities]
    index = {m.member_id: k for k, m in enumerate(identities)}
    verify_per_s = verify_one_core(public, [(index[e.author], e.sig, e.signing_bytes) for e in events])
    return {
        "events": len(events),
        "kinds": {k: sum(1 for e in events if e.kind == k) for k in sorted({e.kind for e in events})},
        "mean_wire_bytes": round(sum(map(len, wires)) / len(wires), 1),
        "store": "LedgerStore file in a temporary folder",
        "journal_mode": journal,
        "event_create_per_s": rate(len(events), create_s),
        "append_per_s": rate(len(events), append_s),
        "append_seconds": round(append_s, 3),
        "append_wire_per_s": rate(len(events), append_wire_s),
        "append_wire_seconds": round(append_wire_s, 3),
        "raw_sign_per_s_one_core": rate(len(messages), sign_s),
        "raw_verify_per_s_one_core": round(verify_per_s, 1),
    }


# --- 2. replication ----------------------------------------------------------------------------------------------------
def bench_replication(tmp: Path, count: int, timeout_s: float, stall_s: float) -> dict:
    from ledger_p2p import backlog_repro, replicate_over_hivemind

    home = tmp / "replication"
    solo = build_ledger(make_identities(home / "solo", 1), count).wires[:count]
    four = sorted(make_identities(home / "four", 4), key=lambda i: i.member_id)  # founder first in heads order
    swarm = build_ledger(four, count).wires[:count]
    log(f"replication: {count} events, one member's ledger then four members', over hivemind on loopback")
    out = {
        "one_member": replicate_over_hivemind("one-member", solo, home / "one", timeout_s, stall_s),
        "four_members": replicate_over_hivemind("four-members", swarm, home / "four-run", timeout_s, stall_s),
    }
    log("replication: direct-call regression check of the multi-author backlog stall")
    repro_n = 3000
    ids = sorted(make_identities(home / "repro", 4), key=lambda i: i.member_id)
    out["backlog_repro"] = {
        "founder_first_in_heads_order": backlog_repro(build_ledger(ids, repro_n).wires[:repro_n], home / "r1"),
        "founder_last_in_heads_order": backlog_repro(build_ledger(ids[::-1], repro_n).wires[:repro_n], home / "r2"),
    }
    return out


# --- 4. proofs -----------------------------------------------------------------------------------------------------------
def _median_us(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1000


def bench_proofs(leaves_n: int, proofs: int, reps: int, sample_wires: list[bytes]) -> dict:
    log(f"proofs: tree of {leaves_n} leaves, {proofs} inclusion and {proofs} consistency proofs")
    rng = random.Random(9162)
    leaves = [merkle.leaf_hash(i.to_bytes(8, "big")) for i in range(leaves_n)]
    indices = sorted({0, leaves_n - 1, *rng.sample(range(leaves_n), proofs - 2)})
    for k, index in enumerate(indices):  # the proven leaves are real events (the proof file carries the leaf)
        leaves[index] = merkle.leaf_hash(sample_wires[k % len(sample_wires)])
    started = time.perf_counter()
    root = merkle.root(leaves)
    root_s = time.perf_counter() - started

    inclusion = []
    for k, index in enumerate(indices):
        wire = sample_wires[k % len(sample_wires)]
        started = time.perf_counter()
        path = merkle.inclusion_proof(leaves, index)
        made_s = time.perf_counter() - started
        proof = merkle.InclusionProof(leaf=wire, index=index, tree_size=leaves_n, path=tuple(path), root=root)
        text = proof.to_json()
        leaf = merkle.leaf_hash(wire)
        inclusion.append(
            {
                "index": index,
                "hashes": len(path),
                "path_bytes": 32 * len(path),
                "json_bytes": len(text.encode()),
                "leaf_bytes": len(wire),
                "make_ms": round(made_s * 1000, 1),
                "verify_us": _median_us(
                    lambda leaf=leaf, index=index, path=path: merkle.verify_inclusion(
                        leaf, index, leaves_n, path, root
                    ),
                    reps,
                ),
                "file_verify_us": _median_us(lambda text=text: merkle.InclusionProof.from_json(text).verify(), reps),
            }
        )

    old_sizes = sorted({1, min(1 << 16, leaves_n - 2), leaves_n - 1, *rng.sample(range(2, leaves_n - 1), proofs - 3)})
    old_roots, compact, done = {}, [], 0
    for size in old_sizes:  # roots of the old trees from one pass of compact ranges
        compact = merkle.extend_range(compact, leaves[done:size])
        done = size
        old_roots[size] = merkle.range_root(compact)
    consistency = []
    for old in old_sizes:
        started = time.perf_counter()
        path = merkle.consistency_proof(leaves, old)
        made_s = time.perf_counter() - started
        proof = merkle.ConsistencyProof(
            old_size=old, new_size=leaves_n, old_root=old_roots[old], new_root=root, path=tuple(path)
        )
        text = proof.to_json()
        old_root = old_roots[old]
        consistency.append(
            {
                "old_size": old,
                "hashes": len(path),
                "path_bytes": 32 * len(path),
                "json_bytes": len(text.encode()),
                "make_ms": round(made_s * 1000, 1),
                "verify_us": _median_us(
                    lambda old=old, old_root=old_root, path=path: merkle.verify_consistency(
                        old, leaves_n, old_root, root, path
                    ),
                    reps,
                ),
                "file_verify_us": _median_us(lambda text=text: merkle.ConsistencyProof.from_json(text).verify(), reps),
            }
        )

    def summary(items: list[dict], key: str) -> dict:
        values = [item[key] for item in items]
        return {"min": min(values), "median": statistics.median(values), "max": max(values)}

    return {
        "tree_size": leaves_n,
        "root_seconds": round(root_s, 3),
        "verifications_per_proof": reps,
        "inclusion": {
            k: summary(inclusion, k) for k in ("hashes", "json_bytes", "make_ms", "verify_us", "file_verify_us")
        },
        "consistency": {
            k: summary(consistency, k) for k in ("hashes", "json_bytes", "make_ms", "verify_us", "file_verify_us")
        },
        "inclusion_proofs": inclusion,
        "consistency_proofs": consistency,
    }


# --- 5. profile ------------------------------------------------------------------------------------------------------------
def _where(func: tuple) -> str:
    filename, line, name = func
    if filename == "~":
        return name
    for root in (str(REPO) + "/", str(Path(sys.prefix)) + "/", str(Path(sys.base_prefix)) + "/"):
        if filename.startswith(root):
            filename = filename[len(root) :]
            break
    return f"{filename}:{line}({name})"


def _per_event_us(fn, items) -> float:
    started = time.perf_counter()
    for item in items:
        fn(item)
    return round((time.perf_counter() - started) / len(items) * 1e6, 2)


def micro_costs(wires: list[bytes], sample: int = 20_000) -> dict:
    """Single-core µs per event of what the audit repeats per event (first ``sample`` events of the ledger)."""
    wires = wires[:sample]
    parsed = [Event.from_wire(w) for w in wires]
    fresh = [Event.from_wire(w) for w in wires]
    authors = [e.author for e in parsed]
    store = LedgerStore(":memory:")

    def replay(e: Event) -> None:
        store.append(e, verify_signatures=False)

    keys = {a: public_key_from_member_id(a) for a in set(authors)}
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    loaded = {a: Ed25519PublicKey.from_public_bytes(k) for a, k in keys.items()}
    out = {
        "events": len(wires),
        "cbor_decode_us": _per_event_us(cbor.decode, wires),
        "event_from_wire_us": _per_event_us(Event.from_wire, wires),
        "event_id_us": _per_event_us(lambda e: e.id, parsed),
        "event_signing_bytes_reencode_us": _per_event_us(lambda e: e.signing_bytes, fresh),
        "signing_bytes_by_cutting_sig_from_wire_us": _per_event_us(lambda w: unsplice_signature(w)[0], wires),
        "public_key_from_member_id_us": _per_event_us(public_key_from_member_id, authors),
        "check_body_us": _per_event_us(lambda e: check_body(e.kind, e.body), parsed),
        # ``fresh`` events have their signing bytes cached by the measurement above: this is the verification alone
        "ed25519_verify_us": _per_event_us(lambda e: loaded[e.author].verify(e.sig, e.signing_bytes), fresh),
        "store_append_no_sig_in_memory_us": _per_event_us(replay, parsed),
    }
    store.close()
    return out


def bench_profile(identities: list[Identity], count: int, top: int) -> dict:
    log(f"profile: building a {count}-event ledger")
    wires = build_ledger(identities, count).wires[:count]
    log("profile: audit stages without the profiler")
    gc.collect()
    started = time.perf_counter()
    events = [Event.from_wire(w) for w in wires]
    for e in events:
        e.id  # noqa: B018 (the audit hashes every event for its id)
    parse_s = time.perf_counter() - started
    del events
    started = time.perf_counter()
    ok = verify_signatures(wires)
    signatures_s = time.perf_counter() - started
    assert all(ok)
    gc.collect()
    started = time.perf_counter()
    audit(wires)
    audit_s = time.perf_counter() - started
    log("profile: cProfile of the audit (main process; the signature workers show as waiting)")
    gc.collect()
    profiler = cProfile.Profile()
    profiler.enable()
    audit(wires)
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = stats.total_tt

    def rows(key: int) -> list[dict]:
        items = sorted(stats.stats.items(), key=lambda kv: kv[1][key], reverse=True)[:top]
        return [
            {
                "function": _where(func),
                "ncalls": nc,
                "tottime_s": round(tt, 3),
                "cumtime_s": round(ct, 3),
                "tottime_pct": round(100 * tt / total, 1),
                "cumtime_pct": round(100 * ct / total, 1),
            }
            for func, (_, nc, tt, ct, _) in items
        ]

    log("profile: single-core costs per event")
    return {
        "events": len(wires),
        "stages": {
            "audit_seconds": round(audit_s, 3),
            "audit_per_s": rate(len(wires), audit_s),
            "parse_and_id_one_core_seconds": round(parse_s, 3),
            "verify_signatures_all_cores_seconds": round(signatures_s, 3),
            "rest_seconds": round(audit_s - parse_s - signatures_s, 3),
            "note": "parse and signatures timed separately with the audit's own functions; the rest (replay through "
            "the store, cuts, log, state) is the audit's total minus both",
        },
        "profiled_seconds": round(total, 3),
        "top_tottime": rows(2),
        "top_cumtime": rows(3),
        "micro_costs": micro_costs(wires),
    }


# --- 3. audit ------------------------------------------------------------------------------------------------------------
def bench_audit(identities: list[Identity], tmp: Path, count: int, ceiling_sample: int) -> dict:
    log(f"audit: generating a {count}-event ledger ({len(identities)} members)")
    started = time.perf_counter()
    builder: LedgerBuilder = build_ledger(identities, count)
    generate_s = time.perf_counter() - started
    swarm, wires, author_index = builder.swarm, builder.wires[:count], bytes(builder.author_index[:count])
    members = list(builder.members)
    del builder
    started = time.perf_counter()
    export = tmp / "ledger-export.cbor"
    export.write_bytes(cbor.encode({"format": FORMAT, "swarm": swarm, "events": wires}))
    write_s = time.perf_counter() - started
    export_bytes = export.stat().st_size
    del wires
    gc.collect()
    log(f"audit: export written ({export_bytes / 1e6:.0f} MB); loading it back")
    started = time.perf_counter()
    loaded = load_export(export)  # (swarm, wires, …): the tuple has grown before; our export has no quarantine
    swarm_read, wires = loaded[0], loaded[1]
    load_s = time.perf_counter() - started

    step = max(1, len(wires) // ceiling_sample)
    sample = range(0, len(wires), step)
    items = []
    for i in sample:
        message, sig = unsplice_signature(wires[i])
        items.append((author_index[i], sig, message))
    check = Event.from_wire(wires[sample[-1]])
    assert (check.signing_bytes, check.sig) == (items[-1][2], items[-1][1]), "unsplice_signature is wrong"
    public = [public_key_from_member_id(m) for m in members]
    log(f"audit: raw Ed25519 verification ceiling on {os.cpu_count()} cores ({len(items)} signatures, 2 passes)")
    ceiling_before = verify_all_cores(public, items)
    gc.collect()

    log(f"audit: koinon.ledger.audit.audit of {len(wires)} events")
    load_before = load()
    cpu_main, cpu_children = time.process_time(), children_cpu()
    started = time.perf_counter()
    report = audit(wires, expected_swarm=swarm_read)
    audit_s = time.perf_counter() - started
    cpu_main, cpu_children = time.process_time() - cpu_main, children_cpu() - cpu_children
    load_after = load()
    del wires
    gc.collect()
    log("audit: the verification ceiling again, after the audit (the machine may be shared)")
    ceiling_after = verify_all_cores(public, items)
    ceiling = max(ceiling_before, ceiling_after, key=lambda c: c["per_s"])
    per_s = report.events / audit_s
    cpu_us = (cpu_main + cpu_children) / report.events * 1e6
    return {
        "events": report.events,
        "members": len(members),
        "kinds": report.kinds,
        "generate_seconds": round(generate_s, 2),
        "generate_per_s": rate(report.events, generate_s),
        "export_bytes": export_bytes,
        "export_write_seconds": round(write_s, 2),
        "export_load_seconds": round(load_s, 2),
        "ceiling": ceiling,
        "ceiling_before_audit": ceiling_before,
        "ceiling_after_audit": ceiling_after,
        "audit_seconds": round(audit_s, 2),
        "audit_per_s": round(per_s, 1),
        "ratio_to_ceiling": round(per_s / ceiling["per_s"], 4),
        "target_ratio": 0.8,
        "cpu_seconds_main": round(cpu_main, 2),
        "cpu_seconds_workers": round(cpu_children, 2),
        "cpu_us_per_event": round(cpu_us, 1),
        "cpu_ratio": round(ceiling["cpu_us_per_verification"] / cpu_us, 4),
        "cpu_ratio_note": "CPU µs per raw verification ÷ audit CPU µs per event (main + workers): the share of the "
        "audit's CPU work that is signature verification, i.e. the wall ratio the audit would reach with every core "
        "to itself and perfect parallelism; it does not depend on other load on the machine",
        "load_during_audit": [load_before, load_after],
        "report": {
            "events": report.events,
            "final_events": report.final_events,
            "cuts": report.cuts,
            "members": len(report.members),
            "log_root": report.log_root,
            "final_cut_size": report.final_cut["size"] if report.final_cut else None,
            "rounds_final": sum(1 for r in report.rounds if r["final"]),
            "lineage_breaks": len(report.lineage_breaks),
        },
    }


# --- output -----------------------------------------------------------------------------------------------------------------
def _n(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.1f}"


def markdown(r: dict) -> str:
    m = r["machine"]
    a, rep, au, pr = r["append"], r["replication"], r["audit"], r["proofs"]
    solo, four = rep["one_member"], rep["four_members"]
    inc, con = pr["inclusion"], pr["consistency"]
    st = r["profile"]["stages"]
    rows = [
        ("Ed25519 sign, one core (cryptography)", f"{_n(a['raw_sign_per_s_one_core'])} /s", "raw `sign`, context"),
        ("Ed25519 verify, one core", f"{_n(a['raw_verify_per_s_one_core'])} /s", "raw `verify`, context"),
        ("`Event.create` (encode + sign), one core", f"{_n(a['event_create_per_s'])} events/s", ""),
        (
            f"`LedgerStore.append`, pre-signed events ({a['events']:,}, file, {a['journal_mode'].upper()}, "
            "synchronous=FULL)",
            f"{_n(a['append_per_s'])} events/s",
            "verify + checks + one transaction each",
        ),
        (
            "`LedgerStore.append_wire` (parse + verify + store)",
            f"{_n(a['append_wire_per_s'])} events/s",
            "as a peer receiving",
        ),
        (
            f"Replication over hivemind loopback, one member's ledger ({solo['events']:,} events)",
            f"{_n(solo['events_per_s'])} events/s" if solo["complete"] else f"stalled at {solo['held']:,}",
            f"B held all N after {solo['seconds']} s" if solo["complete"] else "",
        ),
        (
            f"Replication over hivemind loopback, four members' ledger ({four['events']:,} events)",
            f"{_n(four['events_per_s'])} events/s"
            if four["complete"]
            else f"**stalls**: B holds {four['held']:,} of {four['events']:,}",
            f"B held all N after {four['seconds']} s"
            if four["complete"]
            else f"no progress for {r['parameters']['stall_s']} s after {four['seconds']} s",
        ),
        (
            f"Raw Ed25519 verify, all {au['ceiling']['workers']} cores (ceiling)",
            f"{_n(au['ceiling']['per_s'])} /s",
            f"best of before/after the audit ({_n(au['ceiling_before_audit']['per_s'])}, "
            f"{_n(au['ceiling_after_audit']['per_s'])}); {au['ceiling']['verifications']:,} verifications each",
        ),
        (
            f"Audit (`koinon.ledger.audit.audit`), {au['events']:,} events",
            f"{_n(au['audit_per_s'])} events/s",
            f"{au['audit_seconds']} s; {au['report']['final_events']:,} final; CPU s: main "
            f"{au['cpu_seconds_main']}, workers {au['cpu_seconds_workers']}",
        ),
        (
            "Audit / verification ceiling (wall)",
            f"**{100 * au['ratio_to_ceiling']:.1f} %**",
            "target ≥ 80 %: " + ("met" if au["ratio_to_ceiling"] >= 0.8 else "**not met**"),
        ),
        (
            "Audit CPU per event vs. CPU per raw verification",
            f"{au['cpu_us_per_event']} µs vs. {au['ceiling']['cpu_us_per_verification']} µs = "
            f"**{100 * au['cpu_ratio']:.1f} %**",
            "the wall ratio with all cores free and perfect parallelism (load-independent)",
        ),
        (
            f"Inclusion proof, tree of {pr['tree_size']:,}",
            f"{inc['hashes']['min']}–{inc['hashes']['max']} hashes ({32 * inc['hashes']['max']} B at most); "
            f"JSON file {_n(inc['json_bytes']['median'])} B",
            f"verify {inc['verify_us']['median']:.1f} µs (file: parse + verify {inc['file_verify_us']['median']:.1f} µs); "
            f"make {inc['make_ms']['median']:.0f} ms",
        ),
        (
            f"Consistency proof, tree of {pr['tree_size']:,}",
            f"{con['hashes']['min']}–{con['hashes']['max']} hashes ({32 * con['hashes']['max']} B at most); "
            f"JSON file {_n(con['json_bytes']['median'])} B",
            f"verify {con['verify_us']['median']:.1f} µs (file {con['file_verify_us']['median']:.1f} µs); "
            f"make {con['make_ms']['median']:.0f} ms",
        ),
    ]
    lines = [
        "# Ledger benchmark",
        "",
        f"{r['date']} — {m['platform']}, os.cpu_count() = {m['cpu_count']}, Python {m['python']}; load average "
        f"{m['load_start']} at the start, {m['load_end']} at the end (1, 5, 15 min)",
        "",
        f"Command: `{r['command']}` (total {r['total_seconds']:.0f} s; sources measured: "
        f"src/koinon/ledger sha256 {r['src_sha256']['all']}"
        + (", **changed during the run**" if "src_changed_during_run" in r else "")
        + ")",
        "",
        "| measurement | result | notes |",
        "|---|---|---|",
        *[f"| {a_} | {b_} | {c_} |" for a_, b_, c_ in rows],
        "",
        "Medians of proof verification over "
        f"{pr['verifications_per_proof']} runs × {len(pr['inclusion_proofs'])} proofs each kind; proof sizes are for "
        "the path only (raw) and the whole JSON proof file (the inclusion file carries the event's bytes).",
        "",
        f"Audit of {r['profile']['events']:,} events by stage (no profiler): total {st['audit_seconds']} s = parse and ids "
        f"on one core {st['parse_and_id_one_core_seconds']} s + signatures on all cores "
        f"{st['verify_signatures_all_cores_seconds']} s + the rest (replay through the store, cuts, log, state) "
        f"{st['rest_seconds']} s. Single-core µs per event: "
        + ", ".join(f"{k.removesuffix('_us')} {v}" for k, v in r["profile"]["micro_costs"].items() if k.endswith("_us"))
        + ".",
        "",
        f"Profile of the audit of {r['profile']['events']:,} events (cProfile, main process, top by own time; the "
        "lock `acquire` is the main process waiting for the signature workers):",
        "",
        "| function | calls | own s | own % | cum s |",
        "|---|---|---|---|---|",
        *[
            f"| `{p['function']}` | {p['ncalls']:,} | {p['tottime_s']} | {p['tottime_pct']} | {p['cumtime_s']} |"
            for p in r["profile"]["top_tottime"][:12]
        ],
        "",
        "Numbers are wall-clock; docs/benchmarks-ledger.md reads them. Full data: bench/results/ledger.json.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="size of the audited ledger")
    parser.add_argument("--members", type=int, default=4, help="members of the generated ledgers")
    parser.add_argument("--append-events", type=int, default=5000)
    parser.add_argument("--replicate-events", type=int, default=20_000)
    parser.add_argument("--replicate-timeout", type=float, default=180.0, help="seconds, per scenario")
    parser.add_argument("--stall-s", type=float, default=10.0, help="no progress this long = stalled")
    parser.add_argument("--ceiling-sample", type=int, default=100_000, help="signatures in the raw ceiling")
    parser.add_argument("--proof-leaves", type=int, default=1_000_000)
    parser.add_argument("--proofs", type=int, default=8, help="proofs of each kind")
    parser.add_argument("--proof-reps", type=int, default=1000, help="verifications per proof")
    parser.add_argument("--profile-events", type=int, default=50_000)
    parser.add_argument("--profile-top", type=int, default=25)
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["append", "replication", "proofs", "profile", "audit"]
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: the DHTs' finally stops their p2pd

    began = time.perf_counter()
    results: dict = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "load_start": load(),
        },
        "command": command_line(),
        "src_sha256": src_digest(),
        "parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "sections": {},
    }
    with tempfile.TemporaryDirectory(prefix="koinon-ledger-bench-") as folder:
        tmp = Path(folder)
        identities = make_identities(tmp / "members", args.members)
        sections = [
            ("append", lambda: bench_append(identities, tmp, args.append_events)),
            (
                "replication",
                lambda: bench_replication(tmp, args.replicate_events, args.replicate_timeout, args.stall_s),
            ),
            ("proofs", lambda: bench_proofs(args.proof_leaves, args.proofs, args.proof_reps, sample_wires)),
            ("profile", lambda: bench_profile(identities, args.profile_events, args.profile_top)),
            ("audit", lambda: bench_audit(identities, tmp, args.events, args.ceiling_sample)),
        ]
        sample_wires = [e.wire for e in realistic_events(identities, 64)[-args.proofs :]]
        for name, run in sections:
            if name in args.skip:
                continue
            before, started = load(), time.perf_counter()
            results[name] = run()
            results["sections"][name] = {
                "seconds": round(time.perf_counter() - started, 1),
                "load_before": before,
                "load_after": load(),
            }
            log(f"{name}: done in {results['sections'][name]['seconds']} s")
    results["machine"]["load_end"] = load()
    results["total_seconds"] = round(time.perf_counter() - began, 1)
    if src_digest() != results["src_sha256"]:
        results["src_changed_during_run"] = src_digest()
        log("warning: src/koinon/ledger changed during the run; the results mix two versions")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "ledger.json").write_text(json.dumps(results, indent=2) + "\n")
    if not args.skip:
        (args.results_dir / "ledger.md").write_text(markdown(results))
    log(f"wrote {args.results_dir / 'ledger.json'}" + ("" if args.skip else f" and {args.results_dir / 'ledger.md'}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
