"""Shared fixtures: deterministic RNGs for every test and a small text corpus on disk."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

CORPUS_FILES = 4
CORPUS_FILE_BYTES = 50_000  # 4 × 50 KB ≈ 200 KB ≈ 48 blocks of 4096 bytes: enough for 5-way shards, still fast

_WORDS = (
    "the of and to in is for that with as on by this be are from or an it at which not have has but all "
    "model peer swarm round shard token gradient momentum outer inner average member key block corpus train"
).split()


@pytest.fixture(autouse=True)
def seed() -> int:
    """Seed torch, random and numpy so every test sees the same random numbers, whatever ran before it."""
    value = 1234
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)
    return value


def write_text_corpus(folder: Path, files: int = CORPUS_FILES, size: int = CORPUS_FILE_BYTES) -> list[Path]:
    """Write ``files`` deterministic ASCII text files of exactly ``size`` bytes each into ``folder``."""
    rng = random.Random(20240601)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(files):
        words: list[str] = []
        length = 0
        while length < size:
            word = rng.choice(_WORDS)
            sep = "\n" if rng.random() < 0.08 else " "
            words.append(word + sep)
            length += len(word) + 1
        path = folder / f"part{i:02d}.txt"
        path.write_bytes("".join(words).encode("ascii")[:size])
        paths.append(path)
    return paths


@pytest.fixture
def small_corpus_dir(tmp_path: Path) -> Path:
    """A folder of ~200 KB of deterministic text (same bytes on every run and machine)."""
    folder = tmp_path / "corpus"
    write_text_corpus(folder)
    return folder
