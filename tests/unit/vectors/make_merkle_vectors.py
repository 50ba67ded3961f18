"""Regenerate ``merkle.json``, the frozen known-answer vectors of src/koinon/ledger/merkle.py.

    .venv/bin/python tests/unit/vectors/make_merkle_vectors.py

tests/unit/test_merkle.py checks the code against the committed file, so rerun this only when a change of the
tree or of the proof-file format is intended (and say so in the review): a silent regeneration hides a regression.
The first eight leaves are the Certificate Transparency reference leaves (RFC 6962 test data); two more make
trees of 9 and 10 leaves, whose right halves are ragged.
"""

from __future__ import annotations

import json
from pathlib import Path

from koinon.ledger.merkle import (
    ConsistencyProof,
    InclusionProof,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root,
)

LEAVES = [
    bytes.fromhex(x)
    for x in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f")
] + [b"koinon", b"\xff" * 33]

# (index, tree_size) and (old_size, new_size) whose proof files are frozen byte for byte.
INCLUSION_FILES = [(0, 1), (5, 8), (9, 10)]
CONSISTENCY_FILES = [(0, 3), (4, 4), (6, 8), (3, 10)]


def vectors() -> dict:
    hashes = [leaf_hash(d) for d in LEAVES]
    roots = [root(hashes[:n]) for n in range(len(LEAVES) + 1)]
    inclusion = [
        {"index": i, "tree_size": n, "path": [p.hex() for p in inclusion_proof(hashes[:n], i)]}
        for n in range(1, len(LEAVES) + 1)
        for i in range(n)
    ]
    consistency = [
        {"old_size": m, "new_size": n, "path": [p.hex() for p in consistency_proof(hashes[:n], m)]}
        for n in range(len(LEAVES) + 1)
        for m in range(n + 1)
    ]
    inclusion_files = [
        InclusionProof(LEAVES[i], i, n, tuple(inclusion_proof(hashes[:n], i)), roots[n]).to_json()
        for i, n in INCLUSION_FILES
    ]
    consistency_files = [
        ConsistencyProof(m, n, roots[m], roots[n], tuple(consistency_proof(hashes[:n], m))).to_json()
        for m, n in CONSISTENCY_FILES
    ]
    return {
        "about": "Known answers for koinon.ledger.merkle (RFC 9162 §2.1, SHA-256); made by make_merkle_vectors.py",
        "leaves": [d.hex() for d in LEAVES],
        "roots": [r.hex() for r in roots],
        "inclusion": inclusion,
        "consistency": consistency,
        "inclusion_files": inclusion_files,
        "consistency_files": consistency_files,
    }


if __name__ == "__main__":
    out = Path(__file__).with_name("merkle.json")
    out.write_text(json.dumps(vectors(), indent=1) + "\n")
    print(f"wrote {out}")
