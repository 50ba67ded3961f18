"""Spot-checks, accusations, penalties and verified credit: a pure function of the final cuts (docs/verification.md).

Every peer feeds the same final cuts in the same order and gets the same :class:`Trust`, in integer arithmetic and
without reading a clock:

1. A ``commit`` in final cut *c* (seed: *c*'s event id, which no single peer controls) is **sampled** iff the first
   8 bytes of ``R = sha256("koinon/verify/v1" ‖ seed ‖ commit id)`` fall below ``verify_permille / 1000`` of 2⁶⁴.
   Its **segment** is ``R[8:16] mod segments``. Its **verifier** and up to three **referees** are the active
   contributors (a commit in the last ``ACTIVE_ROUNDS`` rounds), other than its author and the excluded, ranked
   by ``sha256(R ‖ member)`` (rendezvous hashing: a member can't choose to be chosen).
2. The verifier's ``verdict`` settles it: ok → the author earns the commit's samples as credit. Not ok → an
   **accusation**: the referees re-execute the same segment (from the same hashed states) and their majority
   decides. Guilty → the author is excluded for ``penalty_rounds`` rounds and earns nothing for that round. Not
   guilty → the *accuser* is excluded the same way and loses its own credit for that round; the accused earns
   its credit.
3. A check nobody answers within ``EXPIRY_ROUNDS`` rounds expires without credit.

Within a cut, verdicts are applied before the cut's commits are assigned, and both in sorted order, so the
result does not depend on the order in which the events arrived.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

DOMAIN = b"koinon/verify/v1"
ACTIVE_ROUNDS = 3  # a member who committed within this many rounds may be chosen to verify
REFEREES = 3
EXPIRY_ROUNDS = 8  # an unanswered check closes (without credit) this many rounds after its commit's round
MAX_AHEAD = 4  # a commit may claim a round at most this far ahead of the swarm's round clock
KEEP_ROUNDS = 64  # per-round credit is kept this long, so a false accuser can lose the credit of its round
HISTORY = 256  # resolved checks kept for display (`koinon credit --checks`)

STAT_FIELDS = ("commits", "sampled", "verified", "failed", "false_accusations", "verified_samples")


def check_seed(cut_seed: bytes, commit_id: bytes) -> bytes:
    return hashlib.sha256(DOMAIN + cut_seed + commit_id).digest()


def sampled(r: bytes, permille: int) -> bool:
    return int.from_bytes(r[:8], "big") * 1000 < permille * (1 << 64)


def ranked(r: bytes, candidates: set[str]) -> list[str]:
    return sorted(candidates, key=lambda m: hashlib.sha256(r + m.encode()).digest())


@dataclass(frozen=True)
class Check:
    """One sampled commitment and what became of it (immutable: states of consecutive cuts share them)."""

    commit: bytes
    author: str
    round: int
    samples: int
    segment: int  # which segment of its trace is re-executed
    verifier: str
    referees: tuple[str, ...]
    cut: int  # the final cut that assigned it
    status: str = "open"  # open | accused | verified | cheated | false-accusation | disputed | expired
    accuser: str | None = None
    verdicts: tuple[tuple[str, bool, int], ...] = ()  # (member, ok, error ppm), in the order they were applied
    closed: int | None = None  # the cut that resolved it

    def to_dict(self) -> dict:
        return {
            "commit": self.commit.hex(),
            "author": self.author,
            "round": self.round,
            "samples": self.samples,
            "segment": self.segment,
            "verifier": self.verifier,
            "referees": list(self.referees),
            "cut": self.cut,
            "status": self.status,
            "accuser": self.accuser,
            "verdicts": [{"member": m, "ok": ok, "error_ppm": e} for m, ok, e in self.verdicts],
            "closed": self.closed,
        }


class Trust:
    def __init__(self) -> None:
        self.round = 0  # the swarm's round clock: the highest round at least half of the contributors reached
        self.last_commit: dict[str, int] = {}  # member → the last round it committed (one commit per round counts)
        self.checks: dict[bytes, Check] = {}  # open and accused checks, by commit id
        self.history: list[Check] = []  # resolved checks, newest last (bounded)
        self.penalty: dict[str, int] = {}  # member → excluded while ``round`` ≤ this
        self.stats: dict[str, tuple[int, ...]] = {}  # member → STAT_FIELDS
        self.round_credit: dict[tuple[str, int], int] = {}  # (member, round) → verified samples of that round
        self.forfeit: frozenset[tuple[str, int]] = frozenset()  # (member, round) whose credit was taken away

    def copy(self) -> Trust:
        new = Trust.__new__(Trust)
        new.__dict__.update(self.__dict__)
        for name in ("last_commit", "checks", "penalty", "stats", "round_credit"):
            setattr(new, name, dict(getattr(self, name)))
        new.history = list(self.history)
        return new

    # --- queries -----------------------------------------------------------------------------------------------
    def penalised(self) -> set[str]:
        return {m for m, until in self.penalty.items() if self.round <= until}

    def stat(self, member: str) -> dict[str, int]:
        return dict(zip(STAT_FIELDS, self.stats.get(member, (0,) * len(STAT_FIELDS)), strict=True))

    def tasks_for(self, member: str) -> list[Check]:
        """Checks this member should answer now: as the verifier of an open one, or a referee of an accused one
        it has not answered yet."""
        out = []
        for c in self.checks.values():
            answered = any(m == member for m, _, _ in c.verdicts)
            if (c.status == "open" and c.verifier == member) or (
                c.status == "accused" and member in c.referees and not answered
            ):
                out.append(c)
        return sorted(out, key=lambda c: (c.round, c.commit))

    # --- feeding a final cut -------------------------------------------------------------------------------------
    def apply(self, state, index: int, seed: bytes, events: list) -> None:
        """Apply one final cut's ``commit`` and ``verdict`` events to ``state`` (a GovState: its members,
        excluded members, configuration and credit)."""
        verdicts = sorted((e for e in events if e.kind == "verdict"), key=lambda e: e.id)
        commits = sorted((e for e in events if e.kind == "commit"), key=lambda e: e.id)
        touched: set[bytes] = set()
        for e in verdicts:
            if self._verdict(state, index, e):
                touched.add(e.body["commit"])
        for cid in sorted(touched):
            self._resolve(state, index, cid)
        excluded = set(state.excluded())
        fresh = []
        for e in sorted(commits, key=lambda e: (e.author, e.body["round"], e.id)):
            b, author = e.body, e.author
            if author not in state.members or author in excluded or b["round"] <= self.last_commit.get(author, 0):
                continue
            if b["round"] > self.round + MAX_AHEAD:
                continue  # a round far ahead of the swarm's clock: no member can move the clock alone
            if len(b["trace"]) < 4 or len(b["trace"]) % 2:
                continue  # a trace needs at least one segment: (params, moments) at its two ends
            self.last_commit[author] = b["round"]
            self._bump(author, commits=1)
            fresh.append(e)
        self.round = max(self.round, self._clock(state, excluded))
        permille = state.config.verify_permille if state.config is not None else 650
        for e in fresh:
            self._assign(state, index, seed, e, permille, excluded)
        self._expire(state, index)
        floor = self.round - KEEP_ROUNDS
        if any(r < floor for _, r in self.round_credit):
            self.round_credit = {k: v for k, v in self.round_credit.items() if k[1] >= floor}

    def _clock(self, state, excluded: set[str]) -> int:
        """The highest round that at least half of the (non-excluded) contributors have committed: a minority can
        neither push it ahead (ending penalties, expiring checks) nor hold it back."""
        rounds = sorted(
            (r for m, r in self.last_commit.items() if m in state.members and m not in excluded), reverse=True
        )
        return rounds[(len(rounds) + 1) // 2 - 1] if rounds else 0

    def _assign(self, state, index: int, seed: bytes, e, permille: int, excluded: set[str]) -> None:
        r = check_seed(seed, e.id)
        if not sampled(r, permille):
            return
        active = {
            m
            for m, last in self.last_commit.items()
            if last >= e.body["round"] - ACTIVE_ROUNDS and m != e.author and m in state.members and m not in excluded
        }
        if not active:
            return  # nobody else to check it: it earns nothing (credit is for verified work only)
        order = ranked(r, active)
        referees = order[1 : 1 + REFEREES]
        if len(referees) % 2 == 0 and referees:
            referees = referees[:-1]  # an odd number, so a majority always exists
        segments = len(e.body["trace"]) // 2 - 1
        self.checks[e.id] = Check(
            commit=e.id,
            author=e.author,
            round=e.body["round"],
            samples=e.body["samples"],
            segment=int.from_bytes(r[8:16], "big") % segments,
            verifier=order[0],
            referees=tuple(referees),
            cut=index,
        )
        self._bump(e.author, sampled=1)

    def _verdict(self, state, index: int, e) -> bool:
        c = self.checks.get(e.body["commit"])
        if c is None:
            return False  # no open check (unknown, unsampled, resolved, or a verdict before its assignment)
        vote = (e.author, bool(e.body["ok"]), int(e.body["error"]))
        if c.status == "open" and e.author == c.verifier:
            if vote[1]:
                self._close(state, index, c, "verified", verdicts=(vote,))
            elif c.referees:
                self.checks[c.commit] = replace(c, status="accused", accuser=e.author, verdicts=(vote,))
            else:
                self._close(state, index, c, "disputed", accuser=e.author, verdicts=(vote,))
            return False
        if c.status == "accused" and e.author in c.referees and all(m != e.author for m, _, _ in c.verdicts):
            self.checks[c.commit] = replace(c, verdicts=(*c.verdicts, vote))
            return True
        return False

    def _resolve(self, state, index: int, commit: bytes) -> None:
        c = self.checks.get(commit)
        if c is None or c.status != "accused":
            return
        votes = [ok for m, ok, _ in c.verdicts if m in c.referees]
        guilty, innocent = votes.count(False), votes.count(True)
        need = len(c.referees) // 2 + 1
        if guilty >= need:
            self._close(state, index, c, "cheated")
            self._penalise(state, c.author, c.round)
            self._bump(c.author, failed=1)
        elif innocent >= need:
            self._close(state, index, c, "verified")  # the accused earns its credit
            self._penalise(state, c.accuser, c.round)
            self._bump(c.accuser, false_accusations=1)

    def _close(self, state, index: int, c: Check, status: str, **changes) -> None:
        done = replace(c, status=status, closed=index, **changes)
        self.checks.pop(c.commit, None)
        self.history.append(done)
        if len(self.history) > HISTORY:
            del self.history[: len(self.history) - HISTORY]
        if status == "verified" and (c.author, c.round) not in self.forfeit:
            state.credit[c.author] = state.credit.get(c.author, 0) + c.samples
            key = (c.author, c.round)
            self.round_credit[key] = self.round_credit.get(key, 0) + c.samples
            self._bump(c.author, verified=1, verified_samples=c.samples)
            state._version += 1

    def _penalise(self, state, member: str | None, round_no: int) -> None:
        """Exclude ``member`` for ``penalty_rounds`` rounds and take away its credit for ``round_no``."""
        if member is None:
            return
        k = state.config.penalty_rounds if state.config is not None else 5
        self.penalty[member] = max(self.penalty.get(member, 0), self.round + k)
        lost = self.round_credit.pop((member, round_no), 0)
        self.forfeit = self.forfeit | {(member, round_no)}
        if lost:
            state.credit[member] = state.credit.get(member, 0) - lost
            self._bump(member, verified_samples=-lost)
        state._version += 1

    def _expire(self, state, index: int) -> None:
        for c in sorted(self.checks.values(), key=lambda c: c.commit):
            if self.round > c.round + EXPIRY_ROUNDS:
                self._close(state, index, c, "expired")

    def readmit(self, member: str) -> bool:
        """Governance readmits a penalised member (an ``admit`` decision)."""
        return self.penalty.pop(member, None) is not None

    def _bump(self, member: str, **deltas: int) -> None:
        row = list(self.stats.get(member, (0,) * len(STAT_FIELDS)))
        for name, d in deltas.items():
            row[STAT_FIELDS.index(name)] += d
        self.stats[member] = tuple(row)


def credit_dict(state, checks: int = 0) -> dict:
    """Verified credit per member after the final cuts: one row per member who committed or holds credit (credit
    descending, then member id), its share of all credit in permille (integer arithmetic, rounded down), its
    spot-check counts and the round its penalty lasts to (null: not penalised); plus the last ``checks`` resolved
    spot-checks (oldest first)."""
    t = state.trust
    members = {m for m, c in state.credit.items() if c} | {m for m in t.stats if t.stat(m)["commits"]}
    total = sum(state.credit.get(m, 0) for m in members)
    penalised = t.penalised()
    rows = []
    for m in sorted(members, key=lambda m: (-state.credit.get(m, 0), m)):
        credit = state.credit.get(m, 0)
        stat = t.stat(m)
        rows.append(
            {
                "member": m,
                "credit": credit,
                "share_permille": credit * 1000 // total if total > 0 else 0,
                **{k: stat[k] for k in ("commits", "sampled", "verified", "failed", "false_accusations")},
                "excluded_until": t.penalty[m] if m in penalised else None,
            }
        )
    recent = t.history[-checks:] if checks > 0 else []
    return {
        "round": t.round,
        "weight_rule": state.rules.weight,
        "total": total,
        "members": rows,
        "checks": [c.to_dict() for c in recent],
    }
