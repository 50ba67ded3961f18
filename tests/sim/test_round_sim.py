"""The round protocol (swarm/rounds.py) among many peers on a fake network and clock (tests/sim/roundnet.py).

What must hold, whatever the schedule (splits, stragglers, lost and late round events, lagging ledgers) and whatever
a Byzantine minority does:

- **safety**: at most one θ certified per height, the same certified chain on every peer (and in the final ledger's
  total order), no lineage break, every θ an honest peer holds after the settle is certified, every certificate
  comes from a candidate group (≥ k contributors, a strict majority of its electorate) an honest member applied;
- **Byzantine peers**: a claimed huge height moves nobody, a forged gather never counts, a fake electorate
  certifies nothing, a double signer gets one vote, a colluding minority (or half, with k above its size) never gets
  a θ of its choosing certified;
- **progress and goodput**: a benign 4-peer swarm certifies most attempts, and a 3× slower peer's work reaches
  certified rounds through its pending contributions, never folded into two certified θ; split votes and a silent
  contributor cost attempts (honest peers vote again in a later attempt) but never halt the swarm;
- **late votes**: a withheld vote released after another θ was certified at its height makes a losing fork
  (``RoundChain.certified``), never a second canonical θ on the final ledger's chain or on a peer that follows it;
- **determinism**: the same seed gives the same trace; the same round events in other orders (each author's own
  order kept, as a ledger feed keeps it) give the same certificates; every peer finds the same governance state in
  force at every height.

The ``xfail(strict=True)`` tests pin down gaps the protocol has today (see their docstrings).

Goodput (Σ reached / Σ trained over honest peers; weighted: Σ staleness weight × samples / Σ trained), seeds 1-3 (4):
benign 1.000 / 1.000; slow peer 1.000 / 0.938; adversarial 0.82-1.00 / 0.57-0.70, inflated by the 700-4200 samples
per run that reached two certified θ (test_work_is_never_folded_twice_under_adversarial_schedules).
"""

from __future__ import annotations

import random

import pytest

from koinon.swarm.rounds import RoundChain
from tests.sim.roundnet import HUGE, RoundNet, Schedule, certified

ATTEMPTS = 40
SEEDS = [1, 2, 3]
BENIGN = Schedule(delay=0.4)
# every fault at once except inconsistent gathered views (HOSTILE adds them: members then decide differently)
ADVERSARIAL = Schedule(split=0.3, straggle=0.2, delay=1.5, hold=0.1, gov_lag=0.2)
HOSTILE = Schedule(split=0.3, straggle=0.2, partial=0.3, delay=1.5, hold=0.1, gov_lag=0.2)


def run(n: int, k: int, seed: int, schedule: Schedule, attempts: int = ATTEMPTS, **kw) -> RoundNet:
    net = RoundNet(n=n, k=k, seed=seed, schedule=schedule, **kw).run(attempts)
    net.check_safety()
    return net


# --- honest swarms ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_benign_swarm_certifies_most_attempts(seed):
    net = run(4, 3, seed, BENIGN)
    assert len(net.certs) >= ATTEMPTS // 2
    assert net.goodput() >= 0.9 and net.goodput(stat="reached_weighted") >= 0.9
    assert net.folded_twice() == 0


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_adversarial_schedules_stay_safe(seed):
    net = run(6, 3, seed, ADVERSARIAL)
    assert net.stats["action revert"] + net.stats["missed the deadline"] > 0  # the schedule did bite
    assert len(net.certs) > 0


@pytest.mark.parametrize("seed", SEEDS)
def test_inconsistent_gathered_views_stay_safe(seed):
    """A member's gather reaching only part of its group gives members different decisions: never two θ."""
    net = run(6, 3, seed, HOSTILE)
    assert net.stats["partial views"] > 0


@pytest.mark.parametrize("seed", SEEDS)
def test_slow_peer_work_folds_into_later_rounds(seed):
    """4 peers, one 3× slower: the others do not wait for it, and its stale work still reaches certified θ."""
    net = run(4, 3, seed, Schedule(delay=0.6), speeds={3: 3})
    slow = net.peers[3].proto
    assert slow.stats["trained"] >= (ATTEMPTS // 3 - 1) * 100
    assert len(net.certs) >= ATTEMPTS * 3 // 4  # the slow peer never holds a round back
    for p in net.honest:
        assert p.proto.goodput >= 0.9, f"{p.label}: goodput {p.proto.goodput:.3f} ({dict(p.proto.stats)})"
    assert net.goodput() >= 0.9 and net.goodput(stat="reached_weighted") >= 0.9
    assert net.folded_twice() == 0  # work given up and then certified after all (synced) is not folded again
    assert net.stats["action sync"] > 0  # the slow peer catches up by syncing, then contributes its folded work


@pytest.mark.parametrize("seed", SEEDS)
def test_groups_below_k_or_without_a_majority_certify_nothing(seed):
    assert run(4, 3, seed, Schedule(max_group=2, split=0.5)).certs == []  # never k = 3 contributors
    assert run(5, 2, seed, Schedule(max_group=2)).certs == []  # 2 of 5 founders is no majority


# --- Byzantine peers --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_a_huge_claimed_height_moves_nobody(seed):
    net = run(5, 3, seed, ADVERSARIAL, byz={4: {"huge"}})
    for p in net.honest:
        assert p.proto.height < HUGE and p.chain.height < HUGE and p.proto.attempt <= ATTEMPTS
    assert len(net.certs) > 0


@pytest.mark.parametrize("seed", SEEDS)
def test_a_fake_electorate_certifies_nothing(seed):
    net = run(6, 3, seed, ADVERSARIAL, byz={4: {"fake"}, 5: {"fake"}})
    assert all(not (c.signers <= net.colluders) for c in net.certs)


@pytest.mark.parametrize("seed", SEEDS)
def test_forged_gathers_and_round_events_never_count(seed):
    net = run(5, 3, seed, ADVERSARIAL, byz={4: {"mallory"}})
    assert net.forged_members and net.stats["forged claims dropped"] > 0
    assert len(net.certs) > 0


@pytest.mark.parametrize("seed", SEEDS)
def test_a_double_signer_gets_one_vote(seed):
    run(5, 3, seed, ADVERSARIAL, byz={4: {"double"}})


def test_a_colluding_minority_never_certifies_its_theta():
    """2 colluders of 5 (k = 3) sign their own θ at every height, padded with honest names to reach k (the electorate
    spans the last 3 rounds' contributors, so a split rarely makes them a majority of it: they try anyway)."""
    tried = 0
    for seed in [1, 2, 3, 4, 5]:
        net = run(5, 3, seed, ADVERSARIAL, byz={3: {"collude", "always"}, 4: {"collude", "always"}})
        tried += net.stats["collusion claims"]
    assert tried > 0, "the colluders never got a majority of an electorate: the scenario tests nothing"


def test_a_colluding_half_cannot_certify_alone():
    tried = 0
    for seed in [1, 2, 3, 4, 5]:
        net = run(4, 3, seed, ADVERSARIAL, byz={2: {"collude"}, 3: {"collude"}})
        tried += net.stats["collusion claims"]
    assert tried > 0


@pytest.mark.xfail(strict=True, reason="safety against colluders needs fewer colluders than k (min_contributors)")
def test_a_colluding_half_with_k_at_its_size_cannot_certify_alone():
    """With k = 2, a split {honest, c1, c2} certifies honestly and makes {honest, c1, c2} the next electorate, where
    c1 and c2 are a strict majority and k signers: they certify a θ of their choosing without anyone honest."""
    for seed in [1, 2, 3, 4, 5]:
        run(4, 2, seed, ADVERSARIAL, byz={2: {"collude"}, 3: {"collude"}})


# --- liveness gaps ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_split_votes_do_not_halt_the_swarm(seed):
    """Inconsistent gathered views (or a failure between apply and sign) split one height's votes between two θ with
    no strict majority for either. Votes are per attempt: the peers revert and vote again in a later attempt."""
    net = run(6, 3, seed, Schedule(partial=0.2), attempts=50)
    assert net.stats["action revert"] > 0 and len(net.certs) >= 25


@pytest.mark.parametrize("seed", SEEDS)
def test_a_silent_contributor_does_not_halt_the_swarm(seed):
    """Groups of 3 out of 4 founders are candidates (3 of 4). When the silent peer is in one, the 2 honest votes are
    no majority of 4: the peers revert after the certificate timeout and vote again in a later attempt, so the
    certified height keeps growing (slowly: see the xfail below)."""
    net = run(4, 3, seed, Schedule(max_group=3), attempts=90, byz={3: {"silent"}})
    assert len(net.certs) >= 10
    assert max(c.height for c in net.certs) == len(net.certs)
    assert net.folded_twice() == 0


@pytest.mark.xfail(
    strict=True, reason="a member that never signs is never left out: each group with it costs a timeout"
)
def test_a_silent_contributor_costs_at_most_half_the_rounds():
    """With ``max_group=3`` the silent peer is in 3 of 4 candidate groups; each such attempt waits ``cert_timeout``
    (2 attempts) and reverts. A silent-free swarm certifies 38 heights in 40 attempts; this one 4-8 (16-27 in 120).
    Nothing in the protocol learns to leave out a contributor whose round events never come."""
    net = run(4, 3, 1, Schedule(max_group=3), attempts=40, byz={3: {"silent"}})
    assert len(net.certs) >= 20


@pytest.mark.xfail(strict=True, reason="work folded again after a revert is counted twice when the late cert comes")
def test_work_is_never_folded_twice_under_adversarial_schedules():
    """Two ways work reaches two certified θ (``RoundNet.folded_twice``):

    - a peer applies θ, its certificate is held back past ``cert_timeout``, it reverts and folds the work into its
      next contribution (already sent when the late certificate arrives: ``synced(cert, chain)`` only catches work
      still pending; a merged ``Pending`` forgets the θ its parts went into);
    - inconsistent gathered views (``partial``): the others count a member's contribution, its own view decided
      otherwise, so it never applied that θ and keeps the work pending.
    """
    for seed in [1, 2, 3, 4]:
        assert run(6, 3, seed, ADVERSARIAL).folded_twice() == 0, seed


# --- late votes ---------------------------------------------------------------------------------------------------

WITHHELD = Schedule(max_group=3, delay=1.5)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_a_withheld_vote_released_late_makes_a_fork_not_a_second_canonical_theta(seed):
    """A member withholds its round event whenever the two honest members of its group of 3 cannot certify without
    it, and releases it once another attempt's θ was certified at that height: the old key then passes too. The
    final ledger's chain (its total order) keeps the first and remembers the late one as a fork, which
    ``certified()`` accepts and ``produced()`` does not; a peer whose chain took the late θ first rebuilds it from
    the final ledger and moves to the canonical θ (``RoundNet.follow_final``; safety: ``check_safety``)."""
    net = run(4, 3, seed, WITHHELD, byz={3: {"withhold"}})
    assert net.released and net.final._forks, "no late vote made a fork: the scenario tests nothing"
    for h, thetas in net.final._forks.items():
        canonical = net.final.certificate(h).theta
        for fork in thetas:
            assert fork != canonical and net.final.certified(h, fork) and not net.final.produced(fork)
            assert fork in net.honest_thetas  # an honest group made it: two honest members signed it
    for p in net.peers:
        assert certified(p.chain) == certified(net.final)


@pytest.mark.xfail(
    strict=True,
    reason="a chain that never defers to the final ledger's order diverges after a late vote: why ChainView.live "
    "rebuilds on the final chain at every new final cut",
)
def test_live_chains_agree_without_the_final_ledger():
    """The same scenario, peers keeping the chain they fed in arrival order: where the late vote reached a peer before
    the round events of the attempt that the final ledger certified first, that peer's chain certifies the other θ
    and never changes its mind (seeds 1 and 5 diverge for good)."""
    for seed in [1, 2, 3, 4, 5]:
        RoundNet(4, 3, seed, WITHHELD, byz={3: {"withhold"}}, follows_final=False).run(ATTEMPTS).check_safety()


# --- determinism ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2])
def test_same_seed_same_trace(seed):
    kw = dict(byz={5: {"huge"}}, speeds={1: 3})
    a = run(6, 3, seed, ADVERSARIAL, **kw)
    b = run(6, 3, seed, ADVERSARIAL, **kw)
    assert a.trace() == b.trace()
    assert a.certs, "nothing certified: the trace compares nothing"


@pytest.mark.parametrize("seed", SEEDS)
def test_round_events_in_any_order_give_the_same_certificates(seed):
    """The same certificates in every order that keeps each author's own, up to the first height where two attempts'
    keys both pass (a revert after a held-back certificate, then a re-vote): there each order keeps the first it
    saw, and the other order's θ is a fork it certified too."""
    net = run(6, 3, seed, ADVERSARIAL, byz={4: {"double"}, 5: {"collude"}})
    reference = net.final
    expected = certified(reference)
    by_author: dict[str, list] = {}
    for claim in net.claims_log:
        by_author.setdefault(claim.author, []).append(claim)
    rng = random.Random(seed)
    for _ in range(5):
        queues = [list(q) for q in by_author.values()]
        chain = RoundChain(net.founders, net.k)
        while queues:
            q = rng.choice(queues)
            chain.add(q.pop(0))
            if not q:
                queues.remove(q)
        got = certified(chain)
        for mine, theirs in zip(got, expected, strict=False):
            if mine != theirs:
                h = mine[0]
                assert reference.certified(h, mine[2]) and chain.certified(h, theirs[2]), f"height {h}: no fork"
                break
        else:
            assert got == expected
