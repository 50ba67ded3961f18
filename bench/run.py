"""``make bench``: DiLoCo (Koinon's real peer) against a plain loop and per-step gradient averaging.

Same model config (TrainingConfig defaults: "tiny", seq_len 128, batch 8), same data (the Python stdlib), same
tokens per peer (S steps × 8 × 128), every process on one torch thread, every final θ evaluated on Koinon's
held-out set (``Corpus.eval_batches(8, 128)``, ``InnerTrainer.evaluate``: mean nats per byte):

  (a) a plain single-process loop: alone, then as N identical processes at once (they contend for the cores),
      and one process at batch 8·N (same total tokens as N peers: the loss reference);
  (b) N peers averaging gradients every step over hivemind (data parallel, fp16 on the wire);
  (c) N peers running ``python -m koinon start`` (DiLoCo) with H inner steps per round, S/H rounds.

Writes bench/results/diloco.json and bench/results/diloco.md; docs/benchmarks.md explains the numbers.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shlex
import shutil
import signal
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

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
    wait_exit,
    wait_for,
    write_results,
)
from report import markdown, ratios

WORKER = str(Path(__file__).resolve().parent / "worker.py")
STARTUP_TIMEOUT = 240.0  # s: N processes importing torch and starting p2pd on 2 cores

METHOD = dict(
    tokens="tokens a peer trained on: steps × batch × seq_len (for (c): the last round's cumulative 'tokens')",
    training_phase=(
        "(a), (b): each process imports, loads the corpus, builds the model (and its DHT and averager), then "
        "waits at a start barrier; the clock runs from the common 'go' to the end of its last optimizer step. "
        "(c): from the peer's 'start' record in metrics.jsonl (written once all N peers are up and θ₀ is "
        "evaluated) to its last 'round' record (after the last all-reduce, outer step and evaluation)"
    ),
    tokens_per_s_per_peer="mean over peers of tokens / that peer's training phase",
    train_phase_s="last peer's end minus first peer's start",
    wall_s="first process launched to last process exited (start-up, evaluation and shutdown included)",
    bytes_sent="ExactAverager.bytes_sent: all-reduce payload this peer put on the wire; DHT traffic not counted",
    eval_loss="mean over peers of the final θ's loss on Corpus.eval_batches(8, 128), nats per byte",
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.procs: list[Proc] = []

    def _spawn(self, name: str, cmd: list[str], folder: Path) -> Proc:
        proc = Proc(name, cmd, folder / f"{name}.log", env={"HIVEMIND_LOGLEVEL": "ERROR"})
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            proc.kill_group()

    # --- (a) and (b): bench/worker.py processes started together behind a barrier ----------------------------
    def workers(self, label: str, mode: str, n: int, batch_size: int) -> dict:
        a = self.args
        folder = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=self.tmp))
        base = [
            WORKER,
            "--mode",
            mode,
            "--steps",
            str(a.steps),
            "--batch-size",
            str(batch_size),
            "--workdir",
            str(folder),
            "--peers",
            str(n),
            "--matchmaking-time",
            str(a.matchmaking_time),
        ]
        launched = time.time()
        procs = [self._spawn(f"{label}-0", python_cmd(*base, "--index", "0"), folder)]
        initial: list[str] = []
        if mode == "dp":  # the others bootstrap from the first one's address
            maddrs = folder / "maddrs"
            wait_for(lambda: maddrs.exists(), STARTUP_TIMEOUT, f"for {label}-0's address", procs)
            initial = ["--initial-peers", *maddrs.read_text().split()]
        procs += [
            self._spawn(f"{label}-{i}", python_cmd(*base, "--index", str(i), *initial), folder) for i in range(1, n)
        ]
        barrier = Barrier(folder)
        wait_for(lambda: barrier.all_ready(n), STARTUP_TIMEOUT, f"for {label} to start", procs)
        barrier.go()
        log(f"  {n} process(es) ready after {time.time() - launched:.1f} s; training")

        def tick() -> None:
            done = [
                (folder / f"progress-{i}").read_text() if (folder / f"progress-{i}").exists() else "0" for i in range(n)
            ]
            log(f"  {label}: step {'/'.join(done)} of {a.steps}")

        per_step = 5.0 if mode == "dp" else 1.0 * batch_size / 8
        wait_exit(procs, 120 + a.steps * per_step, f"waiting for {label} to finish", tick)
        wall = time.time() - launched
        for proc in procs:
            proc.kill_group()
        peers = [read_json(folder / f"result-{i}.json") for i in range(n)]
        return summarise(peers, wall, steps=a.steps, batch_size=batch_size)

    # --- (c): Koinon's own peer -------------------------------------------------------------------------------
    def koinon(self, label: str, n: int, inner_steps: int) -> dict:
        a = self.args
        rounds = a.steps // inner_steps
        folder = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=self.tmp))
        homes = [folder / f"peer-{i}" for i in range(n)]
        base = [
            "-m",
            "koinon",
            "start",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--rounds",
            str(rounds),
            "--inner-steps",
            str(inner_steps),
            "--threads",
            "1",
            "--wait-for-peers",
            str(n),
        ]
        if a.koinon_matchmaking_time is not None:
            base += ["--matchmaking-time", str(a.koinon_matchmaking_time)]
        launched = time.time()
        procs = [self._spawn(f"{label}-0", python_cmd(*base, "--home", str(homes[0])), folder)]
        maddrs = homes[0] / "maddrs"
        wait_for(
            lambda: maddrs.exists() and maddrs.read_text().strip(), STARTUP_TIMEOUT, f"for {label}-0's address", procs
        )
        initial = ["--initial-peers", *maddrs.read_text().split()]
        procs += [
            self._spawn(f"{label}-{i}", python_cmd(*base, "--home", str(homes[i]), *initial), folder)
            for i in range(1, n)
        ]

        def tick() -> None:
            done = [str(sum(r.get("event") == "round" for r in read_jsonl(h / "metrics.jsonl"))) for h in homes]
            log(f"  {label}: round {'/'.join(done)} of {rounds}")

        wait_exit(procs, STARTUP_TIMEOUT + rounds * (inner_steps * 1.0 + 60), f"waiting for {label}", tick)
        wall = time.time() - launched
        for proc in procs:
            proc.kill_group()
        peers = [koinon_result(h / "metrics.jsonl", i, n) for i, h in enumerate(homes)]
        final_eval_losses(peers)
        out = summarise(peers, wall, steps=a.steps, batch_size=8)
        out.update(inner_steps=inner_steps, rounds=rounds)
        return out


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_plan(bench: Bench, plan: list, sockets: set[Path]) -> dict[str, dict]:
    """Run the variants one after the other; a failed one is recorded and the others still run. The hivemind
    sockets our processes listened on are added to ``sockets``."""
    variants: dict[str, dict] = {}
    for key, title, run in plan:
        log(f"{title} ...")
        watcher = Watcher(lambda: {p.pgid for p in bench.procs})
        try:
            v = variants[key] = dict(title=title, **run(bench))
            log(
                f"  done: eval loss {v['eval_loss']:.4f}, {v['tokens_per_s_per_peer']:.0f} tokens/s/peer, "
                f"{v['bytes_sent_per_peer'] / 1e6:.2f} MB sent/peer, training {v['train_phase_s']:.1f} s, "
                f"wall {v['wall_s']:.1f} s"
            )
        except Exception as e:
            log(f"  FAILED: {e}")
            variants[key] = dict(title=title, error=str(e)[-4000:])
        finally:
            bench.stop_all()
            share = watcher.stop()
            sockets |= watcher.sockets
        variants[key]["other_jobs_cpu_share"] = share
        if share > 0.05:
            log(f"  WARNING: other jobs used {share:.0%} of the machine's CPU meanwhile: these numbers are off")
    return variants


def koinon_result(metrics: Path, index: int, n: int) -> dict:
    """One Koinon peer's numbers from its metrics.jsonl. Training phase: from its "start" record (written after
    it waited for the other peers and evaluated θ₀) to its last "round" record (after the last all-reduce, outer
    step and evaluation). Final θ: the last round's, or the one it adopted afterwards ("settled" record)."""
    rows = read_jsonl(metrics)
    start = next(r for r in rows if r.get("event") == "start")
    rounds = [r for r in rows if r.get("event") == "round"]
    failed = [r for r in rows if r.get("event") == "round_failed"]
    last = rounds[-1]
    settled = [r for r in rows if r.get("event") == "settled" and r["time"] >= last["time"]]
    return dict(
        index=index,
        started=start["time"],
        ended=last["time"],
        train_seconds=last["time"] - start["time"],
        tokens=last["tokens"],
        theta=settled[-1]["theta"] if settled else last["theta"],
        last_round_theta=last["theta"],
        last_round_eval_loss=last["eval_loss"],
        settled=bool(settled),
        bytes_sent=last["bytes_sent"],
        mean_train_loss=sum(r["loss"] for r in rounds) / len(rounds),
        failed_rounds=len(failed),
        full_group_share=sum(r["peers"] == n for r in rounds) / (len(rounds) + len(failed)),
        rounds=[
            {k: r[k] for k in ("round", "time", "loss", "eval_loss", "peers", "in_sync", "resynced", "seconds")}
            for r in rounds
        ],
    )


def final_eval_losses(peers: list[dict]) -> None:
    """A peer that adopted another's θ after its last round has that peer's last-round eval loss."""
    by_theta = {p["last_round_theta"]: p["last_round_eval_loss"] for p in peers}
    for p in peers:
        p["eval_loss"] = by_theta.get(p["theta"], p["last_round_eval_loss"])


def summarise(peers: list[dict], wall: float, steps: int, batch_size: int) -> dict:
    mean = lambda key: sum(p[key] for p in peers) / len(peers)
    shares = [p["full_group_share"] for p in peers if p.get("full_group_share") is not None]
    return dict(
        peers=len(peers),
        steps_per_peer=steps,
        batch_size=batch_size,
        tokens_per_peer=mean("tokens"),
        eval_loss=mean("eval_loss"),
        bytes_sent_per_peer=mean("bytes_sent"),
        tokens_per_s_per_peer=sum(p["tokens"] / p["train_seconds"] for p in peers) / len(peers),
        train_phase_s=max(p["ended"] for p in peers) - min(p["started"] for p in peers),
        wall_s=wall,
        theta_identical=len({p["theta"] for p in peers}) == 1,
        full_group_share=min(shares) if shares else None,
        per_peer=peers,
    )


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return dict(
        platform=platform.platform(),
        cpu=cpu,
        cpu_count=os.cpu_count(),
        memory_gib=round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        python=platform.python_version(),
        torch=torch.__version__,
        hivemind=metadata.version("hivemind"),
        transformers=metadata.version("transformers"),
    )


def source_hash() -> str:
    """SHA-256 over Koinon's source files: which code (c) ran (the working tree may have uncommitted edits)."""
    h = hashlib.sha256()
    for f in sorted((REPO / "src" / "koinon").rglob("*.py")):
        h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def command() -> str:
    exe = Path(sys.executable)
    try:
        exe = exe.relative_to(REPO) if exe.is_absolute() else exe
    except ValueError:
        pass
    return shlex.join([str(exe), "bench/run.py", *sys.argv[1:]])


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--steps",
        type=int,
        default=1000,
        help="S: training steps per peer at batch 8 (default 1000); must be divisible by every H",
    )
    p.add_argument("--peers", type=int, default=3, help="N: peers in (b) and (c), processes in (a) contended")
    p.add_argument("--inner-steps", type=int, nargs="+", default=[20, 100], help="H values for (c)")
    p.add_argument(
        "--matchmaking-time",
        type=float,
        default=0.5,
        help="min_matchmaking_time of the averager in (b) (default 0.5 s)",
    )
    p.add_argument(
        "--koinon-matchmaking-time",
        type=float,
        default=None,
        help="--matchmaking-time passed to the Koinon peers of (c) (default: not passed, the CLI's default)",
    )
    p.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="VARIANT",
        help="run only these variants (a_alone a_batchN a_contended b_dp c_hH); for debugging",
    )
    p.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (peer homes, logs) to debug")
    p.add_argument("--name", default="diloco", help="results file stem: RESULTS_DIR/NAME.json and NAME.md")
    args = p.parse_args()
    bad = [h for h in args.inner_steps if h < 1 or args.steps % h]
    if args.steps < 1 or bad:
        p.error(f"--steps {args.steps} must be a positive multiple of every H (not of {bad})")
    if args.peers < 2:
        p.error("--peers must be at least 2")
    return args


def main() -> int:
    args = parse_args()
    n = args.peers
    plan = [
        (
            "a_alone",
            f"(a) plain loop, 1 process alone, batch 8 × {args.steps} steps",
            lambda b: b.workers("a_alone", "plain", 1, 8),
        ),
        (
            f"a_batch{8 * n}",
            f"(a) plain loop, 1 process, batch {8 * n} × {args.steps} steps (loss reference)",
            lambda b: b.workers(f"a_batch{8 * n}", "plain", 1, 8 * n),
        ),
        (
            "a_contended",
            f"(a) plain loop, {n} processes at once, batch 8 × {args.steps} steps each",
            lambda b: b.workers("a_contended", "plain", n, 8),
        ),
        (
            "b_dp",
            f"(b) {n} peers, gradients averaged every step (hivemind, fp16)",
            lambda b: b.workers("b_dp", "dp", n, 8),
        ),
    ] + [
        (
            f"c_h{h}",
            f"(c) {n} Koinon DiLoCo peers, H={h}, {args.steps // h} rounds",
            lambda b, h=h: b.koinon(f"c_h{h}", n, h),
        )
        for h in args.inner_steps
    ]
    if args.only:
        plan = [item for item in plan if item[0] in args.only]

    started = datetime.now(timezone.utc).astimezone()
    source = source_hash()
    info = machine()
    log(
        f"Koinon bench: S={args.steps} steps/peer, N={n}, H={args.inner_steps}, {info['cpu_count']} CPUs "
        f"({info['cpu']}), torch {info['torch']}, hivemind {info['hivemind']}"
    )
    if os.getloadavg()[0] > 1.0:
        log(f"note: load average {os.getloadavg()[0]:.2f} before starting; other jobs would lower throughput")
    p2pd_before = p2pd_pids()
    tmp = Path(tempfile.mkdtemp(prefix="koinon-bench-"))
    bench = Bench(args, tmp)
    sockets: set[Path] = set()
    t0 = time.time()
    signal.signal(signal.SIGTERM, _interrupt)  # so that the finally below still stops every process group
    try:
        variants = run_plan(bench, plan, sockets)
    finally:
        bench.stop_all()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        ours = processes_in_groups({p.pgid for p in bench.procs})
        removed = remove_stale_sockets(sockets)
    others = sorted(p2pd_pids() - p2pd_before)  # p2pd started during the run by someone else's jobs
    log(f"cleanup: {len(ours)} of our processes left, {removed} stale hivemind sockets removed")
    if others:
        log(f"note: {len(others)} p2pd started by other jobs during the run are running (none of ours)")

    results = dict(
        benchmark="diloco",
        date=started.isoformat(timespec="seconds"),
        command=command(),
        koinon_source_sha256=source,
        koinon_source_changed_during_run=source_hash() != source,
        machine=info,
        settings=dict(
            steps_per_peer=args.steps,
            peers=n,
            inner_steps=args.inner_steps,
            matchmaking_time_b=args.matchmaking_time,
            matchmaking_time_c=args.koinon_matchmaking_time or "koinon start's default",
            model_size="tiny",
            seq_len=128,
            batch_size=8,
            threads_per_process=1,
            compression="fp16",
            data="Corpus.default() (Python stdlib .py)",
            eval="Corpus.eval_batches(8, 128), InnerTrainer.evaluate: mean nats per byte",
        ),
        method=METHOD,
        total_seconds=round(time.time() - t0, 1),
        load_average_after=os.getloadavg()[0],
        variants=variants,
        ratios=ratios(variants, n, args.inner_steps),
        cleanup=dict(leftover_processes=ours, stale_sockets_removed=removed, other_jobs_p2pd=len(others)),
    )
    return write_results(args.results_dir / args.name, results, markdown(results), log)


if __name__ == "__main__":
    raise SystemExit(main())
