"""Checkpoints between peers (koinon.store.fetch): a chunked fetch from three peers, one of which serves corrupt
chunks; an interrupted fetch that resumes; manifests that lie. And a SIGKILL in the middle of saves, which must
leave the previous checkpoint loadable (koinon.store.checkpoint)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from koinon.config import TrainingConfig
from koinon.errors import StateError
from koinon.ledger import cbor
from koinon.store import fetch
from koinon.store.checkpoint import load_checkpoint, read_checkpoint, resolve_checkpoint, save_checkpoint, save_content
from koinon.store.fetch import CheckpointServer, FetchError, content_of, fetch_checkpoint, make_manifest, manifest_id
from koinon.training.model import build_model, flat_parameters, theta_hash

CONFIG = TrainingConfig()


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(fetch, "CHUNK", 64 * 1024)  # the tiny model's 1.8 MB in 29 chunks


@pytest.fixture(scope="module")
def holders(tmp_path_factory):
    """Three peers' checkpoint folders holding the same checkpoint (round 3)."""
    model = build_model(CONFIG)
    torch.manual_seed(1)
    theta = flat_parameters(model) + 0.01 * torch.randn(flat_parameters(model).numel())
    folders = []
    for name in ("a", "b", "c"):
        folder = tmp_path_factory.mktemp(name)
        save_checkpoint(folder, model, theta, 3, CONFIG)
        folders.append(folder)
    return theta, folders


def sources(folders, corrupt=()):
    """In-process peers; each answer takes 5 ms, like a network round trip, so all three get chunks."""

    def peer(folder, bad):
        server = CheckpointServer(folder, corrupt=bad)

        def call(request: bytes) -> bytes:
            time.sleep(0.005)
            return server.handle(request)

        return call

    return {name: peer(folder, name in corrupt) for name, folder in zip("abc", folders, strict=True)}


def test_fetch_from_three_peers_skips_the_one_serving_corrupt_chunks(holders, tmp_path):
    theta, folders = holders
    want = bytes.fromhex(theta_hash(theta))
    content, manifest, report = fetch_checkpoint(want, sources(folders, corrupt="b"), tmp_path)
    assert hashlib.sha256(content).digest() == want and content == content_of(theta)
    assert "b" in report["dropped"] and "does not match the manifest" in report["dropped"]["b"]
    assert report["from"]["b"] == 0 and report["from"]["a"] > 0 and report["from"]["c"] > 0
    assert report["from"]["a"] + report["from"]["c"] == len(manifest["chunks"]) > 20
    path = save_content(tmp_path / "ckpt", content, manifest["round"], CONFIG)
    flat, meta = read_checkpoint(path)
    assert theta_hash(flat) == want.hex() and meta["round"] == 3


def test_an_interrupted_fetch_resumes_where_it_stopped(holders, tmp_path):
    theta, folders = holders
    want = bytes.fromhex(theta_hash(theta))
    stop = threading.Event()
    served = []

    def slow(request: bytes) -> bytes:
        reply = CheckpointServer(folders[0]).handle(request)
        if "chunk" in cbor.decode(request):
            served.append(1)
            if len(served) >= 10:
                stop.set()  # the user pressed Ctrl-C after ten chunks
        return reply

    with pytest.raises(FetchError, match="run again to resume"):
        fetch_checkpoint(want, {"a": slow}, tmp_path, stop=stop)
    got_first = len(served)
    calls = []

    def counting(request: bytes) -> bytes:
        calls.append(request)
        return CheckpointServer(folders[1]).handle(request)

    content, manifest, report = fetch_checkpoint(want, {"b": counting}, tmp_path)
    assert report["resumed"] == got_first >= 10
    assert report["from"]["b"] == len(manifest["chunks"]) - got_first
    assert hashlib.sha256(content).digest() == want
    # a chunk damaged on disk while stopped is fetched again, not trusted
    part = tmp_path / f"{want.hex()}.part"
    with open(part, "r+b") as f:
        f.seek(5)
        f.write(b"\xff\xff")
    content, _, report = fetch_checkpoint(want, {"b": counting}, tmp_path)
    assert report["resumed"] == len(manifest["chunks"]) - 1 and report["from"]["b"] == 1


def test_manifests_that_lie_are_refused(holders, tmp_path):
    theta, folders = holders
    want = bytes.fromhex(theta_hash(theta))
    with pytest.raises(FetchError, match="no source served a valid manifest"):
        fetch_checkpoint(want, sources(folders), tmp_path, manifest_hash=b"\x01" * 32)  # not the ledger's
    with pytest.raises(FetchError):
        fetch_checkpoint(b"\x02" * 32, sources(folders), tmp_path)  # nobody has it
    content = content_of(theta)
    forged = make_manifest(content, 3, CONFIG)
    forged["chunks"][0] = b"\0" * 32  # a manifest whose chunks nobody can match

    def liar(request: bytes) -> bytes:
        if "manifest" in cbor.decode(request):
            return cbor.encode({"manifest": forged})
        return CheckpointServer(folders[0]).handle(request)

    with pytest.raises(FetchError, match="does not match the manifest"):
        fetch_checkpoint(want, {"liar": liar}, tmp_path / "x", manifest_hash=manifest_id(forged))
    assert cbor.decode(CheckpointServer(folders[0]).handle(b"\xff"))["error"] == "malformed checkpoint request"


SAVER = """
import sys, torch
from koinon.config import TrainingConfig
from koinon.store.checkpoint import save_checkpoint
from koinon.training.model import build_model, flat_parameters
model = build_model(TrainingConfig())
theta = flat_parameters(model)
print("ready", flush=True)
for i in range(10**6):
    save_checkpoint(sys.argv[1], model, theta + i * 1e-3, i, TrainingConfig())
"""


def test_a_kill_during_saves_leaves_the_last_checkpoint_loadable(tmp_path):
    folder = tmp_path / "ckpt"
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(folder)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(1.0 + 0.37 * attempt)  # somewhere in the middle of a write, a rename or an fsync
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        path = resolve_checkpoint(folder, "latest")
        meta = load_checkpoint(path, build_model(CONFIG))  # raises if LATEST names a torn file
        assert meta["round"] >= 0
    with pytest.raises(StateError, match="no checkpoint"):
        resolve_checkpoint(tmp_path / "empty", "latest")
