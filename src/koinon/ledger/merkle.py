"""The ledger's transparency-log Merkle tree: RFC 9162 (Certificate Transparency v2) §2.1, with SHA-256.

Each leaf is the encoded bytes of one ledger event. The Merkle Tree Hash of leaves D[n] is (§2.1.1)

- MTH({}) = SHA-256(""),
- MTH({d}) = SHA-256(0x00 ‖ d)                               (:func:`leaf_hash`),
- MTH(D[n]) = SHA-256(0x01 ‖ MTH(D[0:k]) ‖ MTH(D[k:n]))     with k the largest power of two < n.

An inclusion proof (PATH, §2.1.3) shows that a leaf is leaf ``index`` of the tree (tree_size, root); a consistency
proof (PROOF, §2.1.4) that the tree (old_size, old_root) is a prefix of (new_size, new_root): the log only appended.
The verifiers follow the RFC's algorithms (§2.1.3.2, §2.1.4.2) step by step, and return None or raise
:class:`~koinon.errors.InvalidProof` with the reason.

A proof authenticates a leaf (or an old tree) against a root, not the tree size: two sizes whose trees have the same
shape along the proven path accept the same proof. Take (tree_size, root) together from a signed tree head.

:class:`InclusionProof` and :class:`ConsistencyProof` are portable proof files: JSON objects with exactly the
documented fields, sizes as integers and bytes as lowercase hex; ``from_json`` raises nothing but InvalidProof.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TypeVar

from koinon.errors import InvalidProof

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()  # MTH({}) = SHA-256 of the empty string (§2.1.1)


def leaf_hash(data: bytes) -> bytes:
    """MTH({data}) = SHA-256(0x00 ‖ data). The 0x00/0x01 prefixes keep a leaf from posing as an inner node."""
    return hashlib.sha256(b"\x00" + bytes(data)).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below n (n ≥ 2): the RFC's k."""
    return 1 << ((n - 1).bit_length() - 1)


def _mth(leaf_hashes: Sequence[bytes]) -> bytes:
    # Bottom-up, O(n) hashes and no recursion. Pairing neighbours level by level and carrying an unpaired last node
    # up unchanged builds the same tree as the RFC's split: the left part D[0:k] (k a power of two) is a perfect
    # tree, so it is exactly the pairs; the ragged right part is the only place a node is ever left without a pair.
    level = list(leaf_hashes)
    if not level:
        return EMPTY_ROOT
    while len(level) > 1:
        paired = [hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def _check_leaf_hashes(leaf_hashes: Sequence[bytes]) -> None:
    # Callers hand in cached hashes; a wrong one would silently give a root nobody else can reproduce.
    for i, h in enumerate(leaf_hashes):
        if not isinstance(h, (bytes, bytearray)) or len(h) != HASH_SIZE:
            raise ValueError(f"leaf hash {i} is not {HASH_SIZE} bytes")


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH of the tree whose leaf hashes (see :func:`leaf_hash`) are ``leaf_hashes``, in order."""
    _check_leaf_hashes(leaf_hashes)
    return _mth(leaf_hashes)


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(index, D[n]) of §2.1.3.1: sibling subtree hashes from the leaf's level up to the root's children."""
    _check_leaf_hashes(leaf_hashes)
    if not 0 <= index < len(leaf_hashes):
        raise ValueError(f"leaf index {index} is not in a tree of size {len(leaf_hashes)}")
    # PATH recurses into the half holding the leaf and appends the other half's MTH *after* the sub-path, so
    # walking down from the root collects the path backwards. The siblings are disjoint subtrees: O(n) in all.
    path, lo, hi = [], 0, len(leaf_hashes)
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            path.append(_mth(leaf_hashes[lo + k : hi]))
            hi = lo + k
        else:
            path.append(_mth(leaf_hashes[lo : lo + k]))
            lo += k
    path.reverse()
    return path


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """PROOF(old_size, D[n]) = SUBPROOF(old_size, D[n], true) of §2.1.4.1; [] when old_size is 0 or n."""
    _check_leaf_hashes(leaf_hashes)
    n = len(leaf_hashes)
    if not 0 <= old_size <= n:
        raise ValueError(f"old size {old_size} is not between 0 and the tree size {n}")
    if old_size in (0, n):  # the RFC defines PROOF for 0 < m < n only; see verify_consistency for these two
        return []
    path, lo, hi, m, whole = [], 0, n, old_size, True  # `whole` is SUBPROOF's flag b
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            path.append(_mth(leaf_hashes[lo + k : hi]))
            hi = lo + k
        else:
            path.append(_mth(leaf_hashes[lo : lo + k]))
            lo, m, whole = lo + k, m - k, False
    if not whole:  # SUBPROOF(m, D[m], false) = {MTH(D[m])}: the verifier cannot know this subtree's hash itself
        path.append(_mth(leaf_hashes[lo:hi]))
    path.reverse()
    return path


def _hash_arg(value: object, what: str) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != HASH_SIZE:
        raise InvalidProof(f"{what} is not a {HASH_SIZE}-byte hash")
    return bytes(value)


def _size_arg(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidProof(f"{what} is not a non-negative integer")
    return value


def _path_arg(proof: Sequence[bytes]) -> list[bytes]:
    if isinstance(proof, (bytes, bytearray, str)) or not isinstance(proof, Sequence):
        raise InvalidProof("the proof is not a sequence of hashes")
    return [_hash_arg(p, f"proof hash {i}") for i, p in enumerate(proof)]


def verify_inclusion(leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree (tree_size, root): RFC 9162 §2.1.3.2, step by step."""
    r, root = _hash_arg(leaf_hash, "leaf hash"), _hash_arg(root, "root")
    index, tree_size, path = _size_arg(index, "leaf index"), _size_arg(tree_size, "tree size"), _path_arg(proof)
    if index >= tree_size:  # 1
        raise InvalidProof(f"leaf index {index} is not in a tree of size {tree_size}")
    fn, sn = index, tree_size - 1  # 2 (and 3: r is the leaf hash)
    for p in path:  # 4
        if sn == 0:  # a: the path already reached the root
            raise InvalidProof(f"inclusion proof has more hashes than leaf {index} of a tree of size {tree_size} needs")
        if fn & 1 or fn == sn:  # b: the sibling is on the left
            r = _node(p, r)
            while not (fn & 1 or fn == 0):  # skip the levels where our node was the last and had no sibling
                fn, sn = fn >> 1, sn >> 1
        else:  # the sibling is on the right
            r = _node(r, p)
        fn, sn = fn >> 1, sn >> 1  # c
    if sn != 0:  # 5
        raise InvalidProof(f"inclusion proof lacks hashes for leaf {index} of a tree of size {tree_size}")
    if r != root:
        raise InvalidProof(f"inclusion proof of leaf {index} does not lead to the root of the tree of size {tree_size}")


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> None:
    """Check that tree (old_size, old_root) is a prefix of tree (new_size, new_root): RFC 9162 §2.1.4.2."""
    old_root, new_root = _hash_arg(old_root, "old root"), _hash_arg(new_root, "new root")
    first, second, path = _size_arg(old_size, "old size"), _size_arg(new_size, "new size"), _path_arg(proof)
    if first > second:
        raise InvalidProof(f"old size {first} is larger than new size {second}")
    # The RFC's algorithm assumes 0 < first < second. Outside it nothing is left to prove: a tree is consistent with
    # itself, and the empty tree (whose root is SHA-256("")) with every tree. The proof must then be empty.
    if first == 0 and old_root != EMPTY_ROOT:
        raise InvalidProof("old root is not the root of the empty tree")
    if first == 0 or first == second:
        if path:
            raise InvalidProof(f"consistency proof from size {first} to {second} must be empty")
        if old_root != new_root and first == second:
            raise InvalidProof(f"two different roots for the same tree size {first}")
        return
    if not path:  # 1
        raise InvalidProof(f"empty consistency proof from size {first} to {second}")
    if first & (first - 1) == 0:  # 2: the old tree is a perfect subtree of the new one; the proof omits its hash
        path.insert(0, old_root)
    fn, sn = first - 1, second - 1  # 3
    while fn & 1:  # 4: from the old tree's last leaf up to the biggest perfect subtree ending there: path[0]
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]  # 5
    for c in path[1:]:  # 6
        if sn == 0:  # a
            raise InvalidProof(f"consistency proof from size {first} to {second} has too many hashes")
        if fn & 1 or fn == sn:  # b: c is a left sibling, in both trees
            fr, sr = _node(c, fr), _node(c, sr)
            while not (fn & 1 or fn == 0):
                fn, sn = fn >> 1, sn >> 1
        else:  # c is a right sibling, only in the new tree
            sr = _node(sr, c)
        fn, sn = fn >> 1, sn >> 1  # c
    if sn != 0:  # 7
        raise InvalidProof(f"consistency proof from size {first} to {second} lacks hashes")
    if fr != old_root:
        raise InvalidProof(f"consistency proof does not lead to the old root (size {first})")
    if sr != new_root:
        raise InvalidProof(f"consistency proof does not lead to the new root (size {second})")


_HEX = re.compile(r"(?:[0-9a-f]{2})*")


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj = dict(pairs)
    if len(obj) != len(pairs):  # json.loads would keep the last one silently: two readers, two proofs
        raise InvalidProof("proof file has a duplicate field")
    return obj


def _load(text: str | bytes, fields: tuple[str, ...]) -> dict:
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates)  # NaN/Infinity may parse, then fail the type checks
    except InvalidProof:
        raise
    except (TypeError, ValueError, RecursionError) as e:  # ValueError covers bad UTF-8 and over-long integers
        raise InvalidProof(f"proof file is not valid JSON: {e}") from None
    if not isinstance(obj, dict) or set(obj) != set(fields):
        raise InvalidProof(f"proof file must be a JSON object with exactly the fields {', '.join(fields)}")
    return obj


def _hex(value: object, name: str, size: int | None = HASH_SIZE) -> bytes:
    if not isinstance(value, str) or not _HEX.fullmatch(value) or (size is not None and len(value) != 2 * size):
        length = "" if size is None else f" of {size} bytes"
        raise InvalidProof(f"proof file: {name} is not lowercase hex{length}")
    return bytes.fromhex(value)


def _hashes(value: object, name: str) -> tuple[bytes, ...]:
    if not isinstance(value, list):
        raise InvalidProof(f"proof file: {name} is not a list")
    return tuple(_hex(v, f"{name}[{i}]") for i, v in enumerate(value))


_P = TypeVar("_P", bound="_ProofFile")


class _ProofFile:
    """JSON with the dataclass's fields, in order: integers as they are, bytes as hex, the path as a list of hex."""

    _PARSERS: dict  # field name → parser(value, name); also the exact set of fields a file must have

    def to_json(self) -> str:
        obj = {f.name: getattr(self, f.name) for f in fields(self)}
        return json.dumps(obj, default=lambda b: b.hex(), indent=2)  # bytes (also inside the path) become hex

    @classmethod
    def from_json(cls: type[_P], text: str | bytes) -> _P:
        """Parse a proof file; any malformed input raises InvalidProof. Does not verify the proof: call verify()."""
        obj = _load(text, tuple(cls._PARSERS))
        return cls(**{name: parse(obj[name], name) for name, parse in cls._PARSERS.items()})


@dataclass(frozen=True)
class InclusionProof(_ProofFile):
    """A proof file: ``leaf`` (the event's encoded bytes) is leaf ``index`` of the tree (tree_size, root)."""

    leaf: bytes
    index: int
    tree_size: int
    path: tuple[bytes, ...]
    root: bytes
    _PARSERS = {
        "leaf": lambda v, name: _hex(v, name, None),
        "index": _size_arg,
        "tree_size": _size_arg,
        "path": _hashes,
        "root": _hex,
    }

    def verify(self) -> None:
        if not isinstance(self.leaf, (bytes, bytearray)):
            raise InvalidProof("the leaf is not bytes")
        verify_inclusion(leaf_hash(self.leaf), self.index, self.tree_size, self.path, self.root)


@dataclass(frozen=True)
class ConsistencyProof(_ProofFile):
    """A proof file: the tree (old_size, old_root) is a prefix of the tree (new_size, new_root)."""

    old_size: int
    new_size: int
    old_root: bytes
    new_root: bytes
    path: tuple[bytes, ...]
    _PARSERS = {"old_size": _size_arg, "new_size": _size_arg, "old_root": _hex, "new_root": _hex, "path": _hashes}

    def verify(self) -> None:
        verify_consistency(self.old_size, self.new_size, self.old_root, self.new_root, self.path)


# --- compact ranges -------------------------------------------------------------------------------------------
# A log's *compact range* is the list of (size, root) of the perfect subtrees it splits into, largest first.
# Appending leaves to it costs O(new leaves + log n), and folding it from the right gives the RFC 9162 root, so a
# cut's root can be computed from its parent's range without rehashing the whole log.

CompactRange = list[tuple[int, bytes]]


def extend_range(compact: CompactRange, leaf_hashes: Sequence[bytes]) -> CompactRange:
    """The compact range after appending ``leaf_hashes`` (leaf HASHES, as from :func:`leaf_hash`)."""
    out = list(compact)
    for leaf in leaf_hashes:
        out.append((1, leaf))
        while len(out) > 1 and out[-1][0] == out[-2][0]:
            (n, left), (_, right) = out[-2], out[-1]
            out[-2:] = [(2 * n, _node(left, right))]
    return out


def range_root(compact: CompactRange) -> bytes:
    """MTH of the log whose compact range this is: the subtrees folded from the right (RFC 9162 §2.1.1)."""
    if not compact:
        return EMPTY_ROOT
    result = compact[-1][1]
    for _, subtree in reversed(compact[:-1]):
        result = _node(subtree, result)
    return result


def range_size(compact: CompactRange) -> int:
    return sum(n for n, _ in compact)
