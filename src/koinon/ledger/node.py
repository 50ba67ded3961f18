"""A ledger node: authors this member's feed, replicates by anti-entropy, proposes and cosigns cuts.

Transport and time are parameters (STYLE.md): ``handle(remote, request) -> response`` is what a peer serves,
``sync_with(remote, call)`` pulls from one peer through any ``call(request_bytes) -> response_bytes``, and
``tick()`` runs the consensus step at the time ``clock()`` says. The same code runs over hivemind
(``ledger/p2p.py``) and on the in-memory network of the simulation tests.

Replication protocol (docs/ledger.md §6), requests and responses in canonical CBOR:

- ``{"op": "heads"}`` → ``{"swarm": id | b"", "heads": {author: [seq, id]}, "proofs": [[a, b], …]}``
- ``{"op": "pull", "want": [[author, after_seq], …]}`` → ``{"events": [wire, …]}``, at most ``PULL_LIMIT`` events
  and ``PULL_BYTES`` bytes, each author's events in seq order.
- ``{"op": "get", "ids": [id, …]}`` → ``{"events": [wire, …]}``: events by id, including an equivocator's events
  that a peer keeps in quarantine (honest events written before the ban may cite them as parents).

Bad input from a peer is rejected with a reason, counted per peer, never stored; a peer that sent more than
``MAX_REJECTS`` bad events in ``REJECT_WINDOW_MS`` is ignored until the window passes.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict, deque
from collections.abc import Callable, Iterable

from koinon.errors import Equivocation, InvalidEvent
from koinon.identity import Identity
from koinon.ledger import cbor
from koinon.ledger.cuts import GENESIS, Chain, leader
from koinon.ledger.event import MAX_PARENTS as EVENT_MAX_PARENTS
from koinon.ledger.event import Event
from koinon.ledger.merkle import leaf_hash
from koinon.ledger.store import LedgerStore

logger = logging.getLogger("koinon.ledger")

PULL_LIMIT = 256
PULL_BYTES = 2 << 20
MAX_PARENTS = 16
MAX_REJECTS = 50
REJECT_WINDOW_MS = 60_000
CONSENSUS_KINDS = ("cut", "cosign")


class LedgerNode:
    def __init__(
        self,
        store: LedgerStore,
        identity: Identity,
        clock_ms: Callable[[], int],
        epoch_ms: int = 2000,
    ) -> None:
        self.store = store
        self.identity = identity
        self.me = identity.member_id
        self.clock_ms = clock_ms
        self.epoch_ms = epoch_ms
        self.chain = Chain(store)
        self.chain.keep_states = 1024  # governance states per cut: the newest heights only (memory stays bounded)
        self.rejects: dict[str, deque[int]] = defaultdict(deque)
        self.reject_reasons: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._lock = threading.RLock()
        self._proposed_epochs: set[int] = set()
        self._cosigned_epochs: set[int] = set()
        for e in store.iter_events():
            self._observe(e)

    # --- authoring ---------------------------------------------------------------------------------------------
    def found(self, name: str, training: dict, rules: dict, founders: list[str] | None = None) -> Event:
        """Create the genesis (charter) event of a new swarm in an empty store; its id is the swarm id."""
        with self._lock:
            if self.store.swarm_id is not None:
                raise InvalidEvent("this ledger already belongs to a swarm")
            body = {"name": name, "founders": sorted(founders or [self.me]), "training": training, "rules": rules}
            event = Event.create(
                self.identity, swarm=b"", seq=1, prev=None, kind="charter", body=body, time_ms=self.clock_ms()
            )
            self._store(event)
            return event

    def append_own(self, kind: str, body: dict, cite: Iterable[str] = ()) -> Event:
        """Sign and store the next event of this member's feed (parents: other authors' newest heads).

        ``cite``: authors whose heads must be among the parents (up to ``event.MAX_PARENTS`` in all), so that
        their events so far come before this one in every canonical order: a ``round`` event cites the signers of
        the certificate it builds on, whose round events the audit needs to see first (docs/ledger.md §8)."""
        with self._lock:
            if self.store.swarm_id is None:
                raise InvalidEvent("no charter yet: found a swarm or sync with one first")
            heads = self.store.heads()
            seq, prev = heads.get(self.me, (0, None))
            banned = self.store.banned()
            others = sorted(((s, i) for a, (s, i) in heads.items() if a != self.me and a not in banned), reverse=True)
            wanted = {heads[a][1] for a in cite if a in heads and a != self.me and a not in banned}
            room = EVENT_MAX_PARENTS - min(len(wanted), EVENT_MAX_PARENTS)
            parents = (
                sorted(wanted)[:EVENT_MAX_PARENTS] + [i for _, i in others[:MAX_PARENTS] if i not in wanted][:room]
            )
            event = Event.create(
                self.identity,
                swarm=self.store.swarm_id,
                seq=seq + 1,
                prev=prev,
                kind=kind,
                body=body,
                time_ms=self.clock_ms(),
                parents=parents,
            )
            self._store(event)
            return event

    def _store(self, event: Event) -> bool:
        added = self.store.append(event)
        if added:
            self._observe(event)
        return added

    def _observe(self, e: Event) -> None:
        self.chain.observe(e)
        if e.author == self.me and e.kind == "cosign":
            self._cosigned_epochs.add(int(e.body["epoch"]))
        if e.author == self.me and e.kind == "cut":
            self._proposed_epochs.add(int(e.body["epoch"]))

    # --- serving -----------------------------------------------------------------------------------------------
    def handle(self, remote: str, request: bytes) -> bytes:
        """Answer a replication request from ``remote``; malformed requests get an error map."""
        try:
            msg = cbor.decode(request)
            op = msg.get("op") if isinstance(msg, dict) else None
        except cbor.NonCanonical as e:
            return cbor.encode({"error": f"malformed request: {e}"})
        if op == "heads":
            heads = {a: [s, i] for a, (s, i) in self.store.heads().items()}
            proofs = [[a, b] for a, b in self.store.banned().values()]
            return cbor.encode({"swarm": self.store.swarm_id or b"", "heads": heads, "proofs": proofs})
        if op == "pull":
            want = msg.get("want")
            if not isinstance(want, list):
                return cbor.encode({"error": "pull needs want = [[author, after_seq], …]"})
            for item in want:
                if not (
                    isinstance(item, list)
                    and len(item) == 2
                    and isinstance(item[0], str)
                    and isinstance(item[1], int)
                    and 0 <= item[1] < 1 << 63
                ):
                    return cbor.encode({"error": "pull needs want = [[author, after_seq], …]"})
            # In our insertion order, which is causal (we stored nothing before its parents): the receiver can
            # store the batch front to back even when the feeds cite each other. Each author's next PULL_LIMIT
            # events contain every one of the batch's first PULL_LIMIT, so merging them by rowid is exact.
            rows = sorted(r for a, after in want[:1024] for r in self.store.rows_after(a, after, PULL_LIMIT))
            out, size = [], 0
            for _, wire in rows[:PULL_LIMIT]:
                if size + len(wire) > PULL_BYTES and out:
                    break
                out.append(wire)
                size += len(wire)
            return cbor.encode({"events": out})
        if op == "get":
            ids = msg.get("ids")
            if not (isinstance(ids, list) and all(isinstance(i, bytes) and len(i) == 32 for i in ids)):
                return cbor.encode({"error": "get needs ids = [32-byte event id, …]"})
            wires = [w for i in ids[:PULL_LIMIT] if (w := self.store.wire_of(i)) is not None]
            return cbor.encode({"events": wires})
        return cbor.encode({"error": f"unknown op {op!r}"})

    # --- pulling -----------------------------------------------------------------------------------------------
    def is_rate_limited(self, remote: str) -> bool:
        window = self.rejects[remote]
        now = self.clock_ms()
        while window and window[0] < now - REJECT_WINDOW_MS:
            window.popleft()
        return len(window) >= MAX_REJECTS

    def _reject(self, remote: str, reason: str) -> None:
        self.rejects[remote].append(self.clock_ms())
        key = reason.split(": ", 1)[-1].strip()[:80]  # "a#2:join: bad signature" → "bad signature"
        self.reject_reasons[remote][key] += 1
        logger.info("rejected input from %s: %s", remote[-8:], reason)

    def sync_with(self, remote: str, call: Callable[[bytes], bytes], rounds: int = 8) -> int:
        """Anti-entropy with one peer: compare heads, pull what we lack in bounded batches, verify and store.
        Returns the number of new events stored. Never raises for bad data from the peer."""
        if self.is_rate_limited(remote):
            return 0
        try:
            reply = cbor.decode(call(cbor.encode({"op": "heads"})))
        except cbor.NonCanonical as e:
            self._reject(remote, f"heads reply: {e}")
            return 0
        except Exception as e:  # the transport failed (peer gone, timeout): no progress, try another peer later
            logger.debug("sync with %s failed: %r", remote[-8:], e)
            return 0
        if not isinstance(reply, dict) or not isinstance(reply.get("heads"), dict):
            self._reject(remote, "heads reply: not a heads map")
            return 0
        for proof in reply.get("proofs", [])[:64] if isinstance(reply.get("proofs"), list) else []:
            self._take_proof(remote, proof)
        added = 0
        if self.store.swarm_id is None:
            added += self._pull(remote, call, [[a, 0] for a in reply["heads"]], genesis_only=True)
        # a head we hold under another id is the other half of an equivocation: fetch it to get the proof
        banned = self.store.banned()
        conflicts = []
        for author, head in reply["heads"].items():
            if (
                isinstance(author, str)
                and author not in banned
                and isinstance(head, list)
                and len(head) == 2
                and isinstance(head[0], int)
                and 1 <= head[0] < 1 << 63
                and isinstance(head[1], bytes)
            ):
                mine_id = self.store.id_at(author, head[0])
                if mine_id is not None and mine_id != head[1]:
                    conflicts.append([author, head[0] - 1])
        if conflicts:
            self._pull(remote, call, conflicts)
        for _ in range(rounds):
            mine = self.store.heads()
            want = []
            for author, head in reply["heads"].items():
                if not (
                    isinstance(author, str) and isinstance(head, list) and len(head) == 2 and isinstance(head[0], int)
                ):
                    self._reject(remote, "heads reply: malformed head")
                    return added
                have = mine.get(author, (0, b""))[0]
                if head[0] > have and author not in self.store.banned():
                    want.append([author, have])
            if not want:
                break
            got = self._pull(remote, call, want)
            added += got
            if got == 0:
                break
        return added

    def _pull(self, remote: str, call: Callable[[bytes], bytes], want: list, genesis_only: bool = False) -> int:
        try:
            reply = cbor.decode(call(cbor.encode({"op": "pull", "want": want})))
        except cbor.NonCanonical as e:
            self._reject(remote, f"pull reply: {e}")
            return 0
        except Exception as e:
            logger.debug("pull from %s failed: %r", remote[-8:], e)
            return 0
        wires = reply.get("events") if isinstance(reply, dict) else None
        if not isinstance(wires, list):
            self._reject(remote, "pull reply: no event list")
            return 0
        pending: list[Event] = []
        for wire in wires[:PULL_LIMIT]:
            try:
                event = Event.from_wire(wire) if isinstance(wire, bytes) else None
            except InvalidEvent as e:
                self._reject(remote, str(e))
                continue
            if event is None:
                self._reject(remote, "pull reply: an event is not bytes")
            elif not genesis_only or event.kind == "charter":
                pending.append(event)
        added = 0
        progress, fetched_parents = True, False
        while pending and progress:  # events may arrive before their parents from other authors
            progress, retry = False, []
            for event in pending:
                with self._lock:
                    try:
                        if self._store(event):
                            added += 1
                        progress = True
                    except Equivocation as e:
                        self._publish_equivocation(*e.proof)
                        progress = True
                    except InvalidEvent as e:
                        if any(x in str(e) for x in ("unknown parent", "seq gap", "in the future")):
                            # not the sender's fault: its parents may come later in this batch, or our clock lags
                            retry.append(event)
                        else:
                            self._reject(remote, str(e))
            pending = retry
            if pending and not progress and not fetched_parents:
                # parents nobody sends in feeds: an equivocator's events, which peers keep only in quarantine
                fetched_parents = True
                missing = sorted({p for e in pending for p in e.parents if not self.store.has(p)})[:PULL_LIMIT]
                for wire in self._get(remote, call, missing):
                    try:
                        self.store.quarantine(Event.from_wire(wire))
                    except InvalidEvent as e:
                        self._reject(remote, str(e))
                progress = True
        return added

    def _get(self, remote: str, call: Callable[[bytes], bytes], ids: list[bytes]) -> list[bytes]:
        try:
            reply = cbor.decode(call(cbor.encode({"op": "get", "ids": ids})))
        except Exception as e:
            logger.debug("get from %s failed: %r", remote[-8:], e)
            return []
        wires = reply.get("events") if isinstance(reply, dict) else None
        return [w for w in wires[:PULL_LIMIT] if isinstance(w, bytes)] if isinstance(wires, list) else []

    def _take_proof(self, remote: str, proof: object) -> None:
        if not (isinstance(proof, list) and len(proof) == 2 and all(isinstance(x, bytes) for x in proof)):
            self._reject(remote, "malformed equivocation proof")
            return
        try:
            if Event.from_wire(proof[0]).author in self.store.banned():
                return
            self.store.record_equivocation_proof(proof[0], proof[1])
        except InvalidEvent as e:
            self._reject(remote, f"equivocation proof: {e}")
            return
        self._publish_equivocation(*sorted(proof))

    def _publish_equivocation(self, a: bytes, b: bytes) -> None:
        """Put the proof on our own feed so every audit sees why the author is excluded."""
        if self.store.swarm_id is None:
            return
        author = Event.from_wire(a).author
        for e in self.store.iter_events(kind="equivocation", author=self.me):
            if Event.from_wire(e.body["a"]).author == author:
                return
        self.append_own("equivocation", {"a": a, "b": b})

    # --- consensus ---------------------------------------------------------------------------------------------
    def epoch(self) -> int:
        return self.clock_ms() // self.epoch_ms

    def tick(self, theta: bytes | None = None) -> None:
        """Propose a cut if this member leads the current epoch and there is something to finalise; cosign the
        current epoch's valid proposal. Call it often (every ``epoch_ms / 4`` or so)."""
        if self.store.swarm_id is None:
            return
        with self._lock:
            epoch = self.epoch()
            tips = self.chain.longest_notarized_tips()
            if epoch not in self._proposed_epochs:
                self._maybe_propose(epoch, tips[0], theta)
            if epoch not in self._cosigned_epochs:
                self._maybe_cosign(epoch, set(tips))

    def _pending_content(self, parent: bytes) -> bool:
        """True if events other than cuts and cosigns exist beyond the last final cut (so they need finalising)."""
        final = self.chain.final_cuts()
        covered = self.chain.covered(final[-1].id if final else GENESIS)
        for author, (seq, _) in self.store.heads().items():
            if seq > covered.get(author, 0):
                for e in self.store.events_after(author, covered.get(author, 0), seq - covered.get(author, 0)):
                    if e.kind not in CONSENSUS_KINDS:
                        return True
        return False

    def _maybe_propose(self, epoch: int, parent: bytes, theta: bytes | None) -> None:
        members = self.chain.members(parent)
        if not members or self.me not in members or leader(self.store.swarm_id, epoch, members) != self.me:
            return
        if not self._pending_content(parent):
            return
        banned = self.store.banned()
        frontier = {a: h for a, h in self.store.heads().items() if a not in banned}
        # an equivocator's feed stays where the parent left it: it must not move backwards, nor forwards
        parent_frontier = self.chain.frontier(parent)
        frontier.update({a: parent_frontier[a] for a in banned if a in parent_frontier})
        try:
            log_root, size = self.chain.log_after(parent, frontier)
        except (KeyError, ValueError) as e:
            logger.debug("cannot propose on %s yet: %s", parent.hex()[:8], e)
            return
        index = 0 if parent == GENESIS else self.chain.cuts[parent].height
        body = {
            "index": index,
            "epoch": epoch,
            "frontier": {a: [s, h] for a, (s, h) in frontier.items()},
            "prev": None if parent == GENESIS else parent,
            "root": log_root,
            "size": size,
            "theta": theta,
        }
        self._proposed_epochs.add(epoch)
        self.append_own("cut", body)

    def _maybe_cosign(self, epoch: int, tips: set[bytes]) -> None:
        for cut in sorted(self.chain.cuts.values(), key=lambda c: c.id):
            if cut.epoch != epoch or cut.parent not in tips:
                continue
            eligible = self.chain.eligible(cut.id)
            if (
                not eligible
                or self.me not in eligible
                or cut.event.author != leader(self.store.swarm_id, epoch, eligible)
            ):
                continue
            try:
                self.chain.check_cut(cut.event)
            except (KeyError, ValueError) as e:
                logger.debug("not cosigning %s: %s", cut.event.short(), e)
                continue
            self._cosigned_epochs.add(epoch)
            self.append_own("cosign", {"epoch": epoch, "cut": cut.id})
            return

    # --- reading -----------------------------------------------------------------------------------------------
    def final_log(self) -> tuple[list[bytes], list[bytes], Event | None]:
        """(event ids, leaf hashes, last final cut) of the total order."""
        ids, _, _, cut = self.chain.final_log()
        return ids, [leaf_hash(e.wire) for e in map(self.store.get, ids)], cut
