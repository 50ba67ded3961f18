"""Proposal actions and their effects: what each one changes, and the checks that refuse an effect that can't apply.

An effect is a CBOR map (integers and text only). ``check_effect`` runs at the CLI before a proposal is signed,
when a proposal enters the state (a bad one from the network is ignored with its reason), and again at execution
(another decision may have changed the state in between: the proposal then ends ``failed``, with the reason).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from koinon.config import TrainingConfig
from koinon.errors import ConfigError, GovernanceError
from koinon.governance.rules import parse_rules
from koinon.identity.keys import public_key_from_member_id

if TYPE_CHECKING:
    from koinon.governance.state import GovState

ACTIONS = (
    "set-config",
    "admit",
    "expel",
    "add-data",
    "remove-data",
    "release",
    "amend-charter",
    "resolution",
)
# the model's shape, its tokenisation window and θ₀ cannot change under a running swarm
FROZEN_CONFIG = ("model_size", "seq_len", "seed")
CONFIG_TYPES = {f.name: str(f.type) for f in dataclasses.fields(TrainingConfig)}
MUTABLE_CONFIG = tuple(k for k in CONFIG_TYPES if k not in FROZEN_CONFIG)
# fixed at genesis: the ledger's epoch length (cut bookkeeping depends on it) and the round protocol's minimum of
# contributors (every certificate on the ledger is judged by it: swarm/rounds.py)
FROZEN_RULES = ("epoch_ms", "min_contributors")


def _member(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise GovernanceError(f"{what} must be a member id (12D3KooW…), got {value!r}")
    try:
        public_key_from_member_id(value)
    except Exception:
        raise GovernanceError(f"{what} {value!r} is not a valid member id (12D3KooW…)") from None
    return value


def _hash(value: object, what: str) -> bytes:
    if not (isinstance(value, bytes) and len(value) == 32):
        raise GovernanceError(f"{what} must be a 32-byte hash")
    return value


def _text(value: object, what: str, limit: int, empty: bool = False) -> str:
    if not isinstance(value, str) or len(value) > limit or (not empty and not value.strip()):
        raise GovernanceError(f"{what} must be non-empty text of at most {limit} characters")
    return value


def _keys(effect: dict, *names: str) -> None:
    if set(effect) != set(names):
        raise GovernanceError(
            f"the effect needs exactly the field(s) {', '.join(names) or 'none'}; got {', '.join(map(str, effect)) or 'none'}"
        )


def config_value(key: str, value: object) -> object:
    """A set-config value as its config type: ints stay ints; floats are written as decimal text ("0.5") since
    the ledger has no floats, and parse the same on every machine."""
    if key not in CONFIG_TYPES:
        raise GovernanceError(f"unknown config key {key!r}; settable: {', '.join(MUTABLE_CONFIG)}")
    if key in FROZEN_CONFIG:
        raise GovernanceError(
            f"{key} cannot change in a running swarm (it defines the model); settable: {', '.join(MUTABLE_CONFIG)}"
        )
    kind = CONFIG_TYPES[key]
    if kind == "int":
        if type(value) is not int:
            raise GovernanceError(f"{key} must be an integer, got {value!r}")
        return value
    if kind == "float":
        if type(value) is int:
            return float(value)
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                f = math.nan
            if math.isfinite(f) and value.strip().lower() not in ("inf", "nan"):
                return f
        raise GovernanceError(f'{key} must be a decimal number (as text, e.g. "0.5"), got {value!r}')
    if not isinstance(value, str):
        raise GovernanceError(f"{key} must be text, got {value!r}")
    return value


def apply_config(config: TrainingConfig | None, changes: object) -> TrainingConfig:
    if config is None:
        raise GovernanceError("this swarm's charter has no training configuration to change")
    if not isinstance(changes, dict) or not changes:
        raise GovernanceError("set-config needs at least one change")
    converted = {str(k): config_value(str(k), v) for k, v in changes.items()}
    try:
        return config.replace(**converted)
    except ConfigError as e:
        raise GovernanceError(f"the new configuration is invalid: {e}") from None


def check_effect(action: str, effect: object, state: GovState) -> None:
    """Raise :class:`GovernanceError` if ``effect`` is malformed or can't apply to ``state``."""
    if action not in ACTIONS:
        raise GovernanceError(f"unknown proposal kind {action!r}; known: {', '.join(ACTIONS)}")
    if not isinstance(effect, dict):
        raise GovernanceError("a proposal's effect must be a map")
    if action == "set-config":
        _keys(effect, "changes")
        apply_config(state.config, effect["changes"])
    elif action == "admit":
        _keys(effect, "member")
        m = _member(effect["member"], "the member to admit")
        if m in state.members and m not in state.trust.penalised():  # a penalised member may be readmitted early
            raise GovernanceError(f"{m} is already a member")
        if m in state.banned:
            raise GovernanceError(f"{m} signed two different events with the same seq (equivocated) and is banned")
    elif action == "expel":
        _keys(effect, "member")
        m = _member(effect["member"], "the member to expel")
        if m not in state.members:
            raise GovernanceError(f"{m} is not a member")
    elif action == "add-data":
        _keys(effect, "source", "name")
        _hash(effect["source"], "the data source")
        _text(effect["name"], "the data source's name", 256)
    elif action == "remove-data":
        _keys(effect, "source")
        h = _hash(effect["source"], "the data source")
        if state.restricted_data and h.hex() not in state.data:
            raise GovernanceError(f"data source {h.hex()[:16]}… is not in force")
    elif action == "release":
        _keys(effect, "checkpoint", "tag", "license")
        _hash(effect["checkpoint"], "the checkpoint")
        tag = _text(effect["tag"], "the release tag", 64)
        _text(effect["license"], "the license", 128)
        if tag in state.releases:
            raise GovernanceError(f"release tag {tag!r} is already taken")
    elif action == "amend-charter":
        _keys(effect, "rules")
        if not isinstance(effect["rules"], dict) or not effect["rules"]:
            raise GovernanceError("amend-charter needs at least one rule to change")
        frozen = sorted(set(effect["rules"]) & set(FROZEN_RULES))
        if frozen:
            raise GovernanceError(f"rule(s) {', '.join(frozen)} cannot be amended (fixed at genesis)")
        parse_rules(effect["rules"], state.rules)
    elif action == "resolution":
        _keys(effect)


def apply_effect(action: str, effect: dict, state: GovState) -> str:
    """Change ``state`` (checked first); return a one-line description of what changed."""
    check_effect(action, effect, state)
    if action == "set-config":
        state.config = apply_config(state.config, effect["changes"])
        changes = ", ".join(f"{k}={v}" for k, v in sorted(effect["changes"].items()))
        return f"configuration {state.config.config_hash()[:12]}… in force ({changes})"
    if action == "admit":
        state.members.add(effect["member"])
        state.expelled.discard(effect["member"])
        if state.trust.readmit(effect["member"]):
            return f"{effect['member']} readmitted before the end of its penalty"
        return f"{effect['member']} admitted"
    if action == "expel":
        state.members.discard(effect["member"])
        state.expelled.add(effect["member"])
        return f"{effect['member']} expelled"
    if action == "add-data":
        state.data[effect["source"].hex()] = effect["name"]
        state.removed_data.discard(effect["source"].hex())
        return f"data source {effect['name']} ({effect['source'].hex()[:12]}…) added"
    if action == "remove-data":
        state.data.pop(effect["source"].hex(), None)
        state.removed_data.add(effect["source"].hex())
        return f"data source {effect['source'].hex()[:12]}… removed"
    if action == "release":
        state.releases[effect["tag"]] = {"checkpoint": effect["checkpoint"].hex(), "license": effect["license"]}
        return f"release {effect['tag']} = checkpoint {effect['checkpoint'].hex()[:12]}… ({effect['license']})"
    if action == "amend-charter":
        state.rules = parse_rules(effect["rules"], state.rules)
        return "rules amended: " + ", ".join(f"{k}={v}" for k, v in sorted(effect["rules"].items()))
    return "resolution recorded"
