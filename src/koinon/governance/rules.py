"""The charter's governance rules: who weighs what, and how many cuts a vote takes (docs/governance.md §1).

Rules live in the charter body's ``rules`` map (canonical CBOR: integers, text, arrays; fractions are
``[numerator, denominator]``). Missing rules take the defaults below, so an older or minimal charter still has one
meaning. :func:`parse_rules` is strict (``koinon init`` and ``amend-charter`` proposals use it, so a bad rule is a
clear error before it reaches the ledger); :func:`rules_or_defaults` is what a peer uses on a charter that is
already the swarm's genesis: a bad value there falls back to its default, with the reason kept.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from koinon.errors import GovernanceError

WEIGHT_RULES = ("member", "contribution", "quadratic")
ADMISSIONS = ("open", "vote")


@dataclass(frozen=True)
class Rules:
    epoch_ms: int = 2000  # ledger cut epochs (the ledger's own rule, kept here so a charter states it once)
    admission: str = "open"  # open: a `join` makes a member; vote: only an executed `admit` proposal does
    weight: str = "member"  # member: one member one vote; contribution: verified credit; quadratic: isqrt(credit)
    quorum: tuple[int, int] = (1, 3)  # votes cast (yes + no + abstain) ≥ quorum × the total weight at opening
    threshold: tuple[int, int] = (1, 2)  # passes if yes ≥ threshold × (yes + no) and yes > no
    amend_threshold: tuple[int, int] = (2, 3)  # the same, for amend-charter proposals
    delay: int = 1  # cuts from the cut that includes a proposal to the cut that opens it (cancel before)
    window: int = 10  # cuts during which votes count
    timelock: int = 2  # cuts from the close to execution
    # the round protocol (swarm/rounds.py): a round's result becomes the swarm's θ only if at least this many members
    # contributed to it (and a strict majority of the last certified round's contributors signed it); fixed at
    # genesis like epoch_ms, since every certificate on the ledger is judged by it
    min_contributors: int = 3

    def to_body(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def estimate_s(self, cuts: int) -> float:
        """Wall-clock estimate of ``cuts`` cuts: one per epoch at best (finality adds about two epochs)."""
        return cuts * self.epoch_ms / 1000


RULE_NAMES = tuple(f.name for f in fields(Rules))
FRACTIONS = ("quorum", "threshold", "amend_threshold")


def _fraction(name: str, value: object) -> tuple[int, int]:
    if isinstance(value, str) and "/" in value:  # TOML convenience: "2/3"
        try:
            num, den = (int(x) for x in value.split("/", 1))
        except ValueError:
            raise GovernanceError(f'rule {name} must be a fraction like "2/3", got {value!r}') from None
    elif isinstance(value, (list, tuple)) and len(value) == 2 and all(type(x) is int for x in value):
        num, den = value
    else:
        raise GovernanceError(f'rule {name} must be a fraction like "2/3" or [2, 3], got {value!r}')
    if not (den > 0 and 0 <= num <= den):
        raise GovernanceError(f"rule {name} must be a fraction between 0 and 1, got {num}/{den}")
    return num, den


def _check(name: str, value: object) -> object:
    if name in FRACTIONS:
        return _fraction(name, value)
    if name == "admission":
        if value not in ADMISSIONS:
            raise GovernanceError(f"rule admission must be one of {', '.join(ADMISSIONS)}, got {value!r}")
        return value
    if name == "weight":
        if value not in WEIGHT_RULES:
            raise GovernanceError(f"rule weight must be one of {', '.join(WEIGHT_RULES)}, got {value!r}")
        return value
    if type(value) is not int:
        raise GovernanceError(f"rule {name} must be an integer, got {value!r}")
    low = {"epoch_ms": 100, "window": 1, "delay": 1, "timelock": 0, "min_contributors": 1}[name]
    if not low <= value <= 1_000_000_000:
        raise GovernanceError(f"rule {name} must be at least {low}, got {value}")
    return value


def parse_rules(raw: dict, base: Rules | None = None) -> Rules:
    """Rules from a map (TOML table or charter body), on top of ``base`` (defaults); unknown names are errors."""
    if not isinstance(raw, dict):
        raise GovernanceError("the charter's rules must be a table")
    unknown = sorted(set(raw) - set(RULE_NAMES))
    if unknown:
        raise GovernanceError(f"unknown charter rule(s) {', '.join(map(str, unknown))}; known: {', '.join(RULE_NAMES)}")
    return replace(base or Rules(), **{k: _check(k, v) for k, v in raw.items()})


def rules_or_defaults(raw: object) -> tuple[Rules, list[str]]:
    """Lenient parse for a charter already on the ledger: each bad or unknown rule is skipped with its reason."""
    rules, problems = Rules(), []
    if not isinstance(raw, dict):
        return rules, ["rules are not a map; using the defaults"]
    for k, v in sorted(raw.items(), key=lambda kv: str(kv[0])):
        try:
            rules = parse_rules({k: v}, rules)
        except GovernanceError as e:
            problems.append(f"{e}; using the default")
    return rules, problems
