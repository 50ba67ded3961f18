"""Verification benchmark (issue 5): how soon a free-rider is caught, and what the spot-checks cost.

Writes bench/results/verification.json and bench/results/verification.md. Targets: a free-rider caught with
≥ 99 % probability within 5 rounds, at ≤ 10 % of the training compute.

(a) **Catch probability**, by Monte Carlo through the real :class:`~koinon.governance.state.GovState` (and so the
    real ``Trust``): swarms of n members (one free-rider; honest verifiers and referees judge it guilty, as
    ``verify_commit`` does on a made-up trace, see tests/unit/test_verification.py), fed commit cuts, verifier
    cuts and referee cuts with random cut seeds; the round of its first conviction is recorded. The swarm's
    verification settings are the defaults (``verify_permille`` 650). Next to it: 1 − (1 − p)^K.
(b) **Overhead**, measured on this machine with the default configuration (tiny model, H = 50, B = 8, T = 128,
    16 segments): the CPU time of a plain round (H inner steps), of the same round recording its trace and hashing
    the commitment, and of one spot-check (fetching the start state from a BlobStore, re-executing one segment,
    hashing). Overhead per contributor and round = (trace + commitment) + p × check, over the plain round (each
    commit is checked with probability p, by one other member; referees only work on accusations, which honest
    members never cause). Also the bytes a check moves, next to the bytes one round's averaging sends.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import REPO, busy_jiffies, command_line, load, src_digest  # noqa: E402

RESULTS = REPO / "bench" / "results"
SOURCES = [
    REPO / "src/koinon/verification/trust.py",
    REPO / "src/koinon/verification/worker.py",
    REPO / "src/koinon/training/diloco.py",
    REPO / "src/koinon/governance/state.py",
    REPO / "bench/verify_bench.py",
]


def _id(label: str) -> str:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from koinon.identity import Identity

    seed = hashlib.sha256(b"verify-bench/" + label.encode()).digest()
    return Identity(private_key=Ed25519PrivateKey.from_private_bytes(seed), path=Path("unused"))


def catch_rounds(n: int, trials: int, max_rounds: int, seed: int) -> list[int | None]:
    """For each trial, the round (1-based) in which the free-rider is first convicted, or None."""
    from koinon.config import TrainingConfig
    from koinon.governance.charter import training_body
    from koinon.governance.state import GovState
    from koinon.ledger.event import Event

    ids = [_id(f"m{i}") for i in range(n)]
    members = [i.member_id for i in ids]
    free = members[-1]
    charter = Event.create(
        ids[0],
        swarm=b"",
        seq=1,
        prev=None,
        kind="charter",
        body={"name": "bench", "founders": sorted(members), "training": training_body(TrainingConfig()), "rules": {}},
        time_ms=0,
    )
    rng = random.Random(seed)
    out: list[int | None] = []
    for t in range(trials):
        sim = _Trial(GovState(charter), rng, f"{seed}/{t}")
        caught = None
        for r in range(1, max_rounds + 1):
            excluded = set(sim.state.excluded())
            sim.feed(
                [
                    sim.event("commit", m, {"round": r, "samples": 400, "trace": TRACE})
                    for m in members
                    if m not in excluded
                ]
            )
            for _ in range(2):  # the verifiers' cut, then the referees'
                verdicts = []
                for m in members:
                    for c in sim.state.trust.tasks_for(m):
                        ok = True if m == free else c.author != free  # honest judges; a lazy free-rider says yes
                        verdicts.append(sim.event("verdict", m, {"commit": c.commit, "ok": ok, "error": 0, "got": b""}))
                sim.feed(verdicts)
            if any(c.status == "cheated" and c.author == free for c in sim.state.trust.history):
                caught = r
                break
        out.append(caught)
    return out


TRACE = [b"\0" * 32] * 34  # 16 segments; the Trust only counts them


class _Trial:
    """One simulated swarm: its governance state, fed cuts with random seeds; events are stand-ins that carry
    what the state reads (kind, author, body, id)."""

    def __init__(self, state, rng: random.Random, label: str) -> None:
        self.state, self.rng, self.label = state, rng, label
        self.index = self.counter = 0

    def event(self, kind: str, author: str, body: dict) -> SimpleNamespace:
        self.counter += 1
        eid = hashlib.sha256(f"{self.label}/{self.counter}".encode()).digest()
        return SimpleNamespace(kind=kind, author=author, body=body, id=eid)

    def feed(self, events: list) -> None:
        self.state.apply_cut(self.index, events, seed=self.rng.randbytes(32))
        self.index += 1


def overhead(repeats: int) -> dict:
    import torch

    from koinon.config import TrainingConfig
    from koinon.training.data import Corpus
    from koinon.training.diloco import InnerTrainer
    from koinon.training.model import build_model, flat_parameters
    from koinon.verification.worker import BlobStore, commitment, fetch_blob, verify_commit

    torch.manual_seed(0)
    c = TrainingConfig()
    corpus = Corpus.default()
    trainer = InnerTrainer(build_model(c), c)
    theta = flat_parameters(trainer.model)
    me, other = _id("a").member_id, _id("b").member_id
    group = [me, other]
    bounds = c.segment_bounds()

    def cpu() -> float:
        return time.process_time()

    plain, traced, commits, checks, rounds = [], [], [], [], []
    for r in range(1, repeats + 1):
        blocks = corpus.shard(me, r, group)
        batches = list(corpus.batches(blocks, f"{me}|{r}".encode(), c.inner_steps, c.batch_size, c.seq_len))
        saved = (flat_parameters(trainer.model), trainer.moments(), trainer.steps_done)
        t0 = cpu()
        trainer.run_round(theta, iter(batches))
        plain.append(cpu() - t0)
        trainer.load_state(*saved)  # the same round again, recording its trace this time
        step0 = trainer.steps_done
        t0 = cpu()
        delta, _, samples, trace = trainer.run_round(theta, iter(batches), bounds)
        traced.append(cpu() - t0)
        t0 = cpu()
        blobs = BlobStore()
        hashes = blobs.add_round(r, trace)
        body = commitment(
            member=me,
            round_no=r,
            theta=theta,
            config=c,
            data=corpus.source_ids,
            group=group,
            shards=blocks,
            step0=step0,
            samples=samples,
            trace=hashes,
            delta=delta,
        )
        commits.append(cpu() - t0)
        rounds.append((body, blobs))
        theta = theta - delta
    verifier = InnerTrainer(build_model(c), c)
    moved = []
    pick = random.Random(0)
    for body, blobs in rounds:
        for segment in [pick.randrange(len(bounds) - 1) for _ in range(3)]:  # uniform, as the draw from a cut is
            got = []

            def fetch(key: bytes, blobs=blobs, got=got) -> bytes:
                data = fetch_blob(blobs.handle, key)
                got.append(len(data))
                return data

            t0 = cpu()
            out = verify_commit(
                body, me, segment, fetch=fetch, corpus=corpus, config=c, trainer_factory=lambda cfg: verifier
            )
            checks.append(cpu() - t0)
            assert out is not None and out.ok, out
            moved.append(sum(got))
    p = c.verify_permille / 1000
    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    t_plain, t_traced, t_commit, t_check = median(plain), median(traced), median(commits), median(checks)
    params = theta.numel()
    averaging_bytes = 2 * params * 2  # fp16 Δ: reduce-scatter + all-gather, about 2 × P × 2 bytes per peer
    return {
        "config": {"model_size": c.model_size, "H": c.inner_steps, "B": c.batch_size, "T": c.seq_len},
        "segments": len(bounds) - 1,
        "parameters": params,
        "verify_permille": c.verify_permille,
        "repeats": repeats,
        "cpu_s": {
            "plain_round": round(t_plain, 4),
            "traced_round": round(t_traced, 4),
            "commitment": round(t_commit, 4),
            "one_check": round(t_check, 4),
        },
        "overhead": {
            "trace": round((t_traced - t_plain) / t_plain, 4),
            "commitment": round(t_commit / t_plain, 4),
            "checks": round(p * t_check / t_plain, 4),
            "total": round((t_traced - t_plain + t_commit + p * t_check) / t_plain, 4),
        },
        "bytes": {
            "per_check_median": sorted(moved)[len(moved) // 2],
            "per_round_expected": int(p * sorted(moved)[len(moved) // 2]),
            "averaging_per_round": averaging_bytes,
        },
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started = datetime.now(UTC)
    machine = {"cpus": os.cpu_count(), "load_start": load()}
    busy0, wall0 = busy_jiffies(), time.time()

    from koinon.config import TrainingConfig

    p = TrainingConfig().verify_permille / 1000
    catch = []
    for n in args.sizes:
        t0 = time.time()
        rounds = catch_rounds(n, args.trials, 5, seed=n)
        within = [sum(1 for x in rounds if x is not None and x <= k) / len(rounds) for k in range(1, 6)]
        catch.append(
            {
                "members": n,
                "trials": args.trials,
                "caught_within": {str(k + 1): round(w, 4) for k, w in enumerate(within)},
                "expected_within": {str(k): round(1 - (1 - p) ** k, 4) for k in range(1, 6)},
                "seconds": round(time.time() - t0, 1),
            }
        )
        print(f"n={n}: caught within 1..5 rounds: {', '.join(f'{w:.3f}' for w in within)}", flush=True)
    cost = overhead(args.repeats)
    print(f"overhead: {json.dumps(cost['overhead'])}", flush=True)
    machine["load_end"] = load()
    busy1 = busy_jiffies()
    if busy0 is not None and busy1 is not None:
        machine["busy_cpu_share"] = round((busy1 - busy0) / 100 / max(1e-9, time.time() - wall0) / os.cpu_count(), 3)
    worst = min(c["caught_within"]["5"] for c in catch)
    results = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line(),
        "machine": machine,
        "sources": src_digest(SOURCES),
        "catch": catch,
        "cost": cost,
        "target": {
            "caught_within_5": {"value": worst, "target": 0.99, "met": worst >= 0.99},
            "overhead": {"value": cost["overhead"]["total"], "target": 0.10, "met": cost["overhead"]["total"] <= 0.10},
        },
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "verification.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.results_dir / "verification.md").write_text(markdown(results))
    print(markdown(results))
    return 0


def markdown(res: dict) -> str:
    c, t = res["cost"], res["target"]
    ok = lambda m: "✅" if m else "❌"  # noqa: E731
    lines = [
        f"# Verification benchmark — {res['date']}",
        "",
        f"`{res['command']}` · {res['machine']['cpus']} CPUs · load {res['machine']['load_start']} → "
        f"{res['machine']['load_end']} · sources {res['sources']['all']}",
        "",
        "## A free-rider's chance of being caught (Monte Carlo through GovState)",
        "",
        "| members | trials | within 1 | 2 | 3 | 4 | 5 rounds | 1 − (1 − p)^5 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in res["catch"]:
        w = row["caught_within"]
        lines.append(
            f"| {row['members']} | {row['trials']} | "
            + " | ".join(f"{w[str(k)]:.3f}" for k in range(1, 6))
            + f" | {row['expected_within']['5']:.3f} |"
        )
    o, s, b = c["overhead"], c["cpu_s"], c["bytes"]
    lines += [
        "",
        f"## Cost per contributor and round ({c['config']['model_size']} model, {c['parameters']:,} parameters, "
        f"H = {c['config']['H']}, {c['segments']} segments, p = {c['verify_permille'] / 1000})",
        "",
        "| part | CPU s | share of a plain round |",
        "|---|---|---|",
        f"| plain round (H inner steps) | {s['plain_round']} | 1 |",
        f"| recording the trace | {s['traced_round'] - s['plain_round']:.4f} | {o['trace']:.2%} |",
        f"| hashing the commitment, keeping the states | {s['commitment']} | {o['commitment']:.2%} |",
        f"| p × one spot-check | {s['one_check']} × p | {o['checks']:.2%} |",
        f"| **total** | | **{o['total']:.2%}** |",
        "",
        f"Bytes: one check fetches {b['per_check_median'] / 1e6:.1f} MB (the segment's start state: parameters and "
        f"AdamW moments); p × that = {b['per_round_expected'] / 1e6:.1f} MB per contributor and round, next to "
        f"≈ {b['averaging_per_round'] / 1e6:.1f} MB for the round's averaging (fp16).",
        "",
        f"Targets: caught within 5 rounds ≥ 99 %: {t['caught_within_5']['value']:.3f} "
        f"{ok(t['caught_within_5']['met'])}; overhead ≤ 10 %: {t['overhead']['value']:.2%} {ok(t['overhead']['met'])}",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
