"""Corpus: validation split, per-(member, round) shards, batches (src/koinon/training/data.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from koinon.errors import DataError
from koinon.training.data import BLOCK_SIZE, Corpus
from koinon.training.model import BYTE_OFFSET

MEMBERS = [f"12D3KooWmember{i}" for i in range(5)]


@pytest.fixture
def corpus(small_corpus_dir: Path) -> Corpus:
    return Corpus.from_paths([small_corpus_dir])


def _big_in_memory_corpus(blocks: int = 170) -> Corpus:
    """Large enough that the hash-based split picks validation blocks (71, 131, ... for this size)."""
    unit = bytes(range(32, 127)) + b"\n"
    data = (unit * (blocks * BLOCK_SIZE // len(unit) + 1))[: blocks * BLOCK_SIZE]
    return Corpus(data, ["memory"])


def test_corpus_reads_the_files_and_splits_train_and_validation(corpus: Corpus, small_corpus_dir: Path):
    files = sorted(small_corpus_dir.iterdir())
    assert corpus.sources == [str(f) for f in files]
    assert corpus.num_tokens == sum(f.stat().st_size for f in files) + 2 * (len(files) - 1)  # + separators
    n_blocks = corpus.num_tokens // BLOCK_SIZE
    assert sorted(corpus.train_blocks + corpus.val_blocks) == list(range(n_blocks))
    assert corpus.val_blocks, "there is always at least one validation block"


def test_validation_split_is_hash_based_on_large_data():
    c = _big_in_memory_corpus()
    assert c.val_blocks[:2] == [71, 131]
    assert not set(c.val_blocks) & set(c.train_blocks)
    assert len(c.val_blocks) < len(c.train_blocks) / 10


def test_shards_are_deterministic(corpus: Corpus):
    for member in MEMBERS[:3]:
        assert corpus.shard(member, 4, MEMBERS[:3]) == corpus.shard(member, 4, list(reversed(MEMBERS[:3])))
        assert corpus.shard(member, 4, MEMBERS[:3]) == corpus.shard(member, 4, MEMBERS[:3])


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_shards_partition_the_training_blocks(corpus: Corpus, k: int):
    members = MEMBERS[:k]
    shards = {m: corpus.shard(m, 1, members) for m in members}
    seen: set[int] = set()
    for m, blocks in shards.items():
        assert blocks == sorted(blocks)
        assert not seen & set(blocks), f"{m}'s shard overlaps another"
        seen |= set(blocks)
    assert sorted(seen) == corpus.train_blocks
    assert sum(len(b) for b in shards.values()) == len(corpus.train_blocks)
    if k > 1:
        assert all(shards.values()), "with ~47 blocks every member of ≤ 5 gets something"


def test_single_member_gets_every_training_block(corpus: Corpus):
    assert corpus.shard(MEMBERS[0], 9, []) == corpus.train_blocks
    assert corpus.shard(MEMBERS[0], 9, [MEMBERS[0]]) == corpus.train_blocks


def test_member_is_counted_even_if_missing_from_participants(corpus: Corpus):
    # a member not in the list is added to it: its shard is the one it would get as a listed participant
    assert corpus.shard(MEMBERS[2], 3, MEMBERS[:2]) == corpus.shard(MEMBERS[2], 3, MEMBERS[:3])


def test_different_rounds_give_different_deals(corpus: Corpus):
    members = MEMBERS[:3]
    deals = [tuple(tuple(corpus.shard(m, r, members)) for m in members) for r in range(1, 5)]
    assert len(set(deals)) == len(deals)


def test_validation_blocks_never_appear_in_any_shard():
    c = _big_in_memory_corpus()
    val = set(c.val_blocks)
    for k in range(1, 6):
        for r in (1, 2):
            for m in MEMBERS[:k]:
                assert not val & set(c.shard(m, r, MEMBERS[:k]))


def test_batches_are_deterministic_for_the_same_seed(corpus: Corpus):
    blocks = corpus.shard(MEMBERS[0], 1, MEMBERS[:2])
    a = list(corpus.batches(blocks, b"seed-1", steps=3, batch_size=4, seq_len=32))
    b = list(corpus.batches(blocks, b"seed-1", steps=3, batch_size=4, seq_len=32))
    c = list(corpus.batches(blocks, b"seed-2", steps=3, batch_size=4, seq_len=32))
    assert len(a) == 3
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_batch_shape_and_token_range(corpus: Corpus):
    batches = list(corpus.batches(corpus.train_blocks, b"s", steps=4, batch_size=5, seq_len=64))
    for batch in batches:
        assert batch.shape == (5, 65)
        assert batch.dtype == torch.int64
        assert int(batch.min()) >= BYTE_OFFSET
        assert int(batch.max()) < 256 + BYTE_OFFSET


def test_batches_come_only_from_the_given_blocks(corpus: Corpus):
    blocks = corpus.shard(MEMBERS[1], 2, MEMBERS[:4])
    data = corpus.stream.tobytes()
    allowed = [data[b * BLOCK_SIZE : (b + 1) * BLOCK_SIZE] for b in blocks]
    for batch in corpus.batches(blocks, b"x", steps=2, batch_size=4, seq_len=48):
        for row in batch:
            text = bytes((row - BYTE_OFFSET).tolist())
            assert any(text in block for block in allowed)


def test_batches_reject_too_long_sequences_and_empty_shards(corpus: Corpus):
    with pytest.raises(DataError, match="seq_len"):
        next(iter(corpus.batches(corpus.train_blocks, b"s", 1, 1, BLOCK_SIZE)))
    with pytest.raises(DataError, match="empty"):
        next(iter(corpus.batches([], b"s", 1, 1, 16)))


def test_eval_batches_are_fixed_and_from_validation_blocks(corpus: Corpus):
    a = corpus.eval_batches(batch_size=8, seq_len=32)
    b = corpus.eval_batches(batch_size=8, seq_len=32)
    assert len(a) == len(b) == 8  # 64 sequences by default
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert all(x.shape == (8, 33) for x in a)
    data = corpus.stream.tobytes()
    val = [data[v * BLOCK_SIZE : (v + 1) * BLOCK_SIZE] for v in corpus.val_blocks]
    for batch in a:
        for row in batch:
            assert any(bytes((row - BYTE_OFFSET).tolist()) in block for block in val)


def test_same_files_give_the_same_corpus(small_corpus_dir: Path):
    a, b = Corpus.from_paths([small_corpus_dir]), Corpus.from_paths([small_corpus_dir])
    assert a.content_hash == b.content_hash
    assert a.train_blocks == b.train_blocks and a.val_blocks == b.val_blocks


# --- bad input ---------------------------------------------------------------------------------------------------


def test_nonexistent_path_raises_data_error(tmp_path: Path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="does not exist"):
        Corpus.from_paths([missing])


def test_no_paths_raises_data_error():
    with pytest.raises(DataError, match="--data"):
        Corpus.from_paths([])


def test_empty_file_raises_data_error(tmp_path: Path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="no readable text"):
        Corpus.from_paths([empty])


def test_directory_with_only_binary_files_raises_data_error(tmp_path: Path):
    folder = tmp_path / "bin"
    folder.mkdir()
    for i in range(3):
        (folder / f"blob{i}.bin").write_bytes(bytes(range(256)) * 64)  # contains NUL bytes: binary
    with pytest.raises(DataError, match="no readable text"):
        Corpus.from_paths([folder])


def test_data_smaller_than_two_blocks_raises_data_error(tmp_path: Path):
    small = tmp_path / "small.txt"
    small.write_bytes(b"x" * (2 * BLOCK_SIZE - 1))
    with pytest.raises(DataError, match="at least 8192"):
        Corpus.from_paths([small])
    ok = tmp_path / "ok.txt"
    ok.write_bytes(b"x" * (2 * BLOCK_SIZE))
    assert len(Corpus.from_paths([ok]).train_blocks) == 1


def test_binary_and_hidden_files_in_a_directory_are_skipped(small_corpus_dir: Path):
    (small_corpus_dir / "zz.bin").write_bytes(b"\x00" * 10_000)
    hidden = small_corpus_dir / ".git"
    hidden.mkdir()
    (hidden / "objects.txt").write_bytes(b"y" * 10_000)
    c = Corpus.from_paths([small_corpus_dir])
    assert all(".git" not in s and not s.endswith(".bin") for s in c.sources)
    assert len(c.sources) == 4


def test_unreadable_file_given_directly_raises_data_error(tmp_path: Path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"text " * 4000)
    secret.chmod(0o000)
    try:
        try:
            with open(secret, "rb"):
                readable = True
        except PermissionError:
            readable = False
        if readable:
            pytest.skip("running as root (or with CAP_DAC_OVERRIDE): a mode-000 file is still readable")
        with pytest.raises(DataError, match="cannot read data file"):
            Corpus.from_paths([secret])
    finally:
        os.chmod(secret, 0o600)


def _deny_reading(monkeypatch: pytest.MonkeyPatch, denied: Path) -> None:
    """Make ``denied`` unreadable even for root (who ignores mode 000) by failing its read_bytes()."""
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self == denied:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)


def test_read_error_on_a_file_given_directly_raises_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"text " * 4000)
    _deny_reading(monkeypatch, secret)
    with pytest.raises(DataError, match="cannot read data file .*Permission denied.*check its permissions"):
        Corpus.from_paths([secret])


def test_read_error_inside_a_directory_skips_that_file(small_corpus_dir: Path, monkeypatch: pytest.MonkeyPatch):
    denied = small_corpus_dir / "part01.txt"
    _deny_reading(monkeypatch, denied)
    c = Corpus.from_paths([small_corpus_dir])
    assert str(denied) not in c.sources
    assert len(c.sources) == 3


def test_eval_batches_reject_sequences_longer_than_a_block(corpus: Corpus):
    # a window longer than a block would run out of its validation block into training data
    with pytest.raises(DataError, match="seq_len"):
        corpus.eval_batches(batch_size=8, seq_len=BLOCK_SIZE)
    assert corpus.eval_batches(batch_size=8, seq_len=BLOCK_SIZE - 1)[0].shape[1] == BLOCK_SIZE


@pytest.mark.parametrize("seq_len", [BLOCK_SIZE - 1, BLOCK_SIZE - 6, 4000, 128])
def test_eval_windows_stay_inside_the_validation_block(seq_len: int):
    # two blocks: block 1 is the validation block and ends exactly where the data ends
    data = bytes(range(32, 127)) * (2 * BLOCK_SIZE // 95 + 1)
    c = Corpus(data[: 2 * BLOCK_SIZE], ["memory"])
    assert c.val_blocks == [1]
    batches = c.eval_batches(batch_size=8, seq_len=seq_len)
    val_block = data[BLOCK_SIZE : 2 * BLOCK_SIZE]
    rows = [row for batch in batches for row in batch]
    assert rows and all(row.shape == (seq_len + 1,) for row in rows)
    assert all(bytes((row - BYTE_OFFSET).tolist()) in val_block for row in rows)
