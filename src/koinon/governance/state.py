"""The governance state: a pure function of the charter and the cuts of a chain (docs/governance.md §2).

:class:`GovState` is fed one cut at a time (:meth:`GovState.apply_cut`): the cut's index and the events it adds
to the log, in the ledger's total order. Everything it computes (members, proposals and their states, the
configuration in force, data sources, releases) depends only on that sequence, never on wall-clock time or on
the order events arrived in, so every peer holding the same final cuts holds the same state. Timestamps inside
events are ignored: a vote counts if and only if the cut that includes it is inside the proposal's window.

Per cut ``k``, in this order:

1. proposals whose window opens at ``k`` take their weight snapshot (members and their weights, delegations);
2. the cut's events are applied in log order (join, leave, equivocation, proposal, vote, delegate, cancel);
3. proposals whose window closes at ``k`` are tallied; passed ones are queued for ``timelock`` cuts;
4. queued proposals whose timelock ends at ``k`` are executed, in the order they entered the log;
5. the cut's commitments and verdicts go to :class:`~koinon.verification.trust.Trust` (spot-checks, penalties,
   verified credit), with the cut's id as the seed of its random choices.

The ledger's :class:`~koinon.ledger.cuts.Chain` keeps one state per cut and asks it who may cosign the next cut
(:meth:`GovState.eligible`), so admission by vote also decides who finalises the ledger.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field

from koinon.config import TrainingConfig
from koinon.errors import GovernanceError
from koinon.governance.effects import apply_effect, check_effect
from koinon.governance.rules import rules_or_defaults
from koinon.governance.tally import Tally, outcome, tally, weight_of
from koinon.ledger.event import Event
from koinon.verification.trust import Trust

logger = logging.getLogger("koinon.governance")

TERMINAL = ("rejected", "expired", "executed", "cancelled", "failed")
MAX_IGNORED = 200  # per proposal: the reasons for ignored votes kept for `koinon proposal ID`


@dataclass
class Proposal:
    id: bytes
    proposer: str
    action: str
    effect: dict
    text: str
    included: int  # index of the cut that added it to the log
    open: int  # first cut whose votes count
    close: int  # last cut whose votes count
    execute_at: int  # cut at which a passed proposal takes effect
    quorum: tuple[int, int]
    threshold: tuple[int, int]
    state: str = "pending"
    reason: str = "waiting for its window to open"
    history: list[tuple[int, str]] = field(default_factory=list)
    weights: dict[str, int] = field(default_factory=dict)  # snapshot at opening (shared, never mutated)
    total: int = 0  # sum of ``weights``
    delegations: dict[str, str] = field(default_factory=dict)  # snapshot at opening (shared, never mutated)
    votes: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # member → (choice, vote event id)
    ignored: list[tuple[bytes, str]] = field(default_factory=list)  # (event id, reason)
    result: Tally | None = None
    applied: str = ""  # what execution changed

    @property
    def title(self) -> str:
        return self.text.strip().splitlines()[0] if self.text.strip() else self.action

    def set_state(self, index: int, state: str, reason: str) -> None:
        self.state, self.reason = state, reason
        self.history.append((index, state))

    def current_tally(self, gone: set[str]) -> Tally:
        """The tally now; ``gone``: members expelled or banned since (their votes and weight stop counting)."""
        direct = {m: c for m, (c, _) in self.votes.items()}
        return tally(self.weights, direct, self.delegations, excluded=gone, total=self.total)

    def clone(self) -> Proposal:
        """A copy whose mutable parts (votes, history, ignored) are its own; snapshots stay shared."""
        new = copy.copy(self)
        new.votes, new.history, new.ignored = dict(self.votes), list(self.history), list(self.ignored)
        return new


def _charter_config(training: object) -> tuple[TrainingConfig | None, list[str]]:
    if not isinstance(training, dict) or "config" not in training:
        return None, ["the charter has no training configuration"]
    try:
        raw = json.loads(training["config"])
        return TrainingConfig(**raw), []
    except Exception as e:  # a charter from the network: report, never crash
        return None, [f"the charter's training configuration is invalid ({e})"]


def _charter_data(training: object) -> tuple[dict[str, str], bool]:
    """{source hash hex: name} and whether the charter restricts training to those sources."""
    if not isinstance(training, dict) or not isinstance(training.get("data"), list):
        return {}, False
    data = {}
    for item in training["data"]:
        if isinstance(item, list) and len(item) == 2 and isinstance(item[1], bytes) and len(item[1]) == 32:
            data[item[1].hex()] = str(item[0])
    return data, True


class GovState:
    def __init__(self, charter: Event) -> None:
        body = charter.body
        self.swarm = charter.id
        self.charter = charter
        self.rules, self.problems = rules_or_defaults(body.get("rules"))
        self.config, problems = _charter_config(body.get("training"))
        self.problems += problems
        self.data, self.restricted_data = _charter_data(body.get("training"))
        self.removed_data: set[str] = set()
        founders = body.get("founders") or [charter.author]
        self.members: set[str] = set(founders)
        self.present: set[str] = set(founders)  # joined and not left: who may cosign cuts
        self.expelled: set[str] = set()
        self.banned: set[str] = set()
        self.delegations: dict[str, str] = {}
        self.credit: dict[str, int] = {}  # verified samples per member (self.trust feeds it)
        self.trust = Trust()
        self.releases: dict[str, dict] = {}
        self.resolutions: list[dict] = []
        self.proposals: dict[bytes, Proposal] = {}
        self.ignored_proposals: dict[bytes, str] = {}  # proposal events the state refused, with the reason
        self.decisions: list[dict] = []  # executed proposals, in order: {cut, id, action, applied}
        self.config_history: list[tuple[int, str, bytes | None]] = (
            [(-1, self.config.config_hash(), None)] if self.config else []
        )
        self.index = -1  # last cut applied (-1: only the charter)
        self._live: list[bytes] = []  # proposals not yet in a terminal state, in log order
        self._snap: tuple[dict[str, int], int, dict[str, str]] = ({}, 0, {})
        self._snap_key: object = None
        self._version = 0  # bumped whenever members, credit or delegations may have changed

    # --- copies (one state per cut in the ledger's Chain) --------------------------------------------------------
    def copy(self) -> GovState:
        new = copy.copy(self)
        for name in ("members", "present", "expelled", "banned", "removed_data"):
            setattr(new, name, set(getattr(self, name)))
        for name in ("delegations", "credit", "releases", "data"):
            setattr(new, name, dict(getattr(self, name)))
        new.resolutions, new.decisions = list(self.resolutions), list(self.decisions)
        new.config_history, new.problems = list(self.config_history), list(self.problems)
        new.proposals = dict(self.proposals)
        new.trust = self.trust.copy()
        new.ignored_proposals = dict(self.ignored_proposals)
        for pid in self._live:  # terminal proposals never change again, so they are shared
            new.proposals[pid] = self.proposals[pid].clone()
        new._live = list(self._live)
        return new

    # --- queries -------------------------------------------------------------------------------------------------
    def eligible(self) -> frozenset[str]:
        """Who may cosign the next cut: members who joined (or founded) and have not left."""
        return frozenset((self.members & self.present) - self.banned)

    def weight(self, member: str) -> int:
        if member not in self.members:
            return 0
        return weight_of(self.rules.weight, self.credit.get(member, 0))

    def config_hash(self) -> str | None:
        return self.config.config_hash() if self.config else None

    def data_allowed(self, source_hex: str) -> bool:
        """May a peer train on the local data source with this content hash?"""
        return source_hex not in self.removed_data and (not self.restricted_data or source_hex in self.data)

    def excluded(self) -> list[str]:
        """Members whose contributions the swarm leaves out of the average (expelled, banned, or serving a
        penalty for cheating or a false accusation), sorted."""
        return sorted(self.expelled | self.banned | self.trust.penalised())

    def training_effect(self) -> tuple:
        """What this state changes in training: the configuration, who is excluded, which data is allowed. Two
        states with the same effect train the same (the round loop waits for its ledger only when it would not)."""
        return (self.config_hash(), tuple(self.excluded()), tuple(sorted(self.removed_data)), self.restricted_data)

    def _snapshot(self) -> tuple[dict[str, int], int, dict[str, str]]:
        """(weights, total, delegations) of the members now; shared by every proposal that opens before the next
        change of membership, credit or delegations (so 1,000 proposals over 10,000 members stay cheap)."""
        key = self._version
        if self._snap_key != key:
            if self.rules.weight == "member":  # weight() is 1 for every member: no call per member (10,000 of them)
                weights = dict.fromkeys(self.members, 1)
            else:
                weights = {m: self.weight(m) for m in self.members}
            delegations = {m: d for m, d in self.delegations.items() if m in self.members}
            self._snap, self._snap_key = (weights, sum(weights.values()), delegations), key
        return self._snap

    # --- feeding cuts --------------------------------------------------------------------------------------------
    def apply_cut(self, index: int, events: list[Event], seed: bytes | None = None) -> None:
        """Apply final cut ``index`` and the events it adds. ``seed``: the cut's event id (what the ledger passes;
        the spot-checks' randomness); tests that build cuts by hand may leave it to default to the index."""
        self.index = index
        for pid in list(self._live):
            p = self.proposals[pid]
            if p.state == "pending" and p.open == index:
                p.weights, p.total, p.delegations = self._snapshot()
                p.set_state(index, "active", f"voting until cut {p.close}")
        for e in events:
            try:
                self._apply_event(index, e)
            except GovernanceError as err:
                logger.info("cut %d: %s ignored: %s", index, e.short(), err)
                if e.kind == "proposal" and len(self.ignored_proposals) < 10_000:
                    self.ignored_proposals[e.id] = f"ignored at cut {index}: {err}"
        for pid in list(self._live):
            p = self.proposals[pid]
            if p.state == "active" and p.close == index:
                p.result = p.current_tally(self.expelled | self.banned)
                state, why = outcome(p.result, p.quorum, p.threshold)
                p.set_state(index, state, why)
                if state == "passed" and p.execute_at > index:
                    p.set_state(index, "queued", f"{why}; takes effect at cut {p.execute_at}")
        # every tally of this cut before any execution (steps 3, then 4): an expel executed here must not change
        # the tally of a proposal closing here according to which of the two came first in the log
        for pid in list(self._live):
            p = self.proposals[pid]
            if p.state in ("passed", "queued") and p.execute_at == index:
                self._execute(index, p)
        self._live = [pid for pid in self._live if self.proposals[pid].state not in TERMINAL]
        if any(e.kind in ("commit", "verdict") for e in events):
            self.trust.apply(self, index, seed if seed is not None else index.to_bytes(8, "big"), events)

    def _execute(self, index: int, p: Proposal) -> None:
        self._version += 1
        try:
            p.applied = apply_effect(p.action, p.effect, self)
        except GovernanceError as e:
            p.set_state(index, "failed", f"passed, but the effect could not be applied at cut {index}: {e}")
            return
        p.set_state(index, "executed", p.applied)
        if p.action == "set-config":
            self.config_history.append((index, self.config.config_hash(), p.id))
        elif p.action == "resolution":
            self.resolutions.append({"id": p.id.hex(), "text": p.text, "cut": index})
        self.decisions.append({"cut": index, "id": p.id.hex(), "action": p.action, "applied": p.applied})

    def _apply_event(self, index: int, e: Event) -> None:
        kind, body, author = e.kind, e.body, e.author
        if kind in ("join", "equivocation", "delegate"):
            self._version += 1
        if kind == "join":
            self.present.add(author)
            if self.rules.admission == "open" and author not in self.expelled and author not in self.banned:
                self.members.add(author)
        elif kind == "leave":
            self.present.discard(author)
        elif kind == "equivocation":
            culprit = Event.from_wire(body["a"]).author
            self.banned.add(culprit)
            self.members.discard(culprit)
        elif kind == "proposal":
            self._propose(index, e)
        elif kind == "vote":
            self._vote(index, e)
        elif kind == "delegate":
            if author not in self.members:
                raise GovernanceError("the delegator is not a member")
            to = body["to"]
            if to is None or to == author:
                self.delegations.pop(author, None)
            else:
                self.delegations[author] = to
        elif kind == "cancel":
            p = self.proposals.get(body["proposal"])
            if p is None:
                raise GovernanceError("cancel of an unknown proposal")
            if p.proposer != author:
                raise GovernanceError("only the proposer can cancel a proposal")
            if p.state != "pending":
                raise GovernanceError(f"the proposal is {p.state}; only a pending proposal can be cancelled")
            p.set_state(index, "cancelled", f"cancelled by its proposer at cut {index}")

    def _propose(self, index: int, e: Event) -> None:
        if e.author not in self.members:
            raise GovernanceError("the proposer is not a member")
        action, effect = e.body["action"], e.body["effect"]
        check_effect(action, effect, self)
        if action == "resolution" and not e.body["text"].strip():
            raise GovernanceError("a resolution needs its text")
        r = self.rules
        open_ = index + r.delay
        close = open_ + r.window - 1
        threshold = r.amend_threshold if action == "amend-charter" else r.threshold
        p = Proposal(
            e.id, e.author, action, effect, e.body["text"], index, open_, close, close + r.timelock, r.quorum, threshold
        )
        p.history.append((index, "pending"))
        self.proposals[e.id] = p
        self._live.append(e.id)

    def _vote(self, index: int, e: Event) -> None:
        pid, choice = e.body["proposal"], e.body["choice"]
        p = self.proposals.get(pid)
        if p is None:
            raise GovernanceError(f"vote on an unknown proposal {pid.hex()[:12]}…")
        if p.state in TERMINAL:  # shared with earlier states (copy() clones live ones only): write to our own copy
            p = self.proposals[pid] = p.clone()
        if p.state == "active" and e.author in p.weights:  # the common case, without the checks' closure below
            p.votes.pop(e.author, None)  # re-insert: the dict keeps the order of each member's latest vote
            p.votes[e.author] = (choice, e.id)
            return

        def ignore(reason: str) -> None:
            if len(p.ignored) < MAX_IGNORED:
                p.ignored.append((e.id, f"{e.author}: {reason}"))
            raise GovernanceError(reason)

        if p.state == "pending":
            ignore(f"too early: the window opens at cut {p.open}, the vote is in cut {index}")
        if p.state != "active":
            ignore(f"the proposal is {p.state}: the vote is in cut {index}, the window closed at cut {p.close}")
        if e.author not in p.weights:
            ignore("not a member when the window opened")
        p.votes.pop(e.author, None)  # re-insert: the dict keeps the order of each member's latest vote
        p.votes[e.author] = (choice, e.id)


def replay(charter: Event, cuts: list[tuple[int, list[Event]]]) -> GovState:
    """The state after ``cuts`` ((index, events added) in chain order), starting from the charter."""
    state = GovState(charter)
    for index, events in cuts:
        state.apply_cut(index, events)
    return state
