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
The eligible weight for a cut: one per member given what its *parent* cut covers (founders, plus ``join``s, minus
``leave``s and proven equivocators), so every peer computes it from the chain alone (docs/ledger.md §5 discusses
what this means for Streamlet's fixed-membership proof).
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable
from dataclasses import dataclass

from koinon.ledger.event import Event
from koinon.ledger.merkle import CompactRange, extend_range, leaf_hash, range_root, range_size
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
        self._gov: dict[bytes, object] = {}  # cut id → GovState after it (koinon.governance.state)
        # a long-running peer keeps the states of the newest ``keep_states`` heights only (older ones are
        # recomputed from genesis if ever asked for); None keeps all (the audit, tests)
        self.keep_states: int | None = None
        self._children: dict[bytes, list[bytes]] = {}
        # per cut: the events it adds to its parent's log (ids, in order) and the log's compact range after it
        self._added: dict[bytes, list[bytes]] = {}
        self._range: dict[bytes, CompactRange] = {}
        self._notarized: set[bytes] = {GENESIS}  # monotone: once notarized, always notarized
        self._chain_ok: set[bytes] = {GENESIS}  # cuts whose whole chain back to genesis is notarized
        self._final: list[CutInfo] | None = None  # recomputed after a new cut or cosign

    # --- feeding events ----------------------------------------------------------------------------------------
    def observe(self, e: Event) -> None:
        if e.kind == "cut":
            info = CutInfo(e, e.body["prev"] or GENESIS, int(e.body["epoch"]))
            self.cuts[e.id] = info
            self._children.setdefault(info.parent, []).append(e.id)
            if info.parent == GENESIS or (info.parent in self.cuts and self.cuts[info.parent].height):
                self._set_height(e.id, 1 if info.parent == GENESIS else self.cuts[info.parent].height + 1)
            self._final = None
        elif e.kind == "cosign":
            self.cosigners.setdefault(e.body["cut"], set()).add(e.author)
            self._final = None

    def _set_height(self, cut_id: bytes, height: int) -> None:
        """Give a cut its height, then its waiting descendants theirs (cuts may arrive before their parents)."""
        stack = [(cut_id, height)]
        while stack:
            cid, h = stack.pop()
            self.cuts[cid].height = h
            stack += [(child, h + 1) for child in self._children.get(cid, ())]

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
        """Who may cosign a child of this cut: the governance state's eligible members through it (founders and
        members who joined, minus those who left, were expelled or equivocated; under ``admission: vote`` only
        admitted members count). None while some covered event is missing here."""
        gov = self.governance(cut_id)
        return None if gov is None else gov.eligible()

    def governance(self, cut_id: bytes):
        """The :class:`~koinon.governance.state.GovState` after the chain through ``cut_id`` (GENESIS: the
        charter alone); None while some of its events are missing here. Computed once per cut."""
        from koinon.governance.state import GovState

        if cut_id in self._gov:
            return self._gov[cut_id]
        charter = self.store.charter()
        if charter is None:
            return None
        pending = []
        cid = cut_id
        while cid not in self._gov and cid != GENESIS:
            info = self.cuts.get(cid)
            if info is None:
                return None
            pending.append(cid)
            cid = info.parent
        if cid == GENESIS and GENESIS not in self._gov:
            self._gov[GENESIS] = GovState(charter)
        try:
            self._log(cut_id)
        except (KeyError, ValueError):
            return None
        state = self._gov[cid]
        for cid in reversed(pending):
            state = state.copy()
            state.apply_cut(
                int(self.cuts[cid].event.body["index"]), [self.store.get(i) for i in self._added[cid]], seed=cid
            )
            self._gov[cid] = state
        result = self._gov[cut_id]
        if self.keep_states is not None and len(self._gov) > 2 * self.keep_states:
            top = max(self.cuts[c].height for c in self._gov if c != GENESIS)
            for c in [c for c in self._gov if c != GENESIS and self.cuts[c].height < top - self.keep_states]:
                del self._gov[c]
        return result

    def final_governance(self, index: int | None = None):
        """The governance state after the final cut with this ``index`` (None: the last final cut; -1: the
        charter alone), or None if that cut is not final here (yet)."""
        final = self.final_cuts()
        if index is None:
            return self.governance(final[-1].id if final else GENESIS)
        if index < 0:
            return self.governance(GENESIS)
        if index >= len(final):
            return None
        return self.governance(final[index].id)

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

    def chain_notarized(self, cut_id: bytes) -> bool:
        """Every cut from genesis to ``cut_id`` is notarized (monotone, so positive answers are cached)."""
        if cut_id in self._chain_ok:
            return True
        path = []
        while cut_id not in self._chain_ok:
            info = self.cuts.get(cut_id)
            if info is None or not self.notarized(cut_id):
                return False
            path.append(cut_id)
            cut_id = info.parent
        self._chain_ok.update(path)
        return True

    def longest_notarized_tips(self) -> list[bytes]:
        """Tips of the longest fully notarized chains (GENESIS when there is none), smallest id first."""
        tips = [c.id for c in self.cuts.values() if c.height and self.chain_notarized(c.id)]
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
        for tip in sorted(leaves):
            # walk down to the longest notarized prefix of this branch
            chain = self.ancestry(tip)
            while chain and not self.chain_notarized(chain[-1].id):
                chain = chain[:-1]
            final = self._final_prefix(chain)
            if len(final) > len(best):
                best = final
        return best

    # --- the log through a cut ----------------------------------------------------------------------------------
    def frontier(self, cut_id: bytes) -> dict[str, tuple[int, bytes]]:
        """{author: (seq, head id)} of a cut (GENESIS: the charter)."""
        if cut_id == GENESIS:
            charter = self.store.charter()
            return {charter.author: (1, charter.id)} if charter else {}
        return frontier_of(self.cuts[cut_id].event)

    def covered(self, cut_id: bytes) -> dict[str, int]:
        """{author: seq} covered by a cut (GENESIS covers the charter alone)."""
        if cut_id == GENESIS:
            charter = self.store.charter()
            return {charter.author: 1} if charter else {}
        return {a: s for a, (s, _) in frontier_of(self.cuts[cut_id].event).items()}

    def _log(self, cut_id: bytes) -> CompactRange:
        """The compact range of the log through ``cut_id`` (computing its ancestors' first); KeyError while some
        covered event is missing here, ValueError if a cut is malformed."""
        if cut_id in self._range:
            return self._range[cut_id]
        pending = []
        while cut_id not in self._range:
            pending.append(cut_id)
            if cut_id == GENESIS:
                break
            cut_id = self.cuts[cut_id].parent
        for cid in reversed(pending):
            if cid == GENESIS:
                charter = self.store.charter()
                if charter is None:
                    raise KeyError("no charter yet")
                added, base = [charter], []
            else:
                info = self.cuts[cid]
                base = self._range[info.parent]
                added = canonical_order(self.new_events(info.event, self.covered(info.parent)), set())
            self._added[cid] = [e.id for e in added]
            self._range[cid] = extend_range(base, [leaf_hash(e.wire) for e in added])
        return self._range[pending[0]] if pending else self._range[cut_id]

    def order_through(self, cut_id: bytes) -> list[bytes]:
        """Event ids of the total order through ``cut_id``, were its chain final."""
        self._log(cut_id)
        chain = [GENESIS] + [c.id for c in self.ancestry(cut_id)] if cut_id != GENESIS else [GENESIS]
        return [i for cid in chain for i in self._added[cid]]

    def log_after(self, parent: bytes, frontier: dict[str, tuple[int, bytes]]) -> tuple[bytes, int]:
        """(root, size) of the log a new cut with this parent and frontier would sign."""
        fake = Event(b"", "", 1, None, (), "cut", {"frontier": {a: [s, h] for a, (s, h) in frontier.items()}}, 0)
        added = canonical_order(self.new_events(fake, self.covered(parent)), set())
        compact = extend_range(self._log(parent), [leaf_hash(e.wire) for e in added])
        return range_root(compact), range_size(compact)

    def check_cut(self, cut: Event) -> None:
        """Recompute a cut's index, log root and size. KeyError while events are missing here; ValueError if the
        cut is wrong (moves a frontier backwards, is not causally closed, or signs another root/size/index)."""
        parent = cut.body["prev"] or GENESIS
        if parent != GENESIS and not (parent in self.cuts and self.cuts[parent].height):
            raise KeyError("parent cut unknown here")
        expected_index = 0 if parent == GENESIS else self.cuts[parent].height
        if cut.body["index"] != expected_index:
            raise ValueError(f"index {cut.body['index']} should be {expected_index}")
        root_, size = self.log_after(parent, frontier_of(cut))
        if cut.body["size"] != size or cut.body["root"] != root_:
            raise ValueError(
                f"log root or size does not match the events the cut covers (signed size {cut.body['size']}, "
                f"recomputed {size})"
            )

    def final_log(self) -> tuple[list[bytes], bytes, int, Event | None]:
        """(event ids of the total order, its root, its size, the last final cut or None)."""
        if self.store.charter() is None:
            return [], range_root([]), 0, None
        final = self.final_cuts()
        last = final[-1].id if final else GENESIS
        compact = self._log(last)
        return self.order_through(last), range_root(compact), range_size(compact), (final[-1].event if final else None)

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
                if p not in inside and not self.store.is_quarantined(p):  # an equivocator's event: never in a cut
                    parent = self.store.get(p)
                    if parent is None or covered.get(parent.author, 0) < parent.seq:
                        raise ValueError(f"cut {cut.short()} is not causally closed at {e.short()}")
        return out


def frontier_of(cut: Event) -> dict[str, tuple[int, bytes]]:
    return {a: (int(v[0]), bytes(v[1])) for a, v in cut.body["frontier"].items()}
