"""The group decision inside an all-reduce: who holds the group's key, who contributes, whether the group is a
candidate (src/koinon/swarm/rounds.py ``decide_group``, through ``swarm/averaging.py``'s ``group_decision``), and
how signed gathers from a Byzantine member are refused without raising."""

from __future__ import annotations

import itertools
import random

import pytest
from hivemind.p2p import PeerID
from hypothesis import given, settings
from hypothesis import strategies as st

from koinon.identity import verify_signature
from koinon.swarm import rounds
from koinon.swarm.averaging import group_decision, left_out
from koinon.swarm.rounds import (
    GATHER_FIELDS,
    MAX_ELECTORATE,
    MAX_GATHER_BYTES,
    MAX_NAME,
    GroupDecision,
    decide_group,
    gather_payload,
    is_candidate,
    parse_all,
    sign_gather,
)
from tests.sim.fakenet import identity_from_seed

S_LOW, S_MID, S_HIGH = "1" * 64, "5" * 64, "a" * 64
C_LOW, C_HIGH = "2" * 64, "b" * 64
SWARM = "koinon-test"

KEYS = {name: identity_from_seed(f"group-decision/{name}") for name in "abcdefm"}
ID = {name: key.member_id for name, key in KEYS.items()}
ABC = sorted(ID[n] for n in "abc")  # the electorate honest members believe in


def fields(
    name: str,
    *,
    height: int = 4,
    state: str = S_MID,
    electorate: list[str] | None = None,
    k: int = 2,
    config: str = C_LOW,
    gov: int = 0,
    excluded: list[str] | None = None,
    compression: str = "fp16",
    reducer: str = "centered_clip",
    samples: int = 8,
    attempt: int = 7,
    swarm: str = SWARM,
) -> dict:
    """A well-behaved member's gather fields, unsigned (``excluded``: names or member ids)."""
    return dict(
        member=ID[name],
        swarm=swarm,
        attempt=attempt,
        height=height,
        state=state,
        electorate=list(ABC if electorate is None else electorate),
        k=k,
        config=config,
        gov=gov,
        excluded=[ID.get(x, x) for x in excluded or []],
        compression=compression,
        reducer=reducer,
        samples=samples,
    )


def member(name: str, **changes: object) -> tuple[str, dict]:
    """(member id, its signed gather) as a well-behaved Koinon peer sends it."""
    return ID[name], sign_gather(fields(name, **changes), KEYS[name].sign)  # type: ignore[arg-type]


def signed_as_is(name: str, info: dict, signer: str | None = None) -> dict:
    """``info`` signed without the normalisation ``sign_gather`` applies (what a Byzantine member can send)."""
    return {**info, "sig": KEYS[signer or name].sign(gather_payload(info))}


def all_orders(entries: list[tuple[str, object]]):
    """Every insertion order of the same gathered dict."""
    for perm in itertools.permutations(entries):
        yield dict(perm)


def decide(entries: list[tuple[str, object]]) -> GroupDecision | None:
    """The decision, after checking that every insertion order gives the same one, through both entry points."""
    decisions = {group_decision(g) for g in all_orders(entries)}
    assert len(decisions) == 1, f"insertion order changed the decision: {decisions}"
    d = decisions.pop()
    assert decide_group(dict(entries), verify_signature) == d
    return d


def ids(*names: str) -> frozenset[str]:
    return frozenset(ID[n] for n in names)


def why(entries: list[tuple[str, object]], d: GroupDecision) -> dict[str, str]:
    """left_out, with names instead of member ids."""
    names = {v: k for k, v in ID.items()}
    return {names.get(m, m): reason for m, reason in left_out(dict(entries), d).items()}


# --- the honest cases ---------------------------------------------------------------------------------------------
def test_agreeing_group_all_contribute():
    d = decide([member("a"), member("b"), member("c")])
    assert d == GroupDecision(
        swarm=SWARM,
        height=4,
        state=S_MID,
        electorate=frozenset(ABC),
        k=2,
        config=C_LOW,
        gov=0,
        excluded=frozenset(),
        compression="fp16",
        reducer="centered_clip",
        holders=ids("a", "b", "c"),
        contributors=ids("a", "b", "c"),
        candidate=True,
        attempt=7,
    )
    assert why([member("a"), member("b"), member("c")], d) == {}


def test_shuffled_gathered_dicts_give_the_same_decision():
    entries = [
        member("a"),
        member("b"),
        member("c", height=5, state=S_HIGH),
        member("d", samples=0),
        member("e", excluded=["e"]),
        member("f", reducer="median"),
        ("junk", {"member": "junk"}),
    ]
    rng = random.Random(7)
    seen = set()
    for _ in range(40):
        rng.shuffle(entries)
        seen.add(group_decision(dict(entries)))
        seen.add(decide_group(dict(entries), verify_signature))
    assert len(seen) == 1
    d = seen.pop()
    assert (d.holders, d.contributors, d.candidate) == (ids("a", "b", "d"), ids("a", "b"), True)


def test_member_at_another_height_does_not_contribute():
    # a peer still at height h matched with peers at height h + 1 (same prefix)
    entries = [member("a", height=5, state=S_HIGH), member("b", height=5, state=S_HIGH), member("c")]
    d = decide(entries)
    assert (d.height, d.state, d.candidate) == (5, S_HIGH, True)
    assert d.contributors == ids("a", "b")
    assert why(entries, d) == {"c": "starts from height 4 state 555555555555, the group from 5"}


def test_the_majority_beats_a_higher_height():
    d = decide([member("a"), member("b"), member("c", height=5, state=S_HIGH)])
    assert (d.height, d.state, d.contributors) == (4, S_MID, ids("a", "b"))


def test_member_with_another_state_at_the_same_height_does_not_contribute():
    entries = [member("a"), member("b"), member("c", state=S_LOW)]
    d = decide(entries)
    assert d.contributors == ids("a", "b")
    assert why(entries, d)["c"].startswith("starts from height 4 state 111111111111")


@pytest.mark.parametrize(
    "change",
    [
        dict(config=C_HIGH),
        dict(gov=1),
        dict(k=3),
        dict(electorate=sorted(ID[n] for n in "abd")),
        dict(swarm="another-swarm"),
    ],
)
def test_member_with_another_configuration_governance_or_electorate_does_not_contribute(change):
    entries = [member("a"), member("b", **change), member("c")]
    d = decide(entries)
    assert (d.config, d.gov, d.k, d.electorate, d.swarm) == (C_LOW, 0, 2, frozenset(ABC), SWARM)
    assert d.contributors == ids("a", "c")
    assert why(entries, d) == {"b": "another configuration, governance state or electorate than the group's"}


def test_a_candidate_key_beats_a_larger_non_candidate_key():
    # d, e and f (outside the electorate) agree on another state: three holders, but no voter among them
    entries = [
        member("a"),
        member("b"),
        member("d", state=S_LOW),
        member("e", state=S_LOW),
        member("f", state=S_LOW),
    ]
    d = decide(entries)
    assert (d.state, d.candidate, d.holders) == (S_MID, True, ids("a", "b"))
    assert set(why(entries, d)) == {"d", "e", "f"}
    # without a candidate among them, the larger key wins
    d = decide([member("a"), member("d", state=S_LOW), member("e", state=S_LOW)])
    assert (d.state, d.candidate, d.holders) == (S_LOW, False, ids("d", "e"))


def test_a_member_claiming_a_huge_height_does_not_win_and_is_left_out():
    entries = [member("a"), member("b"), member("c"), member("m", height=10**9, state=S_HIGH)]
    d = decide(entries)
    assert (d.height, d.contributors, d.candidate) == (4, ids("a", "b", "c"), True)
    assert why(entries, d) == {"m": "starts from height 1000000000 state aaaaaaaaaaaa, the group from 4"}
    # nor against a single honest member that is a candidate on its own (k = 1, electorate {a}): m, outside the
    # electorate it copies, is no candidate however high it claims to be
    alone = dict(electorate=[ID["a"]], k=1)
    pair = [member("a", **alone), member("m", height=10**9, state=S_HIGH, **alone)]
    d = decide(pair)
    assert (d.height, d.contributors, d.candidate) == (4, ids("a"), True)
    assert set(why(pair, d)) == {"m"}


def _key_of(entry: tuple[str, dict]) -> tuple:
    g, reason = rounds.parse_gather(entry[0], entry[1], verify_signature)
    assert g is not None, reason
    return g.key


@pytest.mark.parametrize("heights", [(3, 4), (4, 3), (1, 10**9), (10**9, 1), (7, 7)])
def test_a_tie_is_broken_by_the_key_hash_not_by_the_claimed_height(heights):
    ha, hb = heights
    a, b = member("a", height=ha, state=S_LOW), member("b", height=hb, state=S_HIGH)
    d = decide([a, b])
    winner = min((a, b), key=lambda e: rounds._key_hash(_key_of(e)))
    assert d.holders == {winner[0]}
    assert (d.height, d.state) == (winner[1]["height"], winner[1]["state"])


def test_the_claimed_height_does_not_decide_ties():
    # over many pairs, the higher claimed height loses about as often as it wins
    wins = 0
    for i in range(40):
        a = member("a", height=i, state=f"{i:064x}")
        b = member("b", height=i + 1, state=f"{i + 1:064x}")
        wins += decide([a, b]).height == i + 1
    assert 5 < wins < 35


def test_excluded_member_contributes_nothing():
    entries = [member(n, excluded=["c"]) for n in "abc"]
    d = decide(entries)
    assert d.contributors == ids("a", "b")
    assert d.holders == ids("a", "b", "c")
    assert d.excluded == ids("c")
    assert d.candidate  # a and b: two of three voters, k = 2
    assert why(entries, d) == {"c": "expelled by governance"}


def test_the_excluded_list_is_part_of_the_key():
    # b has not seen the expulsion yet: it holds another key. The larger key (a and c) wins, and c is out of it
    entries = [
        member("a", excluded=["c", "x"]),
        member("b"),
        member("c", excluded=["x", "c"]),  # sign_gather sorts: the same list
    ]
    d = decide(entries)
    assert d.excluded == {ID["c"], "x"}
    assert d.holders == ids("a", "c")
    assert d.contributors == ids("a")
    assert not d.candidate  # one contributor, k = 2
    assert why(entries, d) == {
        "b": "another configuration, governance state or electorate than the group's",
        "c": "expelled by governance",
    }


def test_everyone_excluded_leaves_no_contributors():
    d = decide([member("a", excluded=["a", "b"]), member("b", excluded=["a", "b"])])
    assert d.contributors == frozenset()
    assert d.holders == ids("a", "b")
    assert (d.height, d.candidate) == (4, False)  # the key is still decided


def test_members_without_samples_hold_the_key_but_do_not_contribute():
    entries = [member("a"), member("b", samples=0), member("c", samples=0)]
    d = decide(entries)
    assert d.holders == ids("a", "b", "c")
    assert d.contributors == ids("a")
    assert not d.candidate
    assert why(entries, d) == {"b": "contributes no samples", "c": "contributes no samples"}


@pytest.mark.parametrize(
    ("contributors", "electorate", "k", "candidate"),
    [
        ("abc", "abc", 3, True),
        ("ab", "abc", 2, True),
        ("ab", "abc", 3, False),  # fewer than k
        ("a", "abc", 1, False),  # one of three voters
        ("ab", "abcd", 2, False),  # half is no strict majority
        ("abc", "abcd", 3, True),
        ("def", "abc", 3, False),  # k contributors, no voter
        ("adef", "abc", 3, False),
        ("abdef", "abc", 5, True),
        ("abdef", "abc", 6, False),
    ],
)
def test_candidate_iff_k_contributors_including_a_strict_majority_of_the_electorate(
    contributors, electorate, k, candidate
):
    assert is_candidate([ID[n] for n in contributors], [ID[n] for n in electorate], k) is candidate
    everyone = "abcdef"
    entries = [
        member(n, electorate=sorted(ID[x] for x in electorate), k=k, samples=8 if n in contributors else 0)
        for n in everyone
    ]
    d = group_decision(dict(entries))
    assert d.contributors == ids(*contributors)
    assert d.candidate is candidate


def test_members_decide_the_same_key_even_when_their_attempts_differ():
    entries = [member("a", attempt=3), member("b", attempt=9), member("c", attempt=4)]
    d = decide(entries)
    assert d.contributors == ids("a", "b", "c")
    assert d.attempt == 4  # the median


def test_the_median_attempt_is_not_moved_by_one_huge_claim():
    entries = [member("a", attempt=5), member("b", attempt=6), member("c", attempt=7), member("m", attempt=2**62)]
    d = decide(entries)
    assert d.contributors == ids("a", "b", "c", "m")
    assert d.attempt == 6
    d = decide([member("a", attempt=5), member("b", attempt=5), member("m", attempt=2**62)])
    assert d.attempt == 5


def test_compression_is_part_of_the_key():
    entries = [
        member("a", compression="int8"),
        member("b", compression="int8"),
        member("c", compression="none"),
        # at another height, d and e do not count: two holders against a candidate
        member("d", height=3, compression="none"),
        member("e", height=3, compression="none"),
    ]
    d = decide(entries)
    assert (d.height, d.compression, d.contributors) == (4, "int8", ids("a", "b"))
    assert why(entries, d)["c"] == "another configuration, governance state or electorate than the group's"


def test_reducer_is_part_of_the_key():
    entries = [
        member("a", reducer="median"),
        member("b", reducer="median"),
        member("c", reducer="mean"),
        # a Byzantine pair at another height voting for the mean does not count
        member("d", height=3, reducer="mean"),
        member("e", height=3, reducer="mean"),
    ]
    d = decide(entries)
    assert (d.height, d.reducer, d.contributors, d.candidate) == (4, "median", ids("a", "b"), True)


def test_compression_and_reducer_are_decided_together():
    d = decide(
        [
            member("a", compression="int8", reducer="mean"),
            member("b", compression="int8", reducer="trimmed_mean"),
            member("c", compression="none", reducer="trimmed_mean"),
        ]
    )
    # three keys of one holder each, none a candidate: the smallest key hash, whole
    assert (d.compression, d.reducer) in {("int8", "mean"), ("int8", "trimmed_mean"), ("none", "trimmed_mean")}
    assert len(d.holders) == 1


# --- mallory: what a Byzantine member (or a leader relaying the gathered data) can send ---------------------------
def _tampered(name: str, **changes: object) -> dict:
    """A gather signed by its member, then changed."""
    return {**member(name)[1], **changes}


def _forged_for(victim: str, **changes: object) -> dict:
    """A gather under ``victim``'s id, signed by mallory's key."""
    return signed_as_is(victim, fields(victim, **changes), signer="m")  # type: ignore[arg-type]


def _m(**changes: object) -> dict:
    """Mallory's gather with ``changes`` applied before signing, without any normalisation."""
    return signed_as_is("m", {**fields("m"), **changes})


def _without(name: str, key: str) -> dict:
    info = member(name)[1]
    info.pop(key)
    return info


VOTERS = [f"12D3KooW{i:044d}" for i in range(MAX_ELECTORATE + 1)]  # sorted, distinct, one too many

# (mallory's entry under mallory's id, what the reason says)
MALLORY = [
    pytest.param(None, "is a NoneType, not a dict", id="none"),
    pytest.param("state", "is a str, not a dict", id="str"),
    pytest.param(42, "is a int, not a dict", id="int"),
    pytest.param([ID["m"], 9], "is a list, not a dict", id="list"),
    pytest.param({}, "lacks member", id="empty"),
    pytest.param(_without("m", "sig"), "lacks sig", id="no-sig"),
    pytest.param(_without("m", "electorate"), "lacks electorate", id="no-electorate"),
    pytest.param(_tampered("m", sig=b""), "not a 64-byte signature", id="empty-sig"),
    pytest.param(_tampered("m", sig=bytes(63)), "not a 64-byte signature", id="short-sig"),
    pytest.param(_tampered("m", sig=bytes(65)), "not a 64-byte signature", id="long-sig"),
    pytest.param(_tampered("m", sig="00" * 64), "not a 64-byte signature", id="hex-sig"),
    pytest.param(_tampered("m", sig=bytes(64)), "not signed by its member", id="zero-sig"),
    pytest.param(_tampered("m", samples=10**6), "not signed by its member", id="tampered-samples"),
    pytest.param(_tampered("m", height=5), "not signed by its member", id="tampered-height"),
    pytest.param(  # mallory, expelled, drops herself from the list she signed
        {**member("m", excluded=["m"])[1], "excluded": []}, "not signed by its member", id="tampered-excluded"
    ),
    pytest.param(_tampered("m", electorate=[ID["m"]]), "not signed by its member", id="tampered-electorate"),
    pytest.param(_tampered("m", weight=10), "unknown fields", id="unknown-field"),
    pytest.param(_m(weight=10), "unknown fields", id="signed-unknown-field"),
    pytest.param(_m(member=ID["a"]), "member id is not its peer id", id="another-member-id"),
    pytest.param(_m(electorate=list(reversed(ABC))), "electorate is not a sorted list", id="unsorted-electorate"),
    pytest.param(_m(electorate=[ABC[0], *ABC]), "electorate is not a sorted list", id="duplicate-electorate"),
    pytest.param(_m(electorate=[*ABC, 3]), "electorate is not a sorted list", id="int-in-electorate"),
    pytest.param(_m(electorate=ABC[0]), "electorate is not a sorted list", id="str-electorate"),
    pytest.param(_m(excluded=[ID["m"], ID["m"]]), "excluded is not a sorted list", id="duplicate-excluded"),
    pytest.param(_m(excluded=[""]), "excluded is not a sorted list", id="empty-name-excluded"),
    pytest.param(_m(excluded={"x": 1}), "excluded is not a sorted list", id="dict-excluded"),
    pytest.param(_m(electorate=VOTERS), "electorate is not a sorted list", id="electorate-over-max"),
    pytest.param(
        _m(excluded=sorted(f"{i:0{MAX_NAME}d}" for i in range(MAX_ELECTORATE))),
        f"over {MAX_GATHER_BYTES}",
        id="gather-over-max-bytes",
    ),
    pytest.param(_m(height="9"), "height is not a non-negative int", id="str-height"),
    pytest.param(_m(height=True), "height is not a non-negative int", id="bool-height"),
    pytest.param(_m(height=-1), "height is not a non-negative int", id="negative-height"),
    pytest.param(_m(height=1 << 63), "height is not a non-negative int", id="height-over-int64"),
    pytest.param({**fields("m"), "height": 9.0, "sig": bytes(64)}, "height is not a non-negative int", id="float"),
    pytest.param(_m(samples=None), "samples is not a non-negative int", id="none-samples"),
    pytest.param(_m(attempt=[1]), "attempt is not a non-negative int", id="list-attempt"),
    pytest.param(_m(gov="3"), "gov is not a non-negative int", id="str-gov"),
    pytest.param(_m(k=0), "k is 0", id="k-zero"),
    pytest.param(_m(state=bytes.fromhex(S_MID)), "state is not a short string", id="bytes-state"),
    pytest.param(_m(state=""), "state is not a short string", id="empty-state"),
    pytest.param(_m(config="c" * (MAX_NAME + 1)), "config is not a short string", id="long-config"),
    pytest.param(_m(swarm=None), "swarm is not a short string", id="none-swarm"),
    pytest.param(_m(compression=["fp16"]), "compression is not a short string", id="list-compression"),
    pytest.param(_m(reducer=None), "reducer is not a short string", id="none-reducer"),
]


def test_mallorys_template_would_contribute_if_it_were_well_formed():
    entries = [member("a"), member("b"), member("m")]
    assert decide(entries).contributors == ids("a", "b", "m")
    assert rounds.parse_gather(ID["m"], _m(), verify_signature)[0] is not None


@pytest.mark.parametrize(("bad", "reason"), MALLORY)
def test_mallorys_gather_is_refused_with_a_reason_and_nothing_raises(bad, reason):
    entries = [member("a"), member("b"), (ID["m"], bad)]
    d = decide(entries)
    assert (d.state, d.height, d.contributors, d.candidate) == (S_MID, 4, ids("a", "b"), True)
    why_m = why(entries, d)
    assert set(why_m) == {"m"} and reason in why_m["m"], why_m
    valid, refused = parse_all(dict(entries), verify_signature)
    assert set(valid) == set(ids("a", "b")) and set(refused) == {ID["m"]} and reason in refused[ID["m"]]


@pytest.mark.parametrize(
    "forged",
    [
        pytest.param(_forged_for("a"), id="same-fields"),
        pytest.param(_forged_for("a", samples=0), id="no-samples"),
        pytest.param(_forged_for("a", state=S_HIGH), id="another-state"),
        pytest.param({**_forged_for("a"), "sig": member("b")[1]["sig"]}, id="another-members-sig"),
        pytest.param({**member("a")[1], "sig": member("b")[1]["sig"]}, id="a-with-bs-sig"),
    ],
)
def test_a_gather_signed_by_another_key_under_a_victims_id_is_refused(forged):
    # a leader relaying the gathered data replaces a's gather: a counts for nothing, and the group is no candidate
    entries = [(ID["a"], forged), member("b"), member("c")]
    d = decide(entries)
    assert d.contributors == ids("b", "c") and d.candidate
    assert why(entries, d) == {"a": "gathered metadata is not signed by its member"}
    entries = [(ID["a"], forged), member("b")]
    d = decide(entries)
    assert (d.contributors, d.candidate) == (ids("b"), False)


def test_a_member_id_that_is_no_ed25519_peer_id_is_refused():
    info = {**fields("m"), "member": "12D3KooWnotakey"}
    entries = [member("a"), member("b"), ("12D3KooWnotakey", signed_as_is("m", info))]
    d = decide(entries)
    assert d.contributors == ids("a", "b")
    assert why(entries, d) == {"12D3KooWnotakey": "gathered metadata is not signed by its member"}


@pytest.mark.parametrize("change", [dict(compression="zstd"), dict(reducer="krum"), dict(reducer="Median")])
def test_unknown_compression_or_reducer_is_malformed_for_the_averager(change):
    # decide_group does not know the encodings; the averager's group_decision treats unknown names as malformed
    entries = [member("a"), member("m", **change)]
    assert group_decision(dict(entries)).holders == ids("a")
    # alone, the member with an unknown name yields no decision at all (the averager falls back to its own)
    assert group_decision(dict([member("m", **change)])) is None
    assert decide_group(dict([member("m", **change)]), verify_signature) is not None
    # and left_out gives it a reason
    assert ID["m"] in left_out(dict(entries), group_decision(dict(entries)))


def test_no_well_formed_member_means_no_decision():
    assert group_decision({}) is None
    assert decide_group({}, verify_signature) is None
    # what peer.py gathered before rounds.py: unsigned, other fields → the averager falls back to its own settings
    old = {
        ID[m]: dict(member=ID[m], round=3, state=S_MID, samples=8, config=C_LOW, compression="fp16", excluded=[], gov=0)
        for m in "abc"
    }
    assert group_decision(old) is None


def test_weird_entries_never_raise():
    weird = {
        "a": {"member": "a", "height": [], "excluded": None},
        "b": object(),
        7: {"member": 7},
        "c": float("nan"),
        ID["d"]: {**member("d")[1], "member": 7},
        ID["e"]: {**{k: None for k in GATHER_FIELDS}, "member": ID["e"], "sig": None},
    }
    assert group_decision(weird) is None
    assert decide_group(weird, verify_signature) is None
    _, refused = parse_all(weird, verify_signature)
    assert set(refused) == set(weird)


def test_peer_id_keys_as_step_returns_them():
    stale = member("c", height=3, state=S_LOW)[1]
    by_base58 = {ID["a"]: member("a")[1], ID["b"]: member("b")[1], ID["c"]: stale}
    by_peer_id = {PeerID.from_base58(m): info for m, info in by_base58.items()}
    assert group_decision(by_peer_id) == group_decision(by_base58)
    assert group_decision(by_peer_id).contributors == ids("a", "b")
    assert left_out(by_peer_id, group_decision(by_peer_id)) == left_out(by_base58, group_decision(by_base58))


def test_sign_gather_needs_every_field_and_sorts_the_lists():
    with pytest.raises(ValueError, match="needs samples"):
        sign_gather({k: v for k, v in fields("a").items() if k != "samples"}, KEYS["a"].sign)
    signed = sign_gather(fields("a", electorate=list(reversed(ABC)), excluded=["z", "c"]), KEYS["a"].sign)
    assert signed["electorate"] == ABC and signed["excluded"] == sorted([ID["c"], "z"])
    assert rounds.parse_gather(ID["a"], signed, verify_signature)[0] is not None


def test_decision_is_hashable_and_immutable():
    d = decide([member("a"), member("b")])
    assert hash(d) == hash(decide([member("b"), member("a")]))
    with pytest.raises(AttributeError):
        d.compression = "none"  # type: ignore[misc]


# --- junk never raises --------------------------------------------------------------------------------------------
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.binary(max_size=70),
)
_junk = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
_names = st.sampled_from(sorted(ID))


@st.composite
def _gather_like(draw) -> tuple[object, object]:
    """(a key, a value): junk, or a valid gather with one field replaced by junk (re-signed or not)."""
    name = draw(st.sampled_from("aabbccdefm"))  # voters more often
    kind = draw(st.sampled_from(["junk", "valid", "valid", "valid", "edited", "edited-resigned", "extra"]))
    key = draw(st.one_of(st.just(ID[name]), st.text(max_size=10), st.integers(-3, 3))) if kind == "junk" else ID[name]
    if kind == "junk":
        return key, draw(_junk)
    info = member(  # mostly the same key, so that some groups are candidates
        name,
        height=draw(st.sampled_from([4, 4, 4, 5])),
        state=draw(st.sampled_from([S_MID, S_MID, S_LOW])),
        samples=draw(st.integers(0, 2)),
        k=draw(st.sampled_from([1, 2, 2, 3])),
        excluded=draw(st.sampled_from([[], [], ["c"], ["m", "a"]])),
        attempt=draw(st.integers(0, 2**62)),
    )[1]
    if kind == "valid":
        return key, info
    if kind == "extra":
        info[draw(st.text(max_size=8))] = draw(_junk)
        return key, info
    info[draw(st.sampled_from([*GATHER_FIELDS, "sig"]))] = draw(_junk)
    if kind == "edited-resigned":
        try:
            info["sig"] = KEYS[name].sign(gather_payload(info))
        except (TypeError, ValueError):
            pass
    return key, info


@settings(derandomize=True, max_examples=200, deadline=None)
@given(st.lists(_gather_like(), max_size=6))
def test_junk_never_makes_decide_group_raise(entries):
    gathered = dict(entries)
    d = decide_group(gathered, verify_signature)
    valid, refused = parse_all(gathered, verify_signature)
    assert set(valid) | set(refused) == set(gathered) and not set(valid) & set(refused)
    if d is None:
        assert not valid
        return
    assert d.contributors <= d.holders <= set(valid)
    assert d.candidate == is_candidate(d.contributors, d.electorate, d.k)
    reasons = rounds.left_out(gathered, d, verify_signature)
    assert set(reasons) | d.contributors == set(gathered) and not set(reasons) & d.contributors
    # the same through the averager's wrapper (string keys only there; it drops other keys)
    g = group_decision(gathered)
    assert g is None or g.contributors <= d.holders | set(valid)
