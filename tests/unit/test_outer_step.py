"""OuterOptimizer: DiLoCo's outer Nesterov SGD (src/koinon/training/diloco.py)."""

from __future__ import annotations

import pytest
import torch

from koinon.training.diloco import OuterOptimizer

EPS32 = torch.finfo(torch.float32).eps

THETA0 = [1.0, -2.0, 0.5]
GRADS = [[0.5, 1.0, -0.25], [0.25, -0.5, 1.0], [-1.0, 0.0, 0.5]]


def _f32(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_three_steps_match_hand_computation_exactly_with_dyadic_numbers():
    """lr = μ = 0.5 and dyadic inputs: every intermediate value is exact in float32, so equality is exact.

    b1 = g1                     = [0.5, 1.0, -0.25]
    θ1 = θ0 − lr(g1 + μ b1)     = [1, −2, 0.5] − 0.5·[0.75, 1.5, −0.375]        = [0.625, −2.75, 0.6875]
    b2 = μ b1 + g2              = [0.25, 0.5, −0.125] + [0.25, −0.5, 1]        = [0.5, 0.0, 0.875]
    θ2 = θ1 − lr(g2 + μ b2)     = θ1 − 0.5·[0.5, −0.5, 1.4375]                 = [0.375, −2.5, −0.03125]
    b3 = μ b2 + g3              = [0.25, 0, 0.4375] + [−1, 0, 0.5]             = [−0.75, 0.0, 0.9375]
    θ3 = θ2 − lr(g3 + μ b3)     = θ2 − 0.5·[−1.375, 0.0, 0.96875]              = [1.0625, −2.5, −0.515625]
    """
    opt = OuterOptimizer(lr=0.5, momentum=0.5, size=3)
    theta = _f32(THETA0)
    expected_buffers = [[0.5, 1.0, -0.25], [0.5, 0.0, 0.875], [-0.75, 0.0, 0.9375]]
    expected_thetas = [[0.625, -2.75, 0.6875], [0.375, -2.5, -0.03125], [1.0625, -2.5, -0.515625]]
    for grad, b, th in zip(GRADS, expected_buffers, expected_thetas, strict=True):
        opt.step(theta, _f32(grad))
        assert torch.equal(opt.buffer, _f32(b))
        assert torch.equal(theta, _f32(th))


def test_three_steps_match_hand_computation_with_paper_hyperparameters():
    """lr 0.7, μ 0.9 (DiLoCo's values); decimals worked out by hand, compared to float32 rounding.

    b1 = [0.5, 1.0, −0.25]      u1 = g1 + 0.9 b1 = [0.95, 1.9, −0.475]      θ1 = [0.335, −3.33, 0.8325]
    b2 = [0.7, 0.4, 0.775]      u2 = g2 + 0.9 b2 = [0.88, −0.14, 1.6975]    θ2 = [−0.281, −3.232, −0.35575]
    b3 = [−0.37, 0.36, 1.1975]  u3 = g3 + 0.9 b3 = [−1.333, 0.324, 1.57775] θ3 = [0.6521, −3.4588, −1.460175]
    """
    opt = OuterOptimizer(lr=0.7, momentum=0.9, size=3)
    theta = _f32(THETA0)
    expected_buffers = [[0.5, 1.0, -0.25], [0.7, 0.4, 0.775], [-0.37, 0.36, 1.1975]]
    expected_thetas = [[0.335, -3.33, 0.8325], [-0.281, -3.232, -0.35575], [0.6521, -3.4588, -1.460175]]
    for grad, b, th in zip(GRADS, expected_buffers, expected_thetas, strict=True):
        opt.step(theta, _f32(grad))
        # a few float32 roundings per step on values of magnitude ≤ 4: a handful of ulps at most
        torch.testing.assert_close(opt.buffer, _f32(b), rtol=0, atol=8 * EPS32 * 4)
        torch.testing.assert_close(theta, _f32(th), rtol=0, atol=8 * EPS32 * 4)


@pytest.mark.parametrize("n", [3, 1000])
def test_matches_torch_sgd_nesterov_for_five_steps(n: int):
    """Against torch.optim.SGD(nesterov=True, momentum=0.9, lr=0.7) on random vectors.

    What holds (measured, and asserted here): the momentum buffer is bitwise equal (b·μ + g with alpha=1
    rounds the same either way). θ is *not* bitwise equal: torch's ``add(x, alpha=a)`` kernels may fuse the
    multiply and add (FMA, one rounding) where Koinon deliberately rounds twice, and after cancellation the
    difference can be many ulps of the (small) result. It is bounded by a few ulps of the magnitudes
    involved: |Δθ| ≤ 4·eps·(|θ0| + Σ_t lr·(|g_t| + μ·|b_t|)). Measured worst case ≈ 2.3 on 100 k elements.
    """
    g = torch.Generator().manual_seed(n)
    theta0 = torch.randn(n, generator=g)
    grads = [torch.randn(n, generator=g) for _ in range(5)]

    ours = theta0.clone()
    opt = OuterOptimizer(lr=0.7, momentum=0.9, size=n)
    param = torch.nn.Parameter(theta0.clone())
    sgd = torch.optim.SGD([param], lr=0.7, momentum=0.9, nesterov=True)
    scale = theta0.abs().double()
    for grad in grads:
        opt.step(ours, grad)
        param.grad = grad.clone()
        sgd.step()
        assert torch.equal(opt.buffer, sgd.state[param]["momentum_buffer"])
        scale += 0.7 * (grad.abs().double() + 0.9 * opt.buffer.abs().double())
    diff = (ours.double() - param.detach().double()).abs()
    worst = (diff / (EPS32 * scale)).max().item()
    assert worst <= 4.0, f"θ differs from torch SGD by {worst:.2f} eps·scale"
    # and it is a real comparison: the two trajectories moved far from θ0
    assert (ours - theta0).abs().mean() > 0.5


def test_step_is_elementwise_and_alignment_independent():
    """Every peer must get bit-identical θ: the result of an element may not depend on its position in memory
    (vectorised body vs scalar tail), which a fused multiply-add in one path but not the other would break."""
    g = torch.Generator().manual_seed(7)
    n = 1031
    theta0 = torch.randn(n, generator=g)
    grads = [torch.randn(n, generator=g) for _ in range(3)]

    whole = theta0.clone()
    opt = OuterOptimizer(0.7, 0.9, n)
    for grad in grads:
        opt.step(whole, grad)

    for start in (1, 3, 17):  # shifted slices put each element in a different lane / the scalar tail
        part = theta0[start:].clone()
        opt_part = OuterOptimizer(0.7, 0.9, n - start)
        for grad in grads:
            opt_part.step(part, grad[start:].clone())
        assert torch.equal(part, whole[start:])
    for i in (0, 5, n - 1):  # and one element at a time
        single = theta0[i : i + 1].clone()
        opt_single = OuterOptimizer(0.7, 0.9, 1)
        for grad in grads:
            opt_single.step(single, grad[i : i + 1].clone())
        assert torch.equal(single, whole[i : i + 1])


def test_state_tensors_round_trip_continues_the_same_trajectory():
    g = torch.Generator().manual_seed(3)
    theta = torch.randn(64, generator=g)
    grads = [torch.randn(64, generator=g) for _ in range(4)]

    a = OuterOptimizer(0.7, 0.9, 64)
    theta_a = theta.clone()
    for grad in grads[:2]:
        a.step(theta_a, grad)

    b = OuterOptimizer(0.7, 0.9, 64)
    b.load_state_tensors([t.clone() for t in a.state_tensors()])
    assert torch.equal(b.buffer, a.buffer)
    assert b.buffer.dtype == torch.float32
    theta_b = theta_a.clone()
    for grad in grads[2:]:
        a.step(theta_a, grad)
        b.step(theta_b, grad)
    assert torch.equal(theta_a, theta_b)
    assert torch.equal(a.buffer, b.buffer)


def test_load_state_tensors_copies_so_later_changes_do_not_leak_in():
    opt = OuterOptimizer(0.7, 0.9, 4)
    source = torch.ones(4)
    opt.load_state_tensors([source])
    source.fill_(5.0)
    assert torch.equal(opt.buffer, torch.ones(4))


def test_load_state_tensors_rejects_wrong_shape():
    opt = OuterOptimizer(0.7, 0.9, 5)
    with pytest.raises(ValueError, match=r"shape \(4,\), expected \(5,\)"):
        opt.load_state_tensors([torch.zeros(4)])
    assert torch.equal(opt.buffer, torch.zeros(5))  # unchanged after the refusal


def test_step_rejects_mismatched_shapes():
    opt = OuterOptimizer(0.7, 0.9, 3)
    with pytest.raises(ValueError, match="shape mismatch"):
        opt.step(torch.zeros(3), torch.zeros(4))
