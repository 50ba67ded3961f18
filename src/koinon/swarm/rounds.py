"""The round protocol's decisions, as pure functions of signed data and an injected clock (docs/training.md §2).

Nothing here imports torch or hivemind, reads the wall clock or touches the network: ``Peer`` (swarm/peer.py)
performs what these functions decide, and ``tests/sim/test_round_sim.py`` drives the same code on a fake network
and clock with adversarial schedules.

Words:

- **height** ``h``: how many rounds have been *certified* since genesis; θ_h is the swarm's θ after the h-th.
- **attempt**: a peer's round counter. Ledger ``commit`` events carry it (one commit per attempt counts for
  credit); reaching one height may take several attempts (a split, a missed all-reduce).
- **electorate** ``E_h``: the members whose word makes θ_h canonical: the charter's founders for ``h = 1``, after
  that the contributors of certified round ``h − 1``. It follows the swarm as peers come and go.
- **gather**: what each member of an all-reduce group tells the others before the exchange, *signed* with its
  member key (:func:`sign_gather`): the state it starts from (height, state hash), the electorate and ``k`` it
  believes in, the configuration and governance state in force, and its samples.
- **key**: the part of a gather that members must share to average together. The group's key is the one held by
  a candidate group if any, then by most members, then the smallest hash of the key (:func:`decide_group`):
  never the highest claimed height, never the order in which records arrived.
- **candidate group**: at least ``k`` contributors (members holding the key with samples > 0, not expelled)
  that include a strict majority of ``E_h``. Only a candidate group's members apply its average.
- **certificate** (:class:`RoundChain`, in ``certificates.py``): ``round`` events for height ``h`` that agree on (θ_{h−1}, θ_h, state,
  contributors), signed by contributors that are a strict majority of ``E_h``, with at least ``k`` contributors.
  Each author's *first* round event at a height counts, later ones never: two different θ_h would need two
  strict majorities of the same electorate, which share a member who signed both, so at most one θ_h is ever
  certified, whatever the order events arrive in, and a minority of ``E_h`` certifies nothing.
- **pending contribution**: a peer's pseudo-gradient that did not reach a certified θ (its group was no candidate,
  it missed the all-reduce, or its optimistic result was not certified). It is folded into the peer's next
  contribution with weight ``1 / (1 + staleness)`` (staleness: certified rounds since its base), and dropped
  beyond ``MAX_STALENESS`` (:func:`fold_weights`).
- **governance in force** for the round that makes θ_h: the state after the last final cut ``i`` whose final log
  certifies a height ``ρ_i ≤ h − GOV_DELAY`` (:func:`governance_in_force`). A pure function of final ledger data:
  every peer switches at the same height, whatever its members report.

The :class:`RoundProtocol` state machine ties these together for one peer.
"""

from __future__ import annotations

import hashlib
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from koinon.ledger import cbor

# --- limits on what a gather may carry (it comes off the network) -----------------------------------------------
MAX_ELECTORATE = 4096
MAX_GATHER_BYTES = 512 * 1024
MAX_NAME = 128
MAX_STALENESS = 4  # a pending contribution older than this many certified rounds is dropped (counted as lost)
GRACE = 1.0  # rounds the others wait past the median announced ETA for a slow peer (all_reduce_time)
GATHER_DOMAIN = b"koinon/gather/v1"

GATHER_FIELDS = (
    "member",
    "swarm",
    "attempt",
    "height",
    "state",
    "electorate",
    "k",
    "config",
    "gov",
    "excluded",
    "compression",
    "reducer",
    "samples",
)


def _count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 63


def _name(v: object) -> bool:
    return isinstance(v, str) and 0 < len(v) <= MAX_NAME


def _names(v: object) -> bool:
    return isinstance(v, (list, tuple)) and len(v) <= MAX_ELECTORATE and all(_name(x) for x in v)


def gather_payload(fields: Mapping[str, object]) -> bytes:
    """The bytes a gather's signature covers: a domain tag and the canonical CBOR of its fields (no ``sig``)."""
    body = {k: (list(v) if isinstance(v, tuple) else v) for k, v in fields.items() if k != "sig"}
    return GATHER_DOMAIN + cbor.encode(body)


def sign_gather(fields: Mapping[str, object], sign: Callable[[bytes], bytes]) -> dict:
    """``fields`` (the keys in ``GATHER_FIELDS``, lists sorted) plus ``sig``, the member's signature over them."""
    out = {k: (sorted(v) if k in ("electorate", "excluded") else v) for k, v in fields.items()}
    missing = [k for k in GATHER_FIELDS if k not in out]
    if missing:
        raise ValueError(f"a gather needs {', '.join(missing)}")
    out["sig"] = sign(gather_payload(out))
    return out


@dataclass(frozen=True)
class Gather:
    """One member's well-formed, correctly signed gather."""

    member: str
    swarm: str
    attempt: int
    height: int
    state: str
    electorate: tuple[str, ...]
    k: int
    config: str
    gov: int
    excluded: tuple[str, ...]
    compression: str
    reducer: str
    samples: int

    @property
    def key(self) -> tuple:
        """What members must share to average together (everything but who they are, the attempt and samples)."""
        return (
            self.swarm,
            self.height,
            self.state,
            self.electorate,
            self.k,
            self.config,
            self.gov,
            self.excluded,
            self.compression,
            self.reducer,
        )


def _key_hash(key: tuple) -> bytes:
    return hashlib.sha256(cbor.encode([list(x) if isinstance(x, tuple) else x for x in key])).digest()


def parse_gather(peer: str, info: object, verify: Callable[[str, bytes, bytes], None]) -> tuple[Gather | None, str]:
    """(the gather, "") or (None, why it is refused). Never raises: the data comes off the network.

    ``verify(member, message, signature)`` raises unless the signature is valid (``identity.verify_signature``).
    The member must be the peer id it came from: member id = libp2p identity, so nobody speaks for another.
    """
    if not isinstance(info, dict):
        return None, f"gathered metadata is a {type(info).__name__}, not a dict"
    missing = [k for k in (*GATHER_FIELDS, "sig") if k not in info]
    if missing:
        return None, f"gathered metadata lacks {', '.join(missing)}"
    if len(info) != len(GATHER_FIELDS) + 1:
        return None, "gathered metadata has unknown fields"
    if info["member"] != peer:
        return None, "gathered member id is not its peer id"
    for name in ("attempt", "height", "k", "gov", "samples"):
        if not _count(info[name]):
            return None, f"gathered {name} is not a non-negative int"
    for name in ("swarm", "state", "config", "compression", "reducer"):
        if not _name(info[name]):
            return None, f"gathered {name} is not a short string"
    for name in ("electorate", "excluded"):
        if not _names(info[name]) or list(info[name]) != sorted(set(info[name])):
            return None, f"gathered {name} is not a sorted list of member ids"
    if info["k"] < 1:
        return None, "gathered k is 0"
    if not isinstance(info["sig"], bytes) or len(info["sig"]) != 64:
        return None, "gathered sig is not a 64-byte signature"
    try:
        payload = gather_payload(info)
    except (TypeError, ValueError) as e:
        return None, f"gathered metadata does not encode: {e}"
    if len(payload) > MAX_GATHER_BYTES:
        return None, f"gathered metadata is {len(payload)} bytes, over {MAX_GATHER_BYTES}"
    try:
        verify(peer, payload, info["sig"])
    except Exception:
        return None, "gathered metadata is not signed by its member"
    return (
        Gather(
            member=peer,
            swarm=info["swarm"],
            attempt=info["attempt"],
            height=info["height"],
            state=info["state"],
            electorate=tuple(info["electorate"]),
            k=info["k"],
            config=info["config"],
            gov=info["gov"],
            excluded=tuple(info["excluded"]),
            compression=info["compression"],
            reducer=info["reducer"],
            samples=info["samples"],
        ),
        "",
    )


def is_candidate(contributors: Iterable[str], electorate: Iterable[str], k: int) -> bool:
    """At least ``k`` contributors, including a strict majority of the electorate (when it is not empty)."""
    c, e = set(contributors), set(electorate)
    return len(c) >= k and 2 * len(c & e) > len(e)


@dataclass(frozen=True)
class GroupDecision:
    """What every member of one all-reduce group decides from the same gathered data.

    ``holders``: members holding the group's key (they apply the result if the group is a candidate).
    ``contributors``: holders with samples > 0 that are not expelled: their parts count (weight = samples).
    ``candidate``: the group may make θ_{height+1} (:func:`is_candidate`).
    ``attempt``: the median attempt of the holders (peers align their attempt counters on it; a single member
    claiming a huge attempt moves nothing).
    """

    swarm: str
    height: int
    state: str
    electorate: frozenset[str]
    k: int
    config: str
    gov: int
    excluded: frozenset[str]
    compression: str
    reducer: str
    holders: frozenset[str]
    contributors: frozenset[str]
    candidate: bool
    attempt: int


def parse_all(
    gathered: Mapping[str, object], verify: Callable[[str, bytes, bytes], None]
) -> tuple[dict[str, Gather], dict[str, str]]:
    """(well-formed gathers by member, why each other member was refused)."""
    valid: dict[str, Gather] = {}
    refused: dict[str, str] = {}
    for peer, info in gathered.items():
        parsed, reason = parse_gather(peer, info, verify)
        if parsed is None:
            refused[peer] = reason
        else:
            valid[peer] = parsed
    return valid, refused


def decide_group(gathered: Mapping[str, object], verify: Callable[[str, bytes, bytes], None]) -> GroupDecision | None:
    """Who counts in this all-reduce and whether its result may become θ_{height+1}; None if no gather is valid.

    Pure and order-independent: every member computes the same decision from the same gathered data. Among the keys
    the valid gathers hold, the group's key is the first by (candidate first, more holders, smaller key hash).
    """
    valid, _ = parse_all(gathered, verify)
    if not valid:
        return None
    by_key: dict[tuple, list[Gather]] = {}
    for g in valid.values():
        by_key.setdefault(g.key, []).append(g)

    def contributors(key: tuple, holders: list[Gather]) -> frozenset[str]:
        excluded = set(key[7])
        return frozenset(g.member for g in holders if g.samples > 0 and g.member not in excluded)

    def rank(key: tuple) -> tuple:
        holders = by_key[key]
        return (not is_candidate(contributors(key, holders), key[3], key[4]), -len(holders), _key_hash(key))

    key = min(by_key, key=rank)
    holders = by_key[key]
    counted = contributors(key, holders)
    return GroupDecision(
        swarm=key[0],
        height=key[1],
        state=key[2],
        electorate=frozenset(key[3]),
        k=key[4],
        config=key[5],
        gov=key[6],
        excluded=frozenset(key[7]),
        compression=key[8],
        reducer=key[9],
        holders=frozenset(g.member for g in holders),
        contributors=counted,
        candidate=is_candidate(counted, key[3], key[4]),
        attempt=int(statistics.median_low(g.attempt for g in holders)),
    )


def left_out(
    gathered: Mapping[str, object], decision: GroupDecision, verify: Callable[[str, bytes, bytes], None]
) -> dict[str, str]:
    """Why each member of ``gathered`` that is not a contributor was left out (member → reason)."""
    valid, reasons = parse_all(gathered, verify)
    for peer, g in valid.items():
        if peer in decision.contributors:
            continue
        if peer in decision.excluded:
            reasons[peer] = "expelled by governance"
        elif g.height != decision.height or g.state != decision.state:
            reasons[peer] = f"starts from height {g.height} state {g.state[:12]}, the group from {decision.height}"
        elif g.key != _decision_key(decision):
            reasons[peer] = "another configuration, governance state or electorate than the group's"
        else:
            reasons[peer] = "contributes no samples"
    return reasons


def _decision_key(d: GroupDecision) -> tuple:
    return (
        d.swarm,
        d.height,
        d.state,
        tuple(sorted(d.electorate)),
        d.k,
        d.config,
        d.gov,
        tuple(sorted(d.excluded)),
        d.compression,
        d.reducer,
    )


# --- certificates (certificates.py) and the governance switch: re-exported, the protocol's vocabulary is here -----
from koinon.swarm.certificates import (  # noqa: E402, F401
    CLAIM_WINDOW,
    ELECTORATE_WINDOW,
    GOV_DELAY,
    Certificate,
    RoundChain,
    RoundClaim,
    governance_in_force,
)


def staleness_weight(staleness: int) -> float:
    """Weight of a pseudo-gradient computed ``staleness`` certified rounds ago: 1/(1+s), 0 beyond MAX_STALENESS.

    Stale updates are down-weighted as in asynchronous local-SGD (e.g. Liu et al. 2024, "Asynchronous Local-SGD
    Training for Language Modeling", arXiv 2401.09135, and Decoupled DiLoCo's grace window for late workers).
    """
    if staleness < 0:
        raise ValueError(f"staleness {staleness} < 0")
    return 0.0 if staleness > MAX_STALENESS else 1.0 / (1 + staleness)


@dataclass
class Pending:
    """A contribution that has not reached a certified θ yet. ``ref`` is the caller's handle on its tensor."""

    base: int  # the height whose θ it was computed from
    samples: int
    ref: object = None
    weight: float = 0.0  # Σ staleness weight × samples it went into an all-reduce with (0 until sent)
    into: bytes | None = None  # the θ it was applied into, if its group was a candidate (certified or not)


def fold_weights(pending: Sequence[Pending], height: int) -> tuple[list[tuple[Pending, float]], list[Pending]]:
    """([(pending contribution, weight)] to fold into a contribution from θ_height, [dropped as too stale])."""
    keep, drop = [], []
    for p in pending:
        w = staleness_weight(max(0, height - p.base))
        (keep if w > 0 else drop).append((p, w) if w > 0 else p)
    return keep, drop


def all_reduce_time(
    now: float, etas: Sequence[float], round_seconds: float, grace: float = GRACE, cap: float = 30.0
) -> float:
    """When to start the all-reduce, from the ETAs peers announced for this height (unsigned hints: they only
    steer *when*, never *which* θ): when the last of them expects to be done, but at most ``grace`` rounds after the
    median ETA (a peer three times slower than the others does not hold them back; its work folds into a later
    round, Decoupled-DiLoCo-style), and at most ``cap`` seconds from now (a peer announcing an ETA far away stalls
    nobody)."""
    if not etas:
        return now
    latest = max(etas)
    bound = statistics.median_low(etas) + grace * max(round_seconds, 0.0)
    return max(now, min(latest, bound, now + cap))


# --- one peer's protocol state ------------------------------------------------------------------------------------
@dataclass
class Action:
    """What the driver must do before the next all-reduce."""

    kind: str  # "go" | "wait" | "revert" | "sync"
    cert: Certificate | None = None
    reason: str = ""


@dataclass
class Outcome:
    """What the driver must do after an all-reduce (or after failing to find a group)."""

    apply: bool  # apply the group's average with the outer step (θ_{height+1}, optimistic until certified)
    record: bool  # sign a round event for it
    pending: bool  # keep our contribution as pending
    reason: str = ""


@dataclass
class RoundProtocol:
    """One peer's view of the round protocol: where it stands, what it contributed, and what to do next.

    The driver calls :meth:`before_gather` once its inner steps are done (with its ledger's chain and the clock),
    :meth:`after_group` with the group's decision, :meth:`certified`/:meth:`synced`/:meth:`reverted` when it acted.
    """

    me: str
    height: int = 0
    state: str = ""  # hash of (height, θ, momentum) the peer holds
    theta: bytes = b""
    electorate: frozenset[str] = frozenset()
    attempt: int = 0
    optimistic_since: float | None = None  # clock time we applied an uncertified result (None: we hold a certified)
    last_signed: int = 0  # the last attempt we signed a round event in (one vote per attempt)
    in_flight: Pending | None = None  # our contribution in the last all-reduce (folds + fresh)
    pending: list[Pending] = field(default_factory=list)
    cert_timeout: float = 20.0
    stats: Counter = field(default_factory=Counter)  # trained / reached / dropped samples, for goodput

    # -- before the all-reduce -----------------------------------------------------------------------------------
    def before_gather(self, chain: RoundChain, now: float) -> Action:
        """Never build on a θ the ledger has not certified: wait for our optimistic result's certificate, revert when
        it does not come, and sync when the certified chain is ahead of us or certified another θ at our height."""
        head = chain.height
        if self.optimistic_since is not None:
            cert = chain.certificate(self.height)
            if cert is not None and cert.state.hex() == self.state:
                self.certified(cert, chain.electorate(self.height + 1))
            elif cert is not None:
                return Action("sync", chain.head, f"height {self.height} was certified with another θ")
            elif head > self.height:
                return Action("sync", chain.head, f"the certified chain is at height {head}")
            elif now - self.optimistic_since < self.cert_timeout:
                return Action("wait", None, f"waiting for the certificate of height {self.height}")
            else:
                return Action("revert", None, f"height {self.height} was not certified within {self.cert_timeout} s")
        if self.height > 0:
            ours = chain.certificate(self.height)
            if ours is None:  # our chain lost the height we hold: it now follows the final ledger, which lags
                return Action("wait", None, f"waiting for the ledger to certify height {self.height} again")
            if ours.state.hex() != self.state:  # we hold a θ that lost (a fork decided by a late vote)
                return Action("sync", chain.head, f"height {self.height} is certified with another θ than ours")
        if head > self.height:
            return Action("sync", chain.head, f"the certified chain is at height {head}, we are at {self.height}")
        return Action("go")

    def trained(self, samples: int, ref: object = None) -> None:
        """Our inner steps from θ_height produced a pseudo-gradient worth ``samples``: it is pending until it reaches a
        certified θ (call this before :meth:`before_gather`, so that a sync or revert finds it pending)."""
        self.stats["trained"] += samples
        if samples:
            self.pending.append(Pending(self.height, samples, ref))

    def contribution(self) -> tuple[list[tuple[Pending, float]], int]:
        """The pending contributions to send now, each with its staleness weight, and the total weight (samples).
        The caller sends Σ wᵢ·sᵢ·Δᵢ / Σ wᵢ·sᵢ with weight Σ wᵢ·sᵢ; contributions too stale to count are dropped
        and counted as lost."""
        keep, drop = fold_weights(self.pending, self.height)
        for p in drop:
            self.stats["dropped"] += p.samples
        self.pending = []
        weight = int(sum(w * p.samples for p, w in keep))
        # the combined contribution keeps the oldest base among its parts, so work that keeps failing ages and is
        # eventually dropped instead of being folded forever
        if keep:
            self.in_flight = Pending(min(p.base for p, _ in keep), sum(p.samples for p, _ in keep), weight=weight)
        else:
            self.in_flight = None
        return keep, weight

    # -- after the all-reduce ------------------------------------------------------------------------------------
    def after_group(self, decision: GroupDecision | None) -> Outcome:
        mine = decision is not None and self.me in decision.holders
        if mine:  # align on our own key's holders only: a lone member of another key is its own median
            self.attempt = max(self.attempt, decision.attempt)
        if mine and decision.candidate:
            assert decision.height == self.height, "a candidate key we hold starts from our own height"
            counted = self.me in decision.contributors
            if not counted and self.in_flight is not None and self.in_flight.samples:
                self._keep_in_flight()  # expelled: our work did not count; keep it for when it may
            return Outcome(apply=True, record=counted and self.attempt > self.last_signed, pending=not counted)
        self._keep_in_flight()
        if decision is None:
            return Outcome(False, False, True, "no group")
        if not mine:
            return Outcome(False, False, True, "our state, configuration or electorate is not the group's")
        return Outcome(
            False, False, True, f"not a candidate: {len(decision.contributors)} contributors, k = {decision.k}"
        )

    def _keep_in_flight(self) -> None:
        if self.in_flight is not None and self.in_flight.samples:
            self.pending.append(self.in_flight)
        self.in_flight = None

    def applied(
        self, height: int, state: str, theta: bytes, electorate: Iterable[str], now: float, signed: bool
    ) -> None:
        """We applied a candidate group's result: θ_height, optimistic until its certificate is seen."""
        self.height, self.state, self.theta = height, state, theta
        self.electorate = frozenset(electorate)
        self.optimistic_since = now
        if self.in_flight is not None:
            self.in_flight.into = theta
        if signed:
            self.last_signed = max(self.last_signed, self.attempt)

    def certified(self, cert: Certificate, electorate: Iterable[str] | None = None) -> None:
        self.optimistic_since = None
        self.electorate = frozenset(cert.contributors if electorate is None else electorate)
        if self.in_flight is not None:
            self._reached(self.in_flight)
            self.in_flight = None

    def _reached(self, p: Pending) -> None:
        self.stats["reached"] += p.samples
        self.stats["reached_weighted"] += round(p.weight)

    def synced(self, cert: Certificate, chain: RoundChain | None = None) -> None:
        """We adopted certified θ_{cert.height} from a signer (checked against the certificate's hashes). Pending
        work that went into a θ the chain certified after all (we had given it up) reached it: not folded again."""
        self._keep_in_flight()
        if chain is not None:
            done = [p for p in self.pending if p.into is not None and chain.produced(p.into)]
            for p in done:
                self._reached(p)
            self.pending = [p for p in self.pending if p not in done]
        self.height, self.state, self.theta = cert.height, cert.state.hex(), cert.theta
        self.electorate = chain.electorate(cert.height + 1) if chain is not None else cert.contributors
        self.optimistic_since = None

    def reverted(self, height: int, state: str, theta: bytes, electorate: Iterable[str]) -> None:
        """We went back to our last certified state; the contribution of the uncertified round is pending again."""
        self._keep_in_flight()
        self.height, self.state, self.theta = height, state, theta
        self.electorate = frozenset(electorate)
        self.optimistic_since = None

    def finish(self) -> None:
        """End of the run: whatever is still pending is lost."""
        self._keep_in_flight()
        self.stats["unfolded"] += sum(p.samples for p in self.pending)

    @property
    def goodput(self) -> float:
        return self.stats["reached"] / self.stats["trained"] if self.stats["trained"] else 1.0
