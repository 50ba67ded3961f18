"""Many peers running the round protocol (swarm/rounds.py) on a fake network and clock: decisions only.

No torch, no hivemind, no sleeping: θ is bytes (the hash of the previous θ and the contributions that made it), a
peer's state is ``sha256(height ‖ θ)``, and "training" is a counter. One seeded :class:`random.Random` chooses every
schedule (who is ready, how the all-reduce groups split, who misses the deadline, whose gather reaches whom, how
long each round event takes to reach each peer), so a scenario replays exactly from its seed.

Each attempt:

1. round events whose delivery time has come reach their recipients' :class:`RoundChain` (each author's events in
   the order it signed them, as a ledger feed delivers them; signatures checked, forgeries dropped);
2. peers whose inner steps are done call ``trained`` and then ``before_gather`` until it says "go" or "wait"
   (performing "sync": copy the certificate's θ from a signer, and "revert": back to the last certified state);
3. the scheduler splits the ready peers into all-reduce groups; each member signs a gather; every member decides
   from the gathered dict *it* received (:func:`decide_group`), calls ``after_group``, and applies/signs as told;
4. the clock moves one attempt on.

Byzantine behaviours (``SimPeer.byz``): ``huge`` (claims height 10**9 in gathers and round events), ``fake`` (signs
gathers naming an electorate of itself and its colluders, k = 1), ``mallory`` (forges gathers and round events under
other members' ids), ``double`` (signs two round events with different θ at each height it records), ``collude``
(behaves, but signs a θ of the colluders' choosing whenever the colluders are a strict majority of the electorate — or,
with ``always``, at every height — its
chain expects at the next height, in an attempt number of their own), ``silent`` (contributes, applies, never signs
its round event: a crash after the all-reduce looks the same), ``withhold`` (signs its round events but keeps each one
back until its chain has certified another θ at that height, then releases it: the late vote that can make a losing
fork).

Round events carry the signer's attempt (``RoundClaim.attempt``): each (author, height, attempt) is one vote, so
honest peers that reverted vote again in a later attempt. Every trained batch has an id (``Pending.ref``), and every
θ an honest peer applies remembers the batches its contributors sent, so :meth:`RoundNet.folded_twice` counts work
that reached two certified θ.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections import Counter
from dataclasses import dataclass, field

from koinon.identity import verify_signature
from koinon.ledger import cbor
from koinon.swarm.rounds import (
    Certificate,
    GroupDecision,
    RoundChain,
    RoundClaim,
    RoundProtocol,
    decide_group,
    governance_in_force,
    sign_gather,
)
from tests.sim.fakenet import identity_from_seed

ATTEMPT_S = (
    10.0  # fake seconds per attempt (cert_timeout 20 s: a peer reverts after two attempts without a certificate)
)
SAMPLES = 100  # samples per inner phase
HUGE = 10**9
COLLUDE_ATTEMPT = 10**6  # colluders sign their θ for height h in attempt COLLUDE_ATTEMPT + h (an unused vote)
CUT_EVERY = 3  # attempts between final ledger cuts
CLAIM_DOMAIN = b"koinon-sim/round/v1"
SWARM = "sim-swarm"


def sha(*parts: bytes) -> bytes:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(4, "big") + p)
    return h.digest()


GENESIS = sha(b"genesis")


def state_of(height: int, theta: bytes) -> bytes:
    return sha(height.to_bytes(8, "big"), theta)


def claim_payload(c: RoundClaim) -> bytes:
    return CLAIM_DOMAIN + cbor.encode([c.author, c.height, c.attempt, c.prev, c.theta, c.state, list(c.contributors)])


def evil_theta(*parts: bytes) -> bytes:
    return sha(b"evil", *parts)


@dataclass(frozen=True)
class Schedule:
    """The adversary's knobs (probabilities per attempt unless said otherwise)."""

    split: float = 0.0  # the ready peers are split into 2-3 random groups
    max_group: int = 0  # groups never exceed this size (0: no bound)
    straggle: float = 0.0  # one ready peer misses the all-reduce deadline (it gathered, the group went without it)
    partial: float = 0.0  # in one group, one member's gather misses some other members' gathered dicts
    delay: float = 0.4  # a round event takes up to this many attempts to reach a peer
    hold: float = 0.0  # a round event is held back 3-6 more attempts on its way to one peer ("dropped for a while")
    gov_lag: float = 0.0  # a peer's view of the final ledger lags one cut behind this attempt


@dataclass
class SimPeer:
    label: str
    index: int
    chain: RoundChain
    proto: RoundProtocol
    speed: int = 1  # attempts per inner phase
    byz: frozenset[str] = frozenset()
    training_left: int = 1
    has_result: bool = False
    fallback: tuple = ()  # (height, state hex, θ, electorate) before our last optimistic apply
    voted: set[int] = field(default_factory=set)  # heights a colluder already signed at
    withheld: list[RoundClaim] = field(default_factory=list)  # a withholder's round events not released yet
    log: list[RoundClaim] = field(default_factory=list)  # round events received, in arrival order
    cuts_seen: int = 0

    @property
    def me(self) -> str:
        return self.proto.me

    @property
    def honest(self) -> bool:
        return not self.byz


def certified(chain: RoundChain) -> list[tuple]:
    """What a certificate decides (its signers are whichever strict majority arrived first: they may differ)."""
    return [(c.height, c.prev, c.theta, c.state, c.contributors, c.electorate) for c in chain.certs]


_IDENTITIES: dict[str, object] = {}


def identity(label: str):
    if label not in _IDENTITIES:
        _IDENTITIES[label] = identity_from_seed(label)
    return _IDENTITIES[label]


class RoundNet:
    def __init__(
        self,
        n: int,
        k: int,
        seed: int,
        schedule: Schedule,
        byz: dict[int, set[str]] | None = None,
        speeds: dict[int, int] | None = None,
        follows_final: bool = True,
    ) -> None:
        self.rng = random.Random(seed)
        self.schedule = schedule
        self.k = k
        self.now = 0.0
        self.n = 0  # attempts so far
        byz = byz or {}
        speeds = speeds or {}
        labels = [f"round-peer{i}" for i in range(n)]
        self.founders = frozenset(identity(x).member_id for x in labels)
        self.peers: list[SimPeer] = []
        for i, label in enumerate(labels):
            proto = RoundProtocol(identity(label).member_id)
            proto.state = state_of(0, GENESIS).hex()
            proto.theta = GENESIS
            proto.electorate = self.founders
            speed = speeds.get(i, 1)
            self.peers.append(
                SimPeer(
                    label,
                    i,
                    RoundChain(self.founders, k),
                    proto,
                    speed=speed,
                    byz=frozenset(byz.get(i, ())),
                    training_left=speed,
                )
            )
        self.by_id = {p.me: p for p in self.peers}
        self.honest = [p for p in self.peers if p.honest]
        self.colluders = frozenset(p.me for p in self.peers if p.byz & {"collude", "fake"})
        self.final = RoundChain(self.founders, k)  # the final ledger's chain: claims in one total order
        self.cuts: list[tuple[int, int]] = []  # (attempt made, height the final log certifies)
        self.queue: list[tuple] = []
        self.seq = 0
        self.fifo: dict[tuple[str, str], float] = {}  # (author, recipient) → last delivery time
        self.claims_log: list[RoundClaim] = []  # every well-signed claim, in signing order
        self.certified: dict[int, bytes] = {}  # height → θ, the first certificate seen anywhere
        self.final_log: list[RoundClaim] = []  # round events in the final ledger's total order
        self.follows_final = follows_final  # peers rebuild a chain that disagrees with the final ledger's
        self.honest_thetas: dict[bytes, tuple[int, GroupDecision]] = {}  # θ an honest member applied → (h, group)
        self.evil: set[bytes] = set()  # θ chosen by Byzantine peers
        self.forged_members: set[str] = set()
        self.gov_answers: list[tuple[int, int]] = []  # (height, index) answers an honest peer took as settled
        self.stats: Counter[str] = Counter()
        self.batches: dict[bytes, frozenset] = {}  # θ an honest peer applied → the trained batches folded into it
        self.released: list[tuple[float, RoundClaim]] = []  # (when, withheld round event released late)

    # --- round events on the network ----------------------------------------------------------------------------
    def sign_claim(self, p: SimPeer, claim: RoundClaim, key_of: SimPeer | None = None) -> None:
        sig = identity((key_of or p).label).sign(claim_payload(claim))
        s = self.schedule
        for r in [*self.peers, None]:  # None: the final ledger
            rid = r.me if r is not None else "final"
            if r is p:
                t = self.now
            else:
                t = self.now + self.rng.uniform(0, s.delay * ATTEMPT_S)
                if self.rng.random() < s.hold:
                    t += self.rng.randint(3, 6) * ATTEMPT_S
            t = max(t, self.fifo.get((claim.author, rid), 0.0))
            self.fifo[(claim.author, rid)] = t
            heapq.heappush(self.queue, (t, self.seq, rid, claim, sig))
            self.seq += 1
        try:
            verify_signature(claim.author, claim_payload(claim), sig)
            self.claims_log.append(claim)
        except Exception:
            pass

    def deliver(self, until: float) -> None:
        while self.queue and self.queue[0][0] <= until:
            _, _, rid, claim, sig = heapq.heappop(self.queue)
            try:
                verify_signature(claim.author, claim_payload(claim), sig)
            except Exception:
                self.stats["forged claims dropped"] += 1
                continue
            if rid == "final":
                chain = self.final
                self.final_log.append(claim)
            else:
                chain = self.by_id[rid].chain
                self.by_id[rid].log.append(claim)
            for cert in chain.add(claim):
                seen = self.certified.setdefault(cert.height, cert.theta)
                if seen != cert.theta:  # a re-vote in a later attempt reached a certificate too: first comes first
                    self.stats["another θ certified first"] += 1

    def follow_final(self, p: SimPeer) -> None:
        """A peer whose chain decided a height the final ledger decided otherwise rebuilds it: the final log's round
        events in their total order first, then what it received that is not final yet (its own order)."""
        final, mine = self.final.certs, p.chain.certs
        if all(a.theta == b.theta for a, b in zip(final, mine, strict=False)):
            return
        chain = RoundChain(self.founders, self.k)
        known = set(self.final_log)
        for claim in [*self.final_log, *(c for c in p.log if c not in known)]:
            chain.add(claim)
        p.chain = chain
        self.stats["chains rebuilt from the final ledger"] += 1
        # what it holds (or would revert to) may now be a losing fork's θ: the driver moves it to the chain's head
        # (RoundProtocol.before_gather only compares heights when it holds a certified θ)
        proto = p.proto
        height, theta = (
            (p.fallback[0], p.fallback[2]) if proto.optimistic_since is not None else (proto.height, proto.theta)
        )
        cert = chain.certificate(height) if height else None
        canonical = cert.theta if cert is not None else (GENESIS if height == 0 else None)
        if height <= chain.height and canonical == theta:
            return
        self.stats["peers moved off a losing fork"] += 1
        if chain.head is None:
            proto.reverted(0, state_of(0, GENESIS).hex(), GENESIS, self.founders)
        else:
            proto.synced(chain.head, chain)

    # --- one attempt --------------------------------------------------------------------------------------------
    def prepare(self, p: SimPeer) -> bool:
        """``before_gather`` until it says go (True) or wait (False), performing syncs and reverts."""
        for _ in range(4):
            act = p.proto.before_gather(p.chain, self.now)
            self.stats[f"action {act.kind}"] += 1
            if act.kind == "go":
                return True
            if act.kind == "wait":
                return False
            if act.kind == "sync":
                cert = act.cert
                assert cert is not None and cert.height < HUGE
                assert p.chain.certificate(cert.height) == cert
                # pending work that went into a θ the chain certified after all (we reverted from it) reached it
                p.proto.synced(cert, p.chain)
                assert not any(x.into is not None and p.chain.produced(x.into) for x in p.proto.pending)
                # a real peer fetches θ from a signer and checks it against the certificate's hashes
                assert state_of(cert.height, cert.theta) == cert.state
            elif act.kind == "revert":
                height, state, theta, electorate = p.fallback
                assert height == 0 or p.chain.certificate(height).theta == theta, "reverting to an uncertified θ"
                p.proto.reverted(height, state, theta, electorate)
        raise AssertionError(f"before_gather never settled on go/wait for {p.label}")

    def gov_index(self, p: SimPeer, height: int) -> int:
        view = [rho for _, rho in self.cuts[: p.cuts_seen]]
        index, settled = governance_in_force(view, height)
        if settled and p.honest:
            self.gov_answers.append((height, index))
        return index

    def gather(self, p: SimPeer, weight: int) -> dict:
        proto = p.proto
        fields = {
            "member": p.me,
            "swarm": SWARM,
            "attempt": proto.attempt,
            "height": proto.height,
            "state": proto.state,
            "electorate": sorted(proto.electorate),
            "k": self.k,
            "config": "cfg",
            "gov": self.gov_index(p, proto.height + 1) + 1,
            "excluded": [],
            "compression": "none",
            "reducer": "mean",
            "samples": weight,
        }
        if "huge" in p.byz:
            fields["height"] = HUGE
            fields["attempt"] = HUGE
        if "fake" in p.byz:
            fields["electorate"] = sorted(self.colluders)
            fields["k"] = 1
        return sign_gather(fields, identity(p.label).sign)

    def forge(self, mallory: SimPeer, victim: SimPeer, weight: int) -> dict:
        """A gather under ``victim``'s id, in mallory's group's key, with a huge sample count: signed by mallory."""
        g = self.gather(mallory, weight)
        g = {k: v for k, v in g.items() if k != "sig"}
        g["member"] = victim.me
        g["samples"] = 10**6
        self.forged_members.add(victim.me)
        return sign_gather(g, identity(mallory.label).sign)

    def groups(self, ready: list[SimPeer]) -> tuple[list[list[SimPeer]], list[SimPeer]]:
        s, rng = self.schedule, self.rng
        ready = ready[:]
        rng.shuffle(ready)
        missed = []
        if ready and rng.random() < s.straggle:
            missed.append(ready.pop())
        cuts = []
        if len(ready) >= 2 and rng.random() < s.split:
            cuts = sorted(rng.sample(range(1, len(ready)), min(len(ready) - 1, rng.randint(1, 2))))
        bounds = [0, *cuts, len(ready)]
        out = [ready[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
        if s.max_group:
            out = [g[i : i + s.max_group] for g in out for i in range(0, len(g), s.max_group)]
        return out, missed

    def apply(
        self,
        p: SimPeer,
        decision: GroupDecision,
        record: bool,
        contributions: dict[str, bytes],
        sent: dict[str, frozenset],
    ) -> None:
        proto = p.proto
        prev = proto.theta
        h = decision.height + 1
        theta = sha(b"theta", prev, *(sha(m.encode(), contributions[m]) for m in sorted(decision.contributors)))
        state = state_of(h, theta)
        if p.honest:
            assert decision.candidate and len(decision.contributors) >= self.k
            assert 2 * len(decision.contributors & decision.electorate) > len(decision.electorate)
            self.honest_thetas.setdefault(theta, (h, decision))
            self.batches.setdefault(theta, frozenset().union(*(sent[m] for m in decision.contributors)))
        p.fallback = (proto.height, proto.state, proto.theta, proto.electorate)
        proto.applied(h, state.hex(), theta, decision.contributors, self.now, signed=record)
        if not record or "silent" in p.byz:
            return
        contributors = tuple(sorted(decision.contributors))
        a = proto.attempt
        claim = RoundClaim(p.me, h, prev, theta, state, contributors, attempt=a)
        if "huge" in p.byz:
            bad = evil_theta(prev)
            claim = RoundClaim(p.me, HUGE, prev, bad, state_of(HUGE, bad), contributors, attempt=a)
            self.evil.add(claim.theta)
        if "collude" in p.byz and h in p.voted:
            return
        p.voted.add(h)
        if "double" in p.byz:
            bad = evil_theta(p.me.encode(), prev)
            self.evil.add(bad)
            other = RoundClaim(p.me, h, prev, bad, state_of(h, bad), contributors, attempt=a)
            first, second = (claim, other) if self.rng.random() < 0.5 else (other, claim)
            self.sign_claim(p, first)
            self.sign_claim(p, second)
            return
        if "withhold" in p.byz:
            p.withheld.append(claim)
            return
        self.sign_claim(p, claim)

    def release(self, p: SimPeer) -> None:
        """A withholder releases each held vote once its chain certified another θ at that height (a losing fork if
        the vote completes a second certificate there)."""
        for claim in p.withheld[:]:
            cert = p.chain.certificate(claim.height)
            if cert is not None and cert.theta != claim.theta:
                p.withheld.remove(claim)
                self.sign_claim(p, claim)
                self.released.append((self.now, claim))
            elif cert is not None:  # ours was certified without our vote: nothing to gain
                p.withheld.remove(claim)

    def collude(self, p: SimPeer) -> None:
        """Sign a θ of the colluders' choosing at the next height if they hold a majority of its electorate."""
        chain = p.chain
        h = chain.height + 1
        electorate = chain.electorate(h)
        majority = 2 * len(self.colluders & electorate) > len(electorate)
        if h in p.voted or not (majority or "always" in p.byz):
            return
        prev = chain.head.theta if chain.head else GENESIS
        bad = evil_theta(b"colluders", prev, h.to_bytes(8, "big"))
        self.evil.add(bad)
        honest = sorted(m for m in self.founders if m not in self.colluders)
        contributors = tuple(sorted([*self.colluders, *honest[: max(0, self.k - len(self.colluders))]]))
        p.voted.add(h)
        self.sign_claim(p, RoundClaim(p.me, h, prev, bad, state_of(h, bad), contributors, COLLUDE_ATTEMPT + h))
        self.stats["collusion claims"] += 1

    def attempt(self) -> None:
        self.n += 1
        rng, s = self.rng, self.schedule
        self.deliver(self.now)
        if self.n % CUT_EVERY == 0:
            self.cuts.append((self.n, self.final.height))
        for p in self.peers:
            if self.follows_final:
                self.follow_final(p)
            lag = 1 if rng.random() < s.gov_lag else 0
            p.cuts_seen = max(p.cuts_seen, sum(1 for n, _ in self.cuts if n <= self.n - lag * CUT_EVERY))
            if "collude" in p.byz:
                self.collude(p)
            if "withhold" in p.byz:
                self.release(p)
            if "huge" in p.byz and rng.random() < 0.5:
                bad = evil_theta(b"huge", self.n.to_bytes(8, "big"))
                self.evil.add(bad)
                self.sign_claim(p, RoundClaim(p.me, HUGE, p.proto.theta, bad, state_of(HUGE, bad), (), self.n))
            if "mallory" in p.byz and rng.random() < 0.5:
                victim = rng.choice(self.honest)
                h = victim.chain.height + 1
                bad = evil_theta(b"mallory", h.to_bytes(8, "big"))
                self.evil.add(bad)
                prev = victim.chain.head.theta if victim.chain.head else GENESIS
                claim = RoundClaim(victim.me, h, prev, bad, state_of(h, bad), tuple(sorted(self.founders)), self.n)
                self.sign_claim(victim, claim, key_of=p)
        order = self.peers[:]
        rng.shuffle(order)
        ready = []
        for p in order:
            if not p.has_result:
                p.training_left -= 1
                if p.training_left <= 0:
                    p.proto.trained(SAMPLES, frozenset({(p.index, self.n)}))
                    p.has_result = True
            if p.has_result and self.prepare(p):
                ready.append(p)
        groups, missed = self.groups(ready)
        contributions: dict[str, bytes] = {}
        weights: dict[str, int] = {}
        sent: dict[str, frozenset] = {}  # member → the trained batches its contribution folds
        for p in ready:
            keep, weights[p.me] = p.proto.contribution()
            sent[p.me] = frozenset().union(*(x.ref for x, _ in keep))
            if p.proto.in_flight is not None:
                p.proto.in_flight.ref = sent[p.me]
            contributions[p.me] = sha(p.me.encode(), self.n.to_bytes(8, "big"), weights[p.me].to_bytes(8, "big"))
        for p in missed:
            p.proto.after_group(None)
            self.stats["missed the deadline"] += 1
        for group in groups:
            self.run_group(group, weights, contributions, sent)
        for p in ready:
            p.has_result = False
            p.training_left = p.speed
            p.proto.attempt += 1
        self.now += ATTEMPT_S

    def run_group(
        self, group: list[SimPeer], weights: dict[str, int], contributions: dict[str, bytes], sent: dict[str, frozenset]
    ) -> None:
        rng, s = self.rng, self.schedule
        gathered = {p.me: self.gather(p, weights[p.me]) for p in group}
        views = {p.me: dict(gathered) for p in group}
        forged: dict[str, set[str]] = {p.me: set() for p in group}  # member → the forged ids in its view
        for m in (p for p in group if "mallory" in p.byz):
            outside = [v for v in self.honest if v.me not in gathered]
            inside = [v for v in group if v.honest]
            if outside and rng.random() < 0.5:  # a gather for an honest peer that is not in the group
                victim = rng.choice(outside)
                for view_of in views:
                    views[view_of][victim.me] = self.forge(m, victim, weights[m.me])
                    forged[view_of].add(victim.me)
            elif inside:  # a relay substitutes a group member's gather in the others' views
                victim = rng.choice(inside)
                for view_of in views:
                    if view_of != victim.me:
                        views[view_of][victim.me] = self.forge(m, victim, weights[m.me])
                        forged[view_of].add(victim.me)
        if len(group) >= 3 and rng.random() < s.partial:
            lost = rng.choice(group)
            for p in rng.sample(group, rng.randint(1, len(group) - 1)):
                if p is not lost:
                    views[p.me].pop(lost.me, None)
            self.stats["partial views"] += 1
        for p in group:
            items = list(views[p.me].items())
            rng.shuffle(items)  # arrival order
            decision = decide_group(dict(items), verify_signature)
            if decision is not None:
                assert not (forged[p.me] & decision.holders), "a forged gather counted"
                assert decision.height < HUGE or not decision.candidate
            if p.byz and decision is not None and (decision.height != p.proto.height or p.me not in decision.holders):
                decision = None  # a Byzantine peer's own key may not match the state its protocol object holds
            outcome = p.proto.after_group(decision)
            if decision is not None and decision.candidate:
                self.stats["candidate views"] += 1
            if outcome.apply:
                self.apply(p, decision, outcome.record, contributions, sent)

    # --- end of the run -----------------------------------------------------------------------------------------
    def settle(self) -> None:
        """Deliver every round event, then let every peer act on its chain (past every timeout), and finish."""
        self.deliver(float("inf"))
        self.now += 10 * ATTEMPT_S + 2 * self.peers[0].proto.cert_timeout
        for p in self.peers:
            p.cuts_seen = len(self.cuts)
            if self.follows_final:
                self.follow_final(p)
            if p.honest:
                assert self.prepare(p), f"{p.label} still waits after the settle"
            p.proto.finish()

    def run(self, attempts: int) -> RoundNet:
        for _ in range(attempts):
            self.attempt()
        self.settle()
        return self

    # --- what must hold -----------------------------------------------------------------------------------------
    @property
    def certs(self) -> list[Certificate]:
        return self.honest[0].chain.certs

    def trace(self) -> tuple:
        return (
            tuple(
                (c.height, c.theta.hex(), tuple(sorted(c.signers)), tuple(sorted(c.contributors))) for c in self.certs
            ),
            tuple(tuple(sorted(p.proto.stats.items())) for p in self.peers),
            tuple(sorted(self.stats.items())),
        )

    def goodput(self, peers: list[SimPeer] | None = None, stat: str = "reached") -> float:
        """Σ ``stat`` / Σ trained samples over ``peers`` (the honest ones by default)."""
        peers = peers if peers is not None else self.honest
        trained = sum(p.proto.stats["trained"] for p in peers)
        return sum(p.proto.stats[stat] for p in peers) / trained if trained else 1.0

    def folded_twice(self, chain: RoundChain | None = None) -> int:
        """Samples of trained batches that went into two or more θ certified on ``chain`` (the final ledger's)."""
        seen: Counter = Counter()
        for cert in (chain or self.final).certs:
            seen.update(self.batches.get(cert.theta, frozenset()))
        return SAMPLES * sum(1 for n in seen.values() if n > 1)

    def check_safety(self) -> None:
        certs = self.certs
        for p in self.peers:  # everyone's chain, Byzantine peers' included: the chain rule is the same for all
            assert certified(p.chain) == certified(self.honest[0].chain), f"{p.label}'s certified chain differs"
        assert certified(self.final) == certified(self.honest[0].chain), "the final ledger's chain differs"
        for h, cert in enumerate(certs, start=1):
            assert cert.height == h < HUGE
            assert cert.prev == (certs[h - 2].theta if h >= 2 else GENESIS), f"lineage break at height {h}"
            assert cert.theta not in self.evil, f"a θ chosen by Byzantine peers was certified at height {h}"
            assert cert.theta in self.honest_thetas, f"height {h}: certified θ no honest group applied"
            made_at, decision = self.honest_thetas[cert.theta]
            assert made_at == h and decision.candidate
            assert cert.contributors == decision.contributors
            assert len(cert.contributors) >= self.k and cert.electorate == decision.electorate
            assert 2 * len(cert.signers & cert.electorate) > len(cert.electorate)
            assert cert.state == state_of(h, cert.theta)
        for p in self.honest:
            proto = p.proto
            assert proto.optimistic_since is None
            assert proto.height == len(certs), f"{p.label} is at {proto.height}, the chain at {len(certs)}"
            assert proto.theta == (certs[-1].theta if certs else GENESIS), f"{p.label} holds an uncertified θ"
            assert proto.attempt <= self.n
        # governance: the same index for every peer at every height; a settled answer never changes
        final_view = [rho for _, rho in self.cuts]
        assert all(b >= a for a, b in zip(final_view, final_view[1:], strict=False))
        for h in range(len(certs) + GOVERNANCE_HEADROOM):
            answers = {governance_in_force([rho for _, rho in self.cuts[: p.cuts_seen]], h) for p in self.honest}
            assert len(answers) == 1, f"peers disagree on the governance state in force at height {h}"
        for h, index in self.gov_answers:
            assert governance_in_force(final_view, h)[0] == index, f"a settled governance answer changed at {h}"


GOVERNANCE_HEADROOM = 5
