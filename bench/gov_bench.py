"""Governance benchmark: the tally of a large swarm next to only reading its votes (docs/benchmarks-governance.md).

    .venv/bin/python bench/gov_bench.py [--members 10000] [--proposals 1000] [--votes 100000] [--reps 5] ...

Writes bench/results/governance.json and bench/results/governance.md. Issue 4's target: the tally of 10,000
members, 1,000 proposals and 100,000 votes takes at most twice the time to read those votes from the store, and
under 1 s.

1. **Generate** (not measured) a seeded swarm in a ``LedgerStore`` file (``bench/gov_gen.py``): charter, a join
   by every member, proposals, votes (some replaced, some outside their window), delegations; the store's
   insertion order is the log, cut by cut. ``--cache-dir`` keeps the file between runs (keyed by the parameters
   and the sources that decide its bytes); by default it is made in a temporary folder and removed.
2. **Read**: ``LedgerStore.iter_events(kind="vote")``, every vote decoded into an ``Event`` (``Event.from_wire``):
   what any tally must at least do.
3. **Tally**: the full recomputation of every proposal's state from the ledger: ``GovState(charter)``, then
   ``apply_cut`` for every cut with the events ``LedgerStore.iter_events()`` yields (all of them, in log order),
   then every proposal's final tally.
4. **As the ledger's ``Chain`` does it** (context, no target): per cut ``state.copy()`` (the chain keeps one state
   per cut) and ``LedgerStore.get`` of each event by id (``Chain.governance``).
5. **Check**: the final state against an independent, naive computation from the same events (last vote per
   member inside the window, delegation chains followed one by one from the snapshot at the opening cut), and the
   votes the state ignored against what the generator meant to put outside the windows. A mismatch raises.
6. **Profile**: cProfile of one tally, and µs per ``Event.from_wire`` of a vote by the number of parents it cites.

Timings are wall-clock, best and median of ``--reps`` repetitions, on a machine that may be shared: the load
average and the CPU that other processes used during each repetition (from /proc/stat) are recorded next to them.
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
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path

import benchlib
from benchlib import busy_jiffies, command_line, load
from gov_gen import Params, build, identities
from koinon.governance.state import GovState
from koinon.governance.tally import Tally
from koinon.ledger.event import Event
from koinon.ledger.store import LedgerStore

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
SOURCES = [REPO / "bench" / "gov_gen.py"] + [
    REPO / "src" / "koinon" / p for p in ("ledger/event.py", "ledger/cbor.py", "ledger/store.py", "ledger/kinds.py")
]
MEASURED = sorted((REPO / "src" / "koinon" / "governance").glob("*.py")) + [
    REPO / "src" / "koinon" / p for p in ("ledger/event.py", "ledger/cbor.py", "ledger/store.py")
]
TARGET_RATIO, TARGET_SECONDS = 2.0, 1.0


def log(message: str) -> None:
    print(f"[gov-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def src_digest() -> dict:
    return benchlib.src_digest(MEASURED)


def timed(fn: Callable[[], object]) -> tuple[object, dict]:
    """Run ``fn`` once; wall seconds, own CPU seconds, the load average and other processes' CPU (in cores,
    averaged over the run: busy CPU time of the whole machine minus ours, divided by the wall time)."""
    gc.collect()
    busy, cpu, load_before = busy_jiffies(), time.process_time(), load()
    started = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - started
    cpu, busy_after = time.process_time() - cpu, busy_jiffies()
    others = None
    if busy is not None and busy_after is not None:
        others = round(max(0.0, (busy_after - busy) / os.sysconf("SC_CLK_TCK") - cpu) / wall, 2)
    return out, {"seconds": round(wall, 4), "cpu_seconds": round(cpu, 4), "others_cores": others, "load": load_before}


def repeat(name: str, fn: Callable[[], object], reps: int) -> tuple[object, dict]:
    runs, out = [], None
    for k in range(reps):
        out, run = timed(fn)
        runs.append(run)
        log(
            f"{name} {k + 1}/{reps}: {run['seconds']:.3f} s (CPU {run['cpu_seconds']:.3f} s; other processes "
            f"{run['others_cores']} cores; load {run['load'][0]})"
        )
    seconds = [r["seconds"] for r in runs]
    return out, {
        "best_seconds": min(seconds),
        "median_seconds": round(statistics.median(seconds), 4),
        "best_cpu_seconds": min(r["cpu_seconds"] for r in runs),
        "runs": runs,
    }


# --- what is measured ------------------------------------------------------------------------------------------------
def read_votes(store: LedgerStore) -> list[Event]:
    return list(store.iter_events(kind="vote"))


def read_all(store: LedgerStore) -> list[Event]:
    return list(store.iter_events())


def replay(store: LedgerStore, cut_sizes: list[int]) -> tuple[GovState, dict[bytes, Tally]]:
    """Every proposal's state from the ledger: the charter, then each cut's events in log order."""
    events = store.iter_events()
    state = GovState(next(events))
    for index, size in enumerate(cut_sizes):
        state.apply_cut(index, list(islice(events, size)))
    gone = state.expelled | state.banned
    return state, {pid: p.result or p.current_tally(gone) for pid, p in state.proposals.items()}


def replay_as_chain(store: LedgerStore, charter_id: bytes, cut_ids: list[list[bytes]]) -> GovState:
    """As ``Chain.governance`` computes it: a copy of the state per cut, each event fetched by id."""
    state = GovState(store.get(charter_id))
    for index, ids in enumerate(cut_ids):
        state = state.copy()
        state.apply_cut(index, [store.get(i) for i in ids])
    return state


# --- an independent check ------------------------------------------------------------------------------------------
def expected_outcomes(charter: Event, cuts: list[list[Event]]) -> dict:
    """Every proposal's tally and final state, computed naively from the events (no koinon.governance code)."""
    rules = charter.body["rules"]
    delay, window, timelock = rules["delay"], rules["window"], rules["timelock"]
    qn, qd = rules["quorum"]
    members, delegations = set(charter.body["founders"]), {}
    proposals: dict[bytes, dict] = {}
    outside = 0
    for index, events in enumerate(cuts):
        for p in proposals.values():
            if p["open"] == index:  # the snapshot: members and delegations after every earlier cut
                p["members"], p["delegations"] = set(members), dict(delegations)
        for e in events:
            if e.kind == "join":
                members.add(e.author)
            elif e.kind == "delegate" and e.author in members:
                if e.body["to"] in (None, e.author):
                    delegations.pop(e.author, None)
                else:
                    delegations[e.author] = e.body["to"]
            elif e.kind == "proposal" and e.author in members:
                proposals[e.id] = {"open": index + delay, "close": index + delay + window - 1, "votes": {}}
            elif e.kind == "vote":
                p = proposals.get(e.body["proposal"])
                if p is not None and p["open"] <= index <= p["close"] and e.author in p["members"]:
                    p["votes"][e.author] = e.body["choice"]  # a later vote replaces an earlier one
                else:
                    outside += 1
    out = {}
    for pid, p in proposals.items():
        sums = {"yes": 0, "no": 0, "abstain": 0}
        for m in p["members"]:  # weight rule "member": one member, one vote
            if m in p["votes"]:
                sums[p["votes"][m]] += 1
                continue
            seen, current = {m}, p["delegations"].get(m)
            while current is not None and current not in seen:
                if current in p["votes"]:
                    sums[p["votes"][current]] += 1
                    break
                seen.add(current)
                current = p["delegations"].get(current)
        total, cast = len(p["members"]), sum(sums.values())
        if not (cast > 0 and cast * qd >= qn * total):
            state = "expired"
        elif sums["yes"] > sums["no"] and sums["yes"] * 2 >= sums["yes"] + sums["no"]:  # threshold 1/2
            state = "executed" if p["close"] + timelock < len(cuts) else "queued"
        else:
            state = "rejected"
        out[pid] = {**sums, "total": total, "state": state}
    return {"proposals": out, "votes_outside": outside}


def check(state: GovState, tallies: dict[bytes, Tally], expected: dict, meta: dict) -> dict:
    """Raise AssertionError unless the state agrees with the naive computation and with the generator's intent."""
    want = expected["proposals"]
    assert set(tallies) == set(want), f"{len(tallies)} proposals in the state, {len(want)} expected"
    wrong = []
    for pid, t in tallies.items():
        got = {"yes": t.yes, "no": t.no, "abstain": t.abstain, "total": t.total, "state": state.proposals[pid].state}
        if got != want[pid]:
            wrong.append(f"{pid.hex()[:12]}: state has {got}, expected {want[pid]}")
    assert not wrong, f"{len(wrong)} proposals differ from the naive tally, e.g. " + "; ".join(wrong[:3])
    ignored = sum(len(p.ignored) for p in state.proposals.values())
    meant = meta["vote_tags"]["early"] + meta["vote_tags"]["late"]
    assert ignored == expected["votes_outside"] == meant, (
        f"votes ignored: {ignored} by the state, {expected['votes_outside']} by the naive count, {meant} generated "
        "outside their windows"
    )
    states: dict[str, int] = {}
    for p in state.proposals.values():
        states[p.state] = states.get(p.state, 0) + 1
    executed = sum(1 for d in state.decisions)
    assert executed == states.get("executed", 0), f"{executed} decisions for {states.get('executed')} executed"
    return {
        "proposals_checked": len(want),
        "states": dict(sorted(states.items())),
        "votes_counted": sum(len(p.votes) for p in state.proposals.values()),
        "votes_ignored_outside_window": ignored,
        "delegated_weight_counted": sum(len(t.delegated) for t in tallies.values()),
        "config_in_force": state.config_hash(),
    }


def digest(tallies: dict[bytes, Tally], state: GovState) -> str:
    rows = sorted(
        (pid.hex(), t.yes, t.no, t.abstain, t.total, state.proposals[pid].state) for pid, t in tallies.items()
    )
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


# --- context -----------------------------------------------------------------------------------------------------------
def from_wire_by_parents(counts: tuple[int, ...] = (0, 4, 16, 64), n: int = 2000) -> dict:
    """µs per ``Event.from_wire`` of a vote citing ``k`` parents (``LedgerNode.append_own`` cites up to 64)."""
    author = identities(Params(seed=99, members=1))[0]
    swarm = hashlib.sha256(b"swarm").digest()
    out = {}
    for k in counts:
        wires = []
        for j in range(n):
            parents = [hashlib.sha256(b"%d/%d" % (j, i)).digest() for i in range(k)]
            e = Event.create(
                author,
                swarm=swarm,
                seq=j + 2,
                prev=swarm,
                kind="vote",
                body={"proposal": swarm, "choice": "yes"},
                time_ms=1_700_000_000_000 + j,
                parents=parents,
            )
            wires.append(e.wire)
        started = time.perf_counter()
        for w in wires:
            Event.from_wire(w)
        out[str(k)] = {
            "wire_bytes": len(wires[0]),
            "from_wire_us": round((time.perf_counter() - started) / n * 1e6, 2),
        }
    return out


def profile(fn: Callable[[], object], top: int) -> dict:
    profiler = cProfile.Profile()
    profiler.enable()
    fn()
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = stats.total_tt

    def where(func: tuple) -> str:
        filename, line, name = func
        if filename == "~":
            return name
        for root in (str(REPO) + "/", str(Path(sys.base_prefix)) + "/"):
            filename = filename.removeprefix(root)
        return f"{filename}:{line}({name})"

    items = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    return {
        "profiled_seconds": round(total, 3),
        "top_tottime": [
            {
                "function": where(f),
                "ncalls": nc,
                "tottime_s": round(tt, 3),
                "cumtime_s": round(ct, 3),
                "tottime_pct": round(100 * tt / total, 1),
            }
            for f, (_, nc, tt, ct, _) in items
        ],
    }


# --- output --------------------------------------------------------------------------------------------------------------
def verdict(ok: bool) -> str:
    return "✅" if ok else "❌"


def markdown(r: dict) -> str:
    m, g, rd, ra, ta, ch = r["machine"], r["ledger"], r["read"], r["read_all"], r["tally"], r["chain"]
    others = [x["others_cores"] for s in (rd, ra, ta) for x in s["runs"] if x["others_cores"] is not None]
    loads = [x["load"][0] for s in (rd, ra, ta) for x in s["runs"]]
    outside = g["vote_tags"]["early"] + g["vote_tags"]["late"]
    lines = [
        "# Governance benchmark",
        "",
        f"{r['date']} — {m['platform']}, os.cpu_count() = {m['cpu_count']}, Python {m['python']}; load average "
        f"{m['load_start']} at the start, {m['load_end']} at the end (1, 5, 15 min); during the timed repetitions "
        f"the 1-min load was {min(loads)}–{max(loads)} and other processes used "
        + (f"{min(others)}–{max(others)} cores" if others else "an unknown share (no /proc/stat)"),
        "",
        f"Command: `{r['command']}` (total {r['total_seconds']:.0f} s, of which generating the ledger "
        f"{g['generate_seconds']} s{' (from the cache)' if g['cached'] else ''}; sources measured sha256 "
        f"{r['src_sha256']['all']}" + (", **changed during the run**" if "src_changed_during_run" in r else "") + ")",
        "",
        f"Ledger: {g['members']:,} members, {g['proposals']:,} proposals, {g['votes']:,} votes "
        f"({outside:,} of them outside their windows), {g['kinds'].get('delegate', 0):,} "
        f"delegations, {g['events']:,} events in {len(g['cut_sizes'])} cuts; each event cites {g['parents']} parents; "
        f"store file {g['store_bytes'] / 1e6:.1f} MB, mean vote {g['vote_wire_bytes']} bytes.",
        "",
        f"| measurement ({r['parameters']['reps']} repetitions) | best | median | target |",
        "|---|---|---|---|",
        f'| (a) read the {rd["events"]:,} votes: `iter_events(kind="vote")` → `Event` | {rd["best_seconds"]:.3f} s '
        f"| {rd['median_seconds']:.3f} s | |",
        f"| read all {ra['events']:,} events: `iter_events()` → `Event` (part of the tally) | "
        f"{ra['best_seconds']:.3f} s | {ra['median_seconds']:.3f} s | |",
        f"| (b) tally: read all {ta['events']:,} events + `GovState.apply_cut` × {len(g['cut_sizes'])} + final "
        f"tallies | {ta['best_seconds']:.3f} s | {ta['median_seconds']:.3f} s | < {TARGET_SECONDS:g} s "
        f"{verdict(ta['best_seconds'] < TARGET_SECONDS)} (best), {verdict(ta['median_seconds'] < TARGET_SECONDS)} "
        "(median) |",
        f"| (b) / (a) | {r['ratio_best']:.2f} × | {r['ratio_median']:.2f} × | ≤ {TARGET_RATIO:g} × "
        f"{verdict(r['ratio_best'] <= TARGET_RATIO)} (best), {verdict(r['ratio_median'] <= TARGET_RATIO)} (median) |",
        f"| as `Chain.governance`: `state.copy()` per cut, `store.get` per event | {ch['best_seconds']:.3f} s | "
        f"{ch['median_seconds']:.3f} s | (context) |",
        "",
        f"Own CPU time (best): read {rd['best_cpu_seconds']:.3f} s, tally {ta['best_cpu_seconds']:.3f} s "
        f"(ratio {ta['best_cpu_seconds'] / rd['best_cpu_seconds']:.2f} ×). Of the read, decoding the votes "
        f"(`Event.from_wire` of the same wires, already fetched) takes {r['decode_only']['best_seconds']:.3f} s; "
        f"of the tally, the governance state itself (tally − read all, best) "
        f"{ta['best_seconds'] - ra['best_seconds']:.3f} s.",
        "",
        "Check (every proposal's yes/no/abstain/total and final state against a naive computation; votes ignored "
        f"against the votes generated outside their windows): **passed** — {r['check']['proposals_checked']:,} "
        f"proposals, states {r['check']['states']}, {r['check']['votes_counted']:,} votes counted, "
        f"{r['check']['votes_ignored_outside_window']:,} ignored, {r['check']['delegated_weight_counted']:,} "
        f"members' weight counted through a delegation; every repetition gave the same tallies ({r['tally_digest']}).",
        "",
        "`Event.from_wire` of one vote by the number of parents it cites (`LedgerNode.append_own` cites the newest "
        "heads of up to 64 other authors): "
        + ", ".join(f"{k}: {v['from_wire_us']} µs ({v['wire_bytes']} B)" for k, v in r["from_wire_by_parents"].items())
        + ".",
        "",
        f"Profile of one tally (cProfile, {r['profile']['profiled_seconds']} s profiled; top by own time):",
        "",
        "| function | calls | own s | own % | cum s |",
        "|---|---|---|---|---|",
        *[
            f"| `{p['function']}` | {p['ncalls']:,} | {p['tottime_s']} | {p['tottime_pct']} | {p['cumtime_s']} |"
            for p in r["profile"]["top_tottime"][:12]
        ],
        "",
        "Numbers are wall-clock; docs/benchmarks-governance.md reads them. Full data: bench/results/governance.json.",
        "",
    ]
    return "\n".join(lines)


def ledger_file(p: Params, cache_dir: Path | None, tmp: Path) -> tuple[Path, dict, bool, float]:
    """The store file and its metadata: from the cache when it holds this ledger, else generated now."""
    folder = cache_dir or tmp
    folder.mkdir(parents=True, exist_ok=True)
    key = p.key(SOURCES)
    path, meta_path = folder / f"gov-{key}.sqlite", folder / f"gov-{key}.json"
    if cache_dir and path.exists() and meta_path.exists():
        log(f"generate: using the cached ledger {path}")
        return path, json.loads(meta_path.read_text()), True, json.loads(meta_path.read_text())["generate_seconds"]
    partial = folder / f"gov-{key}.{os.getpid()}.partial.sqlite"
    log(f"generate: {p.members:,} members, {p.proposals:,} proposals, {p.votes:,} votes into {partial}")
    started = time.perf_counter()
    meta = build(p, partial, log)
    meta["generate_seconds"] = round(time.perf_counter() - started, 1)
    for suffix in ("-wal", "-shm"):
        Path(str(partial) + suffix).unlink(missing_ok=True)
    partial.rename(path)  # complete files only: a cache hit never sees a half-written ledger
    meta_path.write_text(json.dumps(meta))
    return path, meta, False, meta["generate_seconds"]


def main(argv: list[str] | None = None) -> int:
    defaults = Params()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=defaults.members)
    parser.add_argument("--proposals", type=int, default=defaults.proposals)
    parser.add_argument("--votes", type=int, default=defaults.votes)
    parser.add_argument("--delegations", type=int, default=defaults.delegations)
    parser.add_argument("--parents", type=int, default=defaults.parents, help="parents cited by each event")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--reps", type=int, default=5, help="repetitions of the read and of the tally")
    parser.add_argument("--chain-reps", type=int, default=2, help="repetitions of the Chain-style replay")
    parser.add_argument("--profile-top", type=int, default=20)
    parser.add_argument("--cache-dir", type=Path, default=None, help="keep the generated ledger here between runs")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    p = Params(
        seed=args.seed,
        members=args.members,
        proposals=args.proposals,
        votes=args.votes,
        delegations=args.delegations,
        parents=args.parents,
    )

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
        "parameters": {**asdict(p), "reps": args.reps, "chain_reps": args.chain_reps},
        "targets": {"tally_over_read_at_most": TARGET_RATIO, "tally_seconds_under": TARGET_SECONDS},
    }
    with tempfile.TemporaryDirectory(prefix="koinon-gov-bench-") as folder:
        path, meta, cached, generate_s = ledger_file(p, args.cache_dir, Path(folder))
        store = LedgerStore(path)
        try:
            # untimed: the events by cut for the check and the Chain-style replay, and the vote wires
            everything = list(store.iter_events())
            charter, rest = everything[0], iter(everything[1:])
            cuts = [list(islice(rest, n)) for n in meta["cut_sizes"]]
            assert sum(map(len, cuts)) == len(everything) - 1 == meta["events"] - 1, "the store is not the ledger"
            vote_wires = [e.wire for e in everything if e.kind == "vote"]
            assert len(vote_wires) == p.votes, f"{len(vote_wires)} votes stored, {p.votes} generated"
            results["ledger"] = {
                **asdict(p),
                **meta,
                "cached": cached,
                "generate_seconds": generate_s,
                "store_bytes": path.stat().st_size,
                "vote_wire_bytes": round(sum(map(len, vote_wires)) / len(vote_wires), 1),
            }
            expected = expected_outcomes(charter, cuts)
            cut_ids = [[e.id for e in cut] for cut in cuts]
            del everything, cuts, rest

            log(f"read: {p.votes:,} votes, {args.reps} repetitions")
            votes, results["read"] = repeat("read", lambda: read_votes(store), args.reps)
            results["read"]["events"] = len(votes)
            del votes
            _, results["decode_only"] = repeat(
                "decode only", lambda: [Event.from_wire(w) for w in vote_wires], max(1, args.reps // 2)
            )
            everything_read, results["read_all"] = repeat("read all", lambda: read_all(store), args.reps)
            results["read_all"]["events"] = len(everything_read)
            del everything_read
            log(f"tally: {meta['events']:,} events in {len(meta['cut_sizes'])} cuts, {args.reps} repetitions")
            digests: set[str] = set()

            def tally_once() -> tuple[GovState, dict[bytes, Tally]]:
                state, tallies = replay(store, meta["cut_sizes"])
                digests.add(digest(tallies, state))
                return state, tallies

            (state, tallies), results["tally"] = repeat("tally", tally_once, args.reps)
            results["tally"]["events"] = meta["events"]
            assert len(digests) == 1, f"the tally differs between repetitions: {digests}"
            results["tally_digest"] = digests.pop()
            results["check"] = check(state, tallies, expected, meta)
            log(f"check: passed ({results['check']['states']})")
            del state, tallies
            chain_state, results["chain"] = repeat(
                "chain-style", lambda: replay_as_chain(store, charter.id, cut_ids), args.chain_reps
            )
            assert {pid: p.state for pid, p in chain_state.proposals.items()} == {
                pid: w["state"] for pid, w in expected["proposals"].items()
            }, "the Chain-style replay ends in other proposal states"
            del chain_state
            for which in ("best", "median"):
                results[f"ratio_{which}"] = round(
                    results["tally"][f"{which}_seconds"] / results["read"][f"{which}_seconds"], 3
                )
            log("profile: one tally under cProfile; from_wire by number of parents")
            results["profile"] = profile(lambda: replay(store, meta["cut_sizes"]), args.profile_top)
            results["from_wire_by_parents"] = from_wire_by_parents()
        finally:
            store.close()
    results["machine"]["load_end"] = load()
    results["total_seconds"] = round(time.perf_counter() - began, 1)
    if src_digest() != results["src_sha256"]:
        results["src_changed_during_run"] = src_digest()
        log("warning: the measured sources changed during the run; the results mix two versions")
    for which in ("best", "median"):
        results["targets"][f"ratio_met_{which}"] = results[f"ratio_{which}"] <= TARGET_RATIO
        results["targets"][f"seconds_met_{which}"] = results["tally"][f"{which}_seconds"] < TARGET_SECONDS
    met = results["targets"]["ratio_met_best"] and results["targets"]["seconds_met_best"]
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "governance.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.results_dir / "governance.md").write_text(markdown(results))
    log(
        f"read {results['read']['best_seconds']:.3f} s, tally {results['tally']['best_seconds']:.3f} s "
        f"(ratio {results['ratio_best']:.2f}; targets ≤ {TARGET_RATIO:g} × and < {TARGET_SECONDS:g} s: "
        f"{'met' if met else 'not met'}); wrote {args.results_dir / 'governance.json'} and governance.md"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
