"""The model, θ as a flat vector, and checkpoints (src/koinon/training/model.py, src/koinon/store/checkpoint.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from koinon.config import TrainingConfig
from koinon.errors import HashMismatch, StateError
from koinon.store.checkpoint import load_checkpoint, save_checkpoint
from koinon.training.model import VOCAB_SIZE, build_model, flat_parameters, load_flat_parameters, theta_hash

CONFIG = TrainingConfig(seq_len=32)


@pytest.fixture(scope="module")
def model():
    return build_model(CONFIG)


def test_same_seed_gives_identical_theta():
    a = flat_parameters(build_model(CONFIG))
    torch.manual_seed(999)  # the global RNG state must not matter
    torch.rand(10)
    b = flat_parameters(build_model(CONFIG))
    assert theta_hash(a) == theta_hash(b)
    assert torch.equal(a, b)


def test_different_seed_gives_different_theta():
    a = flat_parameters(build_model(CONFIG))
    b = flat_parameters(build_model(CONFIG.replace(seed=1)))
    assert theta_hash(a) != theta_hash(b)


def test_build_model_does_not_consume_the_global_rng():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    build_model(CONFIG)
    assert torch.equal(torch.rand(3), expected)


def test_model_shape(model):
    theta = flat_parameters(model)
    assert theta.dtype == torch.float32 and theta.dim() == 1
    assert 400_000 < theta.numel() < 520_000  # "tiny" ≈ 0.46 M parameters
    logits = model(input_ids=torch.randint(3, 259, (2, 32))).logits
    assert logits.shape == (2, 32, VOCAB_SIZE)


def test_flat_parameters_round_trip(model):
    theta = flat_parameters(model)
    new = torch.randn(theta.numel())
    load_flat_parameters(model, new)
    assert torch.equal(flat_parameters(model), new)
    assert theta_hash(flat_parameters(model)) == theta_hash(new)
    load_flat_parameters(model, theta)
    assert torch.equal(flat_parameters(model), theta)


def test_flat_parameters_is_a_copy(model):
    theta = flat_parameters(model)
    before = theta.clone()
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert torch.equal(theta, before)
    load_flat_parameters(model, before)


@pytest.mark.parametrize("delta", [-1, 1])
def test_load_flat_parameters_rejects_wrong_size(model, delta: int):
    theta = flat_parameters(model)
    with pytest.raises(ValueError, match="parameters"):
        load_flat_parameters(model, torch.zeros(theta.numel() + delta))
    assert torch.equal(flat_parameters(model), theta)  # nothing was half-loaded


def test_theta_hash_sees_every_bit():
    theta = torch.zeros(8)
    other = theta.clone()
    other[5] = torch.finfo(torch.float32).tiny  # one bit
    assert theta_hash(theta) != theta_hash(other)
    assert theta_hash(theta) != theta_hash(-theta)  # +0.0 vs −0.0 differ in bits


# --- checkpoints ---------------------------------------------------------------------------------------------------


def _trained_theta(model) -> torch.Tensor:
    theta = flat_parameters(model)
    return theta + 0.01 * torch.randn(theta.numel())


def test_save_then_load_into_a_fresh_model(tmp_path: Path, model):
    theta = _trained_theta(model)
    path = save_checkpoint(tmp_path, model, theta, 7, CONFIG)
    assert path.parent == tmp_path and path.name == theta_hash(theta)[:16] + ".safetensors"
    assert (tmp_path / "LATEST").read_text() == path.name + "\n"

    fresh = build_model(CONFIG.replace(seed=3))
    assert theta_hash(flat_parameters(fresh)) != theta_hash(theta)
    info = load_checkpoint(path, fresh)
    assert theta_hash(flat_parameters(fresh)) == theta_hash(theta) == info["theta_hash"]
    assert info["round"] == 7
    assert info["config"] == {**CONFIG.__dict__}
    # the lm head is tied to the embedding and follows it
    assert torch.equal(fresh.lm_head.weight, fresh.transformer.wte.weight)


def test_truncated_checkpoint_raises_state_error(tmp_path: Path, model):
    path = save_checkpoint(tmp_path, model, _trained_theta(model), 1, CONFIG)
    data = path.read_bytes()
    for keep in (len(data) // 2, 10, 0):
        path.write_bytes(data[:keep])
        with pytest.raises(StateError, match="truncated"):
            load_checkpoint(path, build_model(CONFIG))


def test_checkpoint_under_another_hash_name_raises_hash_mismatch(tmp_path: Path, model):
    path = save_checkpoint(tmp_path, model, _trained_theta(model), 1, CONFIG)
    renamed = path.with_name("0123456789abcdef.safetensors")
    path.rename(renamed)
    with pytest.raises(HashMismatch):
        load_checkpoint(renamed, build_model(CONFIG))


def test_missing_checkpoint_raises_state_error(tmp_path: Path):
    with pytest.raises(StateError):
        load_checkpoint(tmp_path / "nope.safetensors", build_model(CONFIG))


def test_stray_tmp_files_from_a_crash_do_not_affect_latest(tmp_path: Path, model):
    theta1 = _trained_theta(model)
    first = save_checkpoint(tmp_path, model, theta1, 1, CONFIG)

    # a crash in the middle of the next save leaves half-written temporary files behind
    theta2 = _trained_theta(model)
    second_name = theta_hash(theta2)[:16] + ".safetensors"
    (tmp_path / (second_name + ".tmp")).write_bytes(b"\x00garbage, half a file")
    (tmp_path / "LATEST.tmp").write_text("garbage")

    assert (tmp_path / "LATEST").read_text() == first.name + "\n"
    assert not (tmp_path / second_name).exists()
    assert load_checkpoint(first, build_model(CONFIG))["theta_hash"] == theta_hash(theta1)

    # the next save after the restart overwrites the leftovers and completes normally
    second = save_checkpoint(tmp_path, model, theta2, 2, CONFIG)
    assert second.name == second_name
    assert (tmp_path / "LATEST").read_text() == second_name + "\n"
    assert load_checkpoint(second, build_model(CONFIG))["theta_hash"] == theta_hash(theta2)
    assert load_checkpoint(first, build_model(CONFIG))["theta_hash"] == theta_hash(theta1)
    assert not list(tmp_path.glob("*.tmp"))


def test_checkpoint_of_another_model_size_raises_state_error(tmp_path: Path):
    small_config = CONFIG.replace(model_size="small")
    small = build_model(small_config)
    path = save_checkpoint(tmp_path, small, flat_parameters(small), 1, small_config)
    with pytest.raises(StateError, match="does not fit this model"):
        load_checkpoint(path, build_model(CONFIG))
