"""The Byzantine pseudo-gradients of ``koinon start --attack`` (src/koinon/swarm/attacks.py), and the demo's
summary of an attack (src/koinon/cli/demo.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from koinon.cli.demo import LocalPeer, summarize_attack
from koinon.cli.main import _parser
from koinon.errors import ConfigError
from koinon.swarm.attacks import ATTACKS, AttackContext, apply_attack, attack_seed, check_attack

DELTA = [1.0, -2.0, 0.5, 0.0, 3.0, -1.0, 2.0, 4.0]  # dyadic: every expected value below is exact in float32
CONTEXT = AttackContext(member="mallory", round=3)


def _f32(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_nan_poisons_every_seventh_coordinate():
    out = apply_attack("nan", _f32(DELTA), CONTEXT)
    assert torch.isnan(out).tolist() == [True, False, False, False, False, False, False, True]
    assert torch.equal(out[1:7], _f32(DELTA[1:7]))


def test_sign_flip_is_minus_four_delta():
    assert torch.equal(apply_attack("sign_flip", _f32(DELTA), CONTEXT), _f32([-4, 8, -2, 0, -12, 4, -8, -16]))


def test_scale_is_a_hundred_delta():
    assert torch.equal(apply_attack("scale", _f32(DELTA), CONTEXT), _f32([100, -200, 50, 0, 300, -100, 200, 400]))


def test_ipm_is_minus_half_delta():
    """Xie et al. 2020 with ε = 0.5: negative inner product with the honest direction, half its length."""
    out = apply_attack("ipm", _f32(DELTA), CONTEXT)
    assert torch.equal(out, _f32([-0.5, 1, -0.25, 0, -1.5, 0.5, -1, -2]))
    assert float(out @ _f32(DELTA)) < 0


def test_alie_is_mean_minus_one_spread_of_own_delta_and_last_average():
    """Δ = [1, −2, 0.5, 0], Δ̄ = [3, −2, −0.5, 1]
    μ = (Δ + Δ̄)/2   = [2, −2, 0, 0.5]
    σ = |Δ − Δ̄|/2   = [1, 0, 0.5, 0.5]
    μ − 1.0·σ       = [1, −2, −0.5, 0]
    """
    context = AttackContext(member="mallory", round=3, previous_average=_f32([3, -2, -0.5, 1]))
    assert torch.equal(apply_attack("alie", _f32([1, -2, 0.5, 0]), context), _f32([1, -2, -0.5, 0]))


def test_alie_without_a_previous_average_sends_its_own_delta():
    assert torch.equal(apply_attack("alie", _f32(DELTA), CONTEXT), _f32(DELTA))


def test_alie_refuses_a_previous_average_of_another_shape():
    context = AttackContext(member="mallory", round=3, previous_average=torch.zeros(3))
    with pytest.raises(ValueError, match="shape"):
        apply_attack("alie", _f32(DELTA), context)


def test_noise_is_gaussian_with_ten_times_the_std_of_delta_seeded_by_member_and_round():
    delta = _f32(DELTA)
    out = apply_attack("noise", delta, CONTEXT)
    generator = torch.Generator().manual_seed(attack_seed("mallory", 3))
    assert torch.equal(out, torch.randn(8, generator=generator) * (10 * float(delta.std())))
    assert attack_seed("mallory", 3) == 9154001961017755831  # sha256-based: the same on every machine

    big = torch.linspace(-1, 1, 100_000)  # std ≈ 0.577
    noise = apply_attack("noise", big, CONTEXT)
    assert noise.std().item() == pytest.approx(10 * big.std().item(), rel=0.02)
    assert abs(noise.mean().item()) < 0.05 * noise.std().item()
    assert abs(torch.corrcoef(torch.stack([noise, big]))[0, 1].item()) < 0.02, "the noise carries no signal"


def test_noise_of_a_zero_delta_is_zero():
    assert torch.equal(apply_attack("noise", torch.zeros(5), CONTEXT), torch.zeros(5))


@pytest.mark.parametrize("kind", ATTACKS)
def test_every_attack_is_deterministic_and_leaves_its_input_alone(kind):
    delta = torch.randn(1000)
    before = delta.clone()
    context = AttackContext(member="mallory", round=7, previous_average=torch.randn(1000))
    first, second = apply_attack(kind, delta, context), apply_attack(kind, delta.clone(), context)
    torch.testing.assert_close(first, second, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(delta, before), f"{kind} modified the honest Δ in place"
    assert first.shape == delta.shape and first.dtype == delta.dtype


def test_noise_differs_between_rounds_and_members():
    delta = torch.randn(100)
    a = apply_attack("noise", delta, AttackContext("mallory", 1))
    assert not torch.equal(a, apply_attack("noise", delta, AttackContext("mallory", 2)))
    assert not torch.equal(a, apply_attack("noise", delta, AttackContext("trudy", 1)))


def test_unknown_attack_is_a_config_error_that_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown attack 'flip'; choose one of nan, sign_flip, scale, noise, alie"):
        apply_attack("flip", torch.zeros(3), CONTEXT)
    with pytest.raises(ValueError):  # ConfigError is a ValueError too
        check_attack("")


@pytest.mark.parametrize("command", ["start", "demo"])
def test_the_cli_offers_every_attack(command):
    for kind in ATTACKS:
        assert _parser().parse_args([command, "--attack", kind]).attack == kind
    with pytest.raises(SystemExit):
        _parser().parse_args([command, "--attack", "flip"])


def _write_peer(home, member, start_loss, rounds, log=""):
    home.mkdir(parents=True)
    lines = [{"event": "start", "member": member, "eval_loss": start_loss}]
    lines += [{"event": "round", **r} for r in rounds]
    (home / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (home / "peer.log").write_text(log)


def test_demo_summary_of_an_attack_names_the_attacker_and_says_it_was_caught(tmp_path):
    peers = [LocalPeer(i, tmp_path / f"peer-{i}", []) for i in range(2)]
    peers.append(LocalPeer(2, tmp_path / "peer-2", [], attack="nan"))
    assert peers[2].extra == ["--attack", "nan"]
    rejected = "rejected pseudo-gradient part from peer MALLORY: contains NaN or Inf\n"
    for i, p in enumerate(peers[:2]):
        rounds = [
            {"round": 1, "eval_loss": 5.0, "theta": "aa", "rejected": 1, "contributors": ["honest0", "MALLORY"]},
            {"round": 2, "eval_loss": 4.0, "theta": "bb", "rejected": 2, "contributors": ["honest0", "honest1"]},
        ]
        _write_peer(p.home, f"honest{i}", 5.5, rounds, log=rejected * 2)
    mallory_rounds = [{"round": 1, "eval_loss": 5.0, "theta": "aa"}, {"round": 2, "eval_loss": 4.0, "theta": "bb"}]
    _write_peer(peers[2].home, "MALLORY", 5.5, [*mallory_rounds, mallory_rounds[-1]])  # round 2 re-recorded
    s = summarize_attack(peers, "centered_clip")
    assert s["peer"] == "peer-2" and s["member"] == "MALLORY" and s["kind"] == "nan"
    assert s["reducer"] == "centered_clip" and (s["rounds"], s["rounds_counted"]) == (2, 1)
    assert (s["rejected_parts"], s["rejected_parts_naming_attacker"]) == (4, 4)
    assert (s["eval_loss_start"], s["eval_loss_end"]) == (5.5, 4.0)
    assert s["eval_loss_fell"] and s["theta_finite"] and s["honest_theta_identical"]
    assert s["honest_peers"] == ["peer-0", "peer-1"] and s["verdict"] == "caught"


def test_demo_summary_of_an_attack_that_got_through(tmp_path):
    peers = [LocalPeer(0, tmp_path / "peer-0", []), LocalPeer(1, tmp_path / "peer-1", [], attack="scale")]
    _write_peer(peers[0].home, "honest", 5.5, [{"round": 1, "eval_loss": math.nan, "theta": "aa", "rejected": 0}])
    _write_peer(peers[1].home, "MALLORY", 5.5, [{"round": 1, "eval_loss": math.nan, "theta": "aa"}])
    s = summarize_attack(peers, "mean")
    assert not s["eval_loss_fell"] and not s["theta_finite"] and s["verdict"] == "not contained"
