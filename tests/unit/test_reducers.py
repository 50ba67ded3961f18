"""Reducers on hand-computed cases (src/koinon/aggregation/reducers.py).

Every expected number below is worked out by hand in the comment next to it, and chosen to be exact in float32,
so the assertions are equalities.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from koinon.aggregation import REDUCERS
from koinon.aggregation.reducers import (
    CLIP_ITERATIONS,
    TRIM_FRACTION,
    centered_clip,
    mean,
    median,
    reduce,
    trimmed_mean,
)

ROBUST = ("trimmed_mean", "median", "centered_clip")


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_the_names_and_the_defaults():
    assert REDUCERS == ("mean", "trimmed_mean", "median", "centered_clip")
    assert (TRIM_FRACTION, CLIP_ITERATIONS) == (0.25, 3)


def test_mean_is_weighted():
    # (1·1 + 3·5) / 4 = 4 ; (1·2 + 3·6) / 4 = 5
    assert torch.equal(mean([t(1, 2), t(5, 6)], [1.0, 3.0]), t(4, 5))


def test_median_odd_count():
    # per coordinate: sorted (1, 3, 9) → 3 ; (−4, 0, 2) → 0 ; weights do not matter
    parts = [t(9, -4), t(1, 2), t(3, 0)]
    assert torch.equal(median(parts, [1.0, 1.0, 100.0]), t(3, 0))


def test_median_even_count_is_the_mean_of_the_two_middle_values():
    # sorted (1, 2, 4, 10) → (2 + 4)/2 = 3 ; sorted (−1, 0, 0, 7) → 0 ; (5, 6, 7, 8) → 6.5
    parts = [t(10, 0, 5), t(1, -1, 8), t(4, 7, 6), t(2, 0, 7)]
    assert torch.equal(median(parts, [1.0] * 4), t(3, 0, 6.5))


def test_trimmed_mean_drops_floor_beta_n_at_each_end():
    # n = 4: b = ⌊0.25·4⌋ = 1: sorted (1, 2, 4, 10) → (2 + 4)/2 = 3
    assert torch.equal(trimmed_mean([t(10), t(1), t(4), t(2)], [1.0] * 4), t(3))
    # n = 8: b = 2: sorted (0, 1, 2, 3, 4, 5, 6, 100) → (2 + 3 + 4 + 5)/4 = 3.5
    parts = [t(v) for v in (5, 100, 0, 3, 6, 1, 4, 2)]
    assert torch.equal(trimmed_mean(parts, [1.0] * 8), t(3.5))
    # n = 3: b = 0: the unweighted mean (1 + 2 + 6)/3 = 3, not the weighted one
    assert torch.equal(trimmed_mean([t(1), t(2), t(6)], [5.0, 1.0, 1.0]), t(3))


def test_centered_clip_hand_computed():
    # x = (0, 1, 100), w = (1, 1, 2). v₀ = median = 1; distances (1, 0, 99) → τ = 1.
    # iteration 1: v = 1,   clipped (−1, 0, +1)       → Σ w·c = −1 + 0 + 2 = 1       → v = 1 + 1/4 = 1.25
    # iteration 2: v = 1.25, clipped (−1, −0.25, +1)   → −1 − 0.25 + 2 = 0.75         → v = 1.25 + 0.1875 = 1.4375
    # iteration 3: v = 1.4375, clipped (−1, −0.4375, +1) → 0.5625                    → v = 1.4375 + 0.140625
    # the clipped iterations end at 101/64 = 1.578125, but that is longer than the median sender's part: the median of
    # ‖xᵢ‖ = (0, 1, 100) is 1, so the length cap brings the result back to 1
    assert torch.equal(centered_clip([t(0), t(1), t(100)], [1.0, 1.0, 2.0]), t(1.0))
    # the same senders moved by −10: the iterations are translation-equivariant (v₀ = −9, τ = 1 → −10 + 101/64), and
    # the result's length 8.421875 is below the median ‖xᵢ‖ = median(10, 9, 90) = 10, so the cap does not bind
    assert torch.equal(centered_clip([t(-10), t(-9), t(90)], [1.0, 1.0, 2.0]), t(-8.421875))


def test_centered_clip_caps_a_scaled_minority_at_the_median_length():
    honest = [torch.tensor([1.0, 2.0, 2.0]), torch.tensor([1.0, 2.0, 2.0]), torch.tensor([1.0, 2.0, 2.0])]
    attackers = [torch.tensor([100.0, 200.0, 200.0])] * 2  # 2 of 5 send the honest direction, 100× longer
    result = centered_clip(honest + attackers, [1.0] * 5)
    assert float(torch.linalg.vector_norm(result)) <= 3.0 + 1e-6  # the median ‖xᵢ‖ is 3
    assert torch.allclose(result, torch.tensor([1.0, 2.0, 2.0]), atol=1e-6)  # and the direction is the honest one


def test_centered_clip_within_tau_takes_mean_steps_and_clips_what_drifts_beyond():
    # x = (0, 2, 4), w = 1: v₀ = 2, distances (2, 0, 2), τ = 2: nobody is clipped; the step is mean − v = 0
    assert torch.equal(centered_clip([t(0), t(2), t(4)], [1.0] * 3), t(2))
    # x = (0, 4), w = (3, 1): v₀ = 2, distances (2, 2) → τ = 2 (τ stays fixed from here on).
    # iteration 1: no clipping, v = 2 + (3·(−2) + 1·2)/4 = 1 (the weighted mean)
    # iteration 2: distances (1, 3): 4 is clipped to τ = 2 → v = 1 + (3·(−1) + 2)/4 = 0.75
    # iteration 3: distances (0.75, 3.25): clipped to 2 → v = 0.75 + (3·(−0.75) + 2)/4 = 0.6875
    assert torch.equal(centered_clip([t(0), t(4)], [3.0, 1.0]), t(0.6875))


HONEST = [t(1, 2, 3), t(2, 3, 4), t(3, 4, 5)]  # honest mean (2, 3, 4); every coordinate within [1, 5]
OUTLIER = t(1e6, 1e6, 1e6)


def test_one_outlier_moves_the_mean_far():
    # (1 + 2 + 3 + 10⁶)/4 = 250001.5 ; (2 + 3 + 4 + 10⁶)/4 = 250002.25 ; (3 + 4 + 5 + 10⁶)/4 = 250003
    assert torch.equal(mean([*HONEST, OUTLIER], [1.0] * 4), t(250001.5, 250002.25, 250003))


@pytest.mark.parametrize("name", ["trimmed_mean", "median"])
def test_one_outlier_of_four_does_not_move_median_or_trimmed_mean_out_of_the_honest_values(name):
    # sorted per coordinate (1, 2, 3, 10⁶) → the middle two (2, 3): both give 2.5 ; likewise 3.5 and 4.5
    assert torch.equal(reduce(name, [*HONEST, OUTLIER], [1.0] * 4), t(2.5, 3.5, 4.5))


def test_one_outlier_of_four_moves_centered_clip_at_most_l_tau_from_the_median():
    # v₀ = (2.5, 3.5, 4.5); honest distances 1.5·√3, 0.5·√3, 0.5·√3, the outlier's ≈ 10⁶·√3 → τ = (0.5 + 1.5)/2·√3
    # = √3. The bound whatever the outlier sends: ‖v − v₀‖ ≤ L·τ = 3√3. Here the honest pulls (−1, −0.5, +0.5 per
    # coordinate after clipping) cancel the outlier's clipped pull (≈ +1 per coordinate): v stays at v₀.
    v0 = t(2.5, 3.5, 4.5)
    result = centered_clip([*HONEST, OUTLIER], [1.0] * 4)
    assert float(torch.linalg.vector_norm(result - v0)) <= CLIP_ITERATIONS * math.sqrt(3)
    assert torch.allclose(result, v0, rtol=0, atol=1e-5), result
    # however far the outlier goes, v moves no further
    assert torch.allclose(centered_clip([*HONEST, 1e30 * OUTLIER], [1.0] * 4), v0, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", REDUCERS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_rows_are_left_out(name, bad):
    # the row with a NaN/Inf anywhere is dropped whole: the result is the reducer of the other two
    parts = [t(1, 2), t(bad, 100), t(3, 4)]
    assert torch.equal(reduce(name, parts, [1.0] * 3), reduce(name, [parts[0], parts[2]], [1.0, 1.0]))
    assert torch.equal(reduce(name, parts, [1.0] * 3), t(2, 3))  # (1 + 3)/2, (2 + 4)/2 for every reducer


@pytest.mark.parametrize("name", REDUCERS)
def test_values_beyond_float32_are_left_out(name):
    # a float64 part (a peer could send one with compression "none") is cast to float32 first: 1e300 → inf
    parts = [t(1), torch.tensor([1e300], dtype=torch.float64), t(3)]
    assert torch.equal(reduce(name, parts, [1.0] * 3), t(2))


@pytest.mark.parametrize("name", REDUCERS)
@pytest.mark.parametrize("weight", [0.0, -1.0, math.nan, math.inf])
def test_rows_without_a_positive_finite_weight_are_left_out(name, weight):
    parts = [t(1, 2), t(1000, -1000), t(3, 4)]
    assert torch.equal(reduce(name, parts, [1.0, weight, 1.0]), t(2, 3))


@pytest.mark.parametrize("name", REDUCERS)
def test_nobody_counts_gives_zeros(name):
    parts = [t(1, 2, 3), t(4, 5, 6)]
    assert torch.equal(reduce(name, parts, [0.0, 0.0]), torch.zeros(3))
    assert torch.equal(reduce(name, [t(math.nan, 1)], [1.0]), torch.zeros(2))


@pytest.mark.parametrize("name", REDUCERS)
def test_a_single_sender_gets_its_own_part_back(name):
    x = torch.tensor([[1.5, -2.0], [0.25, 8.0]])  # (2, 2): shapes other than 1-D are kept
    assert torch.equal(reduce(name, [x], [7.0]), x)


@pytest.mark.parametrize("name", REDUCERS)
def test_the_order_of_senders_does_not_change_a_bit(name):
    gen = torch.Generator().manual_seed(5)
    # random values (inexact sums: every order would round differently if the sum were taken in sender order),
    # an outlier, and a zero-weight row; D = 1001 is not a multiple of any vector width
    parts = [torch.randn(1001, generator=gen) * s for s in (1.0, 3.0, 0.5, 2.0)] + [torch.full((1001,), 1e4)]
    weights = [1.0, 2.5, 0.7, 3.0, 1.0]
    parts.append(torch.randn(1001, generator=gen))
    weights.append(0.0)
    expected = reduce(name, parts, weights)
    for order in itertools.permutations(range(len(parts))):
        got = reduce(name, [parts[i] for i in order], [weights[i] for i in order])
        assert torch.equal(got, expected), order


def test_results_are_float32_and_shaped_like_the_parts():
    parts = [torch.ones(2, 3), torch.zeros(2, 3)]
    for name in REDUCERS:
        out = reduce(name, parts, [1.0, 1.0])
        assert out.dtype == torch.float32 and out.shape == (2, 3), name


def test_unknown_reducer_and_bad_calls_raise_value_error():
    with pytest.raises(ValueError, match="mean, trimmed_mean, median, centered_clip"):
        reduce("krum", [t(1)], [1.0])
    with pytest.raises(ValueError, match="unknown reducer"):
        reduce(["mean"], [t(1)], [1.0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one part"):
        reduce("mean", [], [])
    with pytest.raises(ValueError, match="one weight per sender"):
        reduce("median", [t(1), t(2)], [1.0])
    with pytest.raises(ValueError, match="same shape"):
        reduce("median", [t(1), t(1, 2)], [1.0, 1.0])
