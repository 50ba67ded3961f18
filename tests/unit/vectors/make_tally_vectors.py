"""Regenerate ``tally.json``, the known answers of src/koinon/governance/tally.py (``weight_of``, ``tally``,
``quorum_met``, ``threshold_met``, ``outcome``).

    .venv/bin/python tests/unit/vectors/make_tally_vectors.py

Every expected number below was worked out by hand from the rules (docs/governance.md §3), with the reasoning in
a comment above its case, and is written here literally: this script never calls the code it pins, so a change of
the tally cannot regenerate its own approval. tests/unit/test_tally_vectors.py recomputes every case from its
inputs and compares. Change an answer only when the rule itself changes (and say so in the review).

The rules, in integers:

- weight: ``member`` 1 each; ``contribution`` the verified credit (negative: 0); ``quadratic`` isqrt(credit);
- a member who voted counts its own vote; otherwise its weight follows its delegation chain to the first member
  who voted; a chain that ends without a voter, leaves the members or runs into a cycle counts nothing;
- votes and delegations of non-members count nothing; excluded (expelled) members weigh nothing, neither in the
  options nor in the total;
- quorum: (yes + no + abstain)·den ≥ num·total, with total > 0 and at least one weighted vote;
- threshold: yes·den ≥ num·(yes + no) and yes > no (abstentions do not count here; a tie never passes);
- outcome: no quorum → expired; else threshold → passed; else rejected.

Which vote is the one that counts (the last one, inside the window, in a final cut) is the state's business, not
the tally's: replaced votes and late or early votes are covered by tests/unit/test_governance_state.py.

Case fields: ``rule``, ``quorum`` and ``threshold`` as [num, den]; ``members`` {name: {credit, weight}} (weight:
the expected ``weight_of(rule, credit)``); ``votes`` {voter: choice} (voters may be non-members); ``delegations``
{delegator: delegate}; ``excluded`` [name]; ``expect`` {yes, no, abstain, total, delegated {delegator: the voter
whose choice it took}, quorum_met, threshold_met, outcome}.
"""

from __future__ import annotations

import json
from pathlib import Path

Q3 = [1, 3]  # the default quorum
HALF = [1, 2]  # the default threshold


def ones(*names: str) -> dict:
    """Members under the ``member`` rule: no credit, weight 1 each."""
    return {n: {"credit": 0, "weight": 1} for n in names}


def case(name, why, members, votes, expect, rule="member", quorum=Q3, threshold=HALF, delegations=None, excluded=()):
    return {
        "name": name,
        "why": why,
        "rule": rule,
        "quorum": quorum,
        "threshold": threshold,
        "members": members,
        "votes": votes,
        "delegations": delegations or {},
        "excluded": list(excluded),
        "expect": {"delegated": {}, **expect},
    }


def result(yes, no, abstain, total, quorum_met, threshold_met, outcome, delegated=None) -> dict:
    out = {"yes": yes, "no": no, "abstain": abstain, "total": total}
    out |= {"quorum_met": quorum_met, "threshold_met": threshold_met, "outcome": outcome}
    return out | ({"delegated": delegated} if delegated else {})


CASES = [
    # 4 members, 3 vote. yes 2, no 1, total 4. Quorum 1/3: 3·3 = 9 ≥ 1·4. Threshold 1/2: 2 > 1 and 2·2 = 4 ≥ 1·3.
    case(
        "member: simple majority passes",
        "2 yes, 1 no of 4: quorum 9 ≥ 4, threshold 4 ≥ 3",
        ones("A", "B", "C", "D"),
        {"A": "yes", "B": "yes", "C": "no"},
        result(2, 1, 0, 4, True, True, "passed"),
    ),
    # Threshold 2/3 exactly met: yes·3 = 6 ≥ 2·(2 + 1) = 6, and 2 > 1. Quorum: 3·3 ≥ 3.
    case(
        "threshold 2/3 met exactly (2 yes, 1 no)",
        "6 ≥ 6 and 2 > 1",
        ones("A", "B", "C"),
        {"A": "yes", "B": "yes", "C": "no"},
        result(2, 1, 0, 3, True, True, "passed"),
        threshold=[2, 3],
    ),
    # 3 yes, 2 no is 60%: 3·3 = 9 < 2·5 = 10. Quorum 5·3 = 15 ≥ 5 holds, so rejected (not expired).
    case(
        "threshold 2/3 just missed (3 yes, 2 no)",
        "9 < 10",
        ones("A", "B", "C", "D", "E"),
        {"A": "yes", "B": "yes", "C": "yes", "D": "no", "E": "no"},
        result(3, 2, 0, 5, True, False, "rejected"),
        threshold=[2, 3],
    ),
    # A tie at 1/2: 1·2 = 2 ≥ 1·2 = 2 holds, but yes > no does not. Quorum 2·3 ≥ 2.
    case(
        "threshold 1/2 tie fails",
        "1 yes, 1 no: the fraction is met but yes is not more than no",
        ones("A", "B"),
        {"A": "yes", "B": "no"},
        result(1, 1, 0, 2, True, False, "rejected"),
    ),
    # Threshold 0/1: yes·1 ≥ 0 always holds; the tie still fails yes > no. Quorum 2·3 = 6 ≥ 4.
    case(
        "threshold 0/1 still needs more yes than no",
        "1 yes, 1 no of 4",
        ones("A", "B", "C", "D"),
        {"A": "yes", "B": "no"},
        result(1, 1, 0, 4, True, False, "rejected"),
        threshold=[0, 1],
    ),
    # Threshold 1/1: yes·1 = 2 ≥ 1·(2 + 0) = 2; the abstention is not in yes + no. Quorum 3·3 ≥ 3.
    case(
        "threshold 1/1: abstentions do not break unanimity",
        "2 yes, 0 no, 1 abstain",
        ones("A", "B", "C"),
        {"A": "yes", "B": "yes", "C": "abstain"},
        result(2, 0, 1, 3, True, True, "passed"),
        threshold=[1, 1],
    ),
    # Quorum 1/2 of 6: cast = 1 yes + 2 abstain = 3, 3·2 = 6 ≥ 1·6 (exactly). Threshold: 1 > 0, 1·2 ≥ 1·1.
    case(
        "quorum reached only thanks to abstentions",
        "1 yes + 2 abstain of 6 at quorum 1/2: 6 ≥ 6",
        ones("A", "B", "C", "D", "E", "F"),
        {"A": "yes", "B": "abstain", "C": "abstain"},
        result(1, 0, 2, 6, True, True, "passed"),
        quorum=[1, 2],
    ),
    # The same vote without the two abstentions: cast 1, 1·2 = 2 < 6: expired (the threshold alone would hold).
    case(
        "the same without the abstentions: no quorum",
        "1 yes of 6 at quorum 1/2: 2 < 6",
        ones("A", "B", "C", "D", "E", "F"),
        {"A": "yes"},
        result(1, 0, 0, 6, False, True, "expired"),
        quorum=[1, 2],
    ),
    # 4 of 10 vote at quorum 1/3: 4·3 = 12 ≥ 10. 3 yes, 1 no: 3 > 1, 6 ≥ 4.
    case(
        "quorum 1/3 met (4 of 10)",
        "12 ≥ 10",
        ones(*"ABCDEFGHIJ"),
        {"A": "yes", "B": "yes", "C": "yes", "D": "no"},
        result(3, 1, 0, 10, True, True, "passed"),
    ),
    # 3 of 10 at quorum 1/3: 3·3 = 9 < 10. All three say yes, yet no quorum comes first: expired.
    case(
        "quorum 1/3 just missed (3 of 10)",
        "9 < 10: expired even though every vote is yes",
        ones(*"ABCDEFGHIJ"),
        {"A": "yes", "B": "yes", "C": "yes"},
        result(3, 0, 0, 10, False, True, "expired"),
    ),
    # Quorum 1/1: everyone must vote; 2 of 3 did: 2·1 < 1·3.
    case(
        "quorum 1/1 needs every member",
        "2 < 3",
        ones("A", "B", "C"),
        {"A": "yes", "B": "yes"},
        result(2, 0, 0, 3, False, True, "expired"),
        quorum=[1, 1],
    ),
    # Everyone abstains: quorum 3·3 ≥ 3 holds; yes 0 is not more than no 0: rejected.
    case(
        "only abstentions: quorum, but rejected",
        "0 yes, 0 no, 3 abstain",
        ones("A", "B", "C"),
        {"A": "abstain", "B": "abstain", "C": "abstain"},
        result(0, 0, 3, 3, True, False, "rejected"),
    ),
    # A→B→C, only C voted (yes): A and B reach C, so yes = A + B + C = 3; D no. Total 5, cast 4: 12 ≥ 5;
    # 3 > 1, 6 ≥ 4.
    case(
        "delegation chain A→B→C where only C voted",
        "A and B take C's yes",
        ones("A", "B", "C", "D", "E"),
        {"C": "yes", "D": "no"},
        result(3, 1, 0, 5, True, True, "passed", delegated={"A": "C", "B": "C"}),
        delegations={"A": "B", "B": "C"},
    ),
    # A→B→C, B voted no and C yes: A stops at B, the first member on its chain who voted; B's own delegation is
    # moot since B voted. yes = C = 1, no = B + A = 2. Quorum 3·3 ≥ 4. 1 > 2 fails: rejected.
    case(
        "the first voter on the chain counts",
        "A→B→C with B no, C yes: A takes B's no",
        ones("A", "B", "C", "D"),
        {"B": "no", "C": "yes"},
        result(1, 2, 0, 4, True, False, "rejected", delegated={"A": "B"}),
        delegations={"A": "B", "B": "C"},
    ),
    # A→B→C→D→E, only E voted yes; F no. yes = 5, no = 1, total 6, cast 6.
    case(
        "a long chain reaches its only voter",
        "A, B, C, D all take E's yes",
        ones("A", "B", "C", "D", "E", "F"),
        {"E": "yes", "F": "no"},
        result(5, 1, 0, 6, True, True, "passed", delegated={"A": "E", "B": "E", "C": "E", "D": "E"}),
        delegations={"A": "B", "B": "C", "C": "D", "D": "E"},
    ),
    # A→B→A, neither voted: the cycle counts nothing. C yes: yes 1 of 3; quorum 1/2: 1·2 = 2 < 3: expired.
    case(
        "cycle A→B→A, nobody in it voted",
        "A and B count nothing: 1 of 3 cast, 2 < 3",
        ones("A", "B", "C"),
        {"C": "yes"},
        result(1, 0, 0, 3, False, True, "expired"),
        quorum=[1, 2],
        delegations={"A": "B", "B": "A"},
    ),
    # A→B→C→B: A's chain enters a B↔C cycle without a voter: nothing. D yes: cast 1 of 4, 1·3 = 3 < 4: expired.
    case(
        "a chain into a cycle without a voter",
        "A→B→C→B: A, B, C count nothing; 3 < 4",
        ones("A", "B", "C", "D"),
        {"D": "yes"},
        result(1, 0, 0, 4, False, True, "expired"),
        delegations={"A": "B", "B": "C", "C": "B"},
    ),
    # A→B→A but B voted no: A reaches B (voted) and takes its no. C yes. yes 1, no 2: rejected.
    case(
        "cycle with a voter in it",
        "A→B→A, B no: A takes B's no",
        ones("A", "B", "C"),
        {"B": "no", "C": "yes"},
        result(1, 2, 0, 3, True, False, "rejected", delegated={"A": "B"}),
        delegations={"A": "B", "B": "A"},
    ),
    # A→A is a cycle of one: nothing. B yes; quorum 1/2: 1·2 = 2 ≥ 1·2: met. 1 > 0: passed.
    case(
        "self-delegation counts nothing",
        "A→A: A's weight is not cast; B's yes alone meets quorum 1/2 of 2",
        ones("A", "B"),
        {"B": "yes"},
        result(1, 0, 0, 2, True, True, "passed"),
        quorum=[1, 2],
        delegations={"A": "A"},
    ),
    # A→B, but A voted no itself: A's own vote counts, not B's yes. C abstains. yes 1, no 1: tie, rejected.
    case(
        "a delegator who voted overrides its delegate",
        "A→B, A no, B yes: 1 yes, 1 no",
        ones("A", "B", "C"),
        {"A": "no", "B": "yes", "C": "abstain"},
        result(1, 1, 1, 3, True, False, "rejected"),
        delegations={"A": "B"},
    ),
    # A→X where X is not a member: X's yes counts nothing, so A's chain has no voter. B no: yes 0, no 1 of 3;
    # quorum 1·3 = 3 ≥ 3; 0 > 1 fails: rejected.
    case(
        "a delegation to a non-member counts nothing",
        "A→X, X (outsider) yes, B no",
        ones("A", "B", "C"),
        {"X": "yes", "B": "no"},
        result(0, 1, 0, 3, True, False, "rejected"),
        delegations={"A": "X"},
    ),
    # X, Y, Z are not members: their three no votes weigh nothing. A yes: 1 of 3, 3 ≥ 3; 1 > 0: passed.
    case(
        "votes of non-members are ignored",
        "three outsiders vote no; one member yes",
        ones("A", "B", "C"),
        {"A": "yes", "X": "no", "Y": "no", "Z": "no"},
        result(1, 0, 0, 3, True, True, "passed"),
    ),
    # A expelled since the opening: its yes and its weight are out (total 5 - 1 = 4), and D→A finds no voter
    # (A's vote is gone and A delegates to nobody). B yes, C no: tie, rejected. Counting A would give yes 3 (A, B,
    # D) against 1: passed.
    case(
        "an expelled member's vote stops counting",
        "A excluded: its yes, its weight and D's delegation to it are out",
        ones("A", "B", "C", "D", "E"),
        {"A": "yes", "B": "yes", "C": "no"},
        result(1, 1, 0, 4, True, False, "rejected"),
        delegations={"D": "A"},
        excluded=["A"],
    ),
    # B excluded, A→B→C: B's yes is gone, so A's chain goes on to C (no). D yes. yes 1, no 2, total 3: rejected.
    case(
        "a chain passes through an expelled delegate",
        "A→B→C with B excluded: A takes C's no",
        ones("A", "B", "C", "D"),
        {"B": "yes", "C": "no", "D": "yes"},
        result(1, 2, 0, 3, True, False, "rejected", delegated={"A": "C"}),
        delegations={"A": "B", "B": "C"},
        excluded=["B"],
    ),
    # A excluded and delegating to B: A weighs nothing, so B's yes counts once. C no: tie of 1 of total 2.
    case(
        "an expelled delegator carries no weight",
        "A→B with A excluded: 1 yes, 1 no",
        ones("A", "B", "C"),
        {"B": "yes", "C": "no"},
        result(1, 1, 0, 2, True, False, "rejected"),
        delegations={"A": "B"},
        excluded=["A"],
    ),
    # Nobody has weight (no members at all): total 0, never a quorum; 0 yes is not more than 0 no: expired.
    case(
        "total 0: no members",
        "an outsider's yes, total 0",
        {},
        {"X": "yes"},
        result(0, 0, 0, 0, False, False, "expired"),
    ),
    # Delegated abstentions count toward the quorum: A and C take B's abstain; D yes. cast 4 of 6 at quorum 1/2:
    # 8 ≥ 6. 1 > 0: passed.
    case(
        "delegated abstentions help the quorum",
        "A→B, C→B, B abstains: cast 4 of 6",
        ones("A", "B", "C", "D", "E", "F"),
        {"B": "abstain", "D": "yes"},
        result(1, 0, 3, 6, True, True, "passed", delegated={"A": "B", "C": "B"}),
        quorum=[1, 2],
        delegations={"A": "B", "C": "B"},
    ),
    # The member rule ignores credit: weights 1, 1, 1 whatever the credit. A no, B yes, C yes: 2 > 1.
    case(
        "member rule: credit does not matter",
        "A has credit 1000 and still weighs 1",
        {"A": {"credit": 1000, "weight": 1}, "B": {"credit": 0, "weight": 1}, "C": {"credit": 5, "weight": 1}},
        {"A": "no", "B": "yes", "C": "yes"},
        result(2, 1, 0, 3, True, True, "passed"),
    ),
    # Contribution: weight = credit. A 100 no; B 30, C 50, D 0 yes: yes 80 < no 100. Total 180, all cast.
    case(
        "contribution: credit decides",
        "yes 30 + 50 + 0 = 80 against no 100",
        {
            "A": {"credit": 100, "weight": 100},
            "B": {"credit": 30, "weight": 30},
            "C": {"credit": 50, "weight": 50},
            "D": {"credit": 0, "weight": 0},
        },
        {"A": "no", "B": "yes", "C": "yes", "D": "yes"},
        result(80, 100, 0, 180, True, False, "rejected"),
        rule="contribution",
    ),
    # The same credits, quadratic: isqrt(100) = 10, isqrt(30) = 5 (25 ≤ 30 < 36), isqrt(50) = 7 (49 ≤ 50 < 64),
    # isqrt(0) = 0. yes 5 + 7 = 12 against no 10; total 22. 12 > 10 and 12·2 = 24 ≥ 22: passed.
    case(
        "quadratic: the same credits, the other outcome",
        "yes 5 + 7 = 12 against no 10",
        {
            "A": {"credit": 100, "weight": 10},
            "B": {"credit": 30, "weight": 5},
            "C": {"credit": 50, "weight": 7},
            "D": {"credit": 0, "weight": 0},
        },
        {"A": "no", "B": "yes", "C": "yes", "D": "yes"},
        result(12, 10, 0, 22, True, True, "passed"),
        rule="quadratic",
    ),
    # isqrt at squares and their neighbours: 1→1, 3→1, 4→2, 8→2, 9→3, 10¹²→10⁶, 10¹²−1→999 999, −5→0.
    # F (10⁶) no; everyone else yes: yes 1+1+2+2+3+999 999+0 = 1 000 008, no 1 000 000, total 2 000 008.
    # 1 000 008·2 = 2 000 016 ≥ 2 000 008: passed.
    case(
        "quadratic: perfect squares, their neighbours, big and negative credit",
        "isqrt floors; negative credit weighs 0",
        {
            "A": {"credit": 1, "weight": 1},
            "B": {"credit": 3, "weight": 1},
            "C": {"credit": 4, "weight": 2},
            "D": {"credit": 8, "weight": 2},
            "E": {"credit": 9, "weight": 3},
            "F": {"credit": 10**12, "weight": 10**6},
            "G": {"credit": 10**12 - 1, "weight": 999_999},
            "H": {"credit": -5, "weight": 0},
        },
        {"A": "yes", "B": "yes", "C": "yes", "D": "yes", "E": "yes", "F": "no", "G": "yes", "H": "yes"},
        result(1_000_008, 1_000_000, 0, 2_000_008, True, True, "passed"),
        rule="quadratic",
    ),
    # Contribution with a delegation: A (60) → B (10, yes); C (40) no. yes 70 against 40, total 110.
    case(
        "contribution: a delegation carries the delegator's credit",
        "A's 60 follow B's yes: 70 against 40",
        {
            "A": {"credit": 60, "weight": 60},
            "B": {"credit": 10, "weight": 10},
            "C": {"credit": 40, "weight": 40},
        },
        {"B": "yes", "C": "no"},
        result(70, 40, 0, 110, True, True, "passed", delegated={"A": "B"}),
        rule="contribution",
        delegations={"A": "B"},
    ),
    # Contribution with no verified credit (0, and a negative one clamped to 0): total 0, nobody's vote weighs
    # anything; never a quorum: expired.
    case(
        "total 0: contribution without credit",
        "every weight is 0",
        {"A": {"credit": 0, "weight": 0}, "B": {"credit": -7, "weight": 0}},
        {"A": "yes", "B": "yes"},
        result(0, 0, 0, 0, False, False, "expired"),
        rule="contribution",
    ),
]


def vectors() -> dict:
    names = [c["name"] for c in CASES]
    assert len(set(names)) == len(names), "case names must be unique (they are the test ids)"
    fields = {"yes", "no", "abstain", "total", "delegated", "quorum_met", "threshold_met", "outcome"}
    for c in CASES:
        assert set(c["expect"]) == fields, c["name"]
    return {
        "about": "Known answers for koinon.governance.tally, worked out by hand; made by make_tally_vectors.py",
        "cases": CASES,
    }


if __name__ == "__main__":
    out = Path(__file__).with_name("tally.json")
    out.write_text(json.dumps(vectors(), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {out}")
