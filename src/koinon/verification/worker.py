"""The peer's side of verification: commit to a round's trace, serve its states, re-execute others' segments.

* :func:`commitment` builds a ``commit`` body from a round's trace (docs/verification.md §1).
* :class:`BlobStore` keeps the trace states of the last few rounds (and the evidence of our accusations) by
  content hash and answers ``koinon/blob`` requests in 1 MiB chunks; :func:`fetch_blob` gets one back and checks
  its hash, so any peer holding a state can serve it.
* :func:`verify_commit` re-executes one segment of a commitment on the CPU and compares the result with the
  committed end state: the error is ‖claimed − recomputed‖ / ‖recomputed − start‖, for the parameters and the
  AdamW moments, and a check passes at ≤ ``TOLERANCE_PPM`` parts per million (bit-identical on the same build;
  about 10⁻² ppm between thread counts, measured in tests/unit/test_verification.py).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

from koinon.config import TrainingConfig
from koinon.ledger import cbor
from koinon.store.fetch import content_of

logger = logging.getLogger("koinon.verify")

TOLERANCE_PPM = 1000  # 0.1 % of the segment's own update
CHUNK = 1 << 20
MAX_BLOB = 1 << 31


def blob_hash(t: torch.Tensor) -> bytes:
    return hashlib.sha256(content_of(t)).digest()


def shard_hash(blocks: list[int]) -> bytes:
    """What a commitment names its shard by: sha256 of the block ids, 4 bytes big-endian each, in order."""
    return hashlib.sha256(b"".join(b.to_bytes(4, "big") for b in blocks)).digest()


def batch_seed(member: str, round_no: int) -> bytes:
    """What the batch sampler of ``member`` is seeded with in ``round_no`` (the commit carries its sha256)."""
    return f"{member}|{round_no}".encode()


def commitment(
    *,
    member: str,
    round_no: int,
    theta: torch.Tensor,
    config: TrainingConfig,
    data: list[str],
    group: list[str],
    shards: list[int],
    step0: int,
    samples: int,
    trace: list[bytes],
    delta: torch.Tensor,
) -> dict:
    """``trace``: the hashes of (parameters, moments) at each segment bound, as :meth:`BlobStore.add_round`
    returns them (the states are hashed once, when they are stored to be served)."""
    return {
        "round": round_no,
        "theta": blob_hash(theta),
        "config": bytes.fromhex(config.config_hash()),
        "data": [bytes.fromhex(d) for d in data][:64],
        "group": sorted(set(group) | {member}),
        "shards": shard_hash(shards),
        "seed": hashlib.sha256(batch_seed(member, round_no)).digest(),
        "step0": step0,
        "steps": config.inner_steps,
        "samples": samples,
        "trace": list(trace),
        "delta": blob_hash(delta),
    }


def made_up_trace(
    theta: torch.Tensor, moments: torch.Tensor, bounds: list[int], delta: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A free-rider's trace (``--attack freeride``): no step taken, every state the round's start state, the last
    one made to fit the Δ it sends (θ − Δ)."""
    trace = [(theta.clone(), moments) for _ in bounds]
    trace[-1] = (torch.sub(theta, delta), moments)
    return trace


class BlobStore:
    """Tensors by content hash: the trace states of the last ``keep_rounds`` rounds, plus pinned evidence."""

    def __init__(self, keep_rounds: int = 6, keep_evidence: int = 16) -> None:
        self.keep_rounds, self.keep_evidence = keep_rounds, keep_evidence
        self._blobs: dict[bytes, bytes | memoryview] = {}
        self._rounds: dict[int, list[bytes]] = {}
        self._evidence: list[bytes] = []
        self._lock = threading.Lock()

    def add_round(self, round_no: int, trace: list[tuple[torch.Tensor, torch.Tensor]]) -> list[bytes]:
        """Keep a round's trace states (the tensors themselves: the trace is ours alone); return their hashes in
        trace order (params, moments, params, …)."""
        keys, blobs = [], []
        for pair in trace:
            for t in pair:
                view = memoryview(t.detach().to(torch.float32).contiguous().numpy()).cast("B")
                keys.append(hashlib.sha256(view).digest())
                blobs.append(view)
        with self._lock:
            self._blobs.update(zip(keys, blobs, strict=True))
            self._rounds[round_no] = keys
            for old in sorted(self._rounds)[: -self.keep_rounds]:
                self._drop(self._rounds.pop(old))
        return keys

    def pin(self, data: bytes) -> bytes:
        """Keep ``data`` as evidence (of an accusation we made), so referees can fetch it from us too."""
        key = hashlib.sha256(data).digest()
        with self._lock:
            self._blobs[key] = data
            self._evidence.append(key)
            if len(self._evidence) > self.keep_evidence:
                self._drop([self._evidence.pop(0)])
        return key

    def _drop(self, keys: list[bytes]) -> None:
        live = set(self._evidence).union(*self._rounds.values()) if self._rounds else set(self._evidence)
        for k in keys:
            if k not in live:
                self._blobs.pop(k, None)

    def get(self, key: bytes) -> bytes | None:
        with self._lock:
            blob = self._blobs.get(key)
        return None if blob is None else bytes(blob)

    def handle(self, request: bytes) -> bytes:
        """A ``koinon/blob`` request {blob: hash, offset} → {size, data} (or {error})."""
        try:
            msg = cbor.decode(request)
            key, offset = msg["blob"], msg["offset"]
            if not isinstance(key, bytes) or not isinstance(offset, int) or offset < 0:
                raise ValueError("bad request")
        except Exception:
            return cbor.encode({"error": "malformed blob request"})
        with self._lock:
            data = self._blobs.get(key)
        if data is None:
            return cbor.encode({"error": "unknown blob"})
        return cbor.encode({"size": len(data), "data": bytes(data[offset : offset + CHUNK])})


def fetch_blob(call: Callable[[bytes], bytes], key: bytes) -> bytes:
    """Fetch one blob through ``call`` (a request/response to one peer) in chunks; raise if it does not hash."""
    out = bytearray()
    size = None
    while size is None or len(out) < size:
        reply = cbor.decode(call(cbor.encode({"blob": key, "offset": len(out)})))
        if "error" in reply:
            raise LookupError(str(reply["error"]))
        size = int(reply["size"])
        chunk = reply["data"]
        if size > MAX_BLOB or not isinstance(chunk, bytes) or (not chunk and len(out) < size):
            raise ValueError("bad blob reply")
        out += chunk
    data = bytes(out[:size])
    if hashlib.sha256(data).digest() != key:
        raise ValueError("the blob does not match its hash")
    return data


def as_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.float32)


@dataclass
class Outcome:
    ok: bool
    error_ppm: int
    got: bytes  # hash of the parameters we computed for the end of the segment
    reason: str
    evidence: list[bytes]  # the states we used (to pin when accusing)


def _rel_ppm(diff: torch.Tensor, scale: torch.Tensor) -> int:
    d = float(torch.linalg.vector_norm(diff.double()))
    s = float(torch.linalg.vector_norm(scale.double()))
    if d == 0.0:
        return 0
    return 10**9 if s == 0.0 else min(10**9, int(d / s * 1e6))


def verify_commit(
    body: dict,
    author: str,
    segment: int,
    *,
    fetch: Callable[[bytes], bytes],
    corpus,
    config: TrainingConfig,
    trainer_factory: Callable[[TrainingConfig], object],
) -> Outcome | None:
    """Re-execute ``segment`` of the commitment ``body`` by ``author``. None: we can't judge it (another
    configuration or data set than ours, or its states could not be fetched): no verdict is better than a wrong one.
    """
    if body["config"].hex() != config.config_hash():
        return None
    if [d.hex() for d in body["data"]] != list(corpus.source_ids)[:64]:
        return None

    def fail(reason: str, evidence: list[bytes] | None = None) -> Outcome:
        return Outcome(False, 10**9, b"\0" * 32, reason, evidence or [])

    r = body["round"]
    bounds = config.segment_bounds()
    if body["seed"] != hashlib.sha256(batch_seed(author, r)).digest():
        return fail("the batch seed is not the one assigned to this member and round")
    if body["steps"] != config.inner_steps or body["samples"] != config.inner_steps * config.batch_size:
        return fail(f"claims {body['steps']} steps / {body['samples']} samples; the configuration says otherwise")
    if len(body["trace"]) != 2 * len(bounds) or not 0 <= segment < len(bounds) - 1:
        return fail("the trace does not have one state per segment bound")
    if body["trace"][0] != body["theta"]:
        return fail("the trace does not start from the committed θ")
    group = body["group"]
    if author not in group:
        return fail("the commitment's author is not in the group it dealt its shard among")
    shards = corpus.shard(author, r, group)
    if shard_hash(shards) != body["shards"]:
        return fail("the shard is not the one dealt to this member among its group")
    keys = body["trace"][2 * segment : 2 * segment + 4]
    try:
        start = [fetch(k) for k in keys[:2]]
    except Exception as e:
        logger.info("round %d: could not fetch %s's trace states: %r", r, author[-8:], e)
        return None
    try:
        p0, m0 = (as_tensor(b) for b in start)
        if not (torch.isfinite(p0).all() and torch.isfinite(m0).all()):
            raise ValueError("it is not finite")
        batches = list(
            corpus.batches(shards, batch_seed(author, r), bounds[segment + 1], config.batch_size, config.seq_len)
        )[bounds[segment] :]
        gp, gm = trainer_factory(config).replay(p0, m0, body["step0"] + bounds[segment], batches)
    except Exception as e:  # any state or shard a peer can't train from is the author's fault, never a crash
        return fail(f"the segment's start state can't be re-executed: {e}", start)
    got = blob_hash(gp)
    if got == keys[2] and blob_hash(gm) == keys[3]:
        error = 0  # bit-identical (the same build and thread count): no need to fetch the claimed end state
        p1 = gp
    else:
        try:
            end = [fetch(k) for k in keys[2:]]
        except Exception as e:
            logger.info("round %d: could not fetch %s's trace states: %r", r, author[-8:], e)
            return None
        try:
            p1, m1 = (as_tensor(b) for b in end)
        except ValueError:
            return fail("the trace's end state is not a float32 vector", start + end)
        if p1.shape != gp.shape or m1.shape != gm.shape:
            return fail("the trace's states have the wrong size", start + end)
        if not (torch.isfinite(p1).all() and torch.isfinite(m1).all()):
            return fail("the trace's end state is not finite", start + end)
        error = max(_rel_ppm(p1 - gp, gp - p0), _rel_ppm(m1 - gm, gm - m0))
        if error > TOLERANCE_PPM:
            return Outcome(False, error, got, f"segment {segment} differs by {error} ppm", start + end)
    if segment == len(bounds) - 2:  # the last segment ends where Δ = θ − θ_H comes from: check Δ's hash too
        try:
            theta_data = fetch(body["theta"])
            theta = as_tensor(theta_data)
        except Exception as e:
            logger.info("round %d: could not fetch θ from %s: %r", r, author[-8:], e)
            return None
        if theta.shape != p1.shape or blob_hash(torch.sub(theta, p1)) != body["delta"]:
            evidence = start + [theta_data] + ([] if p1 is gp else end)
            return Outcome(False, error, got, "the committed Δ is not θ minus the trace's last state", evidence)
    return Outcome(True, error, got, f"segment {segment} matches ({error} ppm)", [])
