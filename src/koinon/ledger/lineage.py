"""θ lineage read off the ledger: the certified rounds that signed ``round`` events make (docs/ledger.md §3, §8).

The certificate rule itself is :class:`koinon.swarm.rounds.RoundChain` (docs/training.md §2); this module feeds it
from the ledger:

- :func:`claim_of`: one ``round`` event as the rule reads it (:class:`~koinon.swarm.rounds.RoundClaim`).
- :func:`new_round_chain`: an empty chain under a charter: E_1 = its founders, ``k`` = its ``min_contributors``
  rule (frozen at genesis; the default where the charter has none or a bad one).
- :func:`round_chain`: a chain fed the round events of a store (insertion order) or of any sequence of events.
- :func:`replay_final` (with :func:`break_reason`, :func:`certificate_dict`): the audit's strict lineage check of
  the final log (docs/ledger.md §8).
- :class:`CutHeights` / :func:`cut_heights`: the certified height after each final cut, from the final log in its
  total order: the input of :func:`koinon.swarm.rounds.governance_in_force`. Incremental: a running peer calls
  :meth:`CutHeights.follow_chain` after every round and only the events of new final cuts are read.

Only decisions every peer must take identically (the governance switch, the audit) use the *final* log; a chain
fed whatever a store holds only tells a peer whom to sync from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from koinon.governance.rules import rules_or_defaults
from koinon.ledger.event import Event
from koinon.swarm.rounds import Certificate, RoundChain, RoundClaim

if TYPE_CHECKING:
    from koinon.ledger.cuts import Chain
    from koinon.ledger.store import LedgerStore


def claim_of(event: Event) -> RoundClaim:
    """The :class:`RoundClaim` a ``round`` event makes (ValueError for another kind)."""
    if event.kind != "round":
        raise ValueError(f"{event.short()} is a {event.kind} event, not a round event")
    b = event.body
    return RoundClaim(
        author=event.author,
        height=int(b["height"]),
        prev=bytes(b["prev_theta"]),
        theta=bytes(b["theta"]),
        state=bytes(b["state"]),
        contributors=tuple(b["participants"]),  # the store only accepts sorted member ids
        attempt=int(b["round"]),
    )


def round_body(claim: RoundClaim, *, samples: int, sent: int, config: bytes, gov: int | None) -> dict:
    """The body of the ``round`` event that makes ``claim`` (the inverse of :func:`claim_of`), with the round's
    samples, the bytes its author sent since its last round event, the configuration hash and the final cut index
    whose governance state was in force (None: the charter)."""
    return {
        "round": claim.attempt,
        "height": claim.height,
        "theta": claim.theta,
        "prev_theta": claim.prev,
        "state": claim.state,
        "participants": list(claim.contributors),
        "samples": samples,
        "bytes": sent,
        "config": config,
        "gov": gov,
    }


def founders_of(charter: Event) -> frozenset[str]:
    """E_1: the charter's founders (its author where the list is empty)."""
    return frozenset(charter.body.get("founders") or [charter.author])


def new_round_chain(charter: Event) -> RoundChain:
    """An empty :class:`RoundChain` under ``charter``: its founders elect height 1, its ``min_contributors`` is k."""
    if charter.kind != "charter":
        raise ValueError(f"{charter.short()} is a {charter.kind} event, not a charter")
    rules, _ = rules_or_defaults(charter.body.get("rules"))
    return RoundChain(founders_of(charter), rules.min_contributors)


def round_chain(source: LedgerStore | Iterable[Event], charter: Event | None = None) -> RoundChain:
    """A :class:`RoundChain` fed every round event of ``source``, in its order.

    ``source`` is a store (its events in insertion order; ``charter`` defaults to the store's) or events in any
    order that respects each author's own (``charter`` defaults to the first charter among them). For honest data
    every such order gives the same certificates; to decide anything every peer must agree on, pass the final log
    in its total order."""
    from koinon.ledger.store import LedgerStore

    if isinstance(source, LedgerStore):
        charter = charter or source.charter()
        events: Iterable[Event] = source.iter_events("round")
    else:
        events = list(source)
        charter = charter or next((e for e in events if e.kind == "charter"), None)
    if charter is None:
        raise ValueError("no charter: the round chain needs the founders and min_contributors")
    chain = new_round_chain(charter)
    for e in events:
        if e.kind == "round":
            chain.add(claim_of(e))
    return chain


class CutHeights:
    """The height the final log certifies through each final cut, fed the final log in its total order.

    ``heights[i]`` is the height certified by the final events through final cut ``i`` (non-decreasing): the input
    of :func:`koinon.swarm.rounds.governance_in_force`. It keeps the :class:`RoundChain` and one int per final cut,
    never the events. ``position`` is how many events of the final log it has read (the charter is event 0).
    """

    def __init__(self, charter: Event) -> None:
        self.chain = new_round_chain(charter)
        self.heights: list[int] = []
        self.position = 0

    @property
    def height(self) -> int:
        """The height certified by the final events read so far."""
        return self.chain.height

    def add(self, event: Event) -> list[Certificate]:
        """Read the next event of the final log (any kind); returns the certificates it completed."""
        self.position += 1
        return self.chain.add(claim_of(event)) if event.kind == "round" else []

    def end_cut(self) -> int:
        """A final cut ends after the events read so far: record and return the height it certifies."""
        self.heights.append(self.chain.height)
        return self.chain.height

    def follow(self, ids: Sequence[bytes], cut_sizes: Sequence[int], get: Callable[[bytes], Event | None]) -> list[int]:
        """Read the final cuts not read yet: ``ids`` is the final log (event ids in total order, from the charter),
        ``cut_sizes`` the ``size`` of every final cut, oldest first (where each ends in the log), ``get`` fetches an
        event by id. Returns :attr:`heights`. ValueError if the sizes do not extend what was read (a final log never
        changes), KeyError if an event is missing."""
        for size in cut_sizes[len(self.heights) :]:
            size = int(size)
            if size < self.position or size > len(ids):
                raise ValueError(
                    f"final cut {len(self.heights)} ends at {size}, but {self.position} events were read "
                    f"and the final log has {len(ids)}"
                )
            for event_id in ids[self.position : size]:
                event = get(event_id)
                if event is None:
                    raise KeyError(f"event {event_id.hex()[:16]} of the final log is missing")
                self.add(event)
            self.end_cut()
        return self.heights

    def follow_chain(self, chain: Chain) -> list[int]:
        """:meth:`follow` a ledger :class:`~koinon.ledger.cuts.Chain`'s final cuts (cheap when none is new)."""
        final = chain.final_cuts()
        if len(final) > len(self.heights):
            ids = chain.order_through(final[-1].id)
            self.follow(ids, [int(c.event.body["size"]) for c in final], chain.store.get)
        return self.heights


def cut_heights(events: Iterable[Event], cut_sizes: Sequence[int], charter: Event | None = None) -> list[int]:
    """The height certified through each final cut, from the final log ``events`` (total order, from the charter)
    and the ``size`` of every final cut, oldest first. ``charter`` defaults to the log's first event."""
    events = list(events)
    charter = charter or (events[0] if events else None)
    if charter is None:
        raise ValueError("no charter: an empty final log")
    tracker = CutHeights(charter)
    by_id = {e.id: e for e in events}
    return list(tracker.follow([e.id for e in events], cut_sizes, by_id.get))


@dataclass
class Lineage:
    chain: RoundChain | None  # the certificates of the final log (None: no charter)
    breaks: list[dict]
    uncertified: set[bytes]  # final round events that agree with no certificate
    cut_heights: list[int]


def replay_final(ids: Sequence[bytes], by_id: dict[bytes, Event], final: Sequence, charter: Event | None) -> Lineage:
    """For the audit (docs/ledger.md §8): ``ids`` the final log in total order, ``final`` its final cuts. Replay the final log in its total order through the certificate rule (koinon.swarm.rounds.RoundChain).

    A final round event for height h ≥ 2 must start from the θ that the final events before it certified at
    h − 1; one that does not is a lineage break. Height 1 starts from the genesis θ, which nothing certifies: any
    prev θ is accepted there, but a height-1 certificate still needs a majority of the founders to agree."""
    if charter is None:
        return Lineage(None, [], set(), [])
    tracker = CutHeights(charter)
    ends = [int(c.event.body["size"]) for c in final]
    breaks: list[dict] = []
    claims = []
    next_cut = 0
    for p, event_id in enumerate(ids):
        e = by_id[event_id]
        if e.kind == "round":
            claim = claim_of(e)
            claims.append((e.id, claim))
            if claim.height >= 2:
                cert = tracker.chain.certificate(claim.height - 1)
                # the canonical θ, or a losing fork's that a late vote also certified (RoundChain.certified): a
                # peer that built on that fork before the late vote decided it is not the one to blame
                if not tracker.chain.certified(claim.height - 1, claim.prev):
                    breaks.append(
                        {
                            "position": p,
                            "id": e.id.hex(),
                            "author": e.author,
                            "round": int(e.body["round"]),
                            "height": claim.height,
                            "prev_theta": claim.prev.hex(),
                            "expected": cert.theta.hex() if cert is not None else None,
                        }
                    )
        tracker.add(e)
        while next_cut < len(ends) and ends[next_cut] <= p + 1:
            tracker.end_cut()
            next_cut += 1
    chain = tracker.chain
    uncertified = set()
    for event_id, claim in claims:
        cert = chain.certificate(claim.height)
        if cert is None or (cert.prev, cert.theta, cert.state, tuple(sorted(cert.contributors))) != claim.key:
            uncertified.add(event_id)
    return Lineage(chain, breaks, uncertified, list(tracker.heights))


def break_reason(b: dict) -> str:
    h = b["height"]
    why = (
        f"height {h - 1} is not certified by the final events before it"
        if b["expected"] is None
        else f"the θ certified at height {h - 1} is {b['expected'][:16]}…"
    )
    return (
        f"θ lineage break: round event {b['id'][:16]} (final position {b['position']}) by …{b['author'][-8:]} "
        f"makes height {h} from θ {b['prev_theta'][:16]}…, but {why}"
    )


def certificate_dict(cert: Certificate) -> dict:
    return {
        "height": cert.height,
        "prev_theta": cert.prev.hex(),
        "theta": cert.theta.hex(),
        "state": cert.state.hex(),
        "contributors": sorted(cert.contributors),
        "signers": sorted(cert.signers),
        "electorate": sorted(cert.electorate),
    }
