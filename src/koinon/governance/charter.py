"""Charters: a TOML file → the body of a swarm's genesis event (docs/governance.md §1; example: src/koinon/governance/example_charter.toml).

The genesis event's id is the swarm id, so everything a charter says (founders, rules, the initial training
configuration and data sources) is fixed by that id; only executed proposals change the state after it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import tomllib

from koinon.config import TrainingConfig
from koinon.errors import ConfigError, GovernanceError
from koinon.governance.effects import _member
from koinon.governance.rules import Rules, parse_rules

EXAMPLE_CHARTER = Path(__file__).with_name("example_charter.toml")
CHARTER_KEYS = ("name", "founders", "rules", "training", "data")


def default_charter_text() -> str:
    """The example charter shipped with Koinon (the demo's and `koinon start`'s default)."""
    return EXAMPLE_CHARTER.read_text() if EXAMPLE_CHARTER.exists() else 'name = "koinon"\n'


def training_body(config: TrainingConfig, data: list[tuple[str, bytes]] | None = None) -> dict:
    body: dict = {"config": config.canonical_json().decode(), "hash": bytes.fromhex(config.config_hash())}
    if data is not None:
        body["data"] = [[name, h] for name, h in data]
    return body


def _data_sources(items: object, base: Path) -> list[tuple[str, bytes]]:
    from koinon.training.data import default_data_paths, source_hash

    if not isinstance(items, list):
        raise GovernanceError("[[data]] must be a list of tables with name and hash (or path)")
    out = []
    for item in items:
        if not isinstance(item, dict) or "name" not in item or len({"hash", "path"} & set(item)) != 1:
            raise GovernanceError('each [[data]] needs a name and either hash = "<64 hex>" or path = "DIR"')
        if "hash" in item:
            try:
                h = bytes.fromhex(str(item["hash"]))
            except ValueError:
                h = b""
            if len(h) != 32:
                raise GovernanceError(f"data source {item['name']!r}: hash must be 64 hex digits")
        elif item["path"] == "stdlib":
            h = bytes.fromhex(source_hash(default_data_paths()[0], suffixes=(".py",)))
        else:
            h = bytes.fromhex(source_hash((base / str(item["path"])).expanduser()))
        out.append((str(item["name"]), h))
    return out


def charter_from_toml(text: str, me: str, base: Path = Path("."), name: str | None = None) -> dict:
    """Parse and check a charter; return the charter event body. ``me`` (the founder running ``koinon init``)
    is always a founder; ``name`` overrides the file's name."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise GovernanceError(f"the charter is not valid TOML: {e}") from None
    unknown = sorted(set(raw) - set(CHARTER_KEYS))
    if unknown:
        raise GovernanceError(f"unknown charter key(s) {', '.join(unknown)}; known: {', '.join(CHARTER_KEYS)}")
    swarm_name = name or raw.get("name") or "koinon"
    if not isinstance(swarm_name, str) or not 0 < len(swarm_name) <= 128:
        raise GovernanceError("the charter's name must be text of 1 to 128 characters")
    founders = raw.get("founders", [])
    if not isinstance(founders, list):
        raise GovernanceError("founders must be a list of member ids")
    founders = sorted({_member(f, "founder") for f in founders} | {me})
    rules = parse_rules(raw.get("rules", {}))
    training = raw.get("training", {})
    if not isinstance(training, dict):
        raise GovernanceError("[training] must be a table of configuration values")
    known = {f.name for f in dataclasses.fields(TrainingConfig)}
    bad = sorted(set(training) - known)
    if bad:
        raise GovernanceError(f"unknown training key(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
    try:
        config = TrainingConfig(**training)
    except ConfigError as e:
        raise GovernanceError(f"[training]: {e}") from None
    data = _data_sources(raw["data"], base) if "data" in raw else None
    return {
        "name": swarm_name,
        "founders": founders,
        "training": training_body(config, data),
        "rules": rules.to_body(),
    }


def load_charter(path: Path | str, me: str, name: str | None = None) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise GovernanceError(f"cannot read charter {path}: {e.strerror}") from None
    return charter_from_toml(text, me, base=path.parent, name=name)


def describe_rules(rules: Rules) -> list[str]:
    """Human-readable lines, with the wall-clock estimate of cut counts."""

    def cuts(n: int) -> str:
        return (
            f"{n} cut{'s' if n != 1 else ''} (≈ {rules.estimate_s(n):.0f} s at one cut per {rules.epoch_ms} ms epoch)"
        )

    return [
        f"admission: {rules.admission}",
        f"weight: {rules.weight}",
        f"quorum: {rules.quorum[0]}/{rules.quorum[1]} of the total weight must vote (abstentions count)",
        f"threshold: yes ≥ {rules.threshold[0]}/{rules.threshold[1]} of yes+no, and more yes than no",
        f"amend-charter threshold: {rules.amend_threshold[0]}/{rules.amend_threshold[1]}",
        f"delay before voting opens: {cuts(rules.delay)}",
        f"voting window: {cuts(rules.window)}",
        f"timelock: {cuts(rules.timelock)}",
    ]


def charter_summary(body: dict) -> dict:
    """A JSON-friendly view of a charter body (bytes as hex)."""

    def plain(v):
        if isinstance(v, bytes):
            return v.hex()
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    out = plain(body)
    training = out.get("training")
    if isinstance(training, dict) and isinstance(training.get("config"), str):
        try:
            training["config"] = json.loads(training["config"])
        except ValueError:
            pass
    return out
