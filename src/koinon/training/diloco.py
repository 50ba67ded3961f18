"""DiLoCo (Douillard et al. 2023, "DiLoCo: Distributed Low-Communication Training of Language Models",
arXiv 2311.08105, Algorithm 1).

Per round t, on every participant i:
    θ_i ← θ^(t-1);  H inner AdamW steps on i's shard            (inner optimisation, local)
    Δ_i = θ^(t-1) − θ_i                                        (pseudo-gradient)
    Δ̄  = Σ_i n_i Δ_i / Σ_i n_i                                 (averaged over the swarm, n_i = samples)
    θ^(t) = OuterOpt(θ^(t-1), Δ̄)                               (Nesterov SGD, lr 0.7, momentum 0.9)

All participants receive the bit-identical Δ̄ (swarm/averaging.py) and apply the outer step below, whose every
operation is a single correctly rounded IEEE-754 float32 operation (no fused multiply-add, no ``alpha=``
arguments that vectorised kernels may fuse), so θ^(t) is bit-identical on every peer and every CPU.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from koinon.config import TrainingConfig
from koinon.training.model import flat_parameters, load_flat_parameters


class OuterOptimizer:
    """SGD with Nesterov momentum on the flat θ, matching ``torch.optim.SGD(nesterov=True, dampening=0)``:

    b ← μ·b + g          (b starts at 0, so b₁ = g)
    θ ← θ − lr·(g + μ·b)
    """

    def __init__(self, lr: float, momentum: float, size: int) -> None:
        self.lr = torch.tensor(lr, dtype=torch.float32)
        self.momentum = torch.tensor(momentum, dtype=torch.float32)
        self.buffer = torch.zeros(size, dtype=torch.float32)  # b, shape (P,)

    def set_hyperparameters(self, lr: float, momentum: float) -> None:
        self.lr = torch.tensor(lr, dtype=torch.float32)
        self.momentum = torch.tensor(momentum, dtype=torch.float32)

    @torch.no_grad()
    def step(self, theta: torch.Tensor, grad: torch.Tensor) -> None:
        """Update ``theta`` in place with the outer gradient ``grad`` (= Δ̄). Shapes: (P,)."""
        if not theta.shape == grad.shape == self.buffer.shape:
            raise ValueError(
                f"shape mismatch: θ {tuple(theta.shape)}, Δ̄ {tuple(grad.shape)}, momentum {tuple(self.buffer.shape)}"
            )
        self.buffer = torch.mul(self.buffer, self.momentum)
        self.buffer = torch.add(self.buffer, grad)
        update = torch.add(grad, torch.mul(self.buffer, self.momentum))
        theta.copy_(torch.sub(theta, torch.mul(update, self.lr)))

    def state_tensors(self) -> list[torch.Tensor]:
        return [self.buffer]

    def load_state_tensors(self, tensors: list[torch.Tensor]) -> None:
        (buffer,) = tensors
        if buffer.shape != self.buffer.shape:
            raise ValueError(f"outer momentum has shape {tuple(buffer.shape)}, expected {tuple(self.buffer.shape)}")
        self.buffer = buffer.to(torch.float32).clone()


class InnerTrainer:
    """The H inner AdamW steps of one peer. AdamW's state stays local across rounds, as in the paper."""

    def __init__(self, model: torch.nn.Module, config: TrainingConfig) -> None:
        self.model = model
        self.config = config
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.inner_lr, weight_decay=config.inner_weight_decay, betas=(0.9, 0.95)
        )
        self.steps_done = 0

    def set_config(self, config: TrainingConfig) -> None:
        """A new configuration from governance: the inner lr, warm-up and weight decay apply from the next step
        (AdamW's moments are kept)."""
        self.config = config
        for group in self.optimizer.param_groups:
            group["weight_decay"] = config.inner_weight_decay

    def _lr(self) -> float:
        warmup = self.config.inner_warmup
        return self.config.inner_lr * min(1.0, (self.steps_done + 1) / warmup) if warmup else self.config.inner_lr

    def run_round(
        self, theta: torch.Tensor, batches: Iterable[torch.Tensor], bounds: list[int] | None = None
    ) -> tuple[torch.Tensor, float, int, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Start from θ, train on ``batches`` (each (B, T+1)); return (Δ = θ − θ_local, mean loss, samples, trace).

        ``trace`` holds (parameters, AdamW moments) at each inner step listed in ``bounds`` (counted from 0, the
        start of the round): what a contributor commits to and serves, so that a verifier can re-execute any one
        segment between two bounds (koinon.verification)."""
        load_flat_parameters(self.model, theta)
        self.model.train()
        wanted = set(bounds or ())
        trace = [(theta.clone(), self.moments())] if 0 in wanted else []
        losses, samples = [], 0
        for i, batch in enumerate(batches, start=1):
            losses.append(self._step(batch))
            samples += batch.size(0)
            if i in wanted:
                trace.append((flat_parameters(self.model), self.moments()))
        delta = theta - flat_parameters(self.model)  # (P,)
        return delta, sum(losses) / max(1, len(losses)), samples, trace

    def _step(self, batch: torch.Tensor) -> float:
        """One inner AdamW step on ``batch`` (B, T+1); returns its loss."""
        inputs, targets = batch[:, :-1], batch[:, 1:]  # (B, T), (B, T)
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr()
        logits = self.model(input_ids=inputs).logits  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"inner loss is {loss.item()} at inner step {self.steps_done}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.steps_done += 1
        return loss.item()

    # --- the optimiser state, for traces and re-execution ---------------------------------------------------------
    def moments(self) -> torch.Tensor:
        """AdamW's first and second moments as one float32 vector (2P,): all m, then all v (zeros before the first
        step)."""
        params = list(self.model.parameters())
        first, second = [], []
        for p in params:
            state = self.optimizer.state.get(p) or {}
            first.append(state["exp_avg"].reshape(-1) if "exp_avg" in state else torch.zeros(p.numel()))
            second.append(state["exp_avg_sq"].reshape(-1) if "exp_avg_sq" in state else torch.zeros(p.numel()))
        return torch.cat(first + second).to(torch.float32)  # cat makes a new tensor: no copy needed

    def load_state(self, params: torch.Tensor, moments: torch.Tensor, steps_done: int) -> None:
        """Put the model and AdamW where a trace says they were after ``steps_done`` inner steps of this peer."""
        load_flat_parameters(self.model, params)
        plist = list(self.model.parameters())
        total = sum(p.numel() for p in plist)
        if moments.numel() != 2 * total:
            raise ValueError(f"moments have {moments.numel()} values, expected {2 * total}")
        offset = 0
        for p in plist:
            n = p.numel()
            self.optimizer.state[p] = {
                "step": torch.tensor(float(steps_done), dtype=torch.float32),
                "exp_avg": moments[offset : offset + n].view_as(p).clone(),
                "exp_avg_sq": moments[total + offset : total + offset + n].view_as(p).clone(),
            }
            offset += n
        self.steps_done = steps_done

    def replay(
        self, params: torch.Tensor, moments: torch.Tensor, steps_done: int, batches: Iterable[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Re-execute inner steps from a traced state: (parameters, moments) after ``batches``."""
        self.load_state(params, moments, steps_done)
        self.model.train()
        for batch in batches:
            self._step(batch)
        return flat_parameters(self.model), self.moments()

    @torch.no_grad()
    def evaluate(self, theta: torch.Tensor, batches: list[torch.Tensor]) -> float:
        """Mean next-token cross-entropy (nats per byte) of θ on the validation batches."""
        load_flat_parameters(self.model, theta)
        self.model.eval()
        total, count = 0.0, 0
        for batch in batches:
            inputs, targets = batch[:, :-1], batch[:, 1:]
            logits = self.model(input_ids=inputs).logits
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="sum"
            )
            total += loss.item()
            count += targets.numel()
        self.model.train()
        return total / count
