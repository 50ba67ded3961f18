"""What a peer trains and how: its model, θ and the outer optimizer, the inner trainer, its data and eval set, and
the governance state it trains under (configuration, excluded members, data sources allowed).

Separate from the round loop (``peer.py``) because none of it is a round-protocol decision: the loop says when to
train (one attempt), which state to continue from (``adopt``: after a revert or a sync) and when the group's
average becomes θ (``outer_step``: the group is a candidate); this class does the work and keeps the bookkeeping
that goes with it (step time, tokens). The testing tools ``--attack`` (``attacks.py``) and ``--slowdown`` live here
too: they change what a peer sends or how fast it trains, never how it takes part in a round.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from koinon.config import TrainingConfig
from koinon.swarm.attacks import AttackContext, apply_attack, check_attack
from koinon.swarm.rounds import Pending
from koinon.swarm.sync import Snapshot, state_hash
from koinon.training.data import Corpus
from koinon.training.diloco import InnerTrainer, OuterOptimizer
from koinon.training.model import build_model, flat_parameters, theta_hash
from koinon.verification.worker import made_up_trace

if TYPE_CHECKING:
    from koinon.governance.state import GovState
    from koinon.verification.duties import VerificationDuties

logger = logging.getLogger("koinon.peer")  # the peer's logger: its messages read as they did from peer.py


class LocalTrainer:
    def __init__(
        self,
        *,
        member: str,
        config: TrainingConfig,
        data: list[Path] | None,
        stop_event: threading.Event,
        attack: str | None = None,
        slowdown: float = 1.0,
        threads: int = 0,
    ) -> None:
        if attack is not None:
            check_attack(attack)
        if threads:
            torch.set_num_threads(threads)
        self.member = member
        self.stop_event = stop_event
        self.attack = attack  # a testing tool: Byzantine on purpose (swarm/attacks.py)
        self.slowdown = slowdown  # a testing tool: each inner step takes this many times as long
        self.data = data  # as given (None: the Python standard library); governance narrows ``data_paths``
        self.config = config
        self.corpus = Corpus.from_paths(data) if data else Corpus.default()
        self.eval_set = self.corpus.eval_batches(config.batch_size, config.seq_len)
        self.model = build_model(config)
        self.theta = flat_parameters(self.model)  # θ: shape (P,)
        self.outer = OuterOptimizer(config.outer_lr, config.outer_momentum, self.theta.numel())
        self.inner = InnerTrainer(self.model, config)
        self.theta_hex = theta_hash(self.theta)
        self._lock = threading.Lock()  # θ and the outer momentum change together; snapshots see both or neither
        self.step_time = 0.1  # seconds per inner step, refined every round
        self.tokens = 0
        self.data_paths: list[Path] = list(data) if data else [Path("<stdlib>")]
        self.gov_index = -1  # the final cut whose governance state is in force (-1: the charter)
        self.gov: GovState | None = None  # that GovState (set once the charter is here)
        self._config_known = False
        self.last_average: torch.Tensor | None = None  # (P,) the last Δ̄ applied; kept only for `--attack alie`

    def use_governance(self, index: int, gov: GovState, height: int) -> bool:
        """Train from the round that makes θ_``height`` under the governance state after final cut ``index`` (-1:
        the charter): its configuration, its excluded members, its data sources. True if it brought a configuration
        other than ours (the verification duties must learn it, to re-execute commitments made under it)."""
        self.gov_index, self.gov = index, gov
        changed = gov.config is not None and gov.config != self.config
        if changed:
            if self._config_known and index >= 0:
                logger.info(
                    "governance (final cut %d): configuration %s in force from height %d",
                    index,
                    gov.config.config_hash()[:12],
                    height,
                )
            self.config = gov.config
            self.inner.set_config(gov.config)
            self.outer.set_hyperparameters(gov.config.outer_lr, gov.config.outer_momentum)
        self._config_known = True
        allowed = [p for p, h in zip(self.data_paths, self.corpus.source_ids, strict=False) if gov.data_allowed(h)]
        if self.data and len(allowed) != len(self.data_paths):
            logger.info("governance: training only on the allowed data sources: %s", ", ".join(map(str, allowed)))
            self.data_paths = allowed
            if allowed:
                self.corpus = Corpus.from_paths(allowed)
        elif not self.data and self.corpus.source_ids and not gov.data_allowed(self.corpus.source_ids[0]):
            self.data_paths = []
        if not self.data_paths:
            logger.warning(
                "governance: none of this peer's data sources is allowed in this swarm; contributing nothing"
            )
        return changed

    def train(self, r: int, group: list[str], verification: VerificationDuties) -> tuple[torch.Tensor, float, int]:
        """H inner steps from θ on attempt ``r``'s shard (``group``: the last group we averaged with), committed on
        the ledger: (Δ, mean loss, samples). Zeros and no samples when we may not or cannot contribute."""
        c, nothing = self.config, (torch.zeros_like(self.theta), float("nan"), 0)
        if self.gov is not None and self.member in self.gov.excluded():
            logger.warning(
                "attempt %d: this member is excluded (expelled, or serving a penalty); contributing nothing", r
            )
            return nothing
        if not self.data_paths:
            return nothing
        blocks = self.corpus.shard(self.member, r, group)
        batches = self.corpus.batches(blocks, f"{self.member}|{r}".encode(), c.inner_steps, c.batch_size, c.seq_len)
        t0 = time.time()
        step0, bounds = self.inner.steps_done, c.segment_bounds()
        if self.attack == "freeride":  # no work at all; a made-up trace (swarm/attacks.py)
            delta, loss, samples, trace = torch.zeros_like(self.theta), float("nan"), c.inner_steps * c.batch_size, []
        else:
            delta, loss, samples, trace = self.inner.run_round(self.theta, self._until_stopped(batches), bounds)
        if self.stop_event.is_set():
            return nothing
        if self.attack is not None:  # a testing tool: Byzantine on purpose, samples still reported
            delta = apply_attack(self.attack, delta, AttackContext(self.member, r, self.last_average))
            if self.attack == "freeride":
                trace = made_up_trace(self.theta, self.inner.moments(), bounds, delta)
        verification.commit(
            r,
            theta=self.theta,
            config=c,
            group=group,
            blocks=blocks,
            step0=step0,
            samples=samples,
            trace=trace,
            delta=delta,
        )
        # the commitment's hashing is part of a round's time as the others see it (the next ETA)
        self.step_time = 0.5 * self.step_time + 0.5 * (time.time() - t0) / c.inner_steps
        if not torch.isfinite(delta).all() and self.attack is None:
            logger.warning("attempt %d: our pseudo-gradient is not finite; contributing nothing", r)
            return nothing
        self.tokens += samples * c.seq_len
        return delta, loss, samples

    def _until_stopped(self, batches):
        last = time.monotonic()
        for batch in batches:
            if self.slowdown > 1:  # --slowdown: a slower machine, for the benchmarks
                time.sleep((self.slowdown - 1) * (time.monotonic() - last))
            if self.stop_event.is_set():
                return
            last = time.monotonic()
            yield batch

    def summary(self) -> dict:
        """What a round record says about our model: eval loss, θ, configuration and governance in force, tokens."""
        return dict(
            eval_loss=self.evaluate(),
            theta=self.theta_hex,
            config=self.config.config_hash(),
            inner_steps=self.config.inner_steps,
            gov=self.gov_index if self.gov_index >= 0 else None,
            tokens=self.tokens,
        )

    def evaluate(self) -> float:
        return self.inner.evaluate(self.theta, self.eval_set)

    def outer_step(self, average: torch.Tensor, height: int) -> str:
        """θ_``height``: the outer step on the group's average Δ̄ (identical on every member); the new state's hash."""
        with self._lock:
            self.outer.step(self.theta, average)
            state = state_hash(height, self.theta, self.outer.buffer)
        self.theta_hex = theta_hash(self.theta)
        if self.attack is not None:
            self.last_average = average
        return state

    def adopt(self, s: Snapshot) -> None:
        """Continue from a certified state (ours after a revert, or a signer's after a sync)."""
        with self._lock:
            self.theta.copy_(s.theta)
            self.outer.buffer = s.momentum.clone()
        self.theta_hex = theta_hash(self.theta)

    def snapshot(self, height: int, electorate, signers=()) -> Snapshot:
        """A copy of our θ and outer momentum as the state at ``height``."""
        with self._lock:
            return Snapshot.of(height, self.theta, self.outer.buffer, electorate, signers)


def combine(keep: list[tuple[Pending, float]], like: torch.Tensor) -> torch.Tensor:
    """Σ wᵢ·sᵢ·Δᵢ / Σ wᵢ·sᵢ over the pending contributions to send (zeros if none): one vector, one weight
    (``RoundProtocol.contribution`` says which, with their staleness weights wᵢ; docs/training.md §2.6)."""
    out = torch.zeros_like(like)  # (P,)
    total = sum(w * p.samples for p, w in keep)
    for p, w in keep:
        out.add_(p.ref, alpha=w * p.samples / total)
    return out
