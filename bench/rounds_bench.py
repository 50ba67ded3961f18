"""Round-protocol benchmark: goodput and tokens/s per peer of a 4-peer Koinon swarm on a loaded machine, against a
lone plain loop measured in the same run (docs/training.md §2.6 defines goodput).

    .venv/bin/python bench/rounds_bench.py [--short] [--inner-steps H] [--rounds R] [--busy N] [--only ...]

Every variant runs while ``--busy`` busy-loop processes (``python -c "while True: pass"``, default 1) compete
for the cores; they are killed when the variant ends. Every process uses one torch thread.

  lone   one plain loop (bench/worker.py --mode plain: Koinon's ``InnerTrainer.run_round`` over H·R batches of 8,
         no communication): the tokens/s reference;
  (a)    4 honest peers (``python -m koinon start``), equal speed;
  (b)    4 honest peers, peer 3 with ``--slowdown 3`` (each of its inner steps 3× slower);
  (c)    (b) plus a 5th peer with ``--attack sign_flip`` (4 honest + 1 attacker).

Each swarm: ``--rounds R --inner-steps H --threads 1 --wait-for-peers N --listen /ip4/127.0.0.1/tcp/0``, the
founder (peer 0) with ``--min-contributors 3``, the others with ``--initial-peers`` = its address. All start at
once: the others run the same CLI entry point (``koinon.cli.main.main``) after importing torch and hivemind and
waiting for the founder's address (``JOINER``). Defaults: H = 20, R = 12 heights, the CLI's matchmaking time and
averaging timeout. ``--short``: H = 10, R = 3, ``--matchmaking-time 1 --averaging-timeout 20`` (as the integration
tests) and a 230 s time limit: a quick check, written to bench/results/tmp/ (git ignores it).

Per honest peer, from its ``$HOME/metrics.jsonl``: goodput = reached / trained and weighted goodput =
reached_weighted / trained (its final ``goodput`` record), tokens/s = its last ``round`` record's tokens / (that
record's time − its ``start`` record's time), the final θ and eval loss (the honest peers must end on one certified
θ), failed attempts (``round_failed``, by reason). Per swarm: goodput = Σ reached / Σ trained over honest peers,
heights reached, wall time. Targets (the issue): goodput ≥ 90 % in every swarm; final loss (c) / (b) ≤ 1.05.

Writes RESULTS_DIR/rounds.json and rounds.md (also when interrupted: what was measured so far). Exits non-zero only
when something crashed, timed out or was interrupted (or left processes behind), not for a missed target.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from benchlib import command_line, load
from procs import (
    REPO,
    Barrier,
    Proc,
    Watcher,
    p2pd_pids,
    processes_in_groups,
    python_cmd,
    read_json,
    read_jsonl,
    remove_stale_sockets,
    wait_for,
    write_results,
)
from run import machine, source_hash

WORKER = str(Path(__file__).resolve().parent / "worker.py")
STARTUP_TIMEOUT = 240.0  # s: 5 processes importing torch and starting p2pd on 2 busy cores
HONEST = 4

# Runs one peer exactly as `python -m koinon start ARGS --initial-peers <founder>` does (koinon/__main__.py calls
# koinon.cli.main.main), but imports the heavy modules (torch, hivemind, transformers) first and only then waits for
# the founder's address: the peers' start-up overlaps the founder's instead of following it (on 2 busy cores that
# saves tens of seconds per swarm). argv: MADDRS_FILE ARGS...
JOINER = """
import sys, time
from pathlib import Path
import koinon.cli.main, koinon.swarm.peer
maddrs = Path(sys.argv[1])
while not (maddrs.exists() and maddrs.read_text().strip()):
    time.sleep(0.1)
sys.argv = ["koinon", *sys.argv[2:], "--initial-peers", *maddrs.read_text().split()]
raise SystemExit(koinon.cli.main.main())
"""

TARGETS = dict(goodput=0.90, loss_c_over_b=1.05)

METHOD = dict(
    busy="busy-loop processes (python -c 'while True: pass') running during every variant, lone loop included",
    lone="bench/worker.py --mode plain --steps H·R --batch-size 8: one process, one torch thread, no communication; "
    "timed from the start barrier to the end of its last optimizer step",
    goodput="per honest peer: reached / trained samples from its final 'goodput' record; per swarm: Σ reached / "
    "Σ trained over the honest peers (the attacker excluded)",
    weighted_goodput="reached_weighted / trained: reached samples times their staleness weight 1/(1+s)",
    tokens_per_s="per peer: its last 'round' record's cumulative tokens / (that record's time − its 'start' "
    "record's time); the swarm's figure is the mean over honest peers",
    ratio_to_lone="tokens/s per peer / the lone loop's tokens/s (on a machine with fewer cores than processes this "
    "is bounded by the share of a core each peer gets)",
    final_eval_loss="the honest peers' last round record's eval loss (Corpus.eval_batches(8, 128), nats per byte); "
    "they must agree on θ (theta_identical)",
    failed_attempts="round_failed records of the honest peers (each a failed attempt at a height), by reason",
    wall_s="first process launched to last process exited (start-up, evaluations and shutdown included)",
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.procs: list[Proc] = []
        self.variants: dict[str, dict] = {}  # filled by run_plan as the variants end

    def _spawn(self, name: str, cmd: list[str], folder: Path) -> Proc:
        proc = Proc(name, cmd, folder / f"{name}.log", env={"HIVEMIND_LOGLEVEL": "ERROR"})
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            proc.kill_group()

    def _busy(self, folder: Path) -> list[Proc]:
        return [self._spawn(f"busy-{i}", python_cmd("-c", "while True: pass"), folder) for i in range(self.args.busy)]

    # --- the lone plain loop --------------------------------------------------------------------------------------
    def lone(self) -> dict:
        a = self.args
        steps = a.inner_steps * a.rounds
        folder = Path(tempfile.mkdtemp(prefix="lone-", dir=self.tmp))
        busy = self._busy(folder)
        launched = time.time()
        cmd = [WORKER, "--mode", "plain", "--steps", str(steps), "--batch-size", "8", "--workdir", str(folder)]
        proc = self._spawn("lone", python_cmd(*cmd, "--peers", "1", "--index", "0"), folder)
        barrier = Barrier(folder)
        wait_for(lambda: barrier.all_ready(1), STARTUP_TIMEOUT, "for the lone loop to start", [proc])
        barrier.go()
        wait_for(lambda: exited([proc]), 120 + steps * 2.0, "waiting for the lone loop to finish", [])
        wall = time.time() - launched
        for p in [proc, *busy]:
            p.kill_group()
        r = read_json(folder / "result-0.json")
        return dict(
            steps=steps,
            tokens=r["tokens"],
            train_seconds=r["train_seconds"],
            tokens_per_s=r["tokens"] / r["train_seconds"],
            eval_loss=r["eval_loss"],
            wall_s=wall,
        )

    # --- one swarm ---------------------------------------------------------------------------------------------
    def swarm(self, label: str, slow: bool, attack: str | None) -> dict:
        a = self.args
        n = HONEST + (attack is not None)
        folder = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=self.tmp))
        homes = [folder / f"peer-{i}" for i in range(n)]
        base = [
            "-m",
            "koinon",
            "start",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--rounds",
            str(a.rounds),
            "--inner-steps",
            str(a.inner_steps),
            "--threads",
            "1",
            "--wait-for-peers",
            str(n),
        ]
        if a.matchmaking_time is not None:
            base += ["--matchmaking-time", str(a.matchmaking_time)]
        if a.averaging_timeout is not None:
            base += ["--averaging-timeout", str(a.averaging_timeout)]
        extra: dict[int, list[str]] = {0: ["--min-contributors", str(a.min_contributors)]}
        if slow:
            extra[HONEST - 1] = ["--slowdown", str(a.slowdown)]
        if attack is not None:
            extra[HONEST] = ["--attack", attack]
        busy = self._busy(folder)
        launched = time.time()
        procs = [self._spawn(f"{label}-0", python_cmd(*base, "--home", str(homes[0]), *extra[0]), folder)]
        maddrs = homes[0] / "maddrs"
        procs += [  # started at once; they join as soon as the founder printed its address (JOINER)
            self._spawn(
                f"{label}-{i}",
                python_cmd("-c", JOINER, str(maddrs), *base[2:], "--home", str(homes[i]), *extra.get(i, [])),
                folder,
            )
            for i in range(1, n)
        ]
        honest = procs[:HONEST]

        def tick() -> None:
            heights = [str(max((r["round"] for r in rounds_of(h)), default=0)) for h in homes]
            log(f"  {label}: heights {'/'.join(heights)} of {a.rounds}")

        # A peer still below height R when the others have finished and left can neither average nor sync (its
        # certificate's signers are gone) and never stops by itself: once one honest peer has finished, the others
        # get --straggler-grace s, then SIGINT (a clean exit: it still writes its goodput record), then SIGKILL.
        per_round = a.inner_steps * 0.5 * (a.slowdown if slow else 1.0) + 60
        first_done: list[float] = []

        def finished() -> bool:
            if exited(honest):
                return True
            if not first_done and any(not p.alive() for p in honest):
                first_done.append(time.monotonic())
            return bool(first_done) and time.monotonic() - first_done[0] > a.straggler_grace

        wait_for(finished, STARTUP_TIMEOUT + a.rounds * per_round, f"waiting for {label}'s honest peers", [], tick)
        stopped = stop_stragglers(procs, label)
        wall = time.time() - launched
        for p in [*procs, *busy]:
            p.kill_group()
        peers = [peer_result(homes[i], i, slow and i == HONEST - 1, procs[i].name in stopped) for i in range(HONEST)]
        for p in peers:
            p["stopped_by_bench"] = procs[p["index"]].name in stopped
        out = summarise(peers, wall, a.rounds)
        if attack is not None:
            mallory = procs[HONEST]
            info = dict(exit_code=mallory.proc.returncode, stopped_by_bench=mallory.name in stopped)
            out["attacker"] = attacker_result(homes[HONEST], peers, info)
        if a.keep:
            out["folder"] = str(folder)
        return out


def stop_stragglers(procs: list[Proc], label: str, timeout: float = 30.0) -> list[str]:
    """SIGINT the processes still running (each leaves after its current inner step, writing its goodput record),
    SIGKILL those still there after ``timeout``; the names of those stopped."""
    running = [p for p in procs if p.alive()]
    if running:
        log(f"  {label}: stopping {', '.join(p.name for p in running)} (still running after the others finished)")
    for p in running:
        try:
            os.killpg(p.pgid, signal.SIGINT)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while any(p.alive() for p in running) and time.monotonic() < deadline:
        time.sleep(0.2)
    for p in running:
        p.kill_group()
    return [p.name for p in running]


def exited(procs: list[Proc]) -> bool:
    """True once every process exited; a non-zero exit is a crash (raised at once: the others may wait forever)."""
    for p in procs:
        code = p.proc.poll()
        if code not in (None, 0):
            raise RuntimeError(f"{p.name} exited with {code}:\n{p.log_tail()}")
    return all(not p.alive() for p in procs)


def attacker_result(home: Path, honest: list[dict], exit_info: dict) -> dict:
    """The attacker's own record, and the heights at which the honest peers counted it as a contributor."""
    out = dict(exit_info, **peer_result(home, HONEST, False, lenient=True))
    member = out.get("member")
    counted = {r["round"] for p in honest for r in p["round_records"] if member and member in r["contributors"]}
    out["heights_counted_in"] = sorted(counted)
    return out


def leftovers(pgids: set[int], grace: float = 10.0) -> list[str]:
    """Our processes still running (zombies aside: killed, waiting for init to reap them), after a short grace."""
    deadline = time.monotonic() + grace
    while True:
        left = [p for p in processes_in_groups(pgids) if not p.endswith("<defunct>")]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def rounds_of(home: Path) -> list[dict]:
    return [r for r in read_jsonl(home / "metrics.jsonl") if r.get("event") == "round"]


def peer_result(home: Path, index: int, slow: bool, lenient: bool = False) -> dict:
    """One peer's numbers from its metrics.jsonl (docs/training.md §1.7, swarm/peer.py). ``lenient`` (the attacker,
    a peer the bench stopped): a missing goodput record is no error, the last round record's counters stand in."""
    rows = read_jsonl(home / "metrics.jsonl")
    start = next((r for r in rows if r.get("event") == "start"), None)
    rounds = [r for r in rows if r.get("event") == "round"]
    failed = [r for r in rows if r.get("event") == "round_failed"]
    goodput = [r for r in rows if r.get("event") == "goodput"]
    if not lenient and (start is None or not rounds or not goodput):
        missing = [k for k, v in dict(start=start, round=rounds, goodput=goodput).items() if not v]
        raise RuntimeError(f"peer {index} ({home}) wrote no {'/'.join(missing)} record")
    out: dict = dict(index=index, member=start.get("member") if start else None, slow=slow)
    if start is None or not rounds:
        return out | dict(failed_attempts=len(failed), finished=bool(goodput))
    last = rounds[-1]
    train_s = last["time"] - start["time"]
    g = goodput[-1] if goodput else {}
    trained = g.get("trained", last.get("trained", 0))
    out.update(
        start_eval_loss=start["eval_loss"],
        late=start.get("late", False),
        started=start["time"],
        ended=last["time"],
        train_seconds=train_s,
        tokens=last["tokens"],
        tokens_per_s=last["tokens"] / train_s if train_s > 0 else None,
        theta=last["theta"],
        eval_loss=last["eval_loss"],
        height=g.get("height", last["round"]),
        last_round=last["round"],
        finished=bool(goodput),
        trained=trained,
        reached=g.get("reached", last.get("reached", 0)),
        reached_weighted=g.get("reached_weighted", last.get("reached_weighted", 0)),
        dropped=g.get("dropped", last.get("dropped", 0)),
        unfolded=g.get("unfolded", 0),
        resynced=sum(bool(r.get("resynced")) for r in rounds),
        failed_attempts=len(failed),
        failure_reasons=dict(Counter(str(r.get("reason")) for r in failed)),
        attempts=max([r.get("attempted", 0) for r in rounds + failed], default=0),
        goodput=None,  # below, from the counters above
        weighted_goodput=None,
        round_records=[
            {
                k: r.get(k)
                for k in (
                    "round",
                    "attempted",
                    "time",
                    "seconds",
                    "eval_loss",
                    "contributors",
                    "tokens",
                    "resynced",
                    "trained",
                    "reached",
                    "reached_weighted",
                    "dropped",
                )
            }
            for r in rounds
        ],
    )
    if trained:
        out["goodput"], out["weighted_goodput"] = out["reached"] / trained, out["reached_weighted"] / trained
    return out


def summarise(peers: list[dict], wall: float, rounds: int) -> dict:
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    trained = sum(p["trained"] for p in peers)
    tps = [p["tokens_per_s"] for p in peers if p["tokens_per_s"]]
    thetas = {p["theta"] for p in peers}
    top = max(p["height"] for p in peers)
    ahead = [p for p in peers if p["height"] == top]  # the final θ: the one the peers at the top height hold
    losses = [p["eval_loss"] for p in ahead]
    return dict(
        honest_peers=len(peers),
        heights=top,
        min_height=min(p["height"] for p in peers),
        behind=[p["index"] for p in peers if p["height"] < top],
        stopped_by_bench=[p["index"] for p in peers if p.get("stopped_by_bench")],
        heights_target=rounds,
        goodput=sum(p["reached"] for p in peers) / trained if trained else None,
        weighted_goodput=sum(p["reached_weighted"] for p in peers) / trained if trained else None,
        min_peer_goodput=min((p["goodput"] for p in peers if p["goodput"] is not None), default=None),
        trained=trained,
        dropped=sum(p["dropped"] for p in peers),
        unfolded=sum(p["unfolded"] for p in peers),
        failed_attempts=sum(p["failed_attempts"] for p in peers),
        failure_reasons=dict(sum((Counter(p["failure_reasons"]) for p in peers), Counter())),
        resynced=sum(p["resynced"] for p in peers),
        tokens_per_s_per_peer=mean(tps),
        tokens_per_s_equal_speed_peers=mean([p["tokens_per_s"] for p in peers if not p["slow"]]),
        tokens_per_s_slow_peer=mean([p["tokens_per_s"] for p in peers if p["slow"]]),
        tokens_per_s_swarm=sum(tps),
        theta_identical=len(thetas) == 1,
        theta_identical_at_top=len({p["theta"] for p in ahead}) == 1,
        final_eval_loss=statistics.median(losses),
        final_eval_losses=sorted(set(losses)),
        start_eval_loss=peers[0]["start_eval_loss"],
        train_phase_s=max(p["ended"] for p in peers) - min(p["started"] for p in peers),
        wall_s=wall,
        per_peer=peers,
    )


def add_ratios(variants: dict[str, dict]) -> dict:
    """Ratios to the lone loop, the issue's targets and whether they are met."""
    ok = lambda k: k in variants and "error" not in variants[k]  # noqa: E731
    lone = variants["lone"]["tokens_per_s"] if ok("lone") else None
    div = lambda x, y: None if x is None or not y else x / y  # noqa: E731
    out: dict = dict(targets=TARGETS)
    for key in ("a", "b", "c"):
        if not ok(key):
            continue
        v = variants[key]
        v["ratio_to_lone"] = div(v["tokens_per_s_per_peer"], lone)
        v["ratio_to_lone_equal_speed_peers"] = div(v["tokens_per_s_equal_speed_peers"], lone)
        v["ratio_to_lone_slow_peer"] = div(v["tokens_per_s_slow_peer"], lone)
        v["ratio_to_lone_swarm"] = div(v["tokens_per_s_swarm"], lone)
        for p in v["per_peer"]:
            p["ratio_to_lone"] = div(p["tokens_per_s"], lone)
        out[f"goodput_{key}_met"] = None if v["goodput"] is None else v["goodput"] >= TARGETS["goodput"]
    if ok("b") and ok("c"):
        r = div(variants["c"]["final_eval_loss"], variants["b"]["final_eval_loss"])
        out["loss_c_over_b"] = r
        out["loss_c_over_b_met"] = None if r is None else r <= TARGETS["loss_c_over_b"]
    return out


def _f(x: float | None, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def _goal(x: float | None, met: bool | None, fmt: str) -> str:
    return "–" if x is None else f"{format(x, fmt)} {'✅' if met else '❌'}"


def markdown(results: dict) -> str:
    m, s, v, r = results["machine"], results["settings"], results["variants"], results["ratios"]
    lone = v.get("lone", {})
    lines = [
        f"Measured {results['date']} on {m['cpu']}, {m['cpu_count']} CPUs, {m['memory_gib']} GiB ({m['platform']}; "
        f"Python {m['python']}, torch {m['torch']}, hivemind {m['hivemind']}){' — SHORT RUN' if s['short'] else ''}. "
        f"Model tiny, batch 8 × seq_len 128, 1 torch thread per process; H = {s['inner_steps']} inner steps, "
        f"{s['rounds']} heights; {s['busy']} busy-loop process(es) competing during every variant; founder "
        f"--min-contributors {s['min_contributors']}; slow peer --slowdown {s['slowdown']:g}; attacker "
        f"--attack {s['attack']}; --matchmaking-time {s['matchmaking_time']}, --averaging-timeout "
        f"{s['averaging_timeout']}.",
        "",
    ]
    if "error" in lone:
        lines.append(f"Lone plain loop: failed: {lone['error'].splitlines()[0][:120]}")
    elif lone:
        lines.append(
            f"Lone plain loop ({lone['steps']} steps, same load): {lone['tokens_per_s']:,.0f} tokens/s, "
            f"eval loss {lone['eval_loss']:.4f}, other jobs' CPU {lone['other_jobs_cpu_share']:.0%}."
        )
    lines += [
        "",
        "| variant | heights | goodput (Σ) | weighted goodput | min peer goodput | failed attempts | re-syncs "
        "| tokens/s/peer | ÷ lone | equal-speed peers ÷ lone | slow peer ÷ lone | swarm ÷ lone | final eval loss "
        "| wall (s) | other jobs' CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key in ("a", "b", "c"):
        x = v.get(key)
        if x is None:
            continue
        if "error" in x:
            lines.append(f"| {x['title']} | failed: {x['error'].splitlines()[0][:100]} ||||||||||||||")
            continue
        agree = (
            ""
            if x["theta_identical_at_top"]
            else f" (θ differ: {', '.join(f'{e:.4f}' for e in x['final_eval_losses'])})"
        )
        behind = f" (peer {', '.join(map(str, x['behind']))} at {x['min_height']})" if x["behind"] else ""
        lines.append(
            f"| {x['title']} | {x['heights']}/{x['heights_target']}{behind} | {_f(x['goodput'], '.1%')} "
            f"| {_f(x['weighted_goodput'], '.1%')} | {_f(x['min_peer_goodput'], '.1%')} | {x['failed_attempts']} "
            f"| {x['resynced']} | {_f(x['tokens_per_s_per_peer'], ',.0f')} | {_f(x.get('ratio_to_lone'), '.2f')} "
            f"| {_f(x.get('ratio_to_lone_equal_speed_peers'), '.2f')} | {_f(x.get('ratio_to_lone_slow_peer'), '.2f')} "
            f"| {_f(x.get('ratio_to_lone_swarm'), '.2f')} | {x['final_eval_loss']:.4f}{agree} | {x['wall_s']:.0f} "
            f"| {x['other_jobs_cpu_share']:.0%} |"
        )
    lines += ["", "| target | (a) | (b) | (c) |", "|---|---:|---:|---:|"]
    gp = [
        _goal(v[k]["goodput"], r.get(f"goodput_{k}_met"), ".1%") if k in v and "error" not in v[k] else "–"
        for k in ("a", "b", "c")
    ]
    lines.append(f"| goodput ≥ {TARGETS['goodput']:.0%} | {' | '.join(gp)} |")
    lines.append(
        f"| final loss (c) / (b) ≤ {TARGETS['loss_c_over_b']:g} | | | "
        f"{_goal(r.get('loss_c_over_b'), r.get('loss_c_over_b_met'), '.4f')} |"
    )
    lines += [
        "",
        "| variant | peer | goodput | weighted goodput | dropped | unfolded | failed attempts | re-syncs | height "
        "| tokens/s | ÷ lone | final eval loss |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key in ("a", "b", "c"):
        for p in v.get(key, {}).get("per_peer", []):
            role = " (founder)" if p["index"] == 0 else f" ({s['slowdown']:g}× slower)" if p["slow"] else ""
            role += " (stopped by the bench)" if p.get("stopped_by_bench") else ""
            lines.append(
                f"| ({key}) | {p['index']}{role} | {_f(p['goodput'], '.1%')} | {_f(p['weighted_goodput'], '.1%')} "
                f"| {p['dropped']} | {p['unfolded']} | {p['failed_attempts']} | {p['resynced']} | {p['height']} "
                f"| {_f(p['tokens_per_s'], ',.0f')} | {_f(p.get('ratio_to_lone'), '.2f')} | {p['eval_loss']:.4f} |"
            )
    c = v.get("c", {})
    if "attacker" in c:
        at = c["attacker"]
        lines += [
            "",
            f"Attacker in (c): counted as a contributor at heights {at.get('heights_counted_in') or 'none'} "
            f"(robust reducer: CenteredClip by default); exit code {at.get('exit_code')}"
            f"{' (stopped by the bench)' if at.get('stopped_by_bench') else ''}.",
        ]
    reasons = {k: v[k]["failure_reasons"] for k in ("a", "b", "c") if k in v and v[k].get("failure_reasons")}
    if reasons:
        lines += ["", "Failed attempts by reason: " + "; ".join(f"({k}) {json.dumps(x)}" for k, x in reasons.items())]
    lines += [
        "",
        f"Whole benchmark: {results['total_seconds']:.0f} s; load average {results['load_before']} before, "
        f"{results['load_after']} after. Command: `{results['command']}`",
        "",
    ]
    return "\n".join(lines)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_plan(bench: Bench, plan: list, sockets: set[Path]) -> dict[str, dict]:
    """Run the variants one after the other; a failed one is recorded and the others still run."""
    variants = bench.variants
    interrupted = False
    for key, title, run in plan:
        log(f"{title} ...")
        watcher = Watcher(lambda: {p.pgid for p in bench.procs})
        try:
            v = variants[key] = dict(title=title, **run(bench))
            if key == "lone":
                log(
                    f"  done: {v['tokens_per_s']:,.0f} tokens/s, eval loss {v['eval_loss']:.4f}, wall {v['wall_s']:.0f} s"
                )
            else:
                log(
                    f"  done: heights {v['heights']} (lowest {v['min_height']}), goodput {v['goodput']:.1%} (weighted {v['weighted_goodput']:.1%}), "
                    f"{v['failed_attempts']} failed attempts, {v['tokens_per_s_per_peer']:,.0f} tokens/s/peer, "
                    f"final eval loss {v['final_eval_loss']:.4f}{'' if v['theta_identical'] else ' (θ differ)'}, "
                    f"wall {v['wall_s']:.0f} s"
                )
        except Exception as e:
            log(f"  FAILED: {str(e)[:3000]}")
            variants[key] = dict(title=title, error=str(e)[-4000:])
        except KeyboardInterrupt as e:  # SIGTERM or Ctrl-C: stop here, but still clean up and write what we have
            log(f"  INTERRUPTED ({e}): the remaining variants are skipped")
            variants[key] = dict(title=title, error=f"interrupted ({e})")
            interrupted = True
        finally:
            bench.stop_all()
            share = watcher.stop()
            sockets |= watcher.sockets
        variants[key]["other_jobs_cpu_share"] = share
        if share > 0.05:
            log(f"  WARNING: other jobs used {share:.0%} of the machine's CPU meanwhile: the timings are off")
        if interrupted:
            break
    return variants


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--short", action="store_true", help="quick check: H = 10, 3 heights, results in bench/results/tmp")
    p.add_argument("--inner-steps", type=int, default=None, help="H (default 20; --short: 10)")
    p.add_argument("--rounds", type=int, default=None, help="heights every swarm runs to (default 12; --short: 3)")
    p.add_argument("--busy", type=int, default=1, help="busy-loop processes competing for the cores (default 1)")
    p.add_argument("--slowdown", type=float, default=3.0, help="--slowdown of the slow peer in (b), (c) (default 3)")
    p.add_argument("--attack", default="sign_flip", help="--attack of the 5th peer in (c) (default sign_flip)")
    p.add_argument(
        "--straggler-grace",
        type=float,
        default=None,
        help="seconds the other peers get once one honest peer finished, before being stopped (default 45; --short: 30)",
    )
    p.add_argument("--min-contributors", type=int, default=3, help="the founder's --min-contributors (default 3)")
    p.add_argument(
        "--matchmaking-time", type=float, default=None, help="passed to the peers (default: the CLI's 2; --short: 1)"
    )
    p.add_argument(
        "--averaging-timeout", type=float, default=None, help="passed to the peers (default: the CLI's 30; --short: 20)"
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="stop after this many seconds, writing what was measured (default none; --short: 230)",
    )
    p.add_argument("--only", nargs="+", default=None, metavar="VARIANT", help="run only these of: lone a b c")
    p.add_argument("--results-dir", type=Path, default=None, help="default bench/results (--short: bench/results/tmp)")
    p.add_argument("--name", default="rounds", help="results file stem: RESULTS_DIR/NAME.json and NAME.md")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (peer homes, logs) to debug")
    args = p.parse_args()
    args.inner_steps = args.inner_steps or (10 if args.short else 20)
    args.rounds = args.rounds or (3 if args.short else 12)
    if args.straggler_grace is None:
        args.straggler_grace = 30.0 if args.short else 45.0
    if args.time_limit is None and args.short:
        args.time_limit = 230.0
    if args.short:  # the integration tests' settings: a quicker end of the run for a peer left waiting for a group
        args.matchmaking_time = 1.0 if args.matchmaking_time is None else args.matchmaking_time
        args.averaging_timeout = 20.0 if args.averaging_timeout is None else args.averaging_timeout
    if args.results_dir is None:
        args.results_dir = REPO / "bench" / "results" / ("tmp" if args.short else "")
    if args.inner_steps < 1 or args.rounds < 1 or args.busy < 0 or args.slowdown < 1:
        p.error("--inner-steps and --rounds must be positive, --busy ≥ 0, --slowdown ≥ 1")
    return args


def main() -> int:
    args = parse_args()
    plan = [
        ("lone", f"lone plain loop, {args.inner_steps * args.rounds} steps", lambda b: b.lone()),
        ("a", "(a) 4 peers, equal speed", lambda b: b.swarm("a", slow=False, attack=None)),
        ("b", f"(b) 4 peers, one {args.slowdown:g}× slower", lambda b: b.swarm("b", slow=True, attack=None)),
        (
            "c",
            f"(c) (b) + 1 {args.attack} attacker",
            lambda b: b.swarm("c", slow=True, attack=args.attack),
        ),
    ]
    if args.only:
        plan = [item for item in plan if item[0] in args.only]

    started = datetime.now(timezone.utc).astimezone()
    source = source_hash()
    info = machine()
    load_before = load()
    log(
        f"Koinon rounds bench{' (short)' if args.short else ''}: H={args.inner_steps}, {args.rounds} heights, "
        f"{args.busy} busy loop(s), {info['cpu_count']} CPUs ({info['cpu']}), load {load_before}"
    )
    if load_before[0] > 1.0:
        log(f"note: load average {load_before[0]:.2f} before starting; other jobs would lower the throughput")
    p2pd_before = p2pd_pids()
    tmp = Path(tempfile.mkdtemp(prefix="koinon-rounds-bench-"))
    bench = Bench(args, tmp)
    sockets: set[Path] = set()
    t0 = time.time()
    signal.signal(signal.SIGTERM, _interrupt)  # so that the finally below still stops every process group
    if args.time_limit:
        signal.signal(signal.SIGALRM, _interrupt)  # --time-limit: the same path as SIGTERM
        signal.setitimer(signal.ITIMER_REAL, args.time_limit)
    try:
        variants = run_plan(bench, plan, sockets)
    except KeyboardInterrupt as e:  # interrupted between two variants: keep what was measured
        log(f"INTERRUPTED ({e})")
        variants = bench.variants
        variants["interrupted"] = dict(title="interrupted", error=f"interrupted ({e})")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        bench.stop_all()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        ours = leftovers({p.pgid for p in bench.procs})
        removed = remove_stale_sockets(sockets)
    others = sorted(p2pd_pids() - p2pd_before)
    log(f"cleanup: {len(ours)} of our processes left, {removed} stale hivemind sockets removed")
    if others:
        log(f"note: {len(others)} p2pd started by other jobs during the run are running (none of ours)")

    results = dict(
        benchmark="rounds",
        date=started.isoformat(timespec="seconds"),
        command=command_line(),
        koinon_source_sha256=source,
        koinon_source_changed_during_run=source_hash() != source,
        machine=info,
        settings=dict(
            short=args.short,
            time_limit_s=args.time_limit,
            straggler_grace_s=args.straggler_grace,
            inner_steps=args.inner_steps,
            rounds=args.rounds,
            honest_peers=HONEST,
            busy=args.busy,
            slowdown=args.slowdown,
            attack=args.attack,
            min_contributors=args.min_contributors,
            matchmaking_time=args.matchmaking_time or "koinon start's default",
            averaging_timeout=args.averaging_timeout or "koinon start's default",
            model_size="tiny",
            seq_len=128,
            batch_size=8,
            threads_per_process=1,
            data="Corpus.default() (Python stdlib .py)",
        ),
        method=METHOD,
        total_seconds=round(time.time() - t0, 1),
        load_before=load_before,
        load_after=load(),
        variants=variants,
        ratios=add_ratios(variants),
        cleanup=dict(leftover_processes=ours, stale_sockets_removed=removed, other_jobs_p2pd=len(others)),
    )
    return write_results(args.results_dir / args.name, results, markdown(results), log)


if __name__ == "__main__":
    raise SystemExit(main())
