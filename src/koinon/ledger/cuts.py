"""Cuts and finality: which events are final, and in which order (docs/ledger.md §5).

Koinon finalises the ledger with **Streamlet** (Chan & Shi, "Streamlet: Textbook Streamlined Blockchains",
AFT 2020), where a *block* is a cut:

- Time is divided into epochs of ``epoch_ms`` (a charter rule). The leader of epoch e is the eligible member
  with the smallest SHA-256(swarm ‖ e ‖ member id).
- A **cut** is an event of kind ``cut`` by the epoch's leader: {index, epoch, frontier {author: [seq, head]},
  prev (the parent cut's event id, null for the first), root and size of the transparency log through this
  cut, θ of the latest round in it}. The leader extends the tip of a longest notarized chain it has seen.
- A member **cosigns** (event of kind ``cosign``) the first valid cut of the current epoch by that epoch's
  leader that extends one of the longest notarized chains it has seen — at most one cosign per epoch.
- A cut is **notarized** when cosigners holding ≥ 2/3 of the eligible weight signed it (3·w ≥ 2·W, integers).
- **Finality**: when a chain holds notarized cuts of three consecutive epochs e, e+1, e+2 (each the parent of
  the next), the middle cut and all its ancestors are final. Streamlet proves that two final cuts are never on
  different branches while fewer than 1/3 of the weight is Byzantine; fewer than 2/3 online only stalls
  finality (events still replicate).

The **total order** is the concatenation, over final cuts from the first, of the events a cut's frontier adds to
its parent's, each batch in canonical causal order (Kahn's algorithm, smallest event id first among the ready).
The eligible weight for a cut: one per member of the state at the last final cut of its own ancestry (founders,
plus ``join``s, minus ``leave``s and banned authors), so every peer computes it from the chain alone.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable
from dataclasses import dataclass

from koinon.ledger.event import Event
from koinon.ledger.merkle import leaf_hash, root
from koinon.ledger.store import LedgerStore

GENESIS = b"\x00" * 32  # stands for "no parent cut" in chain bookkeeping


def leader(swarm: bytes, epoch: int, eligible: Iterable[str]) -> str:
    return min(eligible, key=lambda m: hashlib.sha256(swarm + epoch.to_bytes(8, "big") + m.encode()).digest())


def quorum(cosigners: int, eligible: int) -> bool:
    """≥ 2/3 of the weight, in integers."""
    return eligible > 0 and 3 * cosigners >= 2 * eligible


def canonical_order(events: list[Event], known: set[bytes]) -> list[Event]:
    """Topological order of ``events`` (parents and prev before children), smallest id first among the ready.
    ``known`` are ids already ordered earlier (they impose no wait)."""
    by_id = {e.id: e for e in events}
    waiting: dict[bytes, int] = {}
    children: dict[bytes, list[bytes]] = {}
    for e in events:
        deps = [d for d in (*e.parents, *([e.prev] if e.prev else [])) if d in by_id and d not in known]
        waiting[e.id] = len(deps)
        for d in deps:
            children.setdefault(d, []).append(e.id)
    ready = [i for i, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    out = []
    while ready:
        i = heapq.heappop(ready)
        out.append(by_id[i])
        for c in children.get(i, ()):
            waiting[c] -= 1
            if waiting[c] == 0:
                heapq.heappush(ready, c)
    if len(out) != len(events):
        raise ValueError("events have a causal cycle")  # impossible for hash-linked events
    return out


@dataclass
class CutInfo:
    event: Event
    parent: bytes  # parent cut id or GENESIS
    epoch: int
    height: int = 0  # 0 until the parent chain back to genesis is known

    @property
    def id(self) -> bytes:
        return self.event.id


class Chain:
    """A peer's view of cut proposals and cosignatures (fed with every stored event through :meth:`observe`).

    Everything here is a pure function of the events observed, so every peer holding the same events computes
    the same notarizations, the same final cuts and the same total order, whatever order the events came in.
    """

    def __init__(self, store: LedgerStore) -> None:
        self.store = store
        self.cuts: dict[bytes, CutInfo] = {}
        self.cosigners: dict[bytes, set[str]] = {}
        self._members: dict[bytes, frozenset[str]] = {}
        self._order: dict[bytes, tuple[list[bytes], list[bytes]]] = {}
        self._notarized: set[bytes] = {GENESIS}  # monotone: once notarized, always notarized
        self._final: list[CutInfo] | None = None  # recomputed after a new cut or cosign

    # --- feeding events ----------------------------------------------------------------------------------------
    def observe(self, e: Event) -> None:
        if e.kind == "cut":
            self.cuts[e.id] = CutInfo(e, e.body["prev"] or GENESIS, int(e.body["epoch"]))
            self._fix_heights()
            self._final = None
        elif e.kind == "cosign":
            self.cosigners.setdefault(e.body["cut"], set()).add(e.author)
            self._final = None

    def _fix_heights(self) -> None:
        changed = True
        while changed:
            changed = False
            for c in self.cuts.values():
                if c.height:
                    continue
                if c.parent == GENESIS:
                    c.height, changed = 1, True
                elif c.parent in self.cuts and self.cuts[c.parent].height:
                    c.height, changed = self.cuts[c.parent].height + 1, True

    # --- chain queries -----------------------------------------------------------------------------------------
    def ancestry(self, cut_id: bytes) -> list[CutInfo]:
        """The chain ending at ``cut_id``, oldest first; empty if it does not reach genesis (yet)."""
        out = []
        while cut_id != GENESIS:
            if cut_id not in self.cuts:
                return []
            out.append(self.cuts[cut_id])
            cut_id = self.cuts[cut_id].parent
        return out[::-1]

    def members(self, cut_id: bytes) -> frozenset[str] | None:
        """Members given the events a cut covers (charter founders, + join, − leave, − proven equivocators);
        None while some of those events are missing here."""
        if cut_id in self._members:
            return self._members[cut_id]
        charter = self.store.charter()
        if charter is None:
            return None
        if cut_id == GENESIS:
            return frozenset(charter.body["founders"] or [charter.author])
        info = self.cuts.get(cut_id)
        parent_members = self.members(info.parent) if info else None
        if info is None or parent_members is None:
            return None
        try:
            new = self.new_events(info.event, self.covered(info.parent))
        except (KeyError, ValueError):
            return None
        members = set(parent_members)
        for e in canonical_order(new, set()):
            if e.kind == "join":
                members.add(e.author)
            elif e.kind == "leave":
                members.discard(e.author)
            elif e.kind == "equivocation":
                members.discard(Event.from_wire(e.body["a"]).author)
        self._members[cut_id] = frozenset(members)
        return self._members[cut_id]

    def eligible(self, cut_id: bytes) -> frozenset[str] | None:
        """Who may cosign ``cut_id``: the members given what its parent covers."""
        info = self.cuts.get(cut_id)
        return None if info is None else self.members(info.parent)

    def notarized(self, cut_id: bytes) -> bool:
        if cut_id in self._notarized:
            return True
        eligible = self.eligible(cut_id)
        if not eligible:
            return False
        if quorum(len(self.cosigners.get(cut_id, set()) & eligible), len(eligible)):
            self._notarized.add(cut_id)
            return True
        return False

    def notarized_chain(self, cut_id: bytes) -> list[CutInfo] | None:
        chain = self.ancestry(cut_id)
        if cut_id != GENESIS and not chain:
            return None
        return chain if all(self.notarized(c.id) for c in chain) else None

    def longest_notarized_tips(self) -> list[bytes]:
        """Tips of the longest fully notarized chains (GENESIS when there is none), smallest id first."""
        tips = [c.id for c in self.cuts.values() if c.height and self.notarized_chain(c.id) is not None]
        if not tips:
            return [GENESIS]
        best = max(self.cuts[t].height for t in tips)
        return sorted(t for t in tips if self.cuts[t].height == best)

    @staticmethod
    def _final_prefix(chain: list[CutInfo]) -> list[CutInfo]:
        """Streamlet: the prefix ending in the middle of the last three consecutive-epoch cuts (all notarized)."""
        final_upto = -1
        for i in range(1, len(chain) - 1):
            a, b, c = chain[i - 1], chain[i], chain[i + 1]
            if b.epoch == a.epoch + 1 and c.epoch == b.epoch + 1:
                final_upto = i
        return chain[: final_upto + 1]

    def final_cuts(self) -> list[CutInfo]:
        """Final cuts, oldest first: the longest final prefix of any notarized chain."""
        if self._final is None:
            self._final = self._compute_final()
        return self._final

    def _compute_final(self) -> list[CutInfo]:
        best: list[CutInfo] = []
        leaves = {c.id for c in self.cuts.values()} - {c.parent for c in self.cuts.values()}
        for tip in leaves:
            # walk down to the longest notarized prefix of this branch
            chain = self.ancestry(tip)
            while chain and not all(self.notarized(c.id) for c in chain):
                chain = chain[:-1]
            final = self._final_prefix(chain)
            if len(final) > len(best):
                best = final
        return best

    # --- the log through a cut ----------------------------------------------------------------------------------
    def covered(self, cut_id: bytes) -> dict[str, int]:
        """{author: seq} covered by a cut (GENESIS covers the charter alone)."""
        if cut_id == GENESIS:
            charter = self.store.charter()
            return {charter.author: 1} if charter else {}
        return {a: s for a, (s, _) in frontier_of(self.cuts[cut_id].event).items()}

    def order_through(self, cut_id: bytes) -> tuple[list[bytes], list[bytes]]:
        """(event ids, leaf hashes) of the total order through ``cut_id`` were its chain final.
        Raises KeyError while some covered event is missing here."""
        if cut_id == GENESIS:
            charter = self.store.charter()
            return ([charter.id], [leaf_hash(charter.wire)]) if charter else ([], [])
        if cut_id not in self._order:
            info = self.cuts[cut_id]
            ids, leaves = self.order_through(info.parent)
            new = canonical_order(self.new_events(info.event, self.covered(info.parent)), set())
            self._order[cut_id] = (ids + [e.id for e in new], leaves + [leaf_hash(e.wire) for e in new])
        return self._order[cut_id]

    def order_after(self, parent: bytes, frontier: dict[str, tuple[int, bytes]]) -> tuple[list[bytes], list[bytes]]:
        """The order a new cut with this parent and frontier would give (for proposing and checking)."""
        ids, leaves = self.order_through(parent)
        fake = Event(b"", "", 1, None, (), "cut", {"frontier": {a: [s, h] for a, (s, h) in frontier.items()}}, 0)
        new = canonical_order(self.new_events(fake, self.covered(parent)), set())
        return ids + [e.id for e in new], leaves + [leaf_hash(e.wire) for e in new]

    def new_events(self, cut: Event, covered: dict[str, int]) -> list[Event]:
        """Events the cut's frontier adds beyond ``covered``; KeyError if one is missing here, ValueError if the
        frontier goes backwards or is not causally closed."""
        out = []
        front = frontier_of(cut)
        for author, seq in covered.items():
            if front.get(author, (0, b""))[0] < seq:
                raise ValueError(f"cut {cut.short()} moves {author[-8:]}'s frontier backwards")
        for author, (seq, head) in sorted(front.items()):
            start = covered.get(author, 0)
            feed = self.store.events_after(author, start, seq - start) if seq > start else []
            if len(feed) != seq - start or (feed and feed[-1].id != head):
                raise KeyError(f"missing events of {author[-8:]} up to seq {seq}")
            out += feed
        # causal closure: every parent of a new event is covered by this cut
        inside = {e.id for e in out}
        for e in out:
            for p in e.parents:
                if p not in inside:
                    parent = self.store.get(p)
                    if parent is None or covered.get(parent.author, 0) < parent.seq:
                        raise ValueError(f"cut {cut.short()} is not causally closed at {e.short()}")
        return out

    def log_root(self, cut_id: bytes) -> tuple[bytes, int]:
        _, leaves = self.order_through(cut_id)
        return root(leaves), len(leaves)


def frontier_of(cut: Event) -> dict[str, tuple[int, bytes]]:
    return {a: (int(v[0]), bytes(v[1])) for a, v in cut.body["frontier"].items()}
