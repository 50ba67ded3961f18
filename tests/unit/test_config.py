"""TrainingConfig validation and hash (src/koinon/config.py)."""

from __future__ import annotations

import dataclasses

import pytest

from koinon.config import TrainingConfig
from koinon.errors import ConfigError, KoinonError


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model_size", "huge"),
        ("model_size", ""),
        ("compression", "zip"),
        ("reducer", "krum"),
        ("reducer", ""),
        ("seq_len", 0),
        ("seq_len", -5),
        ("batch_size", 0),
        ("inner_steps", 0),
        ("inner_lr", 0.0),
        ("inner_lr", 1.0),
        ("inner_lr", -1e-3),
        ("inner_lr", float("nan")),
        ("inner_warmup", -1),
        ("inner_weight_decay", -0.1),
        ("inner_weight_decay", float("nan")),
        ("outer_lr", 0.0),
        ("outer_lr", 2.5),
        ("outer_lr", float("nan")),
        ("outer_momentum", 1.0),
        ("outer_momentum", -0.1),
    ],
)
def test_bad_values_raise_config_error_naming_the_field(field: str, value: object):
    with pytest.raises(ConfigError) as info:
        TrainingConfig(**{field: value})
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, KoinonError)
    assert field in str(info.value)
    with pytest.raises(ConfigError):  # replace() validates too
        TrainingConfig().replace(**{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seq_len", 1),
        ("outer_lr", 2.0),
        ("outer_momentum", 0.0),
        ("inner_warmup", 0),
        ("compression", "int8"),
        ("reducer", "mean"),
        ("reducer", "trimmed_mean"),
        ("reducer", "median"),
        ("model_size", "base"),
        ("inner_weight_decay", 0.0),
    ],
)
def test_boundary_values_are_accepted(field: str, value: object):
    assert getattr(TrainingConfig(**{field: value}), field) == value


def test_unknown_choice_message_lists_the_choices():
    with pytest.raises(ConfigError, match="tiny, small, base"):
        TrainingConfig(model_size="huge")
    with pytest.raises(ConfigError, match="fp16, int8, none"):
        TrainingConfig(compression="gzip")
    with pytest.raises(ConfigError, match="mean, trimmed_mean, median, centered_clip"):
        TrainingConfig(reducer="krum")


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainingConfig().seq_len = 64  # type: ignore[misc]


def test_config_hash_is_stable():
    a, b = TrainingConfig(), TrainingConfig()
    assert a.config_hash() == b.config_hash()
    assert len(a.config_hash()) == 64 and int(a.config_hash(), 16) >= 0
    assert a.canonical_json() == b.canonical_json()
    # field order in the JSON is sorted, so it does not depend on the dataclass declaration order
    assert a.canonical_json().startswith(b'{"batch_size":8,')


def test_config_hash_pins_the_default_configuration():
    """Peers running different versions must agree on the default's hash; changing it splits the swarm."""
    expected = (
        b'{"batch_size":8,"compression":"fp16","inner_lr":0.001,"inner_steps":50,"inner_warmup":20,'
        b'"inner_weight_decay":0.1,"model_size":"tiny","outer_lr":0.7,"outer_momentum":0.9,"penalty_rounds":5,'
        b'"reducer":"centered_clip","seed":0,"seq_len":128,"verify_permille":650,"verify_segments":16}'
    )
    assert TrainingConfig().canonical_json() == expected


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model_size", "small"),
        ("seq_len", 64),
        ("batch_size", 4),
        ("inner_steps", 10),
        ("inner_lr", 2e-3),
        ("inner_warmup", 0),
        ("inner_weight_decay", 0.0),
        ("outer_lr", 0.5),
        ("outer_momentum", 0.8),
        ("compression", "int8"),
        ("reducer", "median"),
        ("seed", 1),
        ("verify_permille", 100),
        ("verify_segments", 4),
        ("penalty_rounds", 2),
    ],
)
def test_config_hash_changes_when_any_field_changes(field: str, value: object):
    base = TrainingConfig()
    changed = base.replace(**{field: value})
    assert changed.config_hash() != base.config_hash()
    assert changed.replace(**{field: getattr(base, field)}).config_hash() == base.config_hash()


def test_every_field_is_covered_by_the_hash_test():
    covered = {
        "model_size",
        "seq_len",
        "batch_size",
        "inner_steps",
        "inner_lr",
        "inner_warmup",
        "inner_weight_decay",
        "outer_lr",
        "outer_momentum",
        "compression",
        "reducer",
        "seed",
        "verify_permille",
        "verify_segments",
        "penalty_rounds",
    }
    assert {f.name for f in dataclasses.fields(TrainingConfig)} == covered


def test_the_reducer_is_settable_by_governance():
    # set-config's settable keys are TrainingConfig's fields minus the frozen ones: reducer is one of them
    from koinon.errors import GovernanceError
    from koinon.governance.effects import MUTABLE_CONFIG, apply_config

    assert "reducer" in MUTABLE_CONFIG
    assert apply_config(TrainingConfig(), {"reducer": "median"}).reducer == "median"
    with pytest.raises(GovernanceError, match="reducer 'krum' is unknown"):
        apply_config(TrainingConfig(), {"reducer": "krum"})


def test_segment_bounds_cut_the_inner_steps_evenly():
    assert TrainingConfig(inner_steps=10, verify_segments=10).segment_bounds() == list(range(11))
    assert TrainingConfig(inner_steps=50, verify_segments=10).segment_bounds() == list(range(0, 51, 5))
    assert TrainingConfig(inner_steps=3, verify_segments=10).segment_bounds() == [0, 1, 2, 3]  # never empty segments
    assert TrainingConfig(inner_steps=7, verify_segments=2).segment_bounds() == [0, 3, 7]


@pytest.mark.parametrize(
    ("field", "value"), [("verify_permille", 1001), ("verify_segments", 0), ("penalty_rounds", -1)]
)
def test_bad_verification_settings_are_refused(field, value):
    with pytest.raises(ConfigError, match=field):
        TrainingConfig(**{field: value})
