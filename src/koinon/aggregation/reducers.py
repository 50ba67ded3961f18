"""Reducers: how the senders' copies of one tensor part become the part's aggregate (DESIGN §5).

Each function takes ``parts`` (one same-shape tensor per sender: that sender's copy of the part) and ``weights``
(one per sender: the number of samples behind its pseudo-gradient) and returns one float32 tensor of the same
shape. They are pure and deterministic, and they run inside the real averaging path: the part reducer of
``swarm/averaging.py`` calls :func:`reduce` once per part, with every sender's part of the current all-reduce.

- ``mean``: the weighted mean Σ wᵢ xᵢ / Σ wᵢ (stock hivemind's reducer; one Byzantine sender moves it anywhere).
- ``trimmed_mean``: coordinate-wise, drop the b = ⌊β·n⌋ largest and b smallest values and average the rest
  (β = ``TRIM_FRACTION`` = 0.25: with n ≥ 4 senders one Byzantine sender is always trimmed; with n ≤ 3 nothing
  is trimmed and it is the unweighted mean). Unweighted: a sender cannot buy more influence by claiming samples.
- ``median``: coordinate-wise median; with an even count the mean of the two middle values. Unweighted.
- ``centered_clip``: CenteredClip (Karimireddy, He & Jaggi 2021, "Learning from History for Byzantine Robust
  Optimization", ICML, Algorithm 2; the aggregator of BTARD, Gorbunov et al. 2022, "Secure Distributed Training
  at Scale", ICML). Start at v₀ = the coordinate-wise median, then ``CLIP_ITERATIONS`` = 3 times

      v ← v + Σᵢ wᵢ (xᵢ − v) · min(1, τ / ‖xᵢ − v‖) / Σᵢ wᵢ

  with the clipping radius τ = the median of ‖xᵢ − v₀‖ over the senders. The paper leaves τ and L as
  hyper-parameters (its analysis uses a τ of the order of the honest spread, and notes that one to three
  iterations suffice when v starts close to the honest mean); the median distance from a robust start is such a
  scale that needs no tuning and that a minority cannot inflate: with fewer than half Byzantine senders τ is at
  most an honest sender's distance to v₀. Each iteration moves v by at most τ, so ‖v − v₀‖ ≤ L·τ whatever the
  Byzantine senders send. Koinon then caps the result's length at the median of the senders' ‖xᵢ‖ (not in the
  paper): a colluding minority that sends the honest direction scaled up (the "scale" attack) otherwise lengthens
  every outer step by up to L·τ; with it, the 7/16 "scale" benchmark went from 1.20× to within 3 % of the clean
  run (docs/benchmarks-byzantine.md).

Rules common to all reducers:

- a sender counts only with a finite weight > 0 and an all-finite part (defence in depth: the all-reduce runner
  already replaces rejected and left-out parts by zeros with weight 0); parts are cast to float32 first;
- if nobody counts, the result is zeros (there is no average of nothing, and a NaN would be refused);
- the result depends only on the multiset of (part, weight) pairs, bit for bit: sums are taken over values sorted
  per coordinate, so the order in which senders arrive does not change a single bit (a verifier can recompute a
  reducer's output from the same inputs);
- arithmetic is float32, except CenteredClip's iterations, which run in float64: xᵢ − v and ‖xᵢ − v‖ overflow
  float32 for finite inputs near its limit (an overflow would make the clip factor 0 · ∞ = NaN), and a norm of
  ~10⁵ squared float32 values loses digits; its result is rounded to float32 once, at the end.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from koinon.aggregation import REDUCERS

TRIM_FRACTION = 0.25  # β of trimmed_mean: the share of senders dropped at each end, per coordinate
CLIP_ITERATIONS = 3  # L of centered_clip

assert 0 <= TRIM_FRACTION < 0.5, f"TRIM_FRACTION {TRIM_FRACTION} must leave at least one value"


def _counted(parts: Sequence[torch.Tensor], weights: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """The senders that count: (their parts flattened, (k, D) float32; their weights, (k,) float32).

    Raises ValueError for a call that is wrong whatever the data (no parts, a weight missing, shapes differ).
    """
    if len(parts) == 0:
        raise ValueError("a reducer needs at least one part (to know the shape of its result)")
    if len(parts) != len(weights):
        raise ValueError(f"{len(parts)} parts but {len(weights)} weights: give one weight per sender")
    shape = parts[0].shape
    rows, kept = [], []
    for part, weight in zip(parts, weights, strict=True):
        if part.shape != shape:
            raise ValueError(f"parts must have the same shape: {tuple(part.shape)} vs {tuple(shape)}")
        w = float(weight)
        if not (math.isfinite(w) and w > 0):
            continue  # weight 0: rejected, left out, or nothing to contribute
        x = part.detach().to(torch.float32).reshape(-1)  # (D,)
        if not bool(torch.isfinite(x).all()):
            continue  # also catches values beyond float32's range, which became ±inf in the cast
        rows.append(x)
        kept.append(w)
    if not rows:
        return torch.zeros(0, shape.numel()), torch.zeros(0)
    return torch.stack(rows), torch.tensor(kept, dtype=torch.float32)  # (k, D), (k,)


def _sorted_sum(x: torch.Tensor) -> torch.Tensor:
    """Σ over dim 0, summed in sorted order per coordinate: the same bits for any order of the rows."""
    return torch.sort(x, dim=0).values.sum(dim=0)


def _median_rows(x: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median over dim 0 of a (k, D) tensor, k ≥ 1; even k: mean of the two middle values."""
    k = x.shape[0]
    s = torch.sort(x, dim=0).values  # (k, D)
    if k % 2:
        return s[k // 2].clone()
    # ½a + ½b rather than (a + b)/2: halving is exact (outside subnormals) and the sum cannot overflow
    return 0.5 * s[k // 2 - 1] + 0.5 * s[k // 2]


def mean(parts: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Weighted mean Σ wᵢ xᵢ / Σ wᵢ over the senders that count (zeros if none)."""
    x, w = _counted(parts, weights)  # (k, D), (k,)
    if x.shape[0] == 0:
        return torch.zeros(parts[0].shape)
    return (_sorted_sum(x * w[:, None]) / _sorted_sum(w)).reshape(parts[0].shape)


def trimmed_mean(parts: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Coordinate-wise mean after dropping the ⌊β·k⌋ largest and smallest values (β = ``TRIM_FRACTION``) among the
    k senders that count; unweighted (zeros if nobody counts)."""
    x, _ = _counted(parts, weights)  # (k, D)
    k = x.shape[0]
    if k == 0:
        return torch.zeros(parts[0].shape)
    b = math.floor(TRIM_FRACTION * k)
    kept = torch.sort(x, dim=0).values[b : k - b]  # (k − 2b, D), already sorted: the sum is order-free
    return (kept.sum(dim=0) / (k - 2 * b)).reshape(parts[0].shape)


def median(parts: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Coordinate-wise median of the senders that count; with an even count, the mean of the two middle values;
    unweighted (zeros if nobody counts)."""
    x, _ = _counted(parts, weights)  # (k, D)
    if x.shape[0] == 0:
        return torch.zeros(parts[0].shape)
    return _median_rows(x).reshape(parts[0].shape)


def centered_clip(parts: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """CenteredClip (Karimireddy et al. 2021, Algorithm 2) from the coordinate-wise median, τ = median ‖xᵢ − v₀‖,
    L = ``CLIP_ITERATIONS`` (the module docstring says why); weighted by ``weights``; zeros if nobody counts."""
    x32, w32 = _counted(parts, weights)  # (k, D), (k,)
    if x32.shape[0] == 0:
        return torch.zeros(parts[0].shape)
    x, w = x32.to(torch.float64), w32.to(torch.float64)  # float64: see the module docstring
    v = _median_rows(x32).to(torch.float64)  # (D,) v₀
    tau = _median_rows(_distances(x, v)[:, None])[0]  # scalar: the median distance from v₀
    total = _sorted_sum(w)
    for _ in range(CLIP_ITERATIONS):
        diff = x - v  # (k, D)
        dist = _distances(x, v)  # (k,)
        # min(1, τ/‖xᵢ − v‖); a sender exactly at v moves nothing either way (its difference is 0)
        scale = torch.where(dist > tau, tau / dist.clamp_min(torch.finfo(torch.float64).tiny), 1.0)  # (k,)
        v = v + _sorted_sum((w * scale)[:, None] * diff) / total
    # Koinon's addition: the aggregate is no longer than the median sender's part. A colluding minority sending
    # the honest direction scaled up still pulls v by up to L·τ along it, which lengthens the outer step; the
    # median length is a scale that a minority cannot inflate (bench/results/byzantine.md: "scale" at 7/16)
    cap = _median_rows(_distances(x, torch.zeros_like(v))[:, None])[0]
    length = torch.linalg.vector_norm(v)
    if length > cap:
        v = v * (cap / length)
    return v.to(torch.float32).reshape(parts[0].shape)


def _distances(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """‖xᵢ − v‖₂ for each row, (k,): one row at a time, so a row's norm does not depend on its position."""
    return torch.stack([torch.linalg.vector_norm(row - v) for row in x])


_REDUCERS: dict[str, Callable[[Sequence[torch.Tensor], Sequence[float]], torch.Tensor]] = {
    "mean": mean,
    "trimmed_mean": trimmed_mean,
    "median": median,
    "centered_clip": centered_clip,
}
assert tuple(_REDUCERS) == REDUCERS, f"reducers.py implements {tuple(_REDUCERS)}, the package names {REDUCERS}"


def reduce(name: str, parts: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Aggregate ``parts`` with the reducer called ``name`` (one of ``REDUCERS``)."""
    if not isinstance(name, str) or name not in _REDUCERS:
        raise ValueError(f"unknown reducer {name!r}; choose one of {', '.join(REDUCERS)}")
    return _REDUCERS[name](parts, weights)


__all__ = [
    "CLIP_ITERATIONS",
    "REDUCERS",
    "TRIM_FRACTION",
    "centered_clip",
    "mean",
    "median",
    "reduce",
    "trimmed_mean",
]
