"""The governance state machine, fed cut by cut (src/koinon/governance/state.py), without a network.

A :class:`Book` holds a charter and the members' feeds; ``book.cut(*events)`` hands the next cut (its index and the
events it adds, in log order) to a :class:`GovState`, exactly what the ledger's Chain does for a final cut. Cut
indices stand in for time: the charter's ``delay``, ``window`` and ``timelock`` count cuts, and an event's own
``time`` field is never read (the back-dated votes below prove it).
"""

from __future__ import annotations

import hashlib
import logging
import re

import pytest

from koinon.config import TrainingConfig
from koinon.errors import GovernanceError
from koinon.governance.charter import training_body
from koinon.governance.effects import check_effect
from koinon.governance.state import GovState, Proposal
from koinon.identity import Identity
from koinon.ledger.event import Event
from koinon.ledger.kinds import check_body
from tests.sim.fakenet import START_MS, identity_from_seed

RULES = {"delay": 2, "window": 3, "timelock": 2}  # proposal in cut k: opens k+2, closes k+4, takes effect k+6


def h(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


class Book:
    """A charter, its members' feeds and the governance state after the cuts fed so far."""

    def __init__(
        self,
        rules: dict | None = None,
        founders: tuple[str, ...] = ("alice", "bob", "carol"),
        data: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self.ids: dict[str, Identity] = {}
        self.heads: dict[str, tuple[int, bytes]] = {}
        self.clock = START_MS
        body = {
            "name": "governance tests",
            "founders": sorted(self.member(n) for n in founders),
            "training": training_body(TrainingConfig(), data),
            "rules": {**RULES, **(rules or {})},
        }
        check_body("charter", body)
        self.charter = Event.create(
            self.identity(founders[0]), swarm=b"", seq=1, prev=None, kind="charter", body=body, time_ms=self.clock
        )
        self.heads[founders[0]] = (1, self.charter.id)
        self.state = GovState(self.charter)
        assert not self.state.problems, self.state.problems
        self.index = -1

    def identity(self, name: str) -> Identity:
        if name not in self.ids:
            self.ids[name] = identity_from_seed(f"governance-state/{name}")
        return self.ids[name]

    def member(self, name: str) -> str:
        return self.identity(name).member_id

    def event(self, name: str, kind: str, body: dict, time_ms: int | None = None) -> Event:
        """The next event of ``name``'s feed (a valid body for ``kind``, as any store would accept)."""
        check_body(kind, body)
        seq, prev = self.heads.get(name, (0, None))
        self.clock += 1
        e = Event.create(
            self.identity(name),
            swarm=self.charter.id,
            seq=seq + 1,
            prev=prev,
            kind=kind,
            body=body,
            time_ms=self.clock if time_ms is None else time_ms,
        )
        self.heads[name] = (e.seq, e.id)
        return e

    def propose(self, name: str, action: str, effect: dict, text: str = "a proposal") -> Event:
        return self.event(name, "proposal", {"action": action, "effect": effect, "text": text})

    def vote(self, name: str, proposal: Event | bytes, choice: str, time_ms: int | None = None) -> Event:
        pid = proposal.id if isinstance(proposal, Event) else proposal
        return self.event(name, "vote", {"proposal": pid, "choice": choice}, time_ms)

    def votes(self, proposal: Event, **choices: str) -> list[Event]:
        return [self.vote(name, proposal, choice) for name, choice in choices.items()]

    def join(self, name: str) -> Event:
        return self.event(name, "join", {"maddrs": []})

    def delegate(self, name: str, to: str | None) -> Event:
        return self.event(name, "delegate", {"to": None if to is None else self.member(to)})

    def cut(self, *events: Event | list[Event]) -> int:
        """Feed the next cut with these events (lists are flattened), in this order."""
        flat = [e for x in events for e in (x if isinstance(x, list) else [x])]
        self.index += 1
        self.state.apply_cut(self.index, flat)
        return self.index

    def until(self, index: int) -> None:
        """Feed empty cuts through ``index``."""
        while self.index < index:
            self.cut()

    def p(self, proposal: Event) -> Proposal:
        return self.state.proposals[proposal.id]


def passing(book: Book, action: str, effect: dict, text: str = "a proposal", by: str = "alice") -> Event:
    """Propose in the next cut, everyone founding votes yes when it opens; return the proposal (not yet closed)."""
    e = book.propose(by, action, effect, text)
    book.cut(e)
    book.until(book.p(e).open - 1)
    book.cut(book.votes(e, alice="yes", bob="yes", carol="yes"))
    return e


def ignored_reasons(p: Proposal) -> list[str]:
    return [reason for _, reason in p.ignored]


# --- the lifecycle ------------------------------------------------------------------------------------------------


def test_pending_active_passed_queued_executed():
    book = Book()
    e = book.propose("bob", "set-config", {"changes": {"inner_steps": 20}}, "H = 20\n\nfewer bytes per sample")
    assert book.cut(e) == 0
    p = book.p(e)
    assert (p.included, p.open, p.close, p.execute_at) == (0, 2, 4, 6)
    assert (p.state, p.title, p.proposer) == ("pending", "H = 20", book.member("bob"))
    book.cut()
    assert book.p(e).state == "pending"
    book.cut(book.votes(e, alice="yes", bob="yes"))  # cut 2: the window opens, these votes count
    assert book.p(e).state == "active"
    book.cut(book.votes(e, carol="no"))
    book.cut()  # cut 4: the window closes and the tally runs
    p = book.p(e)
    assert p.state == "queued" and p.result.to_dict() == {"yes": 2, "no": 1, "abstain": 0, "total": 3}
    assert book.state.config.inner_steps == 50  # not before the timelock ends
    book.cut()
    assert book.p(e).state == "queued" and book.state.config.inner_steps == 50
    book.cut()  # cut 6: takes effect
    p = book.p(e)
    assert p.history == [(0, "pending"), (2, "active"), (4, "passed"), (4, "queued"), (6, "executed")]
    assert p.state == "executed" and "inner_steps=20" in p.applied
    assert book.state.config.inner_steps == 20
    assert book.state.decisions == [{"cut": 6, "id": e.id.hex(), "action": "set-config", "applied": p.applied}]
    assert book.state.config_history[-1] == (6, TrainingConfig(inner_steps=20).config_hash(), e.id)


def test_timelock_zero_executes_at_the_close():
    book = Book({"delay": 1, "window": 1, "timelock": 0})
    e = book.propose("alice", "resolution", {}, "We train on public-domain text only.")
    book.cut(e)
    book.cut(book.votes(e, alice="yes", bob="yes"))
    p = book.p(e)
    assert p.history == [(0, "pending"), (1, "active"), (1, "passed"), (1, "executed")]
    assert book.state.resolutions == [{"id": e.id.hex(), "text": "We train on public-domain text only.", "cut": 1}]


def test_the_window_is_inclusive_at_both_ends():
    book = Book({"delay": 1, "window": 3, "timelock": 0})
    e = book.propose("alice", "resolution", {}, "r")
    book.cut(e)  # 0: opens at 1, closes at 3
    book.cut(book.vote("alice", e, "yes"))  # 1: the opening cut counts
    book.cut()
    book.cut(book.vote("bob", e, "yes"))  # 3: the closing cut counts
    late = book.vote("carol", e, "no")
    book.cut(late)  # 4: one cut too late
    p = book.p(e)
    assert p.result.to_dict() == {"yes": 2, "no": 0, "abstain": 0, "total": 3} and p.state == "executed"
    assert ignored_reasons(p) == [
        f"{book.member('carol')}: the proposal is executed: the vote is in cut 4, the window closed at cut 3"
    ]
    assert p.ignored[0][0] == late.id


# --- cancel -----------------------------------------------------------------------------------------------------


def test_cancel_before_the_window_opens():
    book = Book()
    e = book.propose("bob", "resolution", {}, "r")
    book.cut(e)
    book.cut(book.event("bob", "cancel", {"proposal": e.id}))
    book.cut(book.votes(e, alice="yes", bob="yes", carol="yes"))  # cut 2 would have opened it
    book.until(8)
    p = book.p(e)
    assert p.state == "cancelled" and p.history == [(0, "pending"), (1, "cancelled")]
    assert p.votes == {} and p.result is None and len(p.ignored) == 3
    assert book.state.resolutions == []


def test_cancel_in_the_same_cut_as_the_proposal():
    book = Book()
    e = book.propose("bob", "resolution", {}, "r")
    book.cut(e, book.event("bob", "cancel", {"proposal": e.id}))
    assert book.p(e).history == [(0, "pending"), (0, "cancelled")]


def test_cancel_after_the_window_opened_is_refused(caplog):
    caplog.set_level(logging.INFO, logger="koinon.governance")
    book = Book()
    e = passing(book, "resolution", {}, "r", by="bob")  # cut 2: opened, three yes votes
    book.cut(book.event("bob", "cancel", {"proposal": e.id}))
    assert book.p(e).state == "active"
    assert "only a pending proposal can be cancelled" in caplog.text
    book.until(6)
    assert book.p(e).state == "executed"


def test_cancel_by_another_member_is_refused(caplog):
    caplog.set_level(logging.INFO, logger="koinon.governance")
    book = Book()
    e = book.propose("bob", "resolution", {}, "r")
    book.cut(e)
    book.cut(book.event("alice", "cancel", {"proposal": e.id}), book.event("alice", "cancel", {"proposal": h("x")}))
    assert book.p(e).state == "pending"
    assert "only the proposer can cancel a proposal" in caplog.text and "cancel of an unknown proposal" in caplog.text
    book.cut()
    assert book.p(e).state == "active"


# --- which votes count ------------------------------------------------------------------------------------------


def test_the_last_vote_counts():
    book = Book()
    e = book.propose("alice", "resolution", {}, "r")
    book.cut(e)
    book.cut()
    book.cut(book.votes(e, alice="yes", bob="yes", carol="yes"))
    replaced = book.vote("alice", e, "no")
    book.cut(replaced, book.vote("bob", e, "abstain"), book.vote("bob", e, "no"))  # bob twice in one cut: log order
    book.cut()
    p = book.p(e)
    assert p.votes[book.member("alice")] == ("no", replaced.id)
    assert p.result.to_dict() == {"yes": 1, "no": 2, "abstain": 0, "total": 3} and p.state == "rejected"
    assert p.history[-1] == (4, "rejected")


def test_votes_before_the_window_opens_are_ignored():
    book = Book()
    e = book.propose("alice", "resolution", {}, "r")
    book.cut(e, book.vote("bob", e, "yes"))  # the same cut as the proposal
    book.cut(book.vote("carol", e, "yes"))  # cut 1: still pending
    book.cut(book.vote("alice", e, "no"))  # cut 2: counts
    book.until(4)
    p = book.p(e)
    assert p.votes.keys() == {book.member("alice")}
    assert ignored_reasons(p) == [
        f"{book.member('bob')}: too early: the window opens at cut 2, the vote is in cut 0",
        f"{book.member('carol')}: too early: the window opens at cut 2, the vote is in cut 1",
    ]
    assert p.state == "rejected"


def test_a_back_dated_vote_after_the_close_changes_nothing():
    """An event's time is the author's claim: a vote that says it was cast during the window, but reaches the log
    in a cut after the close, does not count (only the cut that includes it does)."""
    book = Book()
    e = book.propose("alice", "set-config", {"changes": {"inner_steps": 20}})
    book.cut(e)
    book.cut()
    book.cut(book.votes(e, alice="yes", bob="no"))
    book.until(4)
    before = book.p(e).result.to_dict()
    assert book.p(e).state == "rejected"  # a tie
    back_dated = book.vote("carol", e, "yes", time_ms=e.time + 1)  # claims a time inside the window
    assert back_dated.time < book.clock
    book.cut(back_dated)
    book.until(8)
    p = book.p(e)
    assert p.state == "rejected" and p.result.to_dict() == before and book.member("carol") not in p.votes
    assert "the window closed at cut 4" in ignored_reasons(p)[0]
    assert book.state.config.inner_steps == 50


def test_a_late_vote_leaves_earlier_states_alone():
    """The Chain keeps one state per cut; copies share terminal proposals, so a late vote in a later cut (or on
    another branch) must not show up in the state of an earlier cut."""
    book = Book({"delay": 1, "window": 1, "timelock": 0})
    e = book.propose("alice", "resolution", {}, "r")
    book.cut(e)
    book.cut(book.votes(e, alice="yes"))
    earlier = book.state
    book.state = earlier.copy()
    book.cut(book.vote("bob", e, "no"))
    assert len(book.p(e).ignored) == 1
    assert earlier.proposals[e.id].ignored == [] and earlier.proposals[e.id].votes.keys() == {book.member("alice")}


def test_a_vote_on_an_unknown_proposal_is_ignored(caplog):
    caplog.set_level(logging.INFO, logger="koinon.governance")
    book = Book()
    book.cut(book.vote("alice", h("no such proposal"), "yes"))
    assert book.state.proposals == {}
    assert "vote on an unknown proposal" in caplog.text


def test_a_vote_by_a_non_member_is_ignored_with_its_reason():
    book = Book()
    e = book.propose("alice", "resolution", {}, "r")
    book.cut(e, book.join("mallory"))  # open admission: mallory is a member before the opening; eve never joins
    book.cut()
    book.cut(book.vote("eve", e, "no"), book.vote("alice", e, "yes"))
    book.until(4)
    p = book.p(e)
    assert book.member("mallory") in p.weights and book.member("eve") not in p.weights
    assert ignored_reasons(p) == [f"{book.member('eve')}: not a member when the window opened"]
    assert p.result.to_dict() == {"yes": 1, "no": 0, "abstain": 0, "total": 4}


def test_a_member_who_joins_after_the_opening_does_not_vote():
    book = Book()
    e = book.propose("alice", "resolution", {}, "r")
    book.cut(e)
    book.cut()
    book.cut(book.join("dave"))  # cut 2: after the snapshot of the opening
    book.cut(book.vote("dave", e, "no"))
    assert book.member("dave") in book.state.members
    assert ignored_reasons(book.p(e)) == [f"{book.member('dave')}: not a member when the window opened"]


def test_a_proposal_by_a_non_member_is_ignored(caplog):
    caplog.set_level(logging.INFO, logger="koinon.governance")
    book = Book()
    e = book.propose("eve", "resolution", {}, "r")
    book.cut(e)
    assert e.id not in book.state.proposals
    assert "the proposer is not a member" in caplog.text


# --- delegation ---------------------------------------------------------------------------------------------------


def test_delegation_is_taken_at_the_opening_and_revocable_before():
    book = Book(founders=("alice", "bob", "carol", "dave"))
    book.cut(book.delegate("alice", "bob"), book.delegate("carol", "bob"), book.delegate("dave", "carol"))
    book.cut(book.delegate("carol", None))  # carol revokes; dave → carol stays
    e = book.propose("alice", "resolution", {}, "r")
    book.cut(e)
    book.until(book.p(e).open - 1)
    # the opening cut: the snapshot (alice → bob, dave → carol) is taken before its events, so alice's revocation
    # here binds only proposals that open later
    book.cut(book.delegate("alice", None), book.vote("bob", e, "yes"), book.vote("carol", e, "no"))
    book.until(book.p(e).close)
    p = book.p(e)
    assert p.result.delegated == {book.member("alice"): book.member("bob"), book.member("dave"): book.member("carol")}
    assert p.result.to_dict() == {"yes": 2, "no": 2, "abstain": 0, "total": 4} and p.state == "rejected"
    assert book.state.delegations == {book.member("dave"): book.member("carol")}


def test_a_delegation_by_a_non_member_is_ignored():
    book = Book()
    book.cut(book.delegate("eve", "alice"))
    assert book.state.delegations == {}


# --- malformed effects --------------------------------------------------------------------------------------------

MALFORMED = [
    ("set-config", {"changes": {"inner_steps": 0}}, "the new configuration is invalid"),
    ("set-config", {"changes": {"warp_drive": 1}}, "unknown config key 'warp_drive'"),
    ("set-config", {"changes": {"seq_len": 256}}, "seq_len cannot change in a running swarm"),
    ("set-config", {"changes": {"inner_steps": "20"}}, "inner_steps must be an integer"),
    ("set-config", {"changes": {"inner_lr": "fast"}}, "inner_lr must be a decimal number"),
    ("set-config", {"changes": {"inner_lr": "nan"}}, "inner_lr must be a decimal number"),
    ("set-config", {"changes": {}}, "set-config needs at least one change"),
    ("set-config", {"changes": {"inner_steps": 20}, "also": 1}, "needs exactly the field"),
    ("expel", {"member": "12D3KooWnotamember"}, "is not a valid member id"),
    ("add-data", {"source": b"short", "name": "wiki"}, "must be a 32-byte hash"),
    ("release", {"checkpoint": h("ckpt"), "tag": "v1"}, "needs exactly the field"),
    ("release", {"checkpoint": h("ckpt"), "tag": " ", "license": "CC0"}, "release tag must be non-empty"),
    ("amend-charter", {"rules": {"epoch_ms": 5000}}, "epoch_ms cannot be amended"),
    ("amend-charter", {"rules": {"window": 0}}, "rule window must be at least 1"),
    ("amend-charter", {"rules": {"quorum": [3, 2]}}, "between 0 and 1"),
    ("amend-charter", {"rules": {"speed": 1}}, "unknown charter rule"),
    ("amend-charter", {"rules": {}}, "at least one rule"),
    ("resolution", {"text": "x"}, "needs exactly the field(s) none"),
]


@pytest.mark.parametrize("action, effect, message", MALFORMED, ids=[m for _, _, m in MALFORMED])
def test_a_malformed_effect_is_refused_and_ignored(action, effect, message):
    book = Book()
    with pytest.raises(GovernanceError, match=re.escape(message)):
        check_effect(action, effect, book.state)
    e = book.propose("alice", action, effect)
    book.cut(e)
    assert book.state.proposals == {}


@pytest.mark.parametrize(
    "action, effect, message",
    [
        ("set-config", {"changes": {"inner_steps": 2.5}}, "inner_steps must be an integer"),  # no floats in CBOR
        ("set-config", {"changes": {"inner_steps": True}}, "inner_steps must be an integer"),
        ("set-config", "inner_steps=20", "a proposal's effect must be a map"),
        ("dissolve", {}, "unknown proposal kind 'dissolve'"),
    ],
)
def test_check_effect_refuses_what_the_ledger_cannot_even_carry(action, effect, message):
    with pytest.raises(GovernanceError, match=message):
        check_effect(action, effect, Book().state)


def test_effects_that_no_longer_apply_are_refused_at_proposal_time():
    book = Book()
    alice, eve = book.member("alice"), book.member("eve")
    for action, effect, message in [
        ("admit", {"member": alice}, "is already a member"),
        ("expel", {"member": eve}, "is not a member"),
    ]:
        with pytest.raises(GovernanceError, match=message):
            check_effect(action, effect, book.state)


# --- what each action changes ---------------------------------------------------------------------------------


def test_set_config_changes_config_and_history():
    book = Book()
    e = passing(book, "set-config", {"changes": {"inner_steps": 20, "inner_lr": "0.002"}})
    book.until(6)
    expected = TrainingConfig(inner_steps=20, inner_lr=0.002)
    assert book.state.config == expected
    assert book.state.config_hash() == expected.config_hash()
    assert book.state.config_history == [(-1, TrainingConfig().config_hash(), None), (6, expected.config_hash(), e.id)]


def test_expel_stops_the_expelled_members_votes():
    book = Book({"delay": 1, "window": 3, "timelock": 1}, founders=("alice", "bob", "carol", "dave"))
    dave = book.member("dave")
    expel = book.propose("alice", "expel", {"member": dave}, "expel dave")
    book.cut(expel)  # 0: opens 1, closes 3, executes 4
    book.cut(book.votes(expel, alice="yes", bob="yes", carol="yes", dave="no"))
    other = book.propose("bob", "resolution", {}, "something dave wants")
    book.cut(other)  # 2: opens 3 (dave still a member then), closes 5
    book.cut(book.votes(other, dave="yes", bob="yes", alice="no"))  # 3: expel closes, passed, queued
    assert book.p(expel).state == "queued" and dave in book.p(other).weights
    book.cut()  # 4: expel executes
    assert book.p(expel).state == "executed"
    assert dave not in book.state.members and dave not in book.state.eligible()
    assert book.state.excluded() == [dave]
    book.cut(book.vote("dave", other, "yes"))  # 5: recorded, but dave no longer counts
    p = book.p(other)
    assert p.result.to_dict() == {"yes": 1, "no": 1, "abstain": 0, "total": 3}  # with dave: 2 yes of 4 → passed
    assert dave not in p.result.direct and p.state == "rejected"
    later = book.propose("carol", "resolution", {}, "after the expulsion")
    book.cut(later, book.join("dave"))  # a join does not undo an expulsion
    book.cut(book.vote("dave", later, "yes"))
    assert ignored_reasons(book.p(later)) == [f"{dave}: not a member when the window opened"]
    assert dave not in book.state.members and book.state.excluded() == [dave]


@pytest.mark.parametrize("expel_first", [True, False])
def test_every_close_of_a_cut_is_tallied_before_its_executions(expel_first):
    """An expel that takes effect in cut k does not change the tally of a proposal that closes in cut k, whichever
    of the two came first in the log (tally, then execute: state.py's steps 3 and 4)."""
    book = Book({"delay": 1, "window": 1, "timelock": 0}, founders=("alice", "bob", "carol", "dave"))
    expel = book.propose("alice", "expel", {"member": book.member("dave")}, "expel dave")
    other = book.propose("bob", "resolution", {}, "r")
    book.cut([expel, other] if expel_first else [other, expel])
    book.cut(book.votes(expel, alice="yes", bob="yes", carol="yes"), book.votes(other, dave="yes", bob="yes"))
    assert book.p(expel).state == "executed"
    assert book.p(other).result.to_dict() == {"yes": 2, "no": 0, "abstain": 0, "total": 4}


def test_admission_by_vote():
    book = Book({"admission": "vote"})
    dave = book.member("dave")
    book.cut(book.join("dave"))
    assert dave not in book.state.members and dave in book.state.present and dave not in book.state.eligible()
    admit = book.propose("alice", "admit", {"member": dave}, "admit dave")
    book.cut(admit)
    book.cut()
    book.cut(book.votes(admit, alice="yes", bob="yes", dave="yes"))  # dave's own vote is not a member's
    assert ignored_reasons(book.p(admit)) == [f"{dave}: not a member when the window opened"]
    book.until(book.p(admit).execute_at - 1)
    assert book.p(admit).state == "queued" and dave not in book.state.members
    book.cut()  # admitted
    assert book.p(admit).state == "executed"
    assert dave in book.state.members and dave in book.state.eligible()
    # a member admitted before joining is a voter, but cosigns only once it has joined (it must say where it listens)
    erin = book.member("erin")
    passing(book, "admit", {"member": erin})
    book.until(book.index + 4)
    assert erin in book.state.members and erin not in book.state.eligible()
    book.cut(book.join("erin"))
    assert erin in book.state.eligible()


def test_open_admission_a_join_makes_a_member():
    book = Book()
    book.cut(book.join("dave"))
    assert book.member("dave") in book.state.members and book.member("dave") in book.state.eligible()


def test_amend_charter_uses_its_own_threshold_and_binds_later_proposals():
    founders = ("alice", "bob", "carol", "dave", "erin")
    book = Book({"delay": 1, "window": 2, "timelock": 0, "threshold": [1, 2], "amend_threshold": [2, 3]}, founders)
    config = book.propose("alice", "set-config", {"changes": {"inner_steps": 20}})
    amend = book.propose("alice", "amend-charter", {"rules": {"window": 5}})
    book.cut(config, amend)
    assert book.p(config).threshold == (1, 2) and book.p(amend).threshold == (2, 3)
    three_two = {"alice": "yes", "bob": "yes", "carol": "yes", "dave": "no", "erin": "no"}
    book.cut(book.votes(config, **three_two), book.votes(amend, **three_two))
    book.cut()  # 2: both close with 3 yes, 2 no: 3·2 = 6 ≥ 1·5 meets 1/2, but 3·3 = 9 < 2·5 = 10 misses 2/3
    assert book.p(config).state == "executed" and book.p(amend).state == "rejected"
    assert book.state.rules.window == 2

    amend = book.propose("bob", "amend-charter", {"rules": {"window": 5, "threshold": [3, 5]}})
    book.cut(amend)  # 3: opens 4, closes 5
    before = book.propose("carol", "resolution", {}, "proposed under the old rules")
    book.cut(book.votes(amend, alice="yes", bob="yes", carol="yes", dave="yes", erin="no"), before)
    book.cut()  # 5: closes, 4 of 5: 12 ≥ 10, executed
    assert book.p(amend).state == "executed" and "window=5" in book.p(amend).applied
    assert book.state.rules.window == 5 and book.state.rules.threshold == (3, 5)
    after = book.propose("carol", "resolution", {}, "proposed under the new rules")
    book.cut(after)
    assert book.p(before).close - book.p(before).open + 1 == 2 and book.p(before).threshold == (1, 2)
    assert book.p(after).close - book.p(after).open + 1 == 5 and book.p(after).threshold == (3, 5)


def test_data_sources_added_and_removed():
    wiki, books, code = h("wiki"), h("books"), h("code")
    book = Book({"delay": 1, "window": 1, "timelock": 0}, data=[("wiki", wiki)])
    assert book.state.restricted_data and book.state.data == {wiki.hex(): "wiki"}
    assert book.state.data_allowed(wiki.hex()) and not book.state.data_allowed(books.hex())
    with pytest.raises(GovernanceError, match="is not in force"):
        check_effect("remove-data", {"source": code}, book.state)
    passing(book, "add-data", {"source": books, "name": "books"})
    assert book.state.data_allowed(books.hex()) and book.state.data[books.hex()] == "books"
    passing(book, "remove-data", {"source": wiki})
    assert not book.state.data_allowed(wiki.hex()) and book.state.data == {books.hex(): "books"}
    assert [d["action"] for d in book.state.decisions] == ["add-data", "remove-data"]


def test_without_charter_data_every_source_is_allowed_until_removed():
    code = h("code")
    book = Book({"delay": 1, "window": 1, "timelock": 0})
    assert not book.state.restricted_data and book.state.data_allowed(code.hex())
    passing(book, "remove-data", {"source": code})
    assert not book.state.data_allowed(code.hex()) and book.state.data_allowed(h("other").hex())
    passing(book, "add-data", {"source": code, "name": "code"})
    assert book.state.data_allowed(code.hex())


def test_two_releases_of_one_tag_the_second_fails_at_execution():
    book = Book({"delay": 1, "window": 1, "timelock": 1})
    first = book.propose("alice", "release", {"checkpoint": h("ckpt1"), "tag": "v1", "license": "Apache-2.0"})
    second = book.propose("bob", "release", {"checkpoint": h("ckpt2"), "tag": "v1", "license": "MIT"})
    book.cut(first, second)  # both check out now: the tag is free until one executes
    book.cut(book.votes(first, alice="yes", bob="yes"), book.votes(second, alice="yes", bob="yes"))
    assert book.p(first).state == book.p(second).state == "queued"
    book.cut()  # 2: both take effect, in log order
    assert book.p(first).state == "executed"
    assert book.p(second).state == "failed" and "release tag 'v1' is already taken" in book.p(second).reason
    assert book.p(second).history[-1] == (2, "failed")
    assert book.state.releases == {"v1": {"checkpoint": h("ckpt1").hex(), "license": "Apache-2.0"}}
    assert [d["id"] for d in book.state.decisions] == [first.id.hex()]
    third = book.propose("carol", "release", {"checkpoint": h("ckpt3"), "tag": "v1", "license": "MIT"})
    book.cut(third)  # refused outright now
    assert third.id not in book.state.proposals


def test_contribution_weight_without_credit_nobody_weighs_anything():
    book = Book({"weight": "contribution", "delay": 1, "window": 1})
    e = book.propose("alice", "resolution", {}, "r")
    book.cut(e)
    book.cut(book.votes(e, alice="yes", bob="yes", carol="yes"))
    p = book.p(e)
    assert p.total == 0 and set(p.weights.values()) == {0}
    assert p.state == "expired" and p.reason == "no quorum: 0 of 0 weight voted, 1/3 needed"


def test_an_equivocator_is_banned_and_excluded():
    book = Book({"delay": 1, "window": 2})
    e = book.propose("alice", "resolution", {}, "r")
    book.cut(e)
    book.cut(book.votes(e, carol="yes", bob="no"))
    seq, prev = book.heads["carol"]
    a, b = (
        Event.create(
            book.identity("carol"),
            swarm=book.charter.id,
            seq=seq + 1,
            prev=prev,
            kind="join",
            body={"maddrs": [x]},
            time_ms=START_MS,
        )
        for x in ("a", "b")
    )
    book.cut(book.event("alice", "equivocation", {"a": a.wire, "b": b.wire}))  # 2: closes
    carol = book.member("carol")
    assert carol in book.state.banned and carol not in book.state.eligible() and book.state.excluded() == [carol]
    assert book.p(e).result.to_dict() == {"yes": 0, "no": 1, "abstain": 0, "total": 2}


def test_replay_gives_the_state_of_feeding_cut_by_cut():
    from koinon.governance.state import replay

    book = Book({"delay": 1, "window": 1, "timelock": 0})
    e = book.propose("alice", "set-config", {"changes": {"inner_steps": 20}})
    cuts = [(0, [e]), (1, book.votes(e, alice="yes", bob="yes")), (2, [])]
    for _, events in cuts:
        book.cut(events)
    state = replay(book.charter, cuts)
    assert state.config == book.state.config and state.proposals[e.id].history == book.p(e).history
