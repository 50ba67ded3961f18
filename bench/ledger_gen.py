"""Synthetic but valid Koinon ledgers for bench/ledger_bench.py, built without going through ``LedgerStore``.

:class:`LedgerBuilder` writes signed event wires directly, exactly as ``LedgerNode`` would produce them in a
healthy swarm (docs/ledger.md §2–§5):

- a ``charter`` by member 0 (founders = [member 0], rules ``epoch_ms``/``admission``/``min_contributors``), then a ``join`` by every
  other member;
- training rounds: in each, every member appends a ``commit`` and a ``round`` event (round r makes height r, and
  every member signs the same θ, state and contributors, so each round is certified and the θ lineage is unbroken:
  ``prev_theta`` is the previous round's θ); every event's ``prev`` is its author's head and its ``parents`` are the
  other members' current heads (as ``LedgerNode.append_own``);
- consensus after each round: cuts in three consecutive epochs (so the middle one, and everything before it, is
  final), each by its epoch's leader (``cuts.leader`` over the eligible members), its frontier = every member's
  head, its ``root``/``size`` the RFC 9162 log through it (``cuts.canonical_order`` over the events it adds, folded
  into a compact range with ``merkle.extend_range``/``range_root``), and cosigned by every eligible member
  (the eligible set of a cut is the members given what its parent covers: member 0 alone for the first cut);
- a gap of a few epochs between rounds, as a real swarm (no cuts while nothing waits for finality).

The log after the last round's middle cut is final; the last cut and its cosigns stay pending.

Everything is single-process: a cut's root needs the signatures of the events it covers (leaf = H(0x00 ‖ wire)),
and the next events link to the cut's id, so signing cannot run ahead of the chain. Ed25519 signing in
``cryptography`` holds the GIL (2 threads sign no faster than 1), and each signature is about as costly as the
canonical CBOR encoding of the event, so a worker pool would at best halve the signing half of the cost.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

from koinon.identity import Identity
from koinon.ledger import cbor
from koinon.ledger.cuts import canonical_order, leader
from koinon.ledger.event import DOMAIN, Event
from koinon.ledger.merkle import CompactRange, extend_range, leaf_hash, range_root, range_size

START_MS = 1_700_000_000_000
EPOCH_MS = 2000
_SIG_KEY = cbor.encode("sig") + b"\x58\x40"  # text "sig", then the head of a 64-byte byte string


def splice_signature(unsigned: bytes, seq: int, sig: bytes) -> bytes:
    """The wire (CBOR of the map *with* ``sig``) from the CBOR of the map without it: canonical key order is
    shortest first, then bytewise, so "seq" comes first and "sig" right after it; the map head goes 8 → 9."""
    end_of_seq = 1 + 4 + len(cbor.encode(seq))  # map head, "seq" (0x63 + 3 bytes), its value
    return b"\xa9" + unsigned[1:end_of_seq] + _SIG_KEY + sig + unsigned[end_of_seq:]


def unsplice_signature(wire: bytes) -> tuple[bytes, bytes]:
    """(signing bytes, sig) of a canonical event wire, without decoding it: the inverse of :func:`splice_signature`."""
    info = wire[5] & 0x1F  # the head of the "seq" value, right after the map head and the key "seq"
    end_of_seq = 6 + {24: 1, 25: 2, 26: 4, 27: 8}.get(info, 0)
    sig = wire[end_of_seq + len(_SIG_KEY) : end_of_seq + len(_SIG_KEY) + 64]
    return DOMAIN + b"\xa8" + wire[1:end_of_seq] + wire[end_of_seq + len(_SIG_KEY) + 64 :], sig


class LedgerBuilder:
    """Appends events of several members to one global view and keeps the transparency log of its cuts."""

    def __init__(self, identities: Sequence[Identity], *, name: str = "ledger-bench", epoch_ms: int = EPOCH_MS) -> None:
        if not identities:
            raise ValueError("a ledger needs at least one member")
        self.members = [i.member_id for i in identities]
        self._keys = {i.member_id: i.private_key for i in identities}
        self._index = {m: k for k, m in enumerate(self.members)}
        self.epoch_ms = epoch_ms
        self.wires: list[bytes] = []
        self.heads: dict[str, tuple[int, bytes]] = {}
        self.swarm = b""
        self.now = START_MS
        self.epoch = START_MS // epoch_ms
        self.round = 0
        self.theta = hashlib.sha256(b"theta-0").digest()
        self.config = hashlib.sha256(b"bench-config").digest()
        self.counts: dict[str, int] = {}
        self.author_index = bytearray()  # per event: index of its author in ``members`` (for the verify ceiling)
        # consensus state: eligible members, the last cut, its height, the log's compact range and what is not in it
        self.eligible: list[str] = []
        self._members_after: list[str] = []  # members given everything appended so far (what a new cut covers)
        self._last_cut: bytes | None = None
        self._height = 0
        self._range: CompactRange = []
        self._uncovered: list[Event] = []
        self._charter(name)

    # --- one event ------------------------------------------------------------------------------------------
    def _append(self, author: str, kind: str, body: dict) -> Event:
        seq, prev = self.heads.get(author, (0, None))
        parents = tuple(sorted(i for a, (_, i) in self.heads.items() if a != author))
        self.now += 1
        unsigned = Event(self.swarm, author, seq + 1, prev, parents, kind, body, self.now)
        signing = unsigned.signing_bytes  # the src definition (domain ‖ canonical CBOR without sig)
        sig = self._keys[author].sign(signing)
        wire = splice_signature(signing[len(DOMAIN) :], seq + 1, sig)
        if self.counts.get(kind, 0) < 3:  # the splice must give exactly Event.wire (checked on a few of each kind)
            reference = Event(self.swarm, author, seq + 1, prev, parents, kind, body, self.now, sig).wire
            if reference != wire:
                raise AssertionError(f"spliced wire differs from Event.wire for a {kind} event")
        event = Event(
            self.swarm, author, seq + 1, prev, parents, kind, body, self.now, sig, {"signing": signing, "wire": wire}
        )
        event_id = event.id  # the src definition of the id, from the cached wire (and signing bytes)
        self.heads[author] = (seq + 1, event_id)
        self.wires.append(wire)
        self.author_index.append(self._index[author])
        self._uncovered.append(event)
        self.counts[kind] = self.counts.get(kind, 0) + 1
        return event

    # --- the swarm's life ------------------------------------------------------------------------------------
    def _charter(self, name: str) -> None:
        founder = self.members[0]
        charter = self._append(
            founder,
            "charter",
            {
                "name": name,
                "founders": [founder],
                "training": {"config": '{"model":"tiny","seq_len":128,"batch_size":8}', "hash": self.config},
                # k ≤ the members, so that every round is certified however few members the ledger has
                "rules": {
                    "epoch_ms": self.epoch_ms,
                    "admission": "open",
                    "min_contributors": min(3, len(self.members)),
                },
            },
        )
        self.swarm = charter.id
        self.eligible = [founder]  # the members given what GENESIS covers: the charter's founders
        self._members_after = [founder]
        # the log through GENESIS is the charter alone (cuts.Chain._log)
        self._range = extend_range([], [leaf_hash(charter.wire)])
        self._uncovered = []
        for member in self.members[1:]:
            self._append(member, "join", {"maddrs": [f"/ip4/10.0.0.{len(self.heads)}/tcp/31337"]})
            self._members_after.append(member)

    def training_round(self) -> None:
        """Every member records its commitment and the finished round (θ before → θ after)."""
        self.round += 1
        prev_theta, self.theta = self.theta, hashlib.sha256(b"theta-%d" % self.round).digest()
        participants = sorted(self.members)
        self.now = max(self.now, self.epoch * self.epoch_ms)
        for member in self.members:
            seed = hashlib.sha256(b"seed-%d-" % self.round + member.encode()).digest()
            self._append(
                member,
                "commit",
                {
                    "round": self.round,
                    "theta": prev_theta,
                    "config": self.config,
                    "data": [hashlib.sha256(b"stdlib").digest()],
                    "group": participants,
                    "shards": hashlib.sha256(b"shards-%d" % self.round).digest(),
                    "seed": seed,
                    "step0": 50 * (self.round - 1),
                    "steps": 50,
                    "samples": 400,
                    # (parameters, moments) hashes at 17 segment bounds, as `koinon start` commits them
                    "trace": [hashlib.sha256(seed + bytes([k])).digest() for k in range(34)],
                    "delta": hashlib.sha256(seed).digest(),
                },
            )
        for member in self.members:
            self._append(
                member,
                "round",
                {
                    "round": self.round,
                    "height": self.round,
                    "theta": self.theta,
                    "prev_theta": prev_theta,
                    "state": hashlib.sha256(b"state" + self.theta).digest(),
                    "participants": participants,
                    "samples": 50 * 8 * len(participants),
                    "bytes": 4 * 1_200_000 * (len(participants) - 1),
                    "config": self.config,
                    "gov": None,
                },
            )

    def cut(self) -> None:
        """The epoch's leader proposes a cut over every head; every eligible member cosigns it; next epoch."""
        epoch = self.epoch
        proposer = leader(self.swarm, epoch, self.eligible)
        added = canonical_order(self._uncovered, set())
        compact = extend_range(self._range, [leaf_hash(e.wire) for e in added])
        self.now = max(self.now, epoch * self.epoch_ms + 1)
        cut = self._append(
            proposer,
            "cut",
            {
                "index": self._height,
                "epoch": epoch,
                "frontier": {a: [s, i] for a, (s, i) in self.heads.items()},
                "prev": self._last_cut,
                "root": range_root(compact),
                "size": range_size(compact),
                "theta": self.theta,
            },
        )
        self._uncovered = [cut]  # the cut itself is covered by the next one
        self._range, self._last_cut, self._height = compact, cut.id, self._height + 1
        voters = self.eligible
        self.eligible = list(self._members_after)  # the next cut's parent (this one) covers every join so far
        for member in sorted(voters):
            self._append(member, "cosign", {"epoch": epoch, "cut": cut.id})
        self.epoch += 1

    def finalise_round(self, gap_epochs: int = 3) -> None:
        """Three cuts in consecutive epochs (the middle one becomes final), then a few idle epochs."""
        for _ in range(3):
            self.cut()
        self.epoch += gap_epochs


def build_ledger(identities: Sequence[Identity], events: int, **options) -> LedgerBuilder:
    """A ledger of at least ``events`` events (whole rounds, each followed by its three cuts)."""
    builder = LedgerBuilder(identities, **options)
    while len(builder.wires) < events:
        builder.training_round()
        builder.finalise_round()
    return builder


def make_identities(home: os.PathLike | str, count: int) -> list[Identity]:
    """``count`` member keys, each in its own folder under ``home`` (``member-<i>/identity.key``, libp2p format)."""
    return [Identity.create(os.path.join(home, f"member-{i}")) for i in range(count)]
