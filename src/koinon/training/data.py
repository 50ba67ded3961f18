"""Byte-level training data from local files, a held-out validation split and per-(member, round) shards.

The corpus is the concatenation of the files (sorted by path) cut into fixed blocks of ``BLOCK_SIZE`` bytes.
A block is held out for validation when ``sha256("koinon/val" ‖ index)`` says so (``VAL_PERCENT`` of blocks),
so the split does not depend on who computes it. Training blocks are dealt to the members of a round by
rendezvous hashing: block ``b`` belongs to the member ``m`` of the participant set ``P`` maximising
``sha256(m ‖ round ‖ b)``. Members who agree on ``P`` (the previous round's group, identical on all its members)
get disjoint shards that together cover every training block, and the deal changes every round.
"""

from __future__ import annotations

import hashlib
import random
import sysconfig
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from koinon.errors import DataError
from koinon.training.model import BYTE_OFFSET

BLOCK_SIZE = 4096
VAL_PERCENT = 2
SEPARATOR = b"\n\n"
_SKIP_DIRS = {"__pycache__", "site-packages", "dist-packages", ".git", ".venv", "node_modules"}


def default_data_paths() -> list[Path]:
    """The running Python's standard library: text every machine has without a download (≈30 MB of .py)."""
    return [Path(sysconfig.get_paths()["stdlib"])]


def _u64(*parts: bytes) -> int:
    return int.from_bytes(hashlib.sha256(b"\x1f".join(parts)).digest()[:8], "big")


def _dealer(keys: list[bytes], round_bytes: bytes, block: int) -> int:
    """Which of the (sorted, encoded) members a block is dealt to in a round: the highest rendezvous score."""
    bb = block.to_bytes(8, "big")
    scores = [_u64(k, round_bytes, bb) for k in keys]
    return max(range(len(scores)), key=scores.__getitem__)


def _iter_files(path: Path, suffixes: tuple[str, ...] | None) -> Iterable[Path]:
    if path.is_file():
        yield path
        return
    for child in sorted(path.rglob("*")):
        if any(part in _SKIP_DIRS or part.startswith(".") for part in child.relative_to(path).parts[:-1]):
            continue
        if child.is_file() and (suffixes is None or child.suffix in suffixes):
            yield child


def _is_text(data: bytes) -> bool:
    return b"\x00" not in data[:8192]


def _source_hasher():
    return hashlib.sha256(b"koinon/data-source/v1\x00")


def _hash_file(h, root: Path, f: Path, data: bytes) -> None:
    rel = f.name if root.is_file() else f.relative_to(root).as_posix()
    h.update(rel.encode() + b"\x00" + hashlib.sha256(data).digest())


def source_hash(path: Path | str, suffixes: tuple[str, ...] | None = None) -> str:
    """Content hash (hex) of one data source: SHA-256 over its text files in path order, each as
    ``relative path ‖ 0x00 ‖ SHA-256(content)``, so the same files hash the same on every machine wherever they
    lie. Governance names data sources by this hash (add-data, remove-data); :class:`Corpus` computes the same
    hash for each path it reads (``Corpus.source_ids``)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data path {path} does not exist; pass an existing file or directory")
    h = _source_hasher()
    for f in _iter_files(path, suffixes):
        try:
            data = f.read_bytes()
        except OSError:
            continue
        if data and _is_text(data):
            _hash_file(h, path, f, data)
    return h.hexdigest()


class Corpus:
    """All training and validation bytes of one data set, held as a uint8 array (1 byte per token)."""

    def __init__(self, data: bytes, sources: Sequence[str]) -> None:
        self.stream = np.frombuffer(data, dtype=np.uint8)
        self.sources = list(sources)
        self.source_ids: list[str] = []  # content hash of each path given to from_paths (see source_hash)
        self.content_hash = hashlib.sha256(data).hexdigest()
        n_blocks = len(data) // BLOCK_SIZE
        if n_blocks < 2:
            raise DataError(
                f"the data has {len(data)} bytes; Koinon needs at least {2 * BLOCK_SIZE} "
                "(two blocks: one to train on, one to validate); pass more or larger text files"
            )
        val = [b for b in range(n_blocks) if _u64(b"koinon/val", b.to_bytes(8, "big")) % 100 < VAL_PERCENT]
        if not val:  # tiny data sets: hold out the last block so there is always an eval loss
            val = [n_blocks - 1]
        val_set = set(val)
        self.val_blocks = val
        self.train_blocks = [b for b in range(n_blocks) if b not in val_set]

    @classmethod
    def from_paths(cls, paths: Sequence[Path | str], suffixes: tuple[str, ...] | None = None) -> Corpus:
        """Read every text file under ``paths`` (binary files and hidden/cache folders are skipped)."""
        if not paths:
            raise DataError("no data path given; pass files or directories with --data")
        chunks: list[bytes] = []
        sources: list[str] = []
        source_ids: list[str] = []
        for raw in paths:
            path = Path(raw)
            hasher = _source_hasher()
            if not path.exists():
                raise DataError(f"data path {path} does not exist; pass an existing file or directory")
            try:
                files = list(_iter_files(path, suffixes))
            except OSError as e:
                raise DataError(f"cannot list data path {path}: {e.strerror}; check its permissions") from e
            for f in files:
                try:
                    data = f.read_bytes()
                except OSError as e:
                    if path.is_file():
                        raise DataError(f"cannot read data file {f}: {e.strerror}; check its permissions") from e
                    continue  # an unreadable file inside a directory is skipped, like a binary one
                if data and _is_text(data):
                    chunks.append(data)
                    sources.append(str(f))
                    _hash_file(hasher, path, f, data)
            source_ids.append(hasher.hexdigest())
        if not chunks:
            raise DataError(f"no readable text in {', '.join(map(str, paths))}; pass non-empty text files")
        corpus = cls(SEPARATOR.join(chunks), sources)
        corpus.source_ids = source_ids
        return corpus

    @classmethod
    def default(cls) -> Corpus:
        return cls.from_paths(default_data_paths(), suffixes=(".py",))

    @property
    def num_tokens(self) -> int:
        return int(self.stream.size)

    def shard(self, member_id: str, round_no: int, participants: Iterable[str]) -> list[int]:
        """Training blocks dealt to ``member_id`` in ``round_no`` among ``participants`` (rendezvous hashing)."""
        members = sorted(set(participants) | {member_id})
        if len(members) == 1:
            return list(self.train_blocks)
        r, keys, mine = round_no.to_bytes(8, "big"), [m.encode() for m in members], members.index(member_id)
        return [b for b in self.train_blocks if _dealer(keys, r, b) == mine]

    def _window(self, block: int, offset: int, seq_len: int) -> torch.Tensor:
        start = block * BLOCK_SIZE + offset
        window = self.stream[start : start + seq_len + 1].astype(np.int64) + BYTE_OFFSET
        return torch.from_numpy(window)

    def batches(
        self, blocks: Sequence[int], seed: bytes, steps: int, batch_size: int, seq_len: int
    ) -> Iterable[torch.Tensor]:
        """``steps`` batches of shape (B, T+1) drawn from ``blocks`` with an RNG seeded by ``seed``."""
        for rows in self.draws(blocks, seed, steps, batch_size, seq_len):
            yield torch.stack([self._window(block, offset, seq_len) for block, offset in rows])  # (B, T+1)

    def draws(
        self, blocks: Sequence[int], seed: bytes, steps: int, batch_size: int, seq_len: int
    ) -> Iterable[list[tuple[int, int]]]:
        """The (block, offset) of each row of each batch :meth:`batches` yields (a verifier checks the blocks)."""
        if seq_len + 1 > BLOCK_SIZE:
            raise DataError(f"seq_len {seq_len} is longer than a data block ({BLOCK_SIZE - 1} tokens at most)")
        if not blocks:
            raise DataError("this peer's shard is empty; the data set is too small for this many peers")
        rng = random.Random(int.from_bytes(hashlib.sha256(seed).digest(), "big"))
        span = BLOCK_SIZE - seq_len - 1
        for _ in range(steps):
            yield [(blocks[rng.randrange(len(blocks))], rng.randrange(span + 1)) for _ in range(batch_size)]

    def eval_batches(self, batch_size: int, seq_len: int, max_sequences: int = 64) -> list[torch.Tensor]:
        """A fixed validation set: the first window of each validation block (several per block if few)."""
        if seq_len + 1 > BLOCK_SIZE:  # a longer window would run past its validation block into training data
            raise DataError(f"seq_len {seq_len} is longer than a data block ({BLOCK_SIZE - 1} tokens at most)")
        rows = []
        span = BLOCK_SIZE - seq_len - 1  # last start offset whose window stays inside the block
        per_block = min(span + 1, max(1, -(-max_sequences // len(self.val_blocks))))
        stride = max(1, span // per_block)
        for b in self.val_blocks:
            for k in range(per_block):
                if len(rows) < max_sequences:
                    rows.append(self._window(b, k * stride, seq_len))
        return [torch.stack(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]
