"""Audit: replay a ledger from genesis, verify everything and re-derive its state (DESIGN §6, ``koinon audit``).

:func:`audit` takes event wires (an export, or the rows of a peer's ``ledger.sqlite``) and trusts nothing else:

1. **Replay** into a fresh in-memory :class:`~koinon.ledger.store.LedgerStore`, in the given order, so each event
   passes exactly the store's checks: canonical encoding, swarm id, signature, kind and body schema, ``seq``/``prev``
   chain link, known parents. (The store's clock is set one day past the newest event, so old ledgers do not fail
   the "not in the future" rule.) A duplicate is an error; two different events with one ``(author, seq)`` are an
   equivocation: recorded, reported, and the author's later events are excluded, as a live store does.
2. **Consensus**: a :class:`~koinon.ledger.cuts.Chain` recomputes every notarization and the Streamlet finality.
   Every cut proposal is recomputed (index, log root and size, as ``LedgerNode.check_cut``) and must come from
   its epoch's leader; every cosign must be by an eligible member, name its cut's epoch, and be its author's only
   vote in that epoch; every equivocation event must carry a valid proof.
3. **Log**: the total order through the last final cut is rebuilt and its RFC 9162 Merkle root must equal the
   root and size that cut signed.
4. **State**: members (charter founders, + joins, − leaves, − equivocators), counts, and the **θ lineage**: the
   final round events, in the final order, go through the certificate rule (:class:`~koinon.swarm.rounds.RoundChain`,
   via :mod:`koinon.ledger.lineage`). A final round event for a height h ≥ 2 whose ``prev_theta`` is not the θ the
   final events before it certified at h − 1 is a lineage break, and fails the audit. The report gives the
   certified head, the height through each final cut, and how many final round events agree with no certificate
   (allowed: a group that split, an attempt that was not certified).

Signatures are the largest single cost of a replay. When the store can be told to skip them
(``LedgerStore.append(…, verify_signatures=False)``; detected at import), :func:`verify_signatures` checks them first
on every core and the replay skips them; otherwise the store checks each one, on one core.

The first problem, by position in the input, raises :class:`~koinon.errors.AuditFailure` naming that event
("event #17 (…abcd1234 seq 5, round): bad signature"); the exception's ``index`` is its 0-based position.
"""

from __future__ import annotations

import inspect
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context

from koinon.errors import AuditFailure, Equivocation, InvalidEvent
from koinon.ledger import cbor
from koinon.ledger.cuts import GENESIS, Chain, leader
from koinon.ledger.event import Event, verify_signature_of
from koinon.ledger.export import iter_store_wires, store_quarantine
from koinon.ledger.lineage import break_reason, certificate_dict, replay_final
from koinon.ledger.store import LedgerStore, check_equivocation_proof

DAY_MS = 86_400_000
PARALLEL_MIN_EVENTS = 4000  # below this, starting worker processes costs more than the signatures
CHUNK = 1000

# Pre-verifying signatures in worker processes only pays if the replay store can then skip its own check.
_STORE_SKIPS_SIGNATURES = "verify_signatures" in inspect.signature(LedgerStore.append).parameters


@dataclass
class AuditReport:
    swarm: str  # hex swarm id (the charter's id)
    name: str  # the charter's swarm name
    events: int
    final_events: int
    final_cut: dict | None  # {index, epoch, size, root, id, author} of the last final cut
    log_root: str  # hex RFC 9162 root of the total order (equals the final cut's root)
    members: list[str]  # members at the last final cut
    # one per round event, final ones first in total order: {position, final, round (the author's attempt), height,
    # author, prev_theta, theta, state, participants (contributors), samples, certified (agrees with a final
    # certificate)}
    rounds: list[dict]
    equivocators: list[str]
    kinds: dict[str, int]
    founders: list[str] = field(default_factory=list)
    cuts: dict[str, int] = field(default_factory=dict)  # proposed, checked, notarized, final
    excluded: int = 0  # events of equivocators refused after their equivocation
    # always empty in a returned report: a lineage break fails the audit (the AuditFailure carries the list as
    # ``lineage_breaks``); kept for callers that check it
    lineage_breaks: list[dict] = field(default_factory=list)
    # the governance state after the last final cut: proposals by state, decisions, the configuration in force,
    # and final round events whose configuration hash is not the one in force at the cut they name
    governance: dict = field(default_factory=dict)
    height: int = 0  # the height the final log certifies
    head: dict | None = None  # its certificate: {height, prev_theta, theta, state, contributors, signers, electorate}
    uncertified: int = 0  # final round events that agree with no certificate (allowed: a split group, a late retry)
    cut_heights: list[int] = field(default_factory=list)  # the height certified through each final cut
    min_contributors: int = 0  # k, the charter's rule

    def summary(self) -> str:
        def tail(member: str) -> str:
            return "…" + member[-8:]

        pending = self.events - self.final_events - self.excluded
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.kinds.items(), key=lambda kv: (-kv[1], kv[0])))
        lines = [
            "ledger audit: OK",
            f"swarm         {self.swarm} ({self.name!r})",
            f"events        {self.events}: {self.final_events} final, {pending} pending"
            + (f", {self.excluded} excluded (equivocators)" if self.excluded else "")
            + "; every signature, link, kind and body verifies",
            f"kinds         {kinds}",
            f"cuts          {self.cuts.get('proposed', 0)} proposed, {self.cuts.get('checked', 0)} recomputed, "
            f"{self.cuts.get('notarized', 0)} notarized, {self.cuts.get('final', 0)} final",
        ]
        if self.final_cut:
            c = self.final_cut
            lines.append(
                f"final cut     #{c['index']} (epoch {c['epoch']}, by {tail(c['author'])}, event {c['id'][:16]}): "
                f"size {c['size']}, root {c['root'][:16]}…"
            )
            lines.append(f"log root      {self.log_root} over {self.final_events} events = the final cut's root")
        else:
            lines.append("final cut     none yet (only the charter is final)")
            lines.append(f"log root      {self.log_root} over {self.final_events} event")
        founders = set(self.founders)
        listed = ", ".join(tail(m) + (" (founder)" if m in founders else "") for m in self.members)
        lines.append(f"members       {len(self.members)}: {listed}")
        lines.append(f"equivocators  {', '.join(tail(m) for m in self.equivocators) if self.equivocators else 'none'}")
        final_rounds = [r for r in self.rounds if r["final"]]
        if self.head:
            c = self.head
            lines.append(
                f"rounds        height {self.height} certified: θ {c['theta'][:16]}… (state {c['state'][:12]}…), "
                f"signed by {len(c['signers'])} of {len(c['electorate'])} electors, {len(c['contributors'])} "
                f"contributor(s); k = {self.min_contributors}"
            )
        else:
            lines.append(f"rounds        no height certified yet; k = {self.min_contributors}")
        if final_rounds:
            attempts = sorted({r["round"] for r in final_rounds})
            lines.append(
                f"              {len(final_rounds)} final round events (attempts {attempts[0]}…{attempts[-1]}), "
                f"{self.uncertified} agree with no certificate"
            )
        if len(self.rounds) > len(final_rounds):
            lines.append(f"              {len(self.rounds) - len(final_rounds)} round events pending")
        if final_rounds:
            lines.append(
                "θ lineage     unbroken: every final round event for a height h ≥ 2 starts from the θ certified at "
                "h − 1 before it"
            )
        g = self.governance
        if g:
            states = ", ".join(f"{k} {n}" for k, n in sorted(g["proposals"].items())) or "none"
            lines.append(
                f"governance    proposals: {states}; {len(g['decisions'])} decision(s) executed; "
                f"configuration in force {str(g['config'])[:16]}…"
            )
            if g["config_mismatches"]:
                for m in g["config_mismatches"]:
                    lines.append(
                        f"              height {m['height']} (attempt {m['round']}) by {tail(m['author'])} claims "
                        f"configuration {m['claimed'][:12]}… but cut #{m['gov']} has {str(m['in_force'])[:12]}… in force"
                    )
            elif final_rounds:
                lines.append("              every final round trained under the configuration in force at its cut")
        return "\n".join(lines)


# --- naming events in failures ----------------------------------------------------------------------------------
def _header(wire: object) -> tuple[str | None, int | None, str | None]:
    """(author, seq, kind) of an event, as far as its bytes parse."""
    try:
        raw = cbor.decode(wire) if isinstance(wire, (bytes, bytearray)) else None
    except cbor.NonCanonical:
        return None, None, None
    if not isinstance(raw, dict):
        return None, None, None
    author, seq, kind = raw.get("author"), raw.get("seq"), raw.get("kind")
    return (
        author if isinstance(author, str) else None,
        seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
        kind if isinstance(kind, str) else None,
    )


class _Namer:
    def __init__(self, wires: Sequence[object], names: Sequence[str] | None) -> None:
        self.wires, self.names = wires, names

    def __call__(self, index: int) -> str:
        author, seq, kind = _header(self.wires[index])
        who = []
        if author is not None:
            who.append(f"…{author[-8:]}")
        if seq is not None:
            who.append(f"seq {seq}")
        what = " ".join(who) if who else "unparseable"
        if kind is not None:
            what += f", {kind}"
        if self.names is not None:
            what = f"{self.names[index]}: {what}"
        return f"event #{index + 1} ({what})"

    def failure(self, index: int, reason: str) -> AuditFailure:
        error = AuditFailure(f"{self(index)}: {reason}")
        error.index = index  # type: ignore[attr-defined]
        return error


def _reason(error: Exception, e: Event) -> str:
    """The store's message without the event's own short name (the audit names the event already)."""
    return str(error).replace(f"{e.short()}: ", "").replace(f" on {e.short()}", "")


# --- signatures in parallel ----------------------------------------------------------------------------------------
def _verify_chunk(wires: list[bytes]) -> list[bool]:
    """True for each wire that parses and carries its author's valid signature (runs in a worker process)."""
    out = []
    for wire in wires:
        try:
            verify_signature_of(Event.from_wire(wire))
        except InvalidEvent:
            out.append(False)
        else:
            out.append(True)
    return out


def verify_signatures(wires: Sequence[bytes], workers: int | None = None) -> list[bool]:
    """Check every signature, on ``workers`` processes (default: every CPU core); True where it verifies."""
    workers = workers or os.cpu_count() or 1
    chunks = [list(wires[i : i + CHUNK]) for i in range(0, len(wires), CHUNK)]
    if workers < 2 or len(chunks) < 2:
        return [ok for chunk in chunks for ok in _verify_chunk(chunk)]
    # spawn, not fork: the caller may have threads (a running CLI, a test runner), and fork would copy their locks.
    # Spawn re-imports the caller's main script; where that is impossible (no `if __name__ == "__main__"` guard, a
    # sandbox without processes) the pool breaks, and one core does the work instead.
    try:
        with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=get_context("spawn")) as pool:
            return [ok for result in pool.map(_verify_chunk, chunks) for ok in result]
    except (BrokenProcessPool, OSError, RuntimeError):
        return [ok for chunk in chunks for ok in _verify_chunk(chunk)]


# --- the audit --------------------------------------------------------------------------------------------------------
class _ReplayStore(LedgerStore):
    """An in-memory store whose reads come from the events it accepted, already parsed.

    Appends go through :meth:`LedgerStore.append` unchanged (every check is the store's own); only ``get`` and
    ``events_after``, which the chain calls for every cut, skip re-parsing the stored bytes."""

    def __init__(self, clock) -> None:
        super().__init__(":memory:", clock=clock)
        self._by_id: dict[bytes, Event] = {}
        self._feeds: dict[str, list[Event]] = {}  # the store keeps seq = 1, 2, … per author: index = seq − 1

    def append(self, event: Event, **options) -> bool:
        added = super().append(event, **options)
        if added:
            self._by_id[event.id] = event
            self._feeds.setdefault(event.author, []).append(event)
        return added

    def get(self, event_id: bytes) -> Event | None:
        return self._by_id.get(event_id)

    def events_after(self, author: str, after_seq: int, limit: int) -> list[Event]:
        return self._feeds.get(author, [])[after_seq : after_seq + limit]


def _check_equivocation_proof(e: Event, swarm: bytes) -> str:
    """The equivocator named by an ``equivocation`` event; ValueError unless its proof holds."""
    try:
        return check_equivocation_proof(e.body["a"], e.body["b"], swarm).author
    except InvalidEvent as error:
        raise ValueError(str(error)) from None


def _members(chain: Chain, cut_id: bytes) -> frozenset[str] | None:
    """Chain.members, or None where an ``equivocation`` body does not parse (reported at that event instead)."""
    try:
        return chain.members(cut_id)
    except InvalidEvent:
        return None


def _seed_quarantine(store: LedgerStore, wires: Sequence[bytes]) -> set[str]:
    """Let honest events cite an equivocator's events (kept out of the ledger) as parents; return their authors."""
    authors = set()
    for index, wire in enumerate(wires):
        try:
            e = Event.from_wire(bytes(wire))
            verify_signature_of(e)
        except (InvalidEvent, TypeError) as error:
            raise AuditFailure(f"quarantined event #{index + 1}: {error}") from None
        store._db.execute("INSERT OR IGNORE INTO quarantine (id, wire) VALUES (?, ?)", (e.id, e.wire))
        authors.add(e.author)
    return authors


def audit_store_file(path) -> AuditReport:
    """Audit a peer's ``ledger.sqlite`` row by row (insertion order), checking each stored id against its event."""
    rows = list(iter_store_wires(path))
    return audit(
        [wire for _, _, wire in rows],
        source_names=[f"row {rowid}" for rowid, _, _ in rows],
        claimed_ids=[event_id for _, event_id, _ in rows],
        quarantine=store_quarantine(path),
    )


def audit(
    wires: Iterable[bytes],
    *,
    source_names: Sequence[str] | None = None,
    expected_swarm: bytes | None = None,
    claimed_ids: Sequence[bytes] | None = None,
    workers: int | None = None,
    quarantine: Sequence[bytes] = (),
) -> AuditReport:
    """Replay ``wires`` from genesis and verify everything (see the module docstring).

    ``source_names`` label each input in messages (e.g. "row 23"); ``expected_swarm`` is the swarm id the source
    claims (an export's header); ``claimed_ids`` are ids stored beside the wires, which must match their hashes.
    Returns the report; raises AuditFailure naming the first bad event."""
    wires = list(wires)
    names = list(source_names) if source_names is not None else None
    if names is not None and len(names) != len(wires):
        raise ValueError("source_names must name every event")
    name = _Namer(wires, names)
    if not wires:
        raise AuditFailure("the ledger is empty: it has no charter")

    # 1. parse everything (to set the replay clock); remember the first event that does not parse
    events: list[Event] = []
    stop: tuple[int, str] | None = None  # (index, reason) of the first replay failure
    for i, wire in enumerate(wires):
        try:
            if not isinstance(wire, (bytes, bytearray)):
                raise InvalidEvent("not a byte string")
            e = Event.from_wire(bytes(wire))
        except InvalidEvent as error:
            stop = (i, str(error))
            break
        if claimed_ids is not None and claimed_ids[i] != e.id:
            claimed = claimed_ids[i]
            shown = claimed.hex()[:16] if isinstance(claimed, bytes) else repr(claimed)[:20]
            stop = (i, f"stored id {shown} is not the event's hash {e.id.hex()[:16]}")
            break
        events.append(e)

    signature_ok: list[bool] | None = None
    if _STORE_SKIPS_SIGNATURES and len(events) >= PARALLEL_MIN_EVENTS and (workers or os.cpu_count() or 1) > 1:
        signature_ok = verify_signatures([e.wire for e in events], workers)

    # 2. replay through the store's own checks
    newest = max((e.time for e in events), default=0)
    store = _ReplayStore(clock=lambda: (newest + DAY_MS) / 1000)
    quarantined = _seed_quarantine(store, quarantine)
    append = store.append if signature_ok is None else (lambda e: store.append(e, verify_signatures=False))
    chain = Chain(store)
    position: dict[bytes, int] = {}
    equivocators: dict[str, int] = {}  # author → index of the event that proved it
    excluded = 0
    for i, e in enumerate(events):
        if signature_ok is not None and not signature_ok[i]:
            stop = (i, "bad signature")
            break
        if i == 0 and expected_swarm is not None and e.kind == "charter" and e.id != expected_swarm:
            stop = (i, f"the source says swarm {expected_swarm.hex()[:16]}, but this charter's id is {e.id.hex()[:16]}")
            break
        try:
            added = append(e)
        except Equivocation:
            equivocators.setdefault(e.author, i)
            excluded += 1
            continue
        except InvalidEvent as error:
            if e.author in equivocators and "banned" in str(error):
                excluded += 1
                continue
            stop = (i, _reason(error, e))
            break
        if not added:
            stop = (i, f"duplicate of event #{position[e.id] + 1}")
            break
        position[e.id] = i
        chain.observe(e)

    # 3. consensus rules, over what replayed; the first problem by input position wins
    problems: list[tuple[int, str]] = [stop] if stop else []
    swarm = store.swarm_id or b""
    unchecked: set[bytes] = set()
    checked = 0
    for cut in sorted(chain.cuts.values(), key=lambda c: (c.height or len(chain.cuts) + 1, position[c.id])):
        i = position[cut.id]
        try:
            chain.check_cut(cut.event)
            checked += 1
        except KeyError:
            unchecked.add(cut.id)
        except ValueError as error:
            problems.append((i, f"bad cut: {error}"))
            continue
        eligible = _members(chain, cut.parent)
        if eligible is not None:
            if cut.event.author not in eligible:
                problems.append((i, "cut proposed by a member who is not eligible"))
            elif cut.event.author != (lead := leader(swarm, cut.epoch, eligible)):
                problems.append((i, f"cut proposed in epoch {cut.epoch}, which …{lead[-8:]} leads, not its author"))
    votes: dict[tuple[str, int], tuple[bytes, int]] = {}
    for e in events[: stop[0] if stop else len(events)]:
        if e.id not in position:
            continue
        i = position[e.id]
        if e.kind == "cosign":
            epoch, cut_id = int(e.body["epoch"]), e.body["cut"]
            earlier = votes.setdefault((e.author, epoch), (cut_id, i))
            if earlier[0] != cut_id:
                problems.append((i, f"a second cosign in epoch {epoch} (event #{earlier[1] + 1} voted already)"))
            if cut_id in chain.cuts:
                info = chain.cuts[cut_id]
                eligible = _members(chain, info.parent)
                if info.epoch != epoch:
                    problems.append((i, f"cosign for epoch {epoch} names a cut of epoch {info.epoch}"))
                elif eligible is not None and e.author not in eligible:
                    problems.append((i, "cosign by a member who is not eligible for that cut"))
        elif e.kind == "equivocation":
            try:
                equivocators.setdefault(_check_equivocation_proof(e, swarm), i)
            except ValueError as error:
                problems.append((i, str(error)))
    if problems:
        index, reason = min(problems)
        raise name.failure(index, reason)

    unproven = sorted(quarantined - set(equivocators) - set(store.banned()))
    if unproven:
        raise AuditFailure(f"the quarantine holds events of …{unproven[0][-8:]}, who is not a proven equivocator")

    # 4. the final log and its root
    final = chain.final_cuts()
    last = final[-1] if final else None
    for c in final:
        if c.id in unchecked:
            raise name.failure(position[c.id], "final cut covers events missing from the ledger")
    ids, log_root, size, _ = chain.final_log()
    if last is not None and (last.event.body["root"] != log_root or last.event.body["size"] != size):
        raise name.failure(position[last.id], "the final log's root or size differs from the cut's signed values")

    # 5. state, and the θ lineage: the final round events, in final order, through the certificate rule
    by_id = {e.id: e for e in events}
    final_ids = set(ids)
    charter = store.charter()
    lineage = replay_final(ids, by_id, final, charter)
    if lineage.breaks:
        first = lineage.breaks[0]
        more = len(lineage.breaks) - 1
        error = name.failure(
            position[bytes.fromhex(first["id"])],
            break_reason(first) + (f" ({more} more lineage break(s) after it)" if more else ""),
        )
        error.lineage_breaks = lineage.breaks  # type: ignore[attr-defined]
        raise error
    rounds = []
    ordered = [by_id[i] for i in ids] + [e for e in events if e.id in position and e.id not in final_ids]
    for index, e in enumerate(ordered):
        if e.kind != "round":
            continue
        final_event = e.id in final_ids
        rounds.append(
            {
                "position": index if final_event else None,
                "final": final_event,
                "round": int(e.body["round"]),
                "height": int(e.body["height"]),
                "author": e.author,
                "prev_theta": e.body["prev_theta"].hex(),
                "theta": e.body["theta"].hex(),
                "state": e.body["state"].hex(),
                "participants": list(e.body["participants"]),
                "samples": int(e.body["samples"]),
                "certified": final_event and e.id not in lineage.uncertified,
            }
        )
    notarized = sum(1 for c in chain.cuts if chain.notarized(c))
    governance = _governance(chain, [by_id[i] for i in ids])
    members = chain.members(last.id if last else GENESIS) or frozenset()
    return AuditReport(
        swarm=swarm.hex(),
        name=str(charter.body["name"]) if charter else "",
        events=len(wires),
        final_events=len(ids),
        final_cut=None
        if last is None
        else {
            "index": int(last.event.body["index"]),
            "epoch": last.epoch,
            "size": int(last.event.body["size"]),
            "root": last.event.body["root"].hex(),
            "id": last.id.hex(),
            "author": last.event.author,
        },
        log_root=log_root.hex(),
        members=sorted(members),
        rounds=rounds,
        equivocators=sorted(equivocators),
        kinds=dict(Counter(e.kind for e in events if e.id in position)),
        founders=sorted(charter.body["founders"] or [charter.author]) if charter else [],
        cuts={"proposed": len(chain.cuts), "checked": checked, "notarized": notarized, "final": len(final)},
        excluded=excluded,
        lineage_breaks=[],
        governance=governance,
        height=lineage.chain.height if lineage.chain else 0,
        head=certificate_dict(lineage.chain.head) if lineage.chain and lineage.chain.head else None,
        uncertified=len(lineage.uncertified),
        cut_heights=lineage.cut_heights,
        min_contributors=lineage.chain.k if lineage.chain else 0,
    )


def _governance(chain: Chain, final_events: list) -> dict:
    """The final governance state, and every final round event checked against the configuration in force at the
    final cut it names (``gov``; null: the charter's)."""
    state = chain.final_governance()
    if state is None:
        return {}
    mismatches = []
    for e in final_events:
        if e.kind != "round":
            continue
        g = e.body.get("gov")
        at = chain.final_governance(-1 if g is None else int(g))
        in_force = at.config_hash() if at is not None else None
        if at is not None and in_force is not None and in_force != e.body["config"].hex():
            mismatches.append(
                {
                    "round": int(e.body["round"]),
                    "height": int(e.body["height"]),
                    "author": e.author,
                    "gov": g,
                    "claimed": e.body["config"].hex(),
                    "in_force": in_force,
                }
            )
    return {
        "proposals": dict(Counter(p.state for p in state.proposals.values())),
        "decisions": list(state.decisions),
        "config": state.config_hash(),
        "config_mismatches": mismatches,
    }
