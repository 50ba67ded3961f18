"""group_decision: who counts in an all-reduce, with which compression and which reducer
(src/koinon/swarm/averaging.py)."""

from __future__ import annotations

import itertools

import pytest
from hivemind.p2p import PeerID

from koinon.swarm.averaging import GroupDecision, canonical_key, group_decision, left_out
from koinon.swarm.peer import choose_canonical

S_LOW, S_MID, S_HIGH = "1" * 64, "5" * 64, "a" * 64
C_LOW, C_HIGH = "2" * 64, "b" * 64


def member(
    name: str,
    state: str = S_MID,
    round: int = 4,
    config: str = C_LOW,
    compression: str = "fp16",
    reducer: str = "centered_clip",
    excluded: list[str] | None = None,
    samples: int = 8,
    gov: int = 0,
) -> tuple[str, dict]:
    """(peer id, its gather dict) as a well-behaved Koinon peer sends it."""
    info = dict(
        member=name,
        round=round,
        state=state,
        samples=samples,
        config=config,
        compression=compression,
        reducer=reducer,
        excluded=list(excluded or []),
        gov=gov,
    )
    return name, info


def all_orders(entries: list[tuple[str, object]]):
    """Every insertion order of the same gathered dict."""
    for perm in itertools.permutations(entries):
        yield dict(perm)


def decide(entries: list[tuple[str, object]]) -> GroupDecision | None:
    """The decision, after checking that every insertion order gives the same one."""
    decisions = {group_decision(g) for g in all_orders(entries)}
    assert len(decisions) == 1, f"insertion order changed the decision: {decisions}"
    return decisions.pop()


def test_agreeing_group_all_contribute():
    d = decide([member("a"), member("b"), member("c")])
    assert d == GroupDecision(
        canonical_state=S_MID,
        canonical_round=4,
        canonical_config=C_LOW,
        contributors=frozenset("abc"),
        compression="fp16",
        excluded=frozenset(),
        reducer="centered_clip",
    )


def test_member_at_another_round_does_not_contribute():
    # the bug this fixes: a peer still in round r matched with peers in round r+1 (same prefix)
    entries = [member("a", round=5, state=S_HIGH), member("b", round=5, state=S_HIGH), member("c", round=4)]
    d = decide(entries)
    assert (d.canonical_state, d.canonical_round) == (S_HIGH, 5)
    assert d.contributors == {"a", "b"}
    assert left_out(dict(entries), d) == {"c": "at round 4, the group is at round 5"}


def test_majority_beats_a_higher_round():
    d = decide([member("a", round=5), member("b", round=5), member("c", round=6, state=S_HIGH)])
    assert (d.canonical_state, d.canonical_round, d.contributors) == (S_MID, 5, {"a", "b"})


def test_member_with_another_state_at_the_same_round_does_not_contribute():
    entries = [member("a"), member("b"), member("c", state=S_LOW)]
    d = decide(entries)
    assert d.contributors == {"a", "b"}
    assert left_out(dict(entries), d)["c"].startswith("pre-round state 111111111111")


def test_member_with_another_config_does_not_contribute():
    entries = [member("a"), member("b", config=C_HIGH), member("c")]
    d = decide(entries)
    assert (d.canonical_config, d.contributors) == (C_LOW, {"a", "c"})
    assert left_out(dict(entries), d) == {"b": "trained with config bbbbbbbbbbbb, the group's is 222222222222"}


def test_tie_is_broken_by_the_higher_round_then_smaller_state_then_smaller_config():
    assert decide([member("a", round=3), member("b", round=4, state=S_HIGH)]).contributors == {"b"}
    assert decide([member("a", state=S_HIGH), member("b", state=S_LOW)]).contributors == {"b"}
    assert decide([member("a", config=C_HIGH), member("b", config=C_LOW)]).contributors == {"b"}
    # votes first: two with the bigger state hash beat one with the smaller hash and a higher round
    d = decide([member("a", state=S_HIGH), member("b", state=S_HIGH), member("c", state=S_LOW, round=9)])
    assert d.contributors == {"a", "b"}


@pytest.mark.parametrize(
    "entries",
    [
        [("a", S_HIGH, 5), ("b", S_HIGH, 5), ("c", S_LOW, 6)],
        [("a", S_LOW, 3), ("b", S_LOW, 3), ("c", S_HIGH, 4), ("d", S_HIGH, 4)],
        [("a", S_HIGH, 4), ("b", S_LOW, 4), ("c", S_MID, 4)],
        [("a", S_LOW, 2), ("b", S_HIGH, 9)],
    ],
)
def test_canonical_key_agrees_with_peer_choose_canonical_when_configs_agree(entries):
    gathered = dict(member(m, state=s, round=r) for m, s, r in entries)
    assert canonical_key(gathered) == (*choose_canonical(gathered), C_LOW)


def test_excluded_member_does_not_contribute():
    entries = [member("a", excluded=["c"]), member("b", excluded=["c"]), member("c")]
    d = decide(entries)
    assert d.contributors == {"a", "b"}
    assert d.excluded == {"c"}
    assert left_out(dict(entries), d) == {"c": "expelled by governance"}


def test_excluded_list_is_the_canonical_majoritys():
    # b has not seen the expulsion yet; a and c have: c is out. d (another round) reports another list: no vote.
    entries = [
        member("a", excluded=["c", "x"]),
        member("b"),
        member("c", excluded=["x", "c", "c"]),  # order and duplicates do not make it another list
        member("d", round=3, excluded=["a", "b"]),
    ]
    d = decide(entries)
    assert d.excluded == {"c", "x"}
    assert d.contributors == {"a", "b"}


def test_excluded_list_tie_takes_the_smallest_canonical_json():
    # '["b"]' < '[]' since '"' < ']': with one vote each, the expulsion stands
    d = decide([member("a", excluded=["b"]), member("b")])
    assert d.excluded == {"b"} and d.contributors == {"a"}
    # '["a","z"]' < '["b"]'
    d = decide([member("a", excluded=["b"]), member("b", excluded=["z", "a"])])
    assert d.excluded == {"a", "z"} and d.contributors == {"b"}


def test_everyone_excluded_leaves_no_contributors():
    d = decide([member("a", excluded=["a", "b"]), member("b", excluded=["a", "b"])])
    assert d.contributors == frozenset()
    assert d.canonical_round == 4  # the canonical key is still decided


def test_compression_is_the_canonical_majoritys():
    d = decide(
        [
            member("a", compression="int8"),
            member("b", compression="int8"),
            member("c", compression="none"),
            member("d", round=3, compression="none"),
            member("e", round=3, compression="none"),
        ]
    )
    # d and e (round 3) are not canonical: three votes beat two; their compression does not count
    assert d.canonical_round == 4
    assert d.compression == "int8"


def test_compression_tie_takes_the_smallest_name():
    assert decide([member("a", compression="none"), member("b", compression="int8")]).compression == "int8"
    assert decide([member("a", compression="none"), member("b", compression="fp16")]).compression == "fp16"


def test_excluded_members_still_vote_on_compression():
    # the rule: canonical members' majority, expelled or not
    d = decide([member("a", compression="none", excluded=["b"]), member("b", compression="fp16")])
    assert d.contributors == {"a"} and d.compression == "fp16"


def test_reducer_is_the_canonical_majoritys():
    d = decide(
        [
            member("a", reducer="median"),
            member("b", reducer="median"),
            member("c", reducer="mean"),
            # not canonical (round 3): a Byzantine pair voting for the mean does not count
            member("d", round=3, reducer="mean"),
            member("e", round=3, reducer="mean"),
        ]
    )
    assert (d.canonical_round, d.reducer) == (4, "median")


def test_reducer_tie_takes_the_smallest_name():
    # "centered_clip" < "mean" < "median" < "trimmed_mean"
    assert decide([member("a", reducer="mean"), member("b", reducer="centered_clip")]).reducer == "centered_clip"
    assert decide([member("a", reducer="median"), member("b", reducer="mean")]).reducer == "mean"
    assert decide([member("a", reducer="trimmed_mean"), member("b", reducer="median")]).reducer == "median"


def test_reducer_and_compression_are_decided_independently():
    d = decide(
        [
            member("a", compression="int8", reducer="mean"),
            member("b", compression="int8", reducer="trimmed_mean"),
            member("c", compression="none", reducer="trimmed_mean"),
        ]
    )
    assert (d.compression, d.reducer) == ("int8", "trimmed_mean")


def test_excluded_members_still_vote_on_the_reducer():
    # the same rule as for the compression: canonical members' majority, expelled or not
    d = decide([member("a", reducer="median", excluded=["b"]), member("b", reducer="mean")])
    assert d.contributors == {"a"} and d.reducer == "mean"


# well-formed, m would tie with a at one vote each and win by its higher round: so a canonical round of 4 shows
# that a malformed m does not vote
M = member("m", round=9, state=S_HIGH)[1]


@pytest.mark.parametrize(
    "bad",
    [
        None,
        "state",
        42,
        ["m", 9],
        {},
        {"member": "m"},
        dict(M, round="9"),
        dict(M, round=True),
        dict(M, round=-1),
        dict(M, round=9.0),
        dict(M, samples=None),
        dict(M, gov="3"),
        dict(M, state=bytes.fromhex(S_HIGH)),
        dict(M, config=None),
        dict(M, compression="zstd"),
        dict(M, compression=["fp16"]),
        dict(M, reducer="krum"),
        dict(M, reducer=None),
        dict(M, reducer=["median"]),
        dict(M, reducer="Median"),
        dict(M, excluded="c"),
        dict(M, excluded=["c", 3]),
        dict(M, excluded={"c": 1}),
        dict(M, member="a"),  # claims another member's id
        {k: v for k, v in M.items() if k != "excluded"},
        {k: v for k, v in M.items() if k != "gov"},
        {k: v for k, v in M.items() if k != "reducer"},
    ],
)
def test_malformed_member_neither_votes_nor_contributes(bad):
    entries = [member("a"), ("m", bad)]
    d = decide(entries)
    assert (d.canonical_state, d.canonical_round, d.contributors) == (S_MID, 4, {"a"})
    assert set(left_out(dict(entries), d)) == {"m"}


def test_the_malformed_member_template_would_win_if_it_were_well_formed():
    assert decide([member("a"), ("m", M)]).contributors == {"m"}


def test_malformed_entries_never_raise():
    weird = {"a": {"member": "a", "round": [], "excluded": None}, "b": object(), 7: {"member": 7}, "c": float("nan")}
    assert group_decision(weird) is None
    assert canonical_key(weird) is None


def test_no_well_formed_member_means_no_decision():
    assert group_decision({}) is None
    # what peer.py sent before governance: no config/compression/reducer/excluded/gov → the averager falls back
    old = {m: {"member": m, "round": 3, "state": S_MID, "samples": 8} for m in "abc"}
    assert group_decision(old) is None


def test_peer_id_keys_as_step_returns_them():
    ids = [PeerID(bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20]) + bytes([i]) * 32) for i in (1, 2, 3)]
    names = [p.to_base58() for p in ids]
    stale = dict(member(names[2], round=3)[1])
    by_peer_id = {ids[0]: member(names[0])[1], ids[1]: member(names[1])[1], ids[2]: stale}
    by_base58 = {p.to_base58(): info for p, info in by_peer_id.items()}
    assert group_decision(by_peer_id) == group_decision(by_base58)
    assert group_decision(by_peer_id).contributors == {names[0], names[1]}


def test_decision_is_hashable_and_immutable():
    d = decide([member("a"), member("b")])
    assert hash(d) == hash(decide([member("b"), member("a")]))
    with pytest.raises(AttributeError):
        d.compression = "none"  # type: ignore[misc]
