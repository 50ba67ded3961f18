"""One benchmark process for variants (a) and (b); bench/run.py starts it, one per OS process.

- ``--mode plain``: variant (a), a plain single-process loop. It runs Koinon's own ``InnerTrainer.run_round``
  over all S batches in one go: the exact inner loop a DiLoCo peer runs (AdamW, warm-up, clipping), with no
  communication at all, so it is the throughput ceiling for (c).
- ``--mode dp``: variant (b), data-parallel training. Every step the flat gradient is averaged over the group
  with ``ExactAverager`` (fp16 on the wire), then clipped and applied with the same AdamW and lr schedule.

Set-up (imports, corpus, model, DHT and averager) happens before the start barrier; only the training loop is
timed. After it the process evaluates θ on Koinon's held-out set and writes one JSON result file.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from procs import Barrier

PROGRESS_EVERY = 10


def counted(batches: Iterable[torch.Tensor], progress: Path) -> Iterator[torch.Tensor]:
    """Pass batches through, writing how many were taken to ``progress`` now and then (run.py shows it)."""
    for i, batch in enumerate(batches):
        if i % PROGRESS_EVERY == 0:
            progress.write_text(str(i))
        yield batch


class GradientAverager:
    """Averages the flat gradient of ``model`` with the other dp workers through Koinon's ``ExactAverager``."""

    def __init__(self, model: torch.nn.Module, args: argparse.Namespace) -> None:
        import hivemind

        from koinon.swarm import node
        from koinon.swarm.averaging import ExactAverager
        from koinon.swarm.compression import get_compression

        self.params = list(model.parameters())  # tied weights appear once
        size = sum(p.numel() for p in self.params)
        self.timeout = args.step_timeout
        self.dht = hivemind.DHT(
            start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=args.initial_peers, await_ready=True
        )
        # HIVEMIND.md trap 1: bound every wait (group formation, each chunk, the whole all-reduce)
        self.averager = node.start_averager(
            ExactAverager,
            [torch.zeros(size)],
            self.dht,
            start=True,
            prefix="koinon_bench_dp",
            target_group_size=args.peers,
            min_group_size=2,
            min_matchmaking_time=args.matchmaking_time,
            request_timeout=min(1.0, args.matchmaking_time / 2),
            next_chunk_timeout=5.0,
            allreduce_timeout=args.allreduce_timeout,
            compression=get_compression("fp16"),
        )
        self.group_sizes: dict[int, int] = {}  # group size -> steps; 1 = averaging failed, local gradient used
        self.partial: list[tuple[int, int, float]] = []  # (step, group size, seconds) of steps without everyone
        self.peers = args.peers
        self.bytes_before = 0

    def warm_up(self, attempts: int = 5) -> None:
        """One untimed all-reduce with every peer before the start barrier. Without it the first step can form a
        group without a peer whose DHT records are not visible yet, and that peer stays a step behind."""
        self.averager.configure_matchmaking(min_group_size=self.peers, target_group_size=self.peers)
        for _ in range(attempts):
            try:
                if self.averager.step(weight=1.0, timeout=30.0):
                    break
            except Exception:
                continue
        else:
            raise RuntimeError(f"no all-reduce with all {self.peers} peers in {attempts} attempts")
        self.averager.configure_matchmaking(min_group_size=2, target_group_size=self.peers)
        self.bytes_before = self.averager.bytes_sent.value

    def maddrs(self) -> list[str]:
        return [str(m) for m in self.dht.get_visible_maddrs()]

    @torch.no_grad()
    def __call__(self) -> None:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        with self.averager.get_tensors() as (buffer,):
            buffer.copy_(torch.cat([g.reshape(-1) for g in grads]))
        t0 = time.monotonic()
        try:
            group = self.averager.step(weight=1.0, timeout=self.timeout)
        except Exception:  # no group in time, or the all-reduce failed: the buffer is untouched
            group = None
        size = len(group) if group else 1
        self.group_sizes[size] = self.group_sizes.get(size, 0) + 1
        if size != self.peers:
            self.partial.append((sum(self.group_sizes.values()) - 1, size, round(time.monotonic() - t0, 2)))
        if not group:
            return  # keep this peer's own gradient for this step
        with self.averager.get_tensors() as (buffer,):
            offset = 0
            for p in self.params:
                p.grad = buffer[offset : offset + p.numel()].view_as(p).clone()
                offset += p.numel()

    def bytes_sent(self) -> int:
        return int(self.averager.bytes_sent.value - self.bytes_before)

    def close(self) -> None:
        from koinon.swarm import node

        node.shutdown(self.averager, self.dht)


def train_data_parallel(model, inner, batches: Iterable[torch.Tensor], average: GradientAverager) -> list[float]:
    """``InnerTrainer.run_round``'s loop with the gradient averaged between backward and clipping."""
    losses = []
    for batch in batches:
        inputs, targets = batch[:, :-1], batch[:, 1:]  # (B, T), (B, T)
        for group in inner.optimizer.param_groups:
            group["lr"] = inner._lr()  # the same warm-up schedule as the DiLoCo inner loop
        logits = model(input_ids=inputs).logits  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        inner.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        inner.optimizer.step()
        inner.steps_done += 1
        losses.append(loss.item())
    return losses


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--mode", choices=["plain", "dp"], required=True)
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workdir", type=Path, required=True, help="barrier files, progress and results go here")
    p.add_argument("--peers", type=int, default=3, help="dp: target group size")
    p.add_argument("--initial-peers", nargs="*", default=[])
    p.add_argument("--matchmaking-time", type=float, default=0.5)
    p.add_argument("--step-timeout", type=float, default=10.0, help="dp: seconds to find a group each step")
    p.add_argument("--allreduce-timeout", type=float, default=30.0)
    args = p.parse_args()

    torch.set_num_threads(1)
    from koinon.config import TrainingConfig
    from koinon.training.data import Corpus
    from koinon.training.diloco import InnerTrainer
    from koinon.training.model import build_model, flat_parameters, theta_hash

    config = TrainingConfig(batch_size=args.batch_size)  # model "tiny", seq_len 128, lr schedule: defaults
    corpus = Corpus.default()
    eval_set = corpus.eval_batches(8, 128)  # Koinon's held-out set, the same for every variant
    model = build_model(config)
    inner = InnerTrainer(model, config)
    seed = f"bench|{args.mode}|{args.index}".encode()
    batches = corpus.batches(corpus.train_blocks, seed, args.steps, args.batch_size, config.seq_len)
    batches = counted(batches, args.workdir / f"progress-{args.index}")

    averager = GradientAverager(model, args) if args.mode == "dp" else None
    try:
        if averager is not None and args.index == 0:
            (args.workdir / "maddrs").write_text("\n".join(averager.maddrs()) + "\n")
        if averager is not None:
            averager.warm_up()
        barrier = Barrier(args.workdir)
        barrier.ready(args.index)
        barrier.wait_go()

        started = time.time()
        if averager is None:
            _, mean_loss, _, _ = inner.run_round(flat_parameters(model), batches)
        else:
            losses = train_data_parallel(model, inner, batches, averager)
            mean_loss = sum(losses) / len(losses)
        ended = time.time()

        theta = flat_parameters(model)
        result = dict(
            mode=args.mode,
            index=args.index,
            pid=os.getpid(),
            steps=args.steps,
            batch_size=args.batch_size,
            tokens=args.steps * args.batch_size * config.seq_len,
            started=started,
            ended=ended,
            train_seconds=ended - started,
            mean_train_loss=mean_loss,
            eval_loss=inner.evaluate(theta, eval_set),
            theta=theta_hash(theta),
            bytes_sent=averager.bytes_sent() if averager else 0,
            group_sizes=averager.group_sizes if averager else {},
            partial_steps=averager.partial if averager else [],
            full_group_share=averager.group_sizes.get(args.peers, 0) / args.steps if averager else None,
        )
        out = args.workdir / f"result-{args.index}.json"
        out.with_suffix(".tmp").write_text(json.dumps(result))
        out.with_suffix(".tmp").rename(out)
    finally:
        if averager is not None:
            averager.close()


if __name__ == "__main__":
    main()
