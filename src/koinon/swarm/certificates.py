"""Certificates: which θ is canonical, from signed ``round`` events (docs/training.md §2.3, §2.5).

:class:`RoundChain` turns round events, fed in some order, into certified heights; :func:`governance_in_force`
says which final cut's governance state applies to a height. Both are pure functions of signed ledger data; the
ledger reads them off its events in ``ledger/lineage.py``, the round protocol (``rounds.py``) and a running peer
(``chainview.py``) act on them. Split from ``rounds.py``, which decides what happens inside one all-reduce group.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

GOV_DELAY = 5  # a final cut's governance state applies GOV_DELAY heights after the height its final log certifies
ELECTORATE_WINDOW = 3  # certified rounds whose contributors form the next electorate (RoundChain.electorate)
CLAIM_WINDOW = 64  # round events more than this many heights above the certified head are ignored (bounded memory)


@dataclass(frozen=True)
class RoundClaim:
    """One signed ``round`` event as the certificate rule reads it."""

    author: str
    height: int
    prev: bytes  # θ_{h−1}
    theta: bytes  # θ_h
    state: bytes  # hash of (h, θ_h, outer momentum): what a peer that syncs must end up holding
    contributors: tuple[str, ...]  # sorted
    attempt: int = 0  # the author's attempt counter: each attempt at a height is its own vote

    @property
    def key(self) -> tuple:
        return (self.prev, self.theta, self.state, self.contributors)


@dataclass(frozen=True)
class Certificate:
    height: int
    prev: bytes
    theta: bytes
    state: bytes
    contributors: frozenset[str]  # E_{h+1}
    signers: frozenset[str]
    electorate: frozenset[str]  # E_h


class RoundChain:
    """The certified rounds, from round events added in some order.

    A member votes once per *attempt* at a height (its first claim with that attempt number counts, later ones
    never), so a height whose first attempt split or lost a signer can be decided by a later one. The certificate
    of height h is the first key, in the order claims are added, that k signers from a strict majority of E_h
    agree on. Decisions every peer must take identically (the governance switch, the audit) feed it the *final*
    log in its total order, so "first" is the same everywhere; a running peer also feeds it whatever its store
    holds, only to choose whom to sync from (a download must hash to the certificate).

    Two certificates at one height need a strict majority of E_h that signed in two attempts: honest members sign
    another attempt only after giving the first one up (``RoundProtocol``: no certificate within its timeout), so
    this takes a member that withholds its vote and releases it late. The first one in the order wins, and later
    ones are remembered (:meth:`certified`) so that the audit can tell a peer that built on a losing fork from
    one that built on nothing.
    """

    def __init__(self, founders: Iterable[str], min_contributors: int) -> None:
        if min_contributors < 1:
            raise ValueError(f"min_contributors must be at least 1, got {min_contributors}")
        self.founders = frozenset(founders)
        self.k = min_contributors
        self.certs: list[Certificate] = []  # certs[h − 1] certifies height h
        # height → (author, attempt) → its claim there; kept CLAIM_WINDOW heights below the head too (late forks)
        self._claims: dict[int, dict[tuple[str, int], RoundClaim]] = {}
        self._thetas: set[bytes] = set()
        self._forks: dict[int, set[bytes]] = {}  # height → θ a later certificate also reached (not canonical)

    @property
    def height(self) -> int:
        return len(self.certs)

    @property
    def head(self) -> Certificate | None:
        return self.certs[-1] if self.certs else None

    def copy(self) -> RoundChain:
        """An independent chain in the same state (certificates are immutable; the open votes are copied)."""
        other = RoundChain(self.founders, self.k)
        other.certs = list(self.certs)
        other._claims = {h: dict(votes) for h, votes in self._claims.items()}
        other._thetas = set(self._thetas)
        other._forks = {h: set(t) for h, t in self._forks.items()}
        return other

    def electorate(self, height: int) -> frozenset[str]:
        """E_height: the founders for height 1, else everyone who contributed to one of the last
        ``ELECTORATE_WINDOW`` certified rounds. A member that sat one round out (it was slow, or its group split)
        keeps its say, so the crash of another member does not leave a two-member electorate that can never
        again reach a majority; a member that stopped contributing loses it once the window has passed."""
        if height <= 1:
            return self.founders
        window = self.certs[max(0, height - 1 - ELECTORATE_WINDOW) : height - 1]
        return frozenset().union(*(c.contributors for c in window))

    def certificate(self, height: int) -> Certificate | None:
        return self.certs[height - 1] if 1 <= height <= len(self.certs) else None

    def produced(self, theta: bytes) -> bool:
        """Whether a certified round made ``theta`` (the canonical chain)."""
        return theta in self._thetas

    def certified(self, height: int, theta: bytes) -> bool:
        """Whether ``theta`` reached a certificate at ``height``: the canonical one, or a later losing fork."""
        cert = self.certificate(height)
        return cert is not None and (cert.theta == theta or theta in self._forks.get(height, ()))

    def add(self, claim: RoundClaim) -> list[Certificate]:
        """Take one round event into account; returns the certificates it completed (in height order)."""
        h = claim.height
        if h < 1 or h <= self.height - CLAIM_WINDOW or h > self.height + CLAIM_WINDOW:
            return []
        votes = self._claims.setdefault(h, {})
        if (claim.author, claim.attempt) in votes:
            return []  # an author's first claim in an attempt is its vote there; a second one never counts
        votes[(claim.author, claim.attempt)] = claim
        if h <= self.height:  # already decided: a late certificate is a losing fork, remembered for the audit
            for late in self._passing(h):
                if late.theta != self.certs[h - 1].theta:
                    self._forks.setdefault(h, set()).add(late.theta)
            return []
        made: list[Certificate] = []
        while passing := self._passing(self.height + 1):
            cert = passing[0]  # one key passes per claim added; several only when a cascade reaches a height
            self.certs.append(cert)
            self._thetas.add(cert.theta)
            made.append(cert)
            for old in [x for x in self._claims if x <= self.height - CLAIM_WINDOW]:
                self._claims.pop(old)
                self._forks.pop(old, None)
        return made

    def _passing(self, h: int) -> list[Certificate]:
        """The keys for height h that pass the threshold, in key order."""
        votes = self._claims.get(h)
        if not votes:
            return []
        electorate = self.electorate(h)
        prev = self.certs[h - 2].theta if h >= 2 else None
        signers: dict[tuple, set[str]] = {}
        for (author, _), c in votes.items():
            # the signers of one key need not share an attempt number: members of one group align theirs only up to
            # the group's median (GroupDecision.attempt), and a member that signed the key once counts once
            if author in c.contributors and (prev is None or c.prev == prev):
                signers.setdefault(c.key, set()).add(author)
        out = []
        for key, who in sorted(signers.items(), key=lambda kv: kv[0]):
            # k *signers*, not k listed contributors: the list is the signers' word, and a coalition that is a
            # majority of a small electorate could otherwise pad it with members who never signed
            if len(who) >= self.k and 2 * len(who & electorate) > len(electorate):
                out.append(Certificate(h, key[0], key[1], key[2], frozenset(key[3]), frozenset(who), electorate))
        return out


def governance_in_force(cut_heights: Sequence[int], height: int, delay: int = GOV_DELAY) -> tuple[int, bool]:
    """(the final cut index whose governance state applies to the round that makes θ_height, -1 for the charter;
    whether that is settled).

    ``cut_heights[i]`` is the height the final log certifies up to final cut ``i`` (non-decreasing in ``i``). The
    state after cut ``i`` applies from height ``cut_heights[i] + delay`` on. The answer is settled once a known cut
    certifies beyond ``height − delay``: no later cut can then change it. A peer whose final ledger is not that far
    yet still gets an answer (the best it knows), but should wait for its ledger before contributing.
    """
    index = -1
    for i, rho in enumerate(cut_heights):
        if rho + delay <= height:
            index = i
        else:
            return index, True
    return index, height - delay < 0
