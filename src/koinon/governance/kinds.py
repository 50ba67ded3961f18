"""The governance event kinds (docs/governance.md §2). Bodies are checked by the ledger store like any other
kind; whether a proposal's effect can apply, or a vote counts, is the state's business (a bad one is ignored by
the tally with its reason, never refused by the store, so every peer stores the same events)."""

from __future__ import annotations

from koinon.governance.effects import ACTIONS
from koinon.governance.tally import CHOICES
from koinon.ledger.kinds import hash32, mapping, member, optional, register_kind, text

PROPOSAL = {
    "action": lambda v: v in ACTIONS,
    "effect": mapping,
    "text": text(8192),
}
VOTE = {"proposal": hash32, "choice": lambda v: v in CHOICES}
DELEGATE = {"to": optional(member)}
CANCEL = {"proposal": hash32}


def register() -> None:
    register_kind(
        "proposal",
        PROPOSAL,
        "A proposal: its action, the exact effect it would apply, and its text. Its event id is the proposal id.",
    )
    register_kind("vote", VOTE, "A member's vote (yes, no, abstain) on a proposal; the last one in the window counts.")
    register_kind("delegate", DELEGATE, "Delegate this member's votes to another member; null revokes.")
    register_kind("cancel", CANCEL, "The proposer withdraws its proposal before its window opens.")
