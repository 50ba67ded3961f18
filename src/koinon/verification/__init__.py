"""Verified contributions: commitments with optimiser traces, spot-checks by re-execution, accusations settled by
referees, penalties and verified credit (docs/verification.md).

- ``trust.py``: ``Trust`` — the deterministic bookkeeping of checks, verdicts, penalties and credit.
- ``worker.py``: commitments, trace states served by hash (``BlobStore``), segment re-execution (``verify_commit``).
- ``duties.py``: ``VerificationDuties`` — a training peer's side: commit each round, answer the checks assigned to it.
"""
