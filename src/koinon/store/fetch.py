"""Checkpoints between peers: a manifest of chunk hashes, a server, and a parallel, resumable, verifying fetch.

A checkpoint's **content** is θ as canonical little-endian float32 bytes: its sha256 is the checkpoint's id (the
θ hash every peer already agrees on). The **manifest** cuts the content into ``CHUNK`` bytes and lists each
chunk's sha256, with the round and the configuration (canonical JSON) needed to rebuild the model; its own id is
the sha256 of its canonical CBOR, which the checkpoint's ledger event records.

:func:`fetch_checkpoint` asks several peers at once, one worker per peer taking the next missing chunk from a
shared queue. Every chunk is checked against the manifest as it arrives: a peer that serves a bad chunk is
dropped for the rest of the fetch and the chunk goes back to the queue for the others. Chunks are written in place
into ``<id>.part`` and recorded in ``<id>.have`` (rewritten atomically), so an interrupted fetch resumes where it
stopped; chunks recorded there are re-checked against the manifest before they are trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from koinon.config import TrainingConfig
from koinon.errors import HashMismatch, StateError
from koinon.ledger import cbor

logger = logging.getLogger("koinon.fetch")

CHUNK = 1 << 20
MAX_CHUNKS = 1 << 16


def content_of(theta: torch.Tensor) -> bytes:
    return theta.detach().to(torch.float32).contiguous().numpy().tobytes()


def make_manifest(content: bytes, round_no: int, config: TrainingConfig) -> dict:
    chunks = [hashlib.sha256(content[i : i + CHUNK]).digest() for i in range(0, len(content), CHUNK)]
    return {
        "theta": hashlib.sha256(content).digest(),
        "size": len(content),
        "chunk": CHUNK,
        "chunks": chunks,
        "round": round_no,
        "config": config.canonical_json().decode(),
    }


def manifest_id(manifest: dict) -> bytes:
    return hashlib.sha256(cbor.encode(manifest)).digest()


def check_manifest(manifest: object, theta: bytes, expected_id: bytes | None = None, size: int | None = None) -> dict:
    """Raise HashMismatch/StateError unless ``manifest`` is well formed (our chunk size), names ``theta`` and (if
    given) hashes to ``expected_id`` (the id on the ledger) and has ``size`` bytes."""
    if not isinstance(manifest, dict) or set(manifest) != {"theta", "size", "chunk", "chunks", "round", "config"}:
        raise StateError("malformed checkpoint manifest")
    expected_size = size
    size, chunk, chunks = manifest["size"], manifest["chunk"], manifest["chunks"]
    if not (isinstance(size, int) and isinstance(chunks, list)) or chunk != CHUNK or size < 0:
        raise StateError("malformed checkpoint manifest (or another chunk size than ours)")
    if (
        len(chunks) != -(-size // chunk)
        or len(chunks) > MAX_CHUNKS
        or not all(isinstance(c, bytes) and len(c) == 32 for c in chunks)
    ):
        raise StateError("the manifest's chunk list does not fit its size")
    if manifest["theta"] != theta:
        raise HashMismatch("the manifest is for another checkpoint")
    if expected_id is not None and manifest_id(manifest) != expected_id:
        raise HashMismatch("the manifest does not match the id the ledger records")
    if expected_size is not None and size != expected_size:
        raise StateError(f"the manifest says {size} bytes, the ledger {expected_size}")
    return manifest


class CheckpointServer:
    """Answers ``koinon/ckpt`` requests from the checkpoints in a folder: {manifest: θ} → the manifest,
    {theta: θ, chunk: i} → {data}. Keeps the contents of the last two checkpoints asked for in memory."""

    def __init__(self, folder: Path, corrupt: bool = False) -> None:
        self.folder = Path(folder)
        self.corrupt = corrupt  # a testing tool: serve every chunk with one byte flipped
        self._cache: dict[bytes, tuple[bytes, dict]] = {}
        self._lock = threading.Lock()

    def _load(self, theta: bytes) -> tuple[bytes, dict] | None:
        from koinon.store.checkpoint import read_checkpoint

        with self._lock:
            if theta in self._cache:
                return self._cache[theta]
        path = self.folder / f"{theta.hex()[:16]}.safetensors"
        if not path.exists():
            return None
        try:
            flat, meta = read_checkpoint(path)
        except StateError:
            return None
        content = content_of(flat)
        if hashlib.sha256(content).digest() != theta:
            return None
        entry = (content, make_manifest(content, meta["round"], TrainingConfig(**meta["config"])))
        with self._lock:
            self._cache[theta] = entry
            while len(self._cache) > 2:
                self._cache.pop(next(iter(self._cache)))
        return entry

    def handle(self, request: bytes) -> bytes:
        try:
            msg = cbor.decode(request)
            theta = msg.get("manifest", msg.get("theta"))
            if not isinstance(theta, bytes) or len(theta) != 32:
                raise ValueError
        except Exception:
            return cbor.encode({"error": "malformed checkpoint request"})
        entry = self._load(theta)
        if entry is None:
            return cbor.encode({"error": "unknown checkpoint"})
        content, manifest = entry
        if "manifest" in msg:
            return cbor.encode({"manifest": manifest})
        i = msg.get("chunk")
        if not isinstance(i, int) or not 0 <= i < len(manifest["chunks"]):
            return cbor.encode({"error": "no such chunk"})
        data = content[i * CHUNK : (i + 1) * CHUNK]
        if self.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        return cbor.encode({"data": data})


class FetchError(StateError):
    pass


def fetch_checkpoint(
    theta: bytes,
    sources: dict[str, Callable[[bytes], bytes]],
    folder: Path,
    *,
    manifest_hash: bytes | None = None,
    size: int | None = None,
    stop: threading.Event | None = None,
    max_errors: int = 3,
) -> tuple[bytes, dict, dict]:
    """Fetch checkpoint ``theta`` (its θ hash) from ``sources`` ({name: request → reply}) in parallel into
    ``folder``; return (content, manifest, report). The report says which chunks came from whom and which sources
    were dropped and why. Raises FetchError when the sources can't complete it (what arrived is kept)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = None
    for name, call in sources.items():
        try:
            reply = cbor.decode(call(cbor.encode({"manifest": theta})))
            manifest = check_manifest(reply.get("manifest"), theta, manifest_hash, size)
            break
        except Exception as e:
            logger.info("no usable manifest from %s: %r", name, e)
    if manifest is None:
        raise FetchError(f"no source served a valid manifest of checkpoint {theta.hex()[:16]}")
    part, have_path = folder / f"{theta.hex()}.part", folder / f"{theta.hex()}.have"
    n, size = len(manifest["chunks"]), manifest["size"]
    mode = "r+b" if part.exists() else "w+b"
    with open(part, mode) as f:
        f.truncate(size)
    done = _load_have(have_path, part, manifest)
    todo: queue.Queue[int] = queue.Queue()
    for i in range(n):
        if i not in done:
            todo.put(i)
    report = {"resumed": len(done), "chunks": n, "from": {name: 0 for name in sources}, "dropped": {}}
    lock = threading.Lock()
    fd = os.open(part, os.O_RDWR)

    in_flight = [0]  # chunks taken by a worker and not yet written or put back

    def take() -> int | None:
        """The next missing chunk; -1 while others may still put one back; None when nothing is left."""
        with lock:
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return None if in_flight[0] == 0 else -1
            in_flight[0] += 1
            return i

    def give_back(i: int | None) -> None:
        with lock:
            if i is not None:
                todo.put(i)  # before the count drops, so no worker sees neither
            in_flight[0] -= 1

    def worker(name: str, call: Callable[[bytes], bytes]) -> None:
        try:
            fetch_from(name, call)
        except Exception as e:  # e.g. a full disk: this worker stops, its chunk goes back, the others go on
            with lock:
                report["dropped"][name] = f"stopped: {e!r}"
            logger.warning("checkpoint %s: fetching from %s stopped: %r", theta.hex()[:12], name, e)

    def fetch_from(name: str, call: Callable[[bytes], bytes]) -> None:
        errors = 0
        while not (stop is not None and stop.is_set()):
            i = take()
            if i is None:
                return
            if i < 0:
                time.sleep(0.01)
                continue
            try:
                reply = cbor.decode(call(cbor.encode({"theta": theta, "chunk": i})))
                data = reply["data"]
            except Exception as e:
                give_back(i)
                errors += 1
                if errors >= max_errors:
                    with lock:
                        report["dropped"][name] = f"{errors} failed requests (last: {e!r})"
                    return
                continue
            if not isinstance(data, bytes) or hashlib.sha256(data).digest() != manifest["chunks"][i]:
                give_back(i)
                with lock:
                    report["dropped"][name] = f"chunk {i} does not match the manifest"
                logger.warning("checkpoint %s: %s served a corrupt chunk %d; skipping it", theta.hex()[:12], name, i)
                return
            try:
                os.pwrite(fd, data, i * CHUNK)
                with lock:
                    done.add(i)
                    report["from"][name] += 1
                    if len(done) % 16 == 0 or len(done) == n:  # the resume file: every 16 chunks, and at the end
                        _save_have(have_path, done)
            except BaseException:
                give_back(i)
                raise
            give_back(None)

    try:
        threads = [threading.Thread(target=worker, args=item, daemon=True) for item in sources.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        os.fsync(fd)
        _save_have(have_path, done)  # what arrived, for a later resume (a crash loses at most 15 chunks)
    finally:
        os.close(fd)
    if len(done) < n:
        raise FetchError(
            f"checkpoint {theta.hex()[:16]}: {len(done)} of {n} chunks after all sources gave up "
            f"({'; '.join(f'{k}: {v}' for k, v in report['dropped'].items()) or 'stopped'}); run again to resume"
        )
    content = part.read_bytes()
    if hashlib.sha256(content).digest() != theta:  # every chunk matched, so only a bad manifest can get here
        raise HashMismatch(f"checkpoint {theta.hex()[:16]}: the assembled content does not match its hash")
    return content, manifest, report


def finish_fetch(folder: Path, theta: bytes) -> None:
    """Remove the partial files of a fetch whose checkpoint has been saved."""
    for suffix in (".part", ".have"):
        (Path(folder) / f"{theta.hex()}{suffix}").unlink(missing_ok=True)


def _load_have(path: Path, part: Path, manifest: dict) -> set[int]:
    try:
        claimed = set(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return set()
    ok = set()
    with open(part, "rb") as f:
        for i in sorted(claimed):
            if not isinstance(i, int) or not 0 <= i < len(manifest["chunks"]):
                continue
            f.seek(i * CHUNK)
            if hashlib.sha256(f.read(CHUNK)).digest() == manifest["chunks"][i]:
                ok.add(i)
    return ok


def _save_have(path: Path, done: set[int]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(sorted(done)))
    os.replace(tmp, path)
