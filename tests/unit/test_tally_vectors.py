"""Hand-computed known answers for the tally (tests/unit/vectors/tally.json, made by make_tally_vectors.py).

Every peer decides every proposal from the same integers, so ``weight_of``, ``tally``, ``quorum_met``,
``threshold_met`` and ``outcome`` must give exactly these answers here, after a refactor and in another
implementation. Each case is recomputed from its inputs; the expectations were worked out by hand (the reasoning is
in the generator), never by running this code.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from koinon.governance.rules import WEIGHT_RULES
from koinon.governance.tally import outcome, quorum_met, tally, threshold_met, weight_of

VECTORS = json.loads((Path(__file__).parent / "vectors" / "tally.json").read_text())
CASES = VECTORS["cases"]


def weights_of(case: dict) -> dict[str, int]:
    """The members' weights from their credit under the case's rule, checked against the expected weights."""
    weights = {m: weight_of(case["rule"], v["credit"]) for m, v in case["members"].items()}
    expected = {m: v["weight"] for m, v in case["members"].items()}
    assert weights == expected, f"{case['name']}: weight_of({case['rule']!r}, credit) gave {weights}"
    return weights


def check(case: dict) -> None:
    """Recompute ``case`` and compare every expected value (raises AssertionError naming the case)."""
    t = tally(weights_of(case), case["votes"], case["delegations"], excluded=set(case["excluded"]))
    quorum, threshold = tuple(case["quorum"]), tuple(case["threshold"])
    got = {
        **t.to_dict(),
        "delegated": t.delegated,
        "quorum_met": quorum_met(t, quorum),
        "threshold_met": threshold_met(t, threshold),
        "outcome": outcome(t, quorum, threshold)[0],
    }
    assert got == case["expect"], f"{case['name']} ({case['why']})"
    assert t.cast == t.yes + t.no + t.abstain


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_tally_vector(case):
    check(case)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_input_order_does_not_matter(case):
    """The tally is a function of the maps, not of the order their entries arrived in (peers build them from logs
    that agree on content; this pins that no iteration order leaks into the sums or the delegations)."""
    rng = random.Random(case["name"])
    for _ in range(3):
        shuffled = dict(case)
        for key in ("members", "votes", "delegations"):
            items = list(case[key].items())
            rng.shuffle(items)
            shuffled[key] = dict(items)
        shuffled["excluded"] = rng.sample(case["excluded"], len(case["excluded"]))
        check(shuffled)


def test_a_wrong_answer_is_caught():
    """The check can fail: one unit off in any expected field is an AssertionError."""
    case = CASES[0]
    for key, wrong in [("yes", case["expect"]["yes"] + 1), ("total", 0), ("outcome", "rejected")]:
        with pytest.raises(AssertionError):
            check({**case, "expect": {**case["expect"], key: wrong}})
    with pytest.raises(AssertionError):
        check({**case, "members": {**case["members"], "A": {"credit": 0, "weight": 2}}})


def test_the_file_covers_what_it_claims():
    assert {c["rule"] for c in CASES} == set(WEIGHT_RULES)
    assert {c["expect"]["outcome"] for c in CASES} == {"passed", "rejected", "expired"}
    names = " | ".join(c["name"] for c in CASES)
    for needle in (
        "threshold 2/3 met exactly",
        "tie",
        "thanks to abstentions",
        "A→B→C where only C voted",
        "cycle A→B→A, nobody in it voted",
        "a delegator who voted overrides",
        "expelled",
        "total 0",
        "non-member",
    ):
        assert needle in names, f"no tally vector for {needle!r}"
    assert any(c["excluded"] for c in CASES) and any(c["expect"]["delegated"] for c in CASES)
    assert any(c["expect"]["total"] == 0 for c in CASES)
