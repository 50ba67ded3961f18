"""State sync: serve our last certified state, and adopt another peer's only if a certificate vouches for it.

A peer that is behind (it joined late, missed an all-reduce, ended in a group that was no candidate) or whose
optimistic result lost downloads ``(height, θ, outer momentum)`` from a *signer* of the certificate it wants
(``swarm/rounds.py``) through hivemind's state-download RPC, and keeps it only if θ hashes to the certificate's θ
and ``state_hash(height, θ, momentum)`` to its state. What the donor says about itself decides nothing: a donor that
serves anything else is skipped, and the next signer is tried.

A peer serves the last state the ledger certified to it (a copy kept when the certificate arrived), never an
optimistic one, so a syncing peer always finds donors of certified states even while they train the next round.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

from koinon.identity import short_id
from koinon.swarm.rounds import Certificate
from koinon.training.model import theta_hash

logger = logging.getLogger("koinon.peer")


def state_hash(height: int, theta: torch.Tensor, momentum: torch.Tensor) -> str:
    """sha256(height (8 bytes, big-endian) ‖ θ ‖ outer momentum), both float32: what a round event's ``state`` is."""
    h = hashlib.sha256(height.to_bytes(8, "big"))
    h.update(theta.numpy().tobytes())
    h.update(momentum.numpy().tobytes())
    return h.hexdigest()


@dataclass
class Snapshot:
    """A state some certificate vouches for (or the genesis state, height 0)."""

    height: int
    theta: torch.Tensor  # (P,) float32
    momentum: torch.Tensor  # (P,) float32
    state: str
    electorate: frozenset[str]
    signers: frozenset[str] = frozenset()  # who signed its certificate (a round event building on it cites them)

    @classmethod
    def of(cls, height: int, theta: torch.Tensor, momentum: torch.Tensor, electorate, signers=()) -> Snapshot:
        theta, momentum = theta.detach().clone(), momentum.detach().clone()
        return cls(
            height, theta, momentum, state_hash(height, theta, momentum), frozenset(electorate), frozenset(signers)
        )


class StateSync:
    """Our last certified snapshot (served to others) and the download of someone else's."""

    def __init__(
        self, me: str, genesis: Snapshot, certified: Callable[[int, str], frozenset[str] | None] = lambda h, s: None
    ) -> None:
        self.me = me
        self._lock = threading.Lock()
        self.certified = genesis
        self.optimistic: Snapshot | None = None  # our newest applied state, until its certificate is seen
        self._is_certified = certified  # (height, state) → the certificate's signers, or None
        self.downloads = 0

    def keep(self, snapshot: Snapshot) -> None:
        with self._lock:
            self.certified, self.optimistic = snapshot, None

    def hold(self, snapshot: Snapshot) -> None:
        """Our optimistic state: served as soon as our ledger certifies it, even before the round loop looks."""
        with self._lock:
            self.optimistic = snapshot

    def serve(self) -> tuple[dict, list[torch.Tensor]]:
        """The state-download provider (``ExactAverager.set_state_provider``): our newest certified state."""
        with self._lock:
            s, o = self.certified, self.optimistic
        if o is not None:
            signers = self._is_certified(o.height, o.state)
            if signers is not None:
                s = Snapshot(o.height, o.theta, o.momentum, o.state, o.electorate, signers)
                with self._lock:
                    if self.optimistic is o:
                        self.certified, self.optimistic = s, None
        return dict(height=s.height, theta=theta_hash(s.theta), state=s.state), [s.theta, s.momentum]

    def fetch(
        self,
        cert: Certificate,
        download: Callable[[str], tuple[dict, list[torch.Tensor]] | None],
        size: int,
        stop: threading.Event,
        lookup: Callable[[int], Certificate | None] = lambda height: None,
    ) -> tuple[Snapshot, Certificate] | None:
        """A certified state at least as new as ``cert``'s, from one of its signers (in an order spread over
        syncing peers), with the certificate that vouches for it; None if none served one.

        ``download(member)`` returns (metadata, tensors) or None. A donor serves its newest certified state, which
        may already be newer than ``cert`` (the swarm moved on while we asked): ``lookup(height)`` then finds that
        height's certificate on our ledger (waiting a little for it), and the state must match *that*. The
        metadata's height only says which certificate to check against; the hashes decide."""
        donors = sorted(
            (m for m in cert.signers if m != self.me),
            key=lambda m: hashlib.sha256(f"{self.me}|{m}".encode()).digest(),
        )
        for donor in donors:
            if stop.is_set():
                return None
            got = download(donor)
            if got is None:
                continue
            meta, tensors = got
            height = meta.get("height") if isinstance(meta, dict) else None
            if not isinstance(height, int) or isinstance(height, bool) or height < cert.height:
                continue  # not (yet) the state we want
            vouch = cert if height == cert.height else lookup(height)
            if vouch is None:
                logger.info(
                    "state from %s is at height %d, which our ledger does not certify yet", short_id(donor), height
                )
                continue
            problem = _check(vouch, tensors, size)
            if problem:
                logger.warning("state from %s refused: %s", short_id(donor), problem)
                continue
            theta, momentum = (t.to(torch.float32).reshape(-1) for t in tensors)
            self.downloads += 1
            snapshot = Snapshot(vouch.height, theta, momentum, vouch.state.hex(), vouch.contributors, vouch.signers)
            return snapshot, vouch
        return None


def _check(cert: Certificate, tensors: list[torch.Tensor], size: int) -> str:
    if len(tensors) != 2:
        return f"{len(tensors)} tensors, expected θ and momentum"
    if any(t.numel() != size for t in tensors):
        return f"tensors of {[t.numel() for t in tensors]} values, expected {size}"
    theta, momentum = (t.to(torch.float32).reshape(-1) for t in tensors)
    if theta_hash(theta) != cert.theta.hex():
        return f"θ is not the θ certified at height {cert.height}"
    if state_hash(cert.height, theta, momentum) != cert.state.hex():
        return f"the outer momentum is not the one certified at height {cert.height}"
    return ""
