"""The ledger's Merkle tree (src/koinon/ledger/merkle.py) against RFC 9162 §2.1.

The expected values come from three places that do not share code with the module: hashes written out by hand with
hashlib, a slow recursive transcription of the RFC's definitions (``ref_*`` below), and the Certificate Transparency
reference vectors that every RFC 6962/9162 implementation publishes. The frozen file vectors/merkle.json catches any
later change of output, proof files included.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from koinon.errors import InvalidProof
from koinon.ledger.merkle import (
    EMPTY_ROOT,
    ConsistencyProof,
    InclusionProof,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).parent / "vectors" / "merkle.json"

# The Certificate Transparency reference leaves and the published answers for them (RFC 6962 test data, also used
# by RFC 9162 implementations, whose hashing is the same).
CT_LEAVES = [
    bytes.fromhex(x)
    for x in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f")
]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
_H0 = "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"
_H1 = "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"
_H2 = "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"
_H3 = "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"
_H4 = "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"
CT_INCLUSION = [  # (index, tree size, path)
    (0, 8, [_H0, _H1, _H2]),
    (5, 8, [_H3, _H4, CT_ROOTS[4]]),
    (2, 3, [CT_ROOTS[2]]),
    (1, 5, [CT_ROOTS[1], _H1, _H3]),
]
CT_CONSISTENCY = [  # (old size, new size, path)
    (1, 1, []),
    (1, 8, [_H0, _H1, _H2]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a", _H4, CT_ROOTS[4]]),
    (2, 5, [_H1, _H3]),
]


# --- the RFC, transcribed: slow, recursive, on leaf *data*, sharing nothing with the module ----------------------


def ref_leaf(d: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + d).digest()


def ref_node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def ref_k(n: int) -> int:
    """The largest power of two smaller than n."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: list[bytes]) -> bytes:
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return ref_leaf(d[0])
    k = ref_k(len(d))
    return ref_node(ref_mth(d[:k]), ref_mth(d[k:]))


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = ref_k(len(d))
    if m < k:
        return ref_path(m, d[:k]) + [ref_mth(d[k:])]
    return ref_path(m - k, d[k:]) + [ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    if m == len(d):
        return [] if b else [ref_mth(d)]
    k = ref_k(len(d))
    if m <= k:
        return ref_subproof(m, d[:k], b) + [ref_mth(d[k:])]
    return ref_subproof(m - k, d[k:], False) + [ref_mth(d[:k])]


def ref_proof(m: int, d: list[bytes]) -> list[bytes]:
    return ref_subproof(m, d, True)


def path_shape(m: int, n: int) -> tuple[str, ...]:
    """The side of each sibling in PATH(m, D[n]), leaf to root: all a verifier learns from (index, tree size)."""
    if n == 1:
        return ()
    k = ref_k(n)
    return path_shape(m, k) + ("right",) if m < k else path_shape(m - k, n - k) + ("left",)


def proof_shape(m: int, n: int, b: bool = True) -> tuple[str, ...]:
    """The same for SUBPROOF(m, D[n], b): where the old tree's hash comes from, then the side of each hash."""
    if m == n:
        return ("old root" if b else "old subtree",)
    k = ref_k(n)
    return proof_shape(m, k, b) + ("right",) if m <= k else proof_shape(m - k, n - k, False) + ("left",)


def leaves(n: int) -> list[bytes]:
    """n distinct leaves of assorted lengths (the empty one included)."""
    return [b"" if i == 0 else bytes([i % 256]) * (1 + i % 4) + bytes(i // 256) for i in range(n)]


def raises_invalid(fn, *args) -> bool:
    try:
        fn(*args)
    except InvalidProof:
        return True
    return False


# --- known answers -------------------------------------------------------------------------------------------------


def test_hand_computed_roots_and_proofs():
    sha = hashlib.sha256
    h = [sha(b"\x00" + d).digest() for d in CT_LEAVES]

    def node(a: bytes, b: bytes) -> bytes:
        return sha(b"\x01" + a + b).digest()

    h01, h23, h45, h67 = node(h[0], h[1]), node(h[2], h[3]), node(h[4], h[5]), node(h[6], h[7])
    h0123, h456 = node(h01, h23), node(h45, h[6])
    assert [leaf_hash(d) for d in CT_LEAVES] == h
    assert root([]) == sha(b"").digest() == EMPTY_ROOT
    assert root(h[:1]) == h[0]
    assert root(h[:2]) == h01
    assert root(h[:3]) == node(h01, h[2])
    assert root(h[:5]) == node(h0123, h[4])
    assert root(h[:7]) == node(h0123, h456)
    assert root(h[:8]) == node(h0123, node(h45, h67))

    assert inclusion_proof(h[:1], 0) == []
    assert inclusion_proof(h[:2], 0) == [h[1]]
    assert inclusion_proof(h[:3], 0) == [h[1], h[2]]
    assert inclusion_proof(h[:3], 2) == [h01]
    assert inclusion_proof(h[:5], 1) == [h[0], h23, h[4]]
    assert inclusion_proof(h[:5], 4) == [h0123]
    assert inclusion_proof(h[:7], 3) == [h[2], h01, h456]
    assert inclusion_proof(h[:7], 6) == [h45, h0123]
    assert inclusion_proof(h[:8], 5) == [h[4], h67, h0123]

    assert consistency_proof(h[:8], 0) == consistency_proof(h[:8], 8) == []
    assert consistency_proof(h[:2], 1) == [h[1]]
    assert consistency_proof(h[:3], 2) == [h[2]]  # the old tree is a whole left subtree: its root is not sent
    assert consistency_proof(h[:5], 3) == [h[2], h[3], h01, h[4]]
    assert consistency_proof(h[:7], 3) == [h[2], h[3], h01, h456]
    assert consistency_proof(h[:7], 4) == [h456]
    assert consistency_proof(h[:7], 5) == [h[4], h[5], h[6], h0123]
    assert consistency_proof(h[:8], 6) == [h45, h67, h0123]
    assert consistency_proof(h[:8], 1) == [h[1], h23, node(h45, h67)]


def test_certificate_transparency_reference_vectors():
    hashes = [leaf_hash(d) for d in CT_LEAVES]
    assert [root(hashes[:n]).hex() for n in range(9)] == CT_ROOTS
    for index, size, path in CT_INCLUSION:
        assert [p.hex() for p in inclusion_proof(hashes[:size], index)] == path
        verify_inclusion(hashes[index], index, size, [bytes.fromhex(p) for p in path], bytes.fromhex(CT_ROOTS[size]))
    for old, new, path in CT_CONSISTENCY:
        assert [p.hex() for p in consistency_proof(hashes[:new], old)] == path
        old_root, new_root = bytes.fromhex(CT_ROOTS[old]), bytes.fromhex(CT_ROOTS[new])
        verify_consistency(old, new, old_root, new_root, [bytes.fromhex(p) for p in path])


def test_frozen_vectors_file():
    v = json.loads(VECTORS.read_text())
    data = [bytes.fromhex(x) for x in v["leaves"]]
    hashes = [leaf_hash(d) for d in data]
    assert data[:8] == CT_LEAVES
    assert [root(hashes[:n]).hex() for n in range(len(data) + 1)] == v["roots"]
    assert v["roots"][:9] == CT_ROOTS
    roots = [bytes.fromhex(r) for r in v["roots"]]
    assert len(v["inclusion"]) == len(data) * (len(data) + 1) // 2
    for e in v["inclusion"]:
        i, n = e["index"], e["tree_size"]
        assert [p.hex() for p in inclusion_proof(hashes[:n], i)] == e["path"], (i, n)
        verify_inclusion(hashes[i], i, n, [bytes.fromhex(p) for p in e["path"]], roots[n])
    assert len(v["consistency"]) == (len(data) + 1) * (len(data) + 2) // 2
    for e in v["consistency"]:
        m, n = e["old_size"], e["new_size"]
        assert [p.hex() for p in consistency_proof(hashes[:n], m)] == e["path"], (m, n)
        verify_consistency(m, n, roots[m], roots[n], [bytes.fromhex(p) for p in e["path"]])
    # The proof-file format is frozen byte for byte: the code must write exactly the committed files.
    for text in v["inclusion_files"]:
        proof = InclusionProof.from_json(text)
        i, n = proof.index, proof.tree_size
        assert InclusionProof(data[i], i, n, tuple(inclusion_proof(hashes[:n], i)), roots[n]).to_json() == text
        proof.verify()
    for text in v["consistency_files"]:
        proof = ConsistencyProof.from_json(text)
        m, n = proof.old_size, proof.new_size
        assert ConsistencyProof(m, n, roots[m], roots[n], tuple(consistency_proof(hashes[:n], m))).to_json() == text
        proof.verify()


# --- against the reference, exhaustively for small trees -------------------------------------------------------------


def test_every_tree_up_to_40_leaves_matches_the_rfc_and_verifies():
    data = leaves(41)
    assert len(set(data)) == len(data)
    hashes = [leaf_hash(d) for d in data]
    for n in range(1, 41):
        d, h = data[:n], hashes[:n]
        r = root(h)
        assert r == ref_mth(d), n
        for i in range(n):
            path = inclusion_proof(h, i)
            assert path == ref_path(i, d), (i, n)
            verify_inclusion(h[i], i, n, path, r)
        for m in range(n + 1):
            path = consistency_proof(h, m)
            assert path == (ref_proof(m, d) if 0 < m < n else []), (m, n)
            verify_consistency(m, n, ref_mth(d[:m]), r, path)


def test_edge_cases_of_the_rfc_algorithms():
    h = [leaf_hash(d) for d in leaves(4)]
    r4, r2 = root(h), root(h[:2])
    # A tree is consistent with itself (empty proof, same root), the empty tree with every tree.
    verify_consistency(4, 4, r4, r4, [])
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    verify_consistency(0, 4, EMPTY_ROOT, r4, [])
    bad = [
        (verify_consistency, 4, 4, r4, r2, []),  # same size, two roots
        (verify_consistency, 4, 4, r4, r4, [h[0]]),  # same size, a proof
        (verify_consistency, 0, 4, r2, r4, []),  # "empty" tree with a non-empty root
        (verify_consistency, 0, 0, r4, r4, []),
        (verify_consistency, 0, 4, EMPTY_ROOT, r4, [h[0]]),  # nothing to prove, yet a proof
        (verify_consistency, 4, 2, r4, r2, consistency_proof(h, 2)),  # old > new
        (verify_consistency, 2, 4, r2, r4, []),  # empty where a proof is needed
        (verify_consistency, -1, 4, r2, r4, []),
        (verify_consistency, True, 4, r2, r4, consistency_proof(h, 1)),  # bools are not sizes
        (verify_consistency, 2, 4, r2.hex(), r4, consistency_proof(h, 2)),  # hex is not bytes
        (verify_consistency, 2, 4, r2, r4, b"".join(consistency_proof(h, 2))),  # a blob is not a list of hashes
        (verify_inclusion, h[0], 0, 0, [], EMPTY_ROOT),  # nothing is in the empty tree
        (verify_inclusion, h[0], 4, 4, inclusion_proof(h, 0), r4),  # index ≥ size
        (verify_inclusion, h[0], -1, 4, inclusion_proof(h, 0), r4),
        (verify_inclusion, h[0], 0, 4.0, inclusion_proof(h, 0), r4),
        (verify_inclusion, h[0], 0, 4, None, r4),
        (verify_inclusion, h[0], 0, 4, [p.hex() for p in inclusion_proof(h, 0)], r4),
    ]
    for fn, *args in bad:
        assert raises_invalid(fn, *args), args
    verify_inclusion(h[0], 0, 1, [], h[0])  # a one-leaf tree's root is its leaf hash
    with pytest.raises(ValueError):
        inclusion_proof(h, 4)
    with pytest.raises(ValueError):
        consistency_proof(h, 5)
    with pytest.raises(ValueError):
        root(h[:3] + [h[3][:31]])


def test_failures_say_why():
    h = [leaf_hash(d) for d in leaves(7)]
    path, r = inclusion_proof(h, 2), root(h)
    for reason, args in {
        "not in a tree of size": (h[2], 7, 7, path, r),
        "more hashes": (h[2], 2, 7, path + [r], r),
        "lacks hashes": (h[2], 2, 7, path[:-1], r),
        "proof hash 0 is not a 32-byte hash": (h[2], 2, 7, [path[0][:31]] + path[1:], r),
        "root is not a 32-byte hash": (h[2], 2, 7, path, r + b"\x00"),
        "does not lead to the root": (h[1], 2, 7, path, r),
    }.items():
        with pytest.raises(InvalidProof, match=reason):
            verify_inclusion(*args)
    path, old = consistency_proof(h, 3), root(h[:3])
    for reason, args in {
        "larger than": (7, 3, r, old, path),
        "must be empty": (7, 7, r, r, path),
        "empty consistency proof": (3, 7, old, r, []),
        "too many hashes": (3, 7, old, r, path + [r]),
        "lacks hashes": (3, 7, old, r, path[:-1]),
        "old root": (3, 7, r, r, path),
        "new root": (3, 7, old, old, path),
    }.items():
        with pytest.raises(InvalidProof, match=reason):
            verify_consistency(*args)


def test_the_proof_does_not_authenticate_the_tree_size():
    """RFC 9162 verification reads nothing from tree_size but the shape of the path (for index 0, sizes 3 and 4
    both say "right, right"), so the size must come with the root from a signed tree head. Pinned here so that
    nobody relies on it by mistake."""
    h = [leaf_hash(d) for d in leaves(4)]
    verify_inclusion(h[0], 0, 3, inclusion_proof(h, 0), root(h))
    verify_consistency(2, 3, root(h[:2]), root(h), consistency_proof(h, 2))


# --- the mutation corpus ----------------------------------------------------------------------------------------------

SIZES = (1, 2, 3, 4, 5, 6, 7, 8, 11, 13)


def _flips(b: bytes):
    for i in range(len(b) * 8):
        yield bytes(x ^ (1 << (i % 8)) if j == i // 8 else x for j, x in enumerate(b))


def _path_mutants(path: list[bytes], needed: bool):
    """Every wrong version of a proof path: bit flips, wrong lengths, swaps, bad hash sizes."""
    for k, p in enumerate(path):
        for q in _flips(p):
            yield path[:k] + [q] + path[k + 1 :]
        yield path[:k] + [p[:31]] + path[k + 1 :]
        yield path[:k] + [p + b"\x00"] + path[k + 1 :]
        yield path[:k] + path[k + 1 :]  # one hash missing
    for k in range(len(path)):
        for j in range(k + 1, len(path)):
            if path[k] != path[j]:
                swapped = list(path)
                swapped[k], swapped[j] = path[j], path[k]
                yield swapped
    yield path + [hashlib.sha256(b"extra").digest()]
    if path:
        yield path + path[-1:]  # the last hash twice
    yield [hashlib.sha256(b"extra").digest()] + path
    if needed:
        yield []


def test_inclusion_mutants_all_fail():
    data = leaves(max(SIZES) + 1)
    hashes = [leaf_hash(d) for d in data]
    roots = [root(hashes[:n]) for n in range(len(hashes) + 1)]
    checked = passed_as_same_shape = 0
    for n in SIZES:
        h, r = hashes[:n], roots[n]
        for i in range(n):
            path = inclusion_proof(h, i)
            verify_inclusion(h[i], i, n, path, r)
            cases = [(h[i], i, n, bad, r) for bad in _path_mutants(path, needed=n > 1)]
            cases += [(h[i], i, n, path, bad) for bad in (*_flips(r), r[:31], r + b"\x00", roots[n - 1], roots[n + 1])]
            cases += [(bad, i, n, path, r) for bad in (*_flips(h[i]), h[i][:31], h[i] + b"\x00", leaf_hash(h[i]))]
            cases += [(h[i], j, n, path, r) for j in (i - 1, i + 1)]
            for case in cases:
                assert raises_invalid(verify_inclusion, *case), (i, n, case)
            checked += len(cases)
            # A wrong tree size fails unless the path has the same shape in both sizes (see the test above).
            for size in (n - 1, n + 1):
                same = i < size and path_shape(i, size) == path_shape(i, n)
                assert raises_invalid(verify_inclusion, h[i], i, size, path, r) != same, (i, n, size)
                passed_as_same_shape += same
                checked += 1
    assert checked > 50_000 and 0 < passed_as_same_shape < checked / 100


def test_consistency_mutants_all_fail():
    data = leaves(max(SIZES) + 2)
    hashes = [leaf_hash(d) for d in data]
    roots = [root(hashes[:n]) for n in range(len(hashes) + 1)]
    checked = passed_as_same_shape = 0
    for n in SIZES:
        h = hashes[:n]
        for m in range(1, n):
            path, old, new = consistency_proof(h, m), roots[m], roots[n]
            verify_consistency(m, n, old, new, path)
            cases = [(m, n, old, new, bad) for bad in _path_mutants(path, needed=True)]
            cases += [
                (m, n, bad, new, path) for bad in (*_flips(old), old[:31], old + b"\x00", roots[m - 1], roots[m + 1])
            ]
            cases += [
                (m, n, old, bad, path) for bad in (*_flips(new), new[:31], new + b"\x00", roots[n - 1], roots[n + 1])
            ]
            cases += [(m, n, new, old, path), (n, m, new, old, path), (n, m, old, new, path)]
            for case in cases:
                assert raises_invalid(verify_consistency, *case), (m, n, case)
            checked += len(cases)
            for old_size, new_size in ((m - 1, n), (m + 1, n), (m, n - 1), (m, n + 1)):
                same = 0 < old_size < new_size and proof_shape(old_size, new_size) == proof_shape(m, n)
                assert raises_invalid(verify_consistency, old_size, new_size, old, new, path) != same, (m, n)
                passed_as_same_shape += same
                checked += 1
    assert checked > 50_000 and 0 < passed_as_same_shape < checked / 100


# --- proof files ---------------------------------------------------------------------------------------------------


def _inclusion_file(n: int = 5, i: int = 3) -> InclusionProof:
    data = leaves(n)
    h = [leaf_hash(d) for d in data]
    return InclusionProof(data[i], i, n, tuple(inclusion_proof(h, i)), root(h))


def _consistency_file(m: int = 3, n: int = 7) -> ConsistencyProof:
    h = [leaf_hash(d) for d in leaves(n)]
    return ConsistencyProof(m, n, root(h[:m]), root(h), tuple(consistency_proof(h, m)))


def test_proof_files_round_trip_and_verify():
    for proof in (_inclusion_file(), _inclusion_file(1, 0), _inclusion_file(8, 7)):
        assert InclusionProof.from_json(proof.to_json()) == proof
        InclusionProof.from_json(proof.to_json()).verify()
        assert InclusionProof.from_json(proof.to_json().encode()) == proof
    for proof in (_consistency_file(), _consistency_file(0, 3), _consistency_file(5, 5), _consistency_file(4, 9)):
        assert ConsistencyProof.from_json(proof.to_json()) == proof
        ConsistencyProof.from_json(proof.to_json()).verify()
    assert list(json.loads(_inclusion_file().to_json())) == ["leaf", "index", "tree_size", "path", "root"]
    assert list(json.loads(_consistency_file().to_json())) == ["old_size", "new_size", "old_root", "new_root", "path"]


def _edits(obj: dict) -> list:
    """Malformed variants of a good proof file's object (well-formed but wrong values are tested elsewhere)."""
    out: list = []
    for key, value in obj.items():
        rest = {k: v for k, v in obj.items() if k != key}
        out.append(rest)  # missing field
        for bad in (None, True, 1.0, -1, "1", [], {}, "zz", "AB" * 32, "ab" * 31, "ab" * 33, "a" * 63, " " + "ab" * 32):
            well_formed = (key == "leaf" and bad in ("ab" * 31, "ab" * 33)) or (key == "path" and bad == [])
            if not well_formed:
                out.append({**obj, key: bad})
        if isinstance(value, list):
            out += [{**obj, key: value + ["ab" * 33]}, {**obj, key: [1]}, {**obj, key: [None]}, {**obj, key: "ab" * 32}]
    out += [{**obj, "extra": 1}, {**obj, "Path": []}, [obj], obj.get("path")]
    return out


def test_malformed_proof_files_raise_invalid_proof():
    for cls, good in ((InclusionProof, _inclusion_file()), (ConsistencyProof, _consistency_file())):
        text = good.to_json()
        obj = json.loads(text)
        texts = [json.dumps(o) for o in _edits(obj)]
        texts += ["", "{", "null", "[]", "1", '"x"', text[:-1], text + "x", text.replace('"', "'"), text.upper()]
        texts += ["[" * 100_000 + "]" * 100_000, "{" + '"a":' * 50_000 + "1" + "}" * 50_000, "1" * 5000]
        key = next(k for k, v in obj.items() if isinstance(v, int))
        number = f'"{key}": {obj[key]}'
        texts += [text.replace(number, f'"{key}": {x}') for x in ("NaN", "Infinity", "1e3", "1.0", "1" * 5000)]
        for x in ("-0", "1" * 4000):  # JSON numbers that are integers: they parse, then fail to verify
            with pytest.raises(InvalidProof):
                cls.from_json(text.replace(number, f'"{key}": {x}')).verify()
        texts += [text.replace("{", '{"path": [], ', 1)]  # a duplicate field: readers would disagree on which counts
        for bad in texts:
            with pytest.raises(InvalidProof):
                cls.from_json(bad)
        for bad in (b"\xff\xfe\x00", b"{\xff}", None, 3, [text]):
            with pytest.raises(InvalidProof):
                cls.from_json(bad)  # type: ignore[arg-type]


# --- properties ----------------------------------------------------------------------------------------------------

SETTINGS = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
_HASHES = [EMPTY_ROOT, leaf_hash(b""), root([leaf_hash(b""), leaf_hash(b"")]), bytes(32), b"\xff" * 32]
_hash_hex = st.one_of(st.sampled_from([x.hex() for x in _HASHES]), st.binary(min_size=32, max_size=32).map(bytes.hex))
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=70) | _hash_hex,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def _mostly(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Usually a well-formed field value (so that verify() gets exercised), sometimes any JSON value."""
    return st.tuples(st.integers(0, 7), valid, _json).map(lambda t: t[2] if t[0] == 7 else t[1])  # 0 is drawn often


_size = _mostly(st.integers(0, 9))  # negative and huge integers come from _json
_path = _mostly(st.lists(_hash_hex, max_size=4))
_inclusion_like = st.fixed_dictionaries(
    {
        "leaf": _mostly(st.one_of(st.just(""), st.binary(max_size=8).map(bytes.hex))),
        "index": _size,
        "tree_size": _size,
        "path": _path,
        "root": _mostly(_hash_hex),
    }
)
_consistency_like = st.fixed_dictionaries(
    {
        "old_size": _size,
        "new_size": _size,
        "old_root": _mostly(_hash_hex),
        "new_root": _mostly(_hash_hex),
        "path": _path,
    }
)


def _trivially_valid(proof: InclusionProof | ConsistencyProof) -> bool:
    """The only proofs that random hashes can make valid: those with nothing to prove."""
    if isinstance(proof, InclusionProof):
        return (proof.index, proof.tree_size, proof.path) == (0, 1, ()) and proof.root == leaf_hash(proof.leaf)
    if proof.path:
        return False
    same = proof.old_size == proof.new_size and proof.old_root == proof.new_root
    return proof.old_root == EMPTY_ROOT if proof.old_size == 0 else same


def _parse_and_verify(cls: type, text: str | bytes) -> None:
    try:
        proof = cls.from_json(text)
    except InvalidProof:
        return
    try:
        proof.verify()
    except InvalidProof:
        return
    assert _trivially_valid(proof) or _from_related_hashes(proof), proof


def _from_related_hashes(proof: InclusionProof | ConsistencyProof) -> bool:
    """Proofs made only of the related hashes in _HASHES can be genuinely valid without a tree behind them: e.g. a
    consistency proof 4 → 5 with old root leaf_hash(b""), path [leaf_hash(b"")] and new root
    root([leaf_hash(b""), leaf_hash(b"")]) passes RFC 9162's check (found by hypothesis). Random hashes cannot."""
    if isinstance(proof, InclusionProof):
        hashes = [proof.root, *proof.path]
    else:
        hashes = [proof.old_root, proof.new_root, *proof.path]
    return all(h in _HASHES for h in hashes)


@SETTINGS
@given(st.one_of(st.text(), st.binary()))
def test_from_json_on_arbitrary_text(text: str | bytes):
    _parse_and_verify(InclusionProof, text)
    _parse_and_verify(ConsistencyProof, text)


@SETTINGS
@given(_json)
def test_from_json_on_arbitrary_json_values(value):
    _parse_and_verify(InclusionProof, json.dumps(value))
    _parse_and_verify(ConsistencyProof, json.dumps(value))


_drops = st.sets(st.sampled_from(["leaf", "root", "old_size", "path", "x"]), max_size=2)


@SETTINGS
@given(
    st.one_of(_inclusion_like, _consistency_like),
    st.tuples(st.integers(0, 3), _drops).map(lambda t: t[1] if t[0] == 0 else set()),
)
def test_from_json_on_proof_shaped_dicts(value: dict, drop: set):
    """Mostly well-formed files with random values: a field sometimes missing, extra or of a wrong type."""
    value = {k: v for k, v in value.items() if k not in drop} | ({"x": 0} if "x" in drop else {})
    _parse_and_verify(InclusionProof, json.dumps(value))
    _parse_and_verify(ConsistencyProof, json.dumps(value))


@SETTINGS
@given(st.lists(st.binary(max_size=12), min_size=1, max_size=70), st.data())
def test_honest_proofs_verify(data: list[bytes], draw):
    hashes = [leaf_hash(d) for d in data]
    n = len(data)
    i = draw.draw(st.integers(0, n - 1))
    m = draw.draw(st.integers(0, n))
    r = root(hashes)
    proof = InclusionProof(data[i], i, n, tuple(inclusion_proof(hashes, i)), r)
    InclusionProof.from_json(proof.to_json()).verify()
    ConsistencyProof.from_json(
        ConsistencyProof(m, n, root(hashes[:m]), r, tuple(consistency_proof(hashes, m))).to_json()
    ).verify()
    if len(set(data)) == n and n > 1:  # with distinct leaves, the neighbour's leaf is not in the neighbour's place
        assert raises_invalid(InclusionProof(data[i], (i + 1) % n, n, proof.path, r).verify)


# --- scale ---------------------------------------------------------------------------------------------------------


def test_root_of_a_million_leaves():
    """root() is iterative and O(n); no timing asserted, but a recursive or quadratic one would not finish here."""
    hashes = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(1_000_000)]
    k = 1 << 19  # the RFC's split of 1,000,000
    assert root(hashes) == ref_node(root(hashes[:k]), root(hashes[k:]))
