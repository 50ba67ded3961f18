"""A training peer's checkpoints (docs/models.md): save θ every few rounds and record it on the ledger with its
lineage (the checkpoint before it, who contributed since, how many samples), and fetch in the background the
checkpoints governance released that this peer does not hold.

Separate from the round loop (``swarm/peer.py``) because none of it is a round-protocol decision: the loop only
reports each round's contributors (``note_round``), asks for a checkpoint and, between rounds, for the releases to
be fetched. Everything else comes in through the constructor: the folder, the ledger, a way to record and to log,
and a way to ask another peer's checkpoint protocol.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from koinon.config import TrainingConfig
from koinon.store.checkpoint import save_checkpoint, save_content
from koinon.store.fetch import FetchError, content_of, fetch_checkpoint, finish_fetch, make_manifest, manifest_id
from koinon.training.model import theta_hash

if TYPE_CHECKING:
    from koinon.governance.state import GovState
    from koinon.ledger.node import LedgerNode

logger = logging.getLogger("koinon.peer")  # the peer's logger: its messages read as they did from peer.py


class CheckpointKeeper:
    def __init__(
        self,
        *,
        folder: Path,
        ledger: LedgerNode,
        member: str,
        record: Callable[[str, dict], None],
        log: Callable[..., None],
        call_ckpt: Callable[[str, bytes], bytes],
        stop_event: threading.Event,
    ) -> None:
        self.folder = Path(folder)
        self.ledger = ledger
        self.member = member
        self.record = record  # append to our ledger feed (and push it out)
        self.log = log  # a metrics record
        self.call_ckpt = call_ckpt  # (peer, request) → that peer's answer on the checkpoint protocol
        self.stop_event = stop_event
        self._ckpt_parent: bytes | None = None  # lineage since the last checkpoint we recorded
        self._ckpt_contributors: set[str] = set()
        self._ckpt_samples = 0
        self._fetching: threading.Thread | None = None
        self._fetch_failed: dict[bytes, float] = {}

    def note_round(self, contributors: list[str], samples: int) -> None:
        """A round's contributions, for the lineage of the next checkpoint we record."""
        self._ckpt_contributors |= set(contributors)
        self._ckpt_samples += samples

    def save(
        self,
        model: torch.nn.Module,
        theta: torch.Tensor,
        r: int,
        config: TrainingConfig,
        gov_index: int,
        data: list[str],
    ) -> Path:
        """Save θ after round ``r`` (a copy the caller took) and, once the swarm exists, record the checkpoint."""
        path = save_checkpoint(self.folder, model, theta, r, config)
        self.log(event="checkpoint", round=r, path=str(path), theta=theta_hash(theta))
        if r > 0 and self.ledger.store.swarm_id is not None:
            content = content_of(theta)
            manifest = make_manifest(content, r, config)
            self.record(
                "checkpoint",
                {
                    "theta": manifest["theta"],
                    "round": r,
                    "parent": self._ckpt_parent,
                    "config": bytes.fromhex(config.config_hash()),
                    "gov": gov_index if gov_index >= 0 else None,
                    "contributors": sorted(self._ckpt_contributors)[:4096],
                    "data": [bytes.fromhex(d) for d in data][:64],
                    "samples": self._ckpt_samples,
                    "manifest": manifest_id(manifest),
                    "size": len(content),
                },
            )
            self._ckpt_parent, self._ckpt_contributors, self._ckpt_samples = manifest["theta"], set(), 0
        return path

    # --- releases: fetch the checkpoints governance released that we lack (docs/models.md) -------------------------
    def fetch_releases(self, gov: GovState | None, certified: Callable[[bytes], bool] = lambda theta: True) -> None:
        """Start fetching (in the background, one at a time) a released checkpoint this peer does not hold, in
        chunks from the members that recorded it. Only a θ that ``certified`` (a certified round made it: the
        round protocol's rule, docs/training.md §2) is fetched: a release of anything else is not the swarm's."""
        if self._fetching is not None and self._fetching.is_alive():
            return
        if gov is None or not gov.releases:
            return
        folder = self.folder
        for tag, release in sorted(gov.releases.items()):
            theta = bytes.fromhex(release["checkpoint"])
            if (folder / f"{theta.hex()[:16]}.safetensors").exists() or not certified(theta):
                continue
            if time.monotonic() - self._fetch_failed.get(theta, -1e9) < 60:
                continue
            self._fetching = threading.Thread(
                target=self._fetch_one, args=(tag, theta), daemon=True, name="koinon-fetch"
            )
            self._fetching.start()
            return

    def _fetch_one(self, tag: str, theta: bytes) -> None:
        holders: set[str] = set()
        claims: dict[tuple[bytes, int], int] = {}  # (manifest id, size) → how many members recorded it
        for e in self.ledger.store.iter_events(kind="checkpoint"):
            if e.body["theta"] == theta and e.author != self.member:
                holders.add(e.author)
                key = (e.body["manifest"], e.body["size"])
                claims[key] = claims.get(key, 0) + 1
        sources = {h: (lambda req, h=h: self.call_ckpt(h, req)) for h in sorted(holders)}
        folder = self.folder
        try:
            if not sources:
                raise FetchError("no member recorded this checkpoint on the ledger")
            last: Exception | None = None
            for manifest_hash, size in sorted(claims, key=lambda k: (-claims[k], k)):  # most recorded first
                try:
                    content, manifest, report = fetch_checkpoint(
                        theta,
                        sources,
                        folder / "partial",
                        manifest_hash=manifest_hash,
                        size=size,
                        stop=self.stop_event,
                    )
                    break
                except FetchError as e:
                    last = e
            else:
                raise last or FetchError("no manifest")
            config = TrainingConfig(**json.loads(manifest["config"]))
            save_content(folder, content, int(manifest["round"]), config)
            finish_fetch(folder / "partial", theta)
            logger.info("release %s: fetched checkpoint %s from %d peer(s)", tag, theta.hex()[:12], len(report["from"]))
            self.log(event="fetched", tag=tag, theta=theta.hex(), report=report)
        except Exception as e:
            self._fetch_failed[theta] = time.monotonic()
            logger.warning("release %s: could not fetch checkpoint %s: %s", tag, theta.hex()[:12], e)
