"""Verified contributions: commitments with optimiser traces, spot-checks by re-execution, accusations settled by
referees, penalties and verified credit (docs/verification.md)."""
