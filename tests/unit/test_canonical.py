"""choose_canonical: the group's pre-round state (src/koinon/swarm/peer.py)."""

from __future__ import annotations

import itertools
import random

import pytest

from koinon.swarm.peer import choose_canonical

H_LOW = "1" * 64
H_MID = "5" * 64
H_HIGH = "a" * 64


def _gathered(entries: list[tuple[str, str, int]]) -> dict[str, dict]:
    """(member, state hash, round) → what the all-gather delivers."""
    return {m: {"member": m, "state": s, "round": r, "samples": 8} for m, s, r in entries}


def _all_orders(entries: list[tuple[str, str, int]]):
    for perm in itertools.permutations(entries):
        yield _gathered(list(perm))


def test_single_member_is_canonical():
    assert choose_canonical(_gathered([("a", H_MID, 3)])) == (H_MID, 3)


def test_majority_wins_even_against_a_higher_round():
    entries = [("a", H_HIGH, 5), ("b", H_HIGH, 5), ("c", H_LOW, 6)]
    for gathered in _all_orders(entries):
        assert choose_canonical(gathered) == (H_HIGH, 5)


def test_majority_wins_against_a_smaller_hash():
    entries = [("a", H_LOW, 4), ("b", H_HIGH, 4), ("c", H_HIGH, 4), ("d", H_MID, 4)]
    for gathered in _all_orders(entries):
        assert choose_canonical(gathered) == (H_HIGH, 4)


def test_tie_is_broken_by_the_higher_round():
    entries = [("a", H_LOW, 3), ("b", H_LOW, 3), ("c", H_HIGH, 4), ("d", H_HIGH, 4)]
    for gathered in _all_orders(entries):
        assert choose_canonical(gathered) == (H_HIGH, 4)


def test_tie_in_votes_and_round_is_broken_by_the_smaller_hash():
    entries = [("a", H_HIGH, 4), ("b", H_LOW, 4), ("c", H_MID, 4)]
    for gathered in _all_orders(entries):
        assert choose_canonical(gathered) == (H_LOW, 4)


def test_round_beats_hash_when_votes_tie():
    entries = [("a", H_LOW, 2), ("b", H_HIGH, 9)]
    for gathered in _all_orders(entries):
        assert choose_canonical(gathered) == (H_HIGH, 9)


@pytest.mark.parametrize("seed", range(5))
def test_result_does_not_depend_on_insertion_order(seed: int):
    rng = random.Random(seed)
    hashes = [H_LOW, H_MID, H_HIGH, "0" * 64, "f" * 64]
    entries = [(f"12D3KooW{i}", rng.choice(hashes), rng.randint(1, 3)) for i in range(6)]
    entries = [(m, h, int(h[0], 16) % 3 + 1) for m, h, _ in entries]  # one round per state, as in practice
    results = set()
    for _ in range(30):
        rng.shuffle(entries)
        results.add(choose_canonical(_gathered(list(entries))))
    assert len(results) == 1
    # and it is the one the rule says
    votes: dict[tuple[str, int], int] = {}
    for _, h, r in entries:
        votes[(h, r)] = votes.get((h, r), 0) + 1
    best = max(votes.values())
    top = [k for k, v in votes.items() if v == best]
    top_round = max(r for _, r in top)
    expected = min(h for h, r in top if r == top_round)
    assert results == {(expected, top_round)}
