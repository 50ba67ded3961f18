"""A running peer's view of the certified rounds its ledger proves (``ledger/lineage.py`` over its store).

- :meth:`ChainView.live`: every round event the store holds, in the order it stored them: whom to sync from, and
  whether our optimistic result is certified yet. Only ever a hint for *whom to ask*: what is downloaded must hash
  to the certificate.
- :meth:`ChainView.cut_heights`: the height certified through each *final* cut, read from the final log in its
  total order: the input of ``rounds.governance_in_force``, which every peer must compute identically.

Both are incremental: each call reads only the events stored (or finalised) since the last one.
"""

from __future__ import annotations

import threading

from koinon.ledger.lineage import CutHeights, claim_of, new_round_chain
from koinon.ledger.node import LedgerNode
from koinon.swarm.rounds import RoundChain


class ChainView:
    def __init__(self, ledger: LedgerNode) -> None:
        charter = ledger.store.charter()
        if charter is None:
            raise ValueError("the ledger has no charter yet")
        self.ledger = ledger
        self._live = new_round_chain(charter)
        self._read = 0  # round events of the store read into the live chain
        self._final = CutHeights(charter)
        self._lock = threading.Lock()

    @property
    def k(self) -> int:
        return self._live.k

    @property
    def founders(self) -> frozenset[str]:
        return self._live.founders

    def live(self) -> RoundChain:
        with self._lock:
            events = list(self.ledger.store.iter_events("round"))
            for e in events[self._read :]:
                self._live.add(claim_of(e))
            self._read = len(events)
            return self._live

    def cut_heights(self) -> list[int]:
        with self._lock, self.ledger._lock:  # the ledger thread extends the chain meanwhile
            return list(self._final.follow_chain(self.ledger.chain))
