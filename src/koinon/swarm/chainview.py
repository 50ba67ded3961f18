"""A running peer's view of the certified rounds its ledger proves (``ledger/lineage.py`` over its store).

- :meth:`ChainView.live`: the final log's certified rounds, then every other round event the store holds, in the
  order it stored them: whom to sync from, and whether our optimistic result is certified yet. It defers to the
  final ledger: whenever a new final cut arrives it is rebuilt on top of the final chain, so a height that a late
  vote decided differently in the final order (a fork, ``rounds.RoundChain``) is corrected on every peer.
- :meth:`ChainView.cut_heights`: the height certified through each *final* cut, read from the final log in its
  total order: the input of ``rounds.governance_in_force``, which every peer must compute identically.
- :meth:`ChainView.signers_of`: who signed a state's certificate on the live chain (``sync.StateSync`` serves a
  state only once it is certified).

Both are incremental: each call reads only the events stored (or finalised) since the last one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from koinon.ledger.lineage import CutHeights, claim_of, new_round_chain
from koinon.ledger.node import LedgerNode
from koinon.swarm.rounds import Certificate, RoundChain, governance_in_force

if TYPE_CHECKING:
    from koinon.governance.state import GovState


class ChainView:
    def __init__(self, ledger: LedgerNode) -> None:
        charter = ledger.store.charter()
        if charter is None:
            raise ValueError("the ledger has no charter yet")
        self.ledger = ledger
        self._live = new_round_chain(charter)
        self._read = 0  # round events of the store read into the live chain
        self._final = CutHeights(charter)
        self._based_on = 0  # final cuts the live chain was rebuilt on
        self._lock = threading.Lock()

    @property
    def k(self) -> int:
        return self._live.k

    @property
    def founders(self) -> frozenset[str]:
        return self._live.founders

    def live(self) -> RoundChain:
        with self._lock:
            with self.ledger._lock:  # the ledger thread extends the chain meanwhile
                heights = self._final.follow_chain(self.ledger.chain)
            if len(heights) != self._based_on:
                self._live, self._read, self._based_on = self._final.chain.copy(), 0, len(heights)
            events = list(self.ledger.store.iter_events("round"))
            for e in events[self._read :]:
                self._live.add(claim_of(e))
            self._read = len(events)
            return self._live

    def height(self) -> int:
        """The certified height our ledger shows now."""
        return self.live().height

    def wait_for(
        self, height: int, kick: Callable[[], None], stop: threading.Event, wait: float = 3.0
    ) -> Certificate | None:
        """Height ``height``'s certificate on our ledger, asking for a sync (``kick``) and waiting up to ``wait``
        seconds for its events to arrive."""
        deadline = time.monotonic() + wait
        while (cert := self.live().certificate(height)) is None and time.monotonic() < deadline:
            kick()
            if stop.wait(0.2):
                break
        return cert

    def governance(self, height: int, kick: Callable[[], None], stop: threading.Event) -> tuple[int, GovState | None]:
        """(final cut index, governance state) in force for the round that makes θ_height
        (``rounds.governance_in_force``). If our final ledger cannot tell yet and its newest final state would
        change what we train, wait a little (two epochs and a second) for it, asking for syncs, then answer with
        the best it knows: a mismatch only leaves us out of a group. If nothing would change, there is nothing to
        wait for."""
        chain = self.ledger.chain
        deadline = time.monotonic() + 2 * self.ledger.epoch_ms / 1000 + 1
        while True:
            heights = self.cut_heights()
            index, settled = governance_in_force(heights, height)
            if settled or time.monotonic() > deadline or stop.is_set():
                break
            now, newest = chain.final_governance(index), chain.final_governance(len(heights) - 1)
            if now is None or newest is None or now.training_effect() == newest.training_effect():
                break
            kick()
            stop.wait(0.2)
        return index, chain.final_governance(index)

    def cut_heights(self) -> list[int]:
        with self._lock, self.ledger._lock:  # the ledger thread extends the chain meanwhile
            return list(self._final.follow_chain(self.ledger.chain))

    def signers_of(self, height: int, state: str) -> frozenset[str] | None:
        """Who signed the certificate of ``state`` (hex) at ``height`` on our ledger (None: not certified)."""
        cert = self.live().certificate(height)
        return cert.signers if cert is not None and cert.state.hex() == state else None
