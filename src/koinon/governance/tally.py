"""The tally: a pure function of weights, direct votes and delegations, in integer arithmetic (docs/governance.md §3).

Nothing here reads the ledger; :mod:`koinon.governance.state` decides which votes and weights reach it (final
cuts, the window, membership at the opening cut). The tally vectors in tests/unit/vectors/tally.json exercise
this module alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import isqrt

CHOICES = ("yes", "no", "abstain")


def weight_of(rule: str, credit: int) -> int:
    """A member's voting weight under the charter's weight rule (``credit``: verified credit, an integer)."""
    if rule == "member":
        return 1
    if rule == "contribution":
        return max(0, credit)
    if rule == "quadratic":
        return isqrt(max(0, credit))
    raise ValueError(f"unknown weight rule {rule!r}")


@dataclass
class Tally:
    yes: int = 0
    no: int = 0
    abstain: int = 0
    total: int = 0  # the weight of every eligible member (the quorum's denominator)
    direct: dict[str, str] = field(default_factory=dict)  # member → its own vote
    delegated: dict[str, str] = field(default_factory=dict)  # member → the delegate whose vote counted for it

    @property
    def cast(self) -> int:
        return self.yes + self.no + self.abstain

    def to_dict(self) -> dict:
        return {"yes": self.yes, "no": self.no, "abstain": self.abstain, "total": self.total}


def resolve_delegate(member: str, direct: dict[str, str], delegations: dict[str, str]) -> str | None:
    """The first member along ``member``'s delegation chain who voted directly; None for a chain that ends
    without a voter or runs into a cycle."""
    seen = {member}
    current = delegations.get(member)
    while current is not None and current not in seen:
        if current in direct:
            return current
        seen.add(current)
        current = delegations.get(current)
    return None


def tally(
    weights: dict[str, int],
    direct: dict[str, str],
    delegations: dict[str, str],
    excluded: frozenset[str] | set[str] = frozenset(),
    total: int | None = None,
) -> Tally:
    """Sum of weights per option. ``weights``: eligible members → weight (≥ 0). ``direct``: votes (those of
    members not in ``weights`` are ignored). ``delegations``: member → delegate. A member who voted counts its own
    vote; otherwise its weight follows its delegation chain to the first member who voted. ``excluded`` members
    (expelled since the opening) weigh nothing, neither in the options nor in the total. ``total``: the sum of
    ``weights`` if the caller has it already.

    Work is proportional to the votes and delegations, not to the number of members."""
    if total is None:
        total = sum(weights.values())
    total -= sum(weights.get(m, 0) for m in excluded)
    t = Tally(total=total)
    direct = {m: c for m, c in direct.items() if m in weights and m not in excluded and c in CHOICES}
    t.direct = direct
    sums = {"yes": 0, "no": 0, "abstain": 0}
    for member, choice in direct.items():
        sums[choice] += weights[member]
    for member, first in delegations.items():
        if member in direct or member not in weights or member in excluded:
            continue
        # resolve_delegate's first step inline: most chains are one hop (to a voter, or to a member who delegates
        # to nobody), and 1,000 proposals × 1,000 delegations make this loop the tally's hot spot
        if first in direct:
            delegate = first
        elif first not in delegations:
            delegate = None
        else:
            delegate = resolve_delegate(member, direct, delegations)
        if delegate is not None:
            t.delegated[member] = delegate
            sums[direct[delegate]] += weights[member]
    t.yes, t.no, t.abstain = sums["yes"], sums["no"], sums["abstain"]
    return t


def quorum_met(t: Tally, quorum: tuple[int, int]) -> bool:
    """Votes cast (abstentions included) reach ``quorum`` of the total weight: cast·den ≥ num·total."""
    num, den = quorum
    return t.total > 0 and t.cast > 0 and t.cast * den >= num * t.total


def threshold_met(t: Tally, threshold: tuple[int, int]) -> bool:
    """yes ≥ threshold·(yes + no), and yes > no (a tie never passes; abstentions do not count here)."""
    num, den = threshold
    return t.yes > t.no and t.yes * den >= num * (t.yes + t.no)


def outcome(t: Tally, quorum: tuple[int, int], threshold: tuple[int, int]) -> tuple[str, str]:
    """("passed" | "rejected" | "expired", why) for a closed vote."""
    qn, qd = quorum
    if not quorum_met(t, quorum):
        return "expired", f"no quorum: {t.cast} of {t.total} weight voted, {qn}/{qd} needed"
    tn, td = threshold
    if threshold_met(t, threshold):
        return "passed", f"yes {t.yes} against no {t.no} reaches {tn}/{td} (quorum {t.cast} of {t.total})"
    return "rejected", f"yes {t.yes} against no {t.no} does not reach {tn}/{td} with more yes than no"
