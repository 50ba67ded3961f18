"""Byzantine benchmark: DiLoCo's final eval loss under attack, robust reducers against the mean and a clean run
(docs/benchmarks-byzantine.md).

    .venv/bin/python bench/byz_bench.py [--rounds 10] [--jobs 2] [--fs 4 6 7] [--attacks ...] [--reducers ...]

Writes bench/results/byzantine.json and bench/results/byzantine.md. Issue 5's target: with f of n = 16 workers
Byzantine, f/n ∈ {1/4, 3/8, 7/16}, the robust reducer keeps the final eval loss within 5 % of the clean run at
7/16 (BTARD's setting, Gorbunov et al. 2022, arXiv 2106.11257).

An in-process simulation of DiLoCo's aggregation (Douillard et al. 2023, arXiv 2311.08105, Algorithm 1), no
network. Per round r, from the common θ^(r-1):

1. every honest worker runs Koinon's own ``InnerTrainer.run_round`` (its own AdamW state, kept across rounds) on
   ``Corpus.shard(member, r, group)`` with the batches a peer draws (seed ``member|r``), giving Δ_i;
2. the f Byzantine workers, colluding and omniscient (they see every honest Δ_i of the round: the strongest
   threat), craft their parts from the honest Δs (``craft``);
3. the aggregate is computed as the swarm's all-reduce computes it (``aggregate``): the vector is cut into
   hivemind's wire parts (``TensorPartContainer``: 2¹⁹ bytes after compression, 262,144 values in fp16), and for
   each part every sender's copy goes through the wire encoding (``roundtrip``, the config's compression), a copy
   with a NaN/Inf is left out as ``ExactPartReducer`` rejects it, ``koinon.aggregation.reducers.reduce(name,
   parts, weights)`` aggregates the copies, and the result is encoded again (the reducer sends back the encoded
   aggregate). This is exactly what the part reducers compute, part by part; which peer reduces which part does
   not change the numbers. mean, median and trimmed_mean are coordinate-wise (any split gives the same);
   centered_clip is not (its distances and τ are per part), hence the split;
4. Koinon's ``OuterOptimizer`` (Nesterov, lr 0.7, momentum 0.9) applies it.

The clean run is the n − f honest workers alone (shards dealt among them), mean. Final θ evaluated with
``InnerTrainer.evaluate`` on ``Corpus.eval_batches``. Every process uses one torch thread, so every loss is
deterministic whatever the load; only the timings depend on it (recorded next to them).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import multiprocessing as mp
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from hivemind.averaging.partition import DEFAULT_PART_SIZE_BYTES
from hivemind.compression import CompressionBase, CompressionInfo

import benchlib
from benchlib import busy_jiffies, command_line, load
from koinon.aggregation.reducers import REDUCERS, reduce
from koinon.config import TrainingConfig
from koinon.swarm.attacks import AttackContext, apply_attack
from koinon.swarm.compression import get_compression, roundtrip
from koinon.training.data import Corpus
from koinon.training.diloco import InnerTrainer, OuterOptimizer
from koinon.training.model import build_model, flat_parameters, theta_hash

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
MEASURED = [
    REPO / "src" / "koinon" / p
    for p in (
        "aggregation/reducers.py",
        "swarm/attacks.py",
        "swarm/compression.py",
        "training/diloco.py",
        "training/data.py",
        "training/model.py",
        "config.py",
    )
]
ATTACKS = ("sign_flip", "scale", "noise", "alie", "ipm")  # nan: rejected before any reducer (see the docs)
ROBUST = "centered_clip"  # the robust default the target is about
TARGET_RATIO, TARGET_F = 1.05, 7
SANITY_RATIO = 1.10  # the mean under sign_flip / scale must be at least this much worse than clean (or diverge)


def log(message: str) -> None:
    print(f"[byz-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def src_digest() -> dict:
    return benchlib.src_digest(MEASURED)


# --- settings ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    n: int = 16
    fs: tuple[int, ...] = (4, 6, 7)
    rounds: int = 10  # R outer rounds
    attacks: tuple[str, ...] = ATTACKS
    reducers: tuple[str, ...] = ("mean", ROBUST)  # at every f
    extra_reducers: tuple[str, ...] = ("median", "trimmed_mean")  # only at the f in extra_at
    extra_at: tuple[int, ...] = (TARGET_F,)
    clean_reducers: tuple[str, ...] = ("mean", ROBUST)  # the clean run under each: the price of robustness
    control_outer_lrs: tuple[float, ...] = (0.35, 0.175)  # clean runs (mean, at extra_at) with a smaller outer step
    model_size: str = "tiny"
    seq_len: int = 64
    batch_size: int = 4
    inner_steps: int = 10  # H
    eval_sequences: int = 256
    eval_every: int = 5
    threads: int = 1
    jobs: int = 2

    def config(self) -> TrainingConfig:
        return TrainingConfig(
            model_size=self.model_size, seq_len=self.seq_len, batch_size=self.batch_size, inner_steps=self.inner_steps
        )


def member_ids(n: int) -> list[str]:
    return [f"w{i:02d}" for i in range(n)]


def honest_ids(n: int, f: int) -> list[str]:
    """The first n − f workers are honest, the last f Byzantine."""
    return member_ids(n)[: n - f]


@dataclass(frozen=True)
class Task:
    """One run: ``attack`` None is the clean run (the n − f honest workers alone); ``outer_lr`` other than None is
    a control (a clean run with a smaller outer learning rate than the config's)."""

    f: int
    attack: str | None
    reducer: str
    outer_lr: float | None = None

    @property
    def label(self) -> str:
        control = f" (outer lr {self.outer_lr:g})" if self.outer_lr is not None else ""
        return f"f={self.f} {self.attack or 'clean'} {self.reducer}{control}"


def task_of(run: dict) -> Task:
    return Task(run["f"], run["attack"], run["reducer"], run["outer_lr"])


def tasks_for(s: Settings) -> list[Task]:
    out = []
    for f in s.fs:
        out += [Task(f, None, r) for r in s.clean_reducers]
        reducers = list(s.reducers) + [r for r in s.extra_reducers if f in s.extra_at and r not in s.reducers]
        out += [Task(f, a, r) for a in s.attacks for r in reducers]
        if f in s.extra_at:
            out += [Task(f, None, "mean", lr) for lr in s.control_outer_lrs]
    return sorted(out, key=lambda t: -(s.n - t.f))  # biggest first


# --- the attacks -----------------------------------------------------------------------------------------------------
def alie_z(n: int, f: int) -> float:
    """Baruch et al. 2019 ("A Little Is Enough", arXiv 1902.06156, §3): s = ⌊n/2 + 1⌋ − f workers must be won
    over; z_max = Φ⁻¹((n − s) / n)."""
    s = math.floor(n / 2 + 1) - f
    return statistics.NormalDist().inv_cdf((n - s) / n)


def craft(kind: str, honest: list[torch.Tensor], attackers: list[str], round_no: int, n: int) -> list[torch.Tensor]:
    """The f Byzantine parts of one round, from the honest Δs (P,) of that round (colluding, omniscient).

    Each attacker's "own Δ" is μ, the mean of the honest Δs (its best estimate of an honest pseudo-gradient), and
    sign_flip, scale, noise and ipm are exactly ``koinon.swarm.attacks.apply_attack(kind, μ, ...)`` (what
    ``koinon start --attack`` sends): −4·μ, 100·μ, N(0, (10·std μ)²) per attacker (seeded by member and round), and
    −0.5·μ, which is Xie et al. 2020's IPM with ε = 0.5. ALIE is the paper's: μ − z·σ, σ the coordinate-wise
    (sample) standard deviation of the honest Δs, z from n and f (``alie_z``); the live peer's ``alie`` cannot see
    the honest Δs and approximates σ from two samples with z = 1.
    """
    stacked = torch.stack(honest)  # (n − f, P)
    mu = stacked.mean(dim=0)  # (P,)
    if kind == "alie":
        crafted = mu - alie_z(n, len(attackers)) * stacked.std(dim=0)  # (P,)
        return [crafted.clone() for _ in attackers]
    return [apply_attack(kind, mu, AttackContext(member, round_no)) for member in attackers]


# --- the shards --------------------------------------------------------------------------------------------------------
def deal(corpus: Corpus, round_no: int, group: list[str]) -> dict[str, list[int]]:
    """Every member's ``Corpus.shard(member, round_no, group)`` in one pass over the blocks (the same rendezvous
    hashing; one call to ``Corpus.shard`` costs a pass too). ``check_deal`` compares it with ``Corpus.shard``."""
    from koinon.training.data import _u64  # the hash Corpus.shard uses

    members = sorted(group)
    r = round_no.to_bytes(8, "big")
    keys = [m.encode() for m in members]
    out: dict[str, list[int]] = {m: [] for m in members}
    for b in corpus.train_blocks:
        bb = b.to_bytes(8, "big")
        scores = [_u64(k, r, bb) for k in keys]
        out[members[max(range(len(scores)), key=scores.__getitem__)]].append(b)
    return out


def check_deal(corpus: Corpus, round_no: int, group: list[str], dealt: dict[str, list[int]], who: str) -> None:
    assert dealt[who] == corpus.shard(who, round_no, group), f"deal of round {round_no} differs for {who}"
    assert sum(map(len, dealt.values())) == len(corpus.train_blocks), "the deal does not cover every training block"


# --- one run -------------------------------------------------------------------------------------------------------
@dataclass
class World:
    """What one worker process holds: the corpus, the model, θ₀, the eval set, the deals, the round-1 cache."""

    settings: Settings
    corpus: Corpus
    model: torch.nn.Module
    theta0: torch.Tensor
    eval_set: list[torch.Tensor]
    deals: dict[tuple[str, int], dict[str, list[int]]]
    first_round: dict[int, tuple] = field(default_factory=dict)


WORLD: World | None = None


def init_world(settings: Settings, deals: dict, corpus: Corpus | None = None) -> None:
    global WORLD
    torch.set_num_threads(settings.threads)
    config = settings.config()
    corpus = corpus or Corpus.default()
    model = build_model(config)
    eval_set = corpus.eval_batches(32, settings.seq_len, max_sequences=settings.eval_sequences)
    WORLD = World(settings, corpus, model, flat_parameters(model), eval_set, deals)


def group_key(group: list[str]) -> str:
    return ",".join(sorted(group))


def wire_split(size: int, compression: CompressionBase) -> int:
    """Values per all-reduce part, as hivemind's ``TensorPartContainer`` splits the averaged (P,) vector: parts of
    up to ``DEFAULT_PART_SIZE_BYTES`` after compression (fp16: 2¹⁹ / 2 = 262,144 values)."""
    info = CompressionInfo.from_tensor(torch.zeros(size), key=0)
    return int(DEFAULT_PART_SIZE_BYTES / (4 * compression.estimate_compression_ratio(info)))


def aggregate(
    reducer: str, parts: list[torch.Tensor], weights: list[float], compression: CompressionBase
) -> tuple[torch.Tensor, int, float]:
    """(Δ̄ (P,), parts rejected, seconds in ``reduce``) as the swarm computes it, wire part by wire part: each
    sender's part through the wire encoding, a part with NaN/Inf left out (weight 0, as ``ExactPartReducer``
    rejects it), ``reduce`` over the senders' copies of the part, the result encoded again. Per part matters for
    ``centered_clip`` (its norms and τ are per part); the coordinate-wise reducers give the same on any split."""
    split = wire_split(parts[0].numel(), compression)
    out, rejected, seconds = [], 0, 0.0
    for start in range(0, parts[0].numel(), split):
        wire = [roundtrip(p[start : start + split], compression) for p in parts]  # (part,) each
        kept = [(p, w) for p, w in zip(wire, weights, strict=True) if bool(torch.isfinite(p).all())]
        rejected += len(wire) - len(kept)
        started = time.perf_counter()
        part = reduce(reducer, [p for p, _ in kept], [w for _, w in kept]) if kept else torch.zeros_like(wire[0])
        seconds += time.perf_counter() - started
        out.append(roundtrip(part, compression))
    return torch.cat(out), rejected, seconds


def simulate(task: Task) -> dict:
    """One run of ``settings.rounds`` rounds; returns its losses and per-round diagnostics."""
    w = WORLD
    assert w is not None, "init_world was not called in this process"
    s, config = w.settings, w.settings.config()
    started, cpu = time.perf_counter(), time.process_time()
    members = member_ids(s.n)
    honest, byzantine = members[: s.n - task.f], members[s.n - task.f :]
    group = honest if task.attack is None else members
    compression = get_compression(config.compression)
    trainers = {m: InnerTrainer(w.model, config) for m in honest}  # one model, each worker's own AdamW state
    theta = w.theta0.clone()
    outer_lr = config.outer_lr if task.outer_lr is None else task.outer_lr
    outer = OuterOptimizer(outer_lr, config.outer_momentum, theta.numel())
    weights = [float(config.inner_steps * config.batch_size)] * len(group)  # samples: attackers claim theirs too
    rounds: list[dict] = []
    evals: dict[str, float] = {}  # round → eval loss
    diverged, trained = None, 0
    reduce_seconds, train_seconds, shared_first = 0.0, 0.0, False
    for r in range(1, s.rounds + 1):
        shards = w.deals[(group_key(group), r)]
        cached = w.first_round.get(task.f) if (r == 1 and task.attack is not None) else None
        try:
            if cached is not None:  # round 1 of every attacked run at this f: same θ₀, shards, batches, AdamW state
                deltas, losses, states = cached
                for m, (state, steps) in zip(honest, states, strict=True):
                    trainers[m].optimizer.load_state_dict(copy.deepcopy(state))
                    trainers[m].steps_done = steps
                shared_first = True
            else:
                deltas, losses = [], []
                t0 = time.perf_counter()
                for m in honest:
                    batches = w.corpus.batches(
                        shards[m], f"{m}|{r}".encode(), config.inner_steps, config.batch_size, config.seq_len
                    )
                    delta, loss, _, _ = trainers[m].run_round(theta, batches)
                    deltas.append(delta)
                    losses.append(loss)
                    trained += 1
                train_seconds += time.perf_counter() - t0
                if r == 1 and task.attack is not None:
                    states = [
                        (copy.deepcopy(trainers[m].optimizer.state_dict()), trainers[m].steps_done) for m in honest
                    ]
                    w.first_round[task.f] = (deltas, losses, states)
        except FloatingPointError as e:  # an honest inner loss went non-finite: θ is ruined
            diverged = {"round": r, "why": str(e)}
            break
        parts = list(deltas)
        if task.attack is not None:
            parts += craft(task.attack, deltas, byzantine, r, s.n)
        avg, rejected, seconds = aggregate(task.reducer, parts, weights, compression)
        reduce_seconds += seconds
        mu = torch.stack(deltas).mean(dim=0)  # (P,) the honest mean: what a clean aggregate would be near
        outer.step(theta, avg)
        rounds.append(
            {
                "round": r,
                "inner_loss": round(sum(losses) / len(losses), 4),
                "rejected": rejected,
                "cos_to_honest_mean": round(float(torch.nn.functional.cosine_similarity(avg, mu, dim=0)), 4),
                "norm_over_honest_mean": round(float(avg.norm() / mu.norm()), 4),
            }
        )
        if not bool(torch.isfinite(theta).all()):
            diverged = {"round": r, "why": "θ is not finite after the outer step"}
            break
        if r % s.eval_every == 0 or r == s.rounds:
            evals[str(r)] = round(trainers[honest[0]].evaluate(theta, w.eval_set), 5)
    final = evals.get(str(s.rounds)) if diverged is None else None
    return {
        **asdict(task),
        "label": task.label,
        "final_eval_loss": final,
        "eval_loss_by_round": evals,
        "diverged": diverged,
        "theta_sha256": theta_hash(theta)[:16] if diverged is None else None,
        "honest_worker_rounds_trained": trained,
        "shared_first_round": shared_first,
        "reduce_seconds": round(reduce_seconds, 3),
        "train_seconds": round(train_seconds, 2),
        "seconds": round(time.perf_counter() - started, 2),
        "cpu_seconds": round(time.process_time() - cpu, 2),
        "rounds": rounds,
    }


def initial_loss(s: Settings) -> float:
    assert WORLD is not None
    return round(InnerTrainer(WORLD.model, s.config()).evaluate(WORLD.theta0, WORLD.eval_set), 5)


# --- load sampling ---------------------------------------------------------------------------------------------
class LoadSampler:
    """The 1-min load average every ``period`` seconds while the bench runs."""

    def __init__(self, period: float = 15.0) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period,), daemon=True)

    def _run(self, period: float) -> None:
        while not self._stop.is_set():
            self.samples.append(round(os.getloadavg()[0], 2))
            self._stop.wait(period)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- output ----------------------------------------------------------------------------------------------------------
def verdict(ok: bool) -> str:
    return "✅" if ok else "❌"


def fraction(f: int, n: int) -> str:
    g = math.gcd(f, n)
    return f"{f // g}/{n // g}"


def cell(run: dict | None) -> str:
    if run is None:
        return "–"
    if run["diverged"] is not None:
        return f"diverged (r{run['diverged']['round']})"
    return f"{run['final_eval_loss']:.4f}"


def ratio(run: dict | None, clean: dict | None) -> float | None:
    if run is None or clean is None or clean["final_eval_loss"] is None:
        return None
    if run["diverged"] is not None:
        return math.inf
    return run["final_eval_loss"] / clean["final_eval_loss"]


def fmt_ratio(x: float | None) -> str:
    return "–" if x is None else ("∞" if math.isinf(x) else f"{x:.3f}")


def summarise(results: dict) -> None:
    """Ratios to the clean run, the target's verdicts and the sanity check, into ``results``."""
    s, runs = results["settings"], results["runs"]
    by = {(r["f"], r["attack"], r["reducer"]): r for r in runs if r["outer_lr"] is None}
    table, target, sanity = [], [], []
    controls = [r for r in runs if r["outer_lr"] is not None]
    # the best clean loss at each f, the controls included: a stricter reference when a smaller step helps
    best_clean = {
        f: min(
            [r for r in runs if r["f"] == f and r["attack"] is None and r["reducer"] == "mean"],
            key=lambda r: math.inf if r["final_eval_loss"] is None else r["final_eval_loss"],
        )
        for f in s["fs"]
    }
    results["controls"] = [
        {
            "f": r["f"],
            "outer_lr": r["outer_lr"],
            "final_eval_loss": r["final_eval_loss"],
            "over_clean": fmt_ratio(ratio(r, by.get((r["f"], None, "mean")))),
        }
        for r in controls
    ]
    for attack in s["attacks"]:
        for f in s["fs"]:
            clean = by.get((f, None, "mean"))
            row = {"attack": attack, "f": f, "clean": clean and clean["final_eval_loss"], "reducers": {}}
            for red in REDUCERS:
                run = by.get((f, attack, red))
                if run is not None:
                    x = ratio(run, clean)
                    row["reducers"][red] = {
                        "final_eval_loss": run["final_eval_loss"],
                        "diverged": run["diverged"],
                        "over_clean": None if x is None or math.isinf(x) else round(x, 4),
                    }
                    if f == TARGET_F and red != "mean":
                        best = best_clean[f]
                        target.append(
                            {
                                "attack": attack,
                                "reducer": red,
                                "over_clean": fmt_ratio(x),
                                "met": x <= TARGET_RATIO,
                                "best_clean": best["label"],
                                "over_best_clean": fmt_ratio(ratio(run, best)),
                            }
                        )
            mean = by.get((f, attack, "mean"))
            if attack in ("sign_flip", "scale") and mean is not None:
                x = ratio(mean, clean)
                sanity.append({"attack": attack, "f": f, "mean_over_clean": fmt_ratio(x), "ok": x >= SANITY_RATIO})
            table.append(row)
    results["table"], results["target"], results["sanity"] = table, target, sanity
    robust = [t for t in target if t["reducer"] == ROBUST]
    results["target_met"] = bool(robust) and all(t["met"] for t in robust)


def markdown(r: dict) -> str:
    s, m = r["settings"], r["machine"]
    by = {(x["f"], x["attack"], x["reducer"]): x for x in r["runs"] if x["outer_lr"] is None}
    shown = [red for red in REDUCERS if any(x["reducer"] == red and x["attack"] for x in r["runs"])]
    n = s["n"]
    head = "| attack | f/n | clean | " + " | ".join(
        f"{red} | {red}/clean" if red != "mean" else "mean | mean/clean" for red in shown
    )
    lines = [
        "# Byzantine benchmark",
        "",
        f"{r['date']} — {m['platform']}, os.cpu_count() = {m['cpu_count']}, Python {m['python']}, torch "
        f"{m['torch']}; load average {m['load_start']} at the start, {m['load_end']} at the end (1, 5, 15 min); "
        f"1-min load during the run {min(m['load_samples'])}–{max(m['load_samples'])} (every 15 s), other processes "
        f"used {m['others_cores']} cores on average (/proc/stat busy time minus this bench's own CPU).",
        "",
        f"Command: `{r['command']}` (total {r['total_seconds']:.0f} s, {s['jobs']} worker process(es) × "
        f"{s['threads']} torch thread(s); sources measured sha256 {r['src_sha256']['all']}"
        + (", **changed during the run**" if "src_changed_during_run" in r else "")
        + ")",
        "",
        f"Settings: n = {n} workers, f ∈ {{{', '.join(str(f) for f in s['fs'])}}} Byzantine; model "
        f"`{s['model_size']}` ({r['parameters']:,} parameters), seq_len {s['seq_len']}, batch {s['batch_size']}, "
        f"H = {s['inner_steps']} inner steps, R = {s['rounds']} rounds (each honest worker trains "
        f"{s['rounds'] * s['inner_steps']} steps, {s['rounds'] * s['inner_steps'] * s['batch_size'] * s['seq_len']:,}"
        f" tokens); inner AdamW lr {r['config']['inner_lr']} (warm-up {r['config']['inner_warmup']}), outer "
        f"Nesterov lr {r['config']['outer_lr']} momentum {r['config']['outer_momentum']}, wire "
        f"{r['config']['compression']}; eval: {s['eval_sequences']} held-out sequences of {s['seq_len']} bytes "
        f"(nats per byte; θ₀: {r['initial_eval_loss']:.4f}). ALIE's z: "
        + ", ".join(f"{fraction(f, n)}: {r['alie_z'][str(f)]:.3f}" for f in s["fs"])
        + ".",
        "",
        "Final eval loss (nats per byte, lower is better); the clean run is the n − f honest workers alone, mean. "
        f"Target: the robust reducer ({ROBUST}) ≤ {TARGET_RATIO:g} × clean at f/n = {fraction(TARGET_F, n)}.",
        "",
        head + " |",
        "|---|---|---|" + "---|---|" * len(shown),
    ]
    for f in s["fs"]:
        clean = by.get((f, None, "mean"))
        cells = []
        for red in shown:
            run = by.get((f, None, red))
            cells += [cell(run), fmt_ratio(ratio(run, clean)) if red != "mean" else "1"]
        lines.append(
            f"| none (clean run, under each reducer) | {fraction(f, n)} | {cell(clean)} | " + " | ".join(cells) + " |"
        )
    for attack in s["attacks"]:
        for f in s["fs"]:
            clean = by.get((f, None, "mean"))
            cells = []
            for red in shown:
                run = by.get((f, attack, red))
                x = ratio(run, clean)
                mark = f" {verdict(x <= TARGET_RATIO)}" if f == TARGET_F and red != "mean" and x is not None else ""
                cells += [cell(run), fmt_ratio(x) + mark]
            lines.append(f"| {attack} | {fraction(f, n)} | {cell(clean)} | " + " | ".join(cells) + " |")
    robust = [t for t in r["target"] if t["reducer"] == ROBUST]
    lines += [
        "",
        f"**Target** ({ROBUST} within {100 * (TARGET_RATIO - 1):.0f} % of clean at {fraction(TARGET_F, n)}, every "
        f"attack): **{'met' if r['target_met'] else 'not met'}** — "
        + ", ".join(f"{t['attack']} {t['over_clean']} {verdict(t['met'])}" for t in robust)
        + ". Other robust reducers at "
        + fraction(TARGET_F, n)
        + ": "
        + (
            "; ".join(
                f"{red}: " + ", ".join(f"{t['attack']} {t['over_clean']}" for t in r["target"] if t["reducer"] == red)
                for red in dict.fromkeys(t["reducer"] for t in r["target"] if t["reducer"] != ROBUST)
            )
            or "not run"
        )
        + ".",
        "",
        "**Control** (the clean run, mean, with a smaller outer learning rate than the config's "
        f"{r['config']['outer_lr']:g}; attacks that shrink the aggregate, such as ipm, act like one): "
        + (
            ", ".join(
                f"{fraction(c['f'], n)} lr {c['outer_lr']:g}: {c['final_eval_loss']:.4f} ({c['over_clean']} × clean)"
                if c["final_eval_loss"] is not None
                else f"{fraction(c['f'], n)} lr {c['outer_lr']:g}: diverged"
                for c in r["controls"]
            )
            or "not run"
        )
        + f". Against the best clean run at {fraction(TARGET_F, n)} (controls included), {ROBUST}: "
        + ", ".join(f"{t['attack']} {t['over_best_clean']}" for t in robust)
        + " (stricter reading, no target).",
        "",
        f"**Sanity** (something is measured: the plain mean under sign_flip and scale must be ≥ {SANITY_RATIO:g} × "
        "clean, or diverge): "
        + ", ".join(
            f"{x['attack']} at {fraction(x['f'], n)} {x['mean_over_clean']} {verdict(x['ok'])}" for x in r["sanity"]
        )
        + ".",
        "",
        "`nan` (every 7th coordinate NaN) is not run: `ExactPartReducer` rejects a part with a NaN/Inf before any "
        "reducer (weight 0), so the outcome is the n − f honest workers' aggregate, i.e. the clean run up to how the "
        "shards are dealt.",
        "",
        "**Free-rider catch probability and verification overhead** (the issue's other half): not measured yet: "
        "verification is not implemented.",
        "",
        f"Time: {r['total_seconds']:.0f} s wall in all ({s['jobs']} processes); the runs used "
        f"{r['runs_cpu_seconds']:.0f} s of CPU. Inside the runs (wall): training {r['honest_worker_rounds']:,} "
        f"honest worker-rounds {r['train_seconds']:.0f} s ({r['seconds_per_worker_round']:.3f} s each), `reduce` "
        f"{r['reduce_seconds']:.0f} s; one round's `reduce` of {n} senders' {r['parameters']:,} values (in "
        f"{r['wire_parts']} wire parts): "
        + ", ".join(f"{red} {ms:.0f} ms" for red, ms in r["reduce_ms_per_round"].items())
        + ".",
        "",
        "Simulated in one process per job, no network; docs/benchmarks-byzantine.md explains the method and its "
        "limits. Full data (per round: honest inner loss, cosine of Δ̄ to the honest mean, norm ratio, parts "
        "rejected): bench/results/byzantine.json.",
        "",
    ]
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    d = Settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=d.rounds, help="outer rounds R")
    parser.add_argument("--fs", type=int, nargs="+", default=list(d.fs), help="numbers of Byzantine workers")
    parser.add_argument("--n", type=int, default=d.n, help="workers in all")
    parser.add_argument("--attacks", nargs="+", default=list(d.attacks), choices=ATTACKS)
    parser.add_argument("--reducers", nargs="+", default=list(d.reducers), choices=REDUCERS)
    parser.add_argument("--extra-reducers", nargs="*", default=list(d.extra_reducers), choices=REDUCERS)
    parser.add_argument("--extra-at", type=int, nargs="*", default=list(d.extra_at), help="f for --extra-reducers")
    parser.add_argument("--clean-reducers", nargs="+", default=list(d.clean_reducers), choices=REDUCERS)
    parser.add_argument(
        "--control-outer-lrs", type=float, nargs="*", default=list(d.control_outer_lrs), help="clean controls"
    )
    parser.add_argument("--model-size", default=d.model_size)
    parser.add_argument("--seq-len", type=int, default=d.seq_len)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--inner-steps", type=int, default=d.inner_steps, help="H")
    parser.add_argument("--eval-sequences", type=int, default=d.eval_sequences)
    parser.add_argument("--eval-every", type=int, default=d.eval_every)
    parser.add_argument("--threads", type=int, default=d.threads, help="torch threads per worker process")
    parser.add_argument("--jobs", type=int, default=d.jobs, help="worker processes (runs in parallel)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--name", default="byzantine", help="stem of the result files")
    a = parser.parse_args(argv)
    if "mean" not in a.clean_reducers:
        parser.error("--clean-reducers must include mean: the clean run every ratio is taken against")
    if any(not 0 < f < a.n / 2 for f in a.fs):
        parser.error(f"every f must be in (0, n/2) = (0, {a.n / 2:g})")
    s = Settings(
        n=a.n,
        fs=tuple(a.fs),
        rounds=a.rounds,
        attacks=tuple(a.attacks),
        reducers=tuple(a.reducers),
        extra_reducers=tuple(a.extra_reducers),
        extra_at=tuple(a.extra_at),
        clean_reducers=tuple(a.clean_reducers),
        control_outer_lrs=tuple(a.control_outer_lrs),
        model_size=a.model_size,
        seq_len=a.seq_len,
        batch_size=a.batch_size,
        inner_steps=a.inner_steps,
        eval_sequences=a.eval_sequences,
        eval_every=a.eval_every,
        threads=a.threads,
        jobs=a.jobs,
    )
    began, busy0 = time.perf_counter(), busy_jiffies()
    results: dict = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_start": load(),
        },
        "command": command_line(),
        "src_sha256": src_digest(),
        "settings": asdict(s),
        "config": {k: v for k, v in asdict(s.config()).items() if k != "reducer"},  # each run names its reducer
        "alie_z": {str(f): round(alie_z(s.n, f), 4) for f in s.fs},
        "targets": {"robust_reducer": ROBUST, "over_clean_at_most": TARGET_RATIO, "at_f": TARGET_F, "n": s.n},
        "not_measured": {
            "free_rider_catch_probability": "not measured yet: verification is not implemented",
            "verification_overhead": "not measured yet: verification is not implemented",
        },
    }
    tasks = tasks_for(s)
    log(
        f"{len(tasks)} runs: n = {s.n}, f ∈ {list(s.fs)}, R = {s.rounds}, H = {s.inner_steps}, batch {s.batch_size} "
        f"× {s.seq_len}, model {s.model_size}; {s.jobs} process(es) × {s.threads} thread(s); load {load()}"
    )
    torch.set_num_threads(s.threads)
    t0 = time.perf_counter()
    corpus = Corpus.default()
    members = member_ids(s.n)
    groups = [members] + [honest_ids(s.n, f) for f in s.fs]
    deals: dict[tuple[str, int], dict[str, list[int]]] = {}
    for g in groups:
        for r in range(1, s.rounds + 1):
            deals[(group_key(g), r)] = dealt = deal(corpus, r, g)
            check_deal(corpus, r, g, dealt, g[r % len(g)])  # one member per deal against Corpus.shard itself
    log(f"dealt the shards of {len(deals)} (group, round) pairs in {time.perf_counter() - t0:.1f} s (checked)")
    init_world(s, {}, corpus)
    results["parameters"] = WORLD.theta0.numel()
    split = wire_split(results["parameters"], get_compression(s.config().compression))
    results["wire_parts"] = -(-results["parameters"] // split)
    results["initial_eval_loss"] = initial_loss(s)
    cost = {t: (s.n - t.f) * s.rounds for t in tasks}
    total_cost, done_cost, runs = sum(cost.values()), 0, []
    with LoadSampler() as sampler:
        ctx = mp.get_context("spawn")
        pool = ctx.Pool(s.jobs, initializer=init_world, initargs=(s, deals))
        try:
            for k, run in enumerate(pool.imap_unordered(simulate, tasks, chunksize=1)):
                runs.append(run)
                done_cost += cost[task_of(run)]
                elapsed = time.perf_counter() - began
                log(
                    f"{k + 1}/{len(tasks)} {run['label']}: final eval loss {cell(run)} ({run['seconds']:.0f} s, CPU "
                    f"{run['cpu_seconds']:.0f} s); elapsed {elapsed:.0f} s, ≈ {elapsed * (total_cost / done_cost - 1):.0f} s "
                    f"left (upper bound); load {load()[0]}"
                )
            pool.close()
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.join()  # the workers are reaped: their CPU time is in os.times().children_*
    wall = time.perf_counter() - began
    busy1 = busy_jiffies()
    times = os.times()
    own_cpu = times.user + times.system + times.children_user + times.children_system
    results["machine"]["load_end"] = load()
    results["machine"]["load_samples"] = sampler.samples
    results["machine"]["others_cores"] = (
        None
        if busy0 is None or busy1 is None
        else round(max(0.0, (busy1 - busy0) / os.sysconf("SC_CLK_TCK") - own_cpu) / wall, 2)
    )
    results["total_seconds"] = round(wall, 1)
    order = {t: i for i, t in enumerate(sorted(tasks, key=lambda t: (t.f, t.attack or "", t.reducer, t.outer_lr or 0)))}
    results["runs"] = sorted(runs, key=lambda r: order[task_of(r)])
    trained = sum(r["honest_worker_rounds_trained"] for r in runs)
    results["honest_worker_rounds"] = trained
    results["train_seconds"] = round(sum(r["train_seconds"] for r in runs), 1)
    results["reduce_seconds"] = round(sum(r["reduce_seconds"] for r in runs), 1)
    results["runs_cpu_seconds"] = round(sum(r["cpu_seconds"] for r in runs), 1)
    results["seconds_per_worker_round"] = round(results["train_seconds"] / max(1, trained), 4)
    calls: dict[str, list[float]] = {}
    for r in runs:
        if r["attack"] is not None and r["rounds"]:  # n senders
            calls.setdefault(r["reducer"], []).append(r["reduce_seconds"] / len(r["rounds"]))
    results["reduce_ms_per_round"] = {red: round(1000 * statistics.mean(v), 2) for red, v in calls.items()}
    if src_digest() != results["src_sha256"]:
        results["src_changed_during_run"] = src_digest()
        log("warning: the measured sources changed during the run; the results mix two versions")
    summarise(results)
    a.results_dir.mkdir(parents=True, exist_ok=True)
    (a.results_dir / f"{a.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (a.results_dir / f"{a.name}.md").write_text(markdown(results))
    log(
        f"target ({ROBUST} ≤ {TARGET_RATIO:g} × clean at f = {TARGET_F}): {'met' if results['target_met'] else 'not met'}; "
        f"sanity: {'ok' if all(x['ok'] for x in results['sanity']) else 'FAILED'}; total {wall:.0f} s; wrote "
        f"{a.results_dir / (a.name + '.json')} and {a.name}.md"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
