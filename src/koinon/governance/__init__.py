"""Governance: the charter's rules, proposals, votes, delegation, a deterministic tally and the decisions that
change the running swarm (docs/governance.md). Importing this package registers its ledger event kinds."""

from koinon.governance.kinds import register as _register

_register()
