"""Byzantine pseudo-gradients on purpose: the testing tool behind ``koinon start --attack KIND`` (docs/training.md,
"Testing tools: --attack").

A Byzantine peer (issue 5's threat model) trains like everybody else, then replaces its pseudo-gradient Δ with
one of the attacks below before averaging, and still reports its honest sample count, so it counts with full
weight. Anyone can then reproduce what the robust reducers (``koinon.aggregation``) are for. Every attack is a
pure function of (kind, Δ, context), deterministic given (member, round).

==========  ===================================================================================================
kind        what the peer sends instead of its Δ
==========  ===================================================================================================
nan         Δ with every 7th coordinate NaN (the reducers reject such parts outright)
sign_flip   −4·Δ: pulls the average against the direction of descent
scale       100·Δ: one huge vector that dominates a plain mean
noise       Gaussian noise with 10× the standard deviation of Δ (seeded by member and round); no signal at all
alie        "A little is enough" (Baruch et al. 2019, arXiv 1902.06156): μ − z·σ per coordinate, z = 1.0, where
            μ and σ are the mean and (population) standard deviation of the attacker's two samples of honest
            work, its own Δ and the last round's average Δ̄ it received: μ = (Δ + Δ̄)/2, σ = |Δ − Δ̄|/2. Each
            coordinate stays within one spread of the honest mean, so it looks plausible to a median or a trimmed
            mean, while all coordinates push the same way. Before any Δ̄ (its first round) σ = 0: it sends Δ.
ipm         Inner-product manipulation (Xie et al. 2020, "Fall of Empires", arXiv 1903.03936): −ε·Δ, ε = 0.5, the
            attacker's Δ standing in for the honest mean: a small vector whose inner product with the honest
            direction is negative.
freeride    A free-rider: it does no inner steps at all, sends a copy of the last average Δ̄ it received (zeros
            before its first), claims a full round's samples, and commits a made-up trace (every state the
            round's start state, the last one θ − Δ̄) whose states it serves. Verification catches it (issue 5).
==========  ===================================================================================================

The scaling constants are fixed so that a benchmark run is reproducible from the kind alone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from koinon.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where the tensors are: the CLI builds its parser from ATTACKS without it
    import torch

ATTACKS = ("nan", "sign_flip", "scale", "noise", "alie", "ipm", "freeride")

SIGN_FLIP_FACTOR = -4.0
SCALE_FACTOR = 100.0
NOISE_STD_FACTOR = 10.0
ALIE_Z = 1.0  # Baruch et al.'s z_max for n = 4, f = 1 would be Φ⁻¹(2/4) = 0; 1.0 is a stronger, fixed choice
IPM_EPSILON = 0.5


@dataclass(frozen=True)
class AttackContext:
    """What an attacking peer knows when it sends round ``round``'s pseudo-gradient."""

    member: str  # the attacker's member id
    round: int  # the round being averaged
    previous_average: torch.Tensor | None = None  # (P,) the last Δ̄ it received; None before its first average


def check_attack(kind: str) -> None:
    """Raise ``ConfigError`` unless ``kind`` names an attack."""
    if kind not in ATTACKS:
        raise ConfigError(f"unknown attack {kind!r}; choose one of {', '.join(ATTACKS)}")


def attack_seed(member: str, round_no: int) -> int:
    """The seed of the ``noise`` attack: 63 bits of sha256(member | round)."""
    digest = hashlib.sha256(f"attack|{member}|{round_no}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def apply_attack(kind: str, delta: torch.Tensor, context: AttackContext) -> torch.Tensor:
    """The pseudo-gradient a Byzantine peer sends instead of its honest ``delta`` (P,); ``delta`` is not modified."""
    import torch

    check_attack(kind)
    if kind == "nan":
        out = delta.clone()
        out[::7] = float("nan")
        return out
    if kind == "sign_flip":
        return delta * SIGN_FLIP_FACTOR
    if kind == "scale":
        return delta * SCALE_FACTOR
    if kind == "noise":
        generator = torch.Generator().manual_seed(attack_seed(context.member, context.round))
        std = float(delta.std()) if delta.numel() > 1 else 0.0
        noise = torch.randn(delta.shape, generator=generator, dtype=torch.float32)  # (P,)
        return (noise * (NOISE_STD_FACTOR * std)).to(delta.dtype)
    if kind == "alie":
        prev = context.previous_average
        if prev is None:
            return delta.clone()  # one sample of honest work: no spread to hide in
        if prev.shape != delta.shape:
            raise ValueError(f"previous average has shape {tuple(prev.shape)}, Δ has {tuple(delta.shape)}")
        prev = prev.to(delta.dtype)
        mu = (delta + prev) / 2  # (P,)
        sigma = (delta - prev).abs() / 2  # (P,) population std of two samples
        return mu - ALIE_Z * sigma
    if kind == "freeride":
        prev = context.previous_average
        return torch.zeros_like(delta) if prev is None else prev.to(delta.dtype).clone()
    assert kind == "ipm", kind
    return delta * -IPM_EPSILON
