"""The raw Ed25519 verification ceiling for bench/ledger_bench.py: verifications/s on every core.

A ``spawn`` pool of ``os.cpu_count()`` processes, each handed the sample (public key, signature, signing bytes) of
real ledger events in its initializer, before the clock starts; the timed part is only
``Ed25519PublicKey.verify`` over the sample, split in ranges across the pool. No parsing, no hashing, no IPC of
the data: the most an audit could ever do per second on this machine, since it must check every signature.
"""

from __future__ import annotations

import os
import time
from multiprocessing import get_context

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

_SAMPLE: list[tuple[Ed25519PublicKey, bytes, bytes]] = []


def _init(public_keys: list[bytes], items: list[tuple[int, bytes, bytes]]) -> None:
    keys = [Ed25519PublicKey.from_public_bytes(k) for k in public_keys]
    _SAMPLE[:] = [(keys[k], sig, message) for k, sig, message in items]


def _verify_range(bounds: tuple[int, int]) -> tuple[int, float]:
    """Verify ``_SAMPLE[lo:hi]``; (count, CPU seconds this worker spent on it)."""
    lo, hi = bounds
    cpu = time.process_time()
    for key, sig, message in _SAMPLE[lo:hi]:
        key.verify(sig, message)  # raises InvalidSignature: every sample signature is valid
    return hi - lo, time.process_time() - cpu


def _settle(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def verify_one_core(public_keys: list[bytes], items: list[tuple[int, bytes, bytes]]) -> float:
    """Verifications/s in this process (one core)."""
    _init(public_keys, items)
    start = time.perf_counter()
    _verify_range((0, len(_SAMPLE)))
    elapsed = time.perf_counter() - start
    _SAMPLE.clear()
    return len(items) / elapsed


def verify_all_cores(
    public_keys: list[bytes], items: list[tuple[int, bytes, bytes]], passes: int = 2, chunk: int = 2000
) -> dict:
    """Verifications/s on ``os.cpu_count()`` worker processes; each pass verifies the whole sample once."""
    workers = os.cpu_count() or 1
    ranges = [(lo, min(lo + chunk, len(items))) for lo in range(0, len(items), chunk)] * passes
    with get_context("spawn").Pool(workers, initializer=_init, initargs=(public_keys, items)) as pool:
        pids = set(pool.map(_settle, [0.5] * workers, chunksize=1))  # every worker is up and initialised
        start = time.perf_counter()
        results = pool.map(_verify_range, ranges, chunksize=1)
        elapsed = time.perf_counter() - start
    done, cpu = sum(n for n, _ in results), sum(c for _, c in results)
    return {
        "workers": workers,
        "workers_seen_in_warmup": len(pids),
        "verifications": done,
        "seconds": round(elapsed, 3),
        "per_s": round(done / elapsed, 1),
        "cpu_seconds": round(cpu, 3),
        "cpu_us_per_verification": round(cpu / done * 1e6, 2),
    }
