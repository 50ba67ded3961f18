"""Many ledger nodes in one process, on the fake network and clock (tests/sim/fakenet.py).

What must hold whatever the delivery order, losses and partitions (docs/ledger.md §5, Streamlet):

- **safety**: after every step, the final logs of all peers are prefixes of one another;
- **convergence**: once healed and quiet, every peer stores the same events and has the same final log and Merkle
  root, and that log holds every event that is not a cut or a cosign;
- **liveness needs ≥ 2/3 online**: with fewer, nothing new becomes final; after healing, finality resumes;
- **determinism**: the final log is a function of the stored events, whatever order they arrived in;
- **equivocation** is detected, proven and punished everywhere.
"""

from __future__ import annotations

import hashlib
import random

import pytest

from koinon.errors import InvalidEvent
from koinon.ledger import cbor
from koinon.ledger.audit import audit
from koinon.ledger.event import Event
from koinon.ledger.merkle import root
from koinon.ledger.node import CONSENSUS_KINDS, LedgerNode
from koinon.ledger.store import LedgerStore
from tests.sim.fakenet import FakeClock, FakeNetwork, identity_from_seed

EPOCH_MS = 1000
STEP_MS = 100  # ten gossip steps per epoch: a cut and its cosigns cross 50 peers (fan-out 2) well within one epoch


def h(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def commit_body(member: str, n: int) -> dict:
    return {
        "round": n,
        "theta": h(f"theta{n}"),
        "config": h("config"),
        "data": [h("data")],
        "group": [member],
        "shards": h(f"shards{n % 7}"),
        "seed": h(f"seed{member}{n}"),
        "step0": 4 * n,
        "steps": 4,
        "samples": 16,
        "trace": [h(f"p{member}{n}"), h(f"m{member}{n}")],
        "delta": h(f"delta{member}{n}"),
    }


def round_body(n: int, participants: list[str]) -> dict:
    return {
        "round": n,
        "height": n,
        "theta": h(f"theta{n + 1}"),
        "prev_theta": h(f"theta{n}"),
        "state": h(f"state{n + 1}"),
        "participants": sorted(participants),
        "samples": 64 * len(participants),
        "bytes": 1 << 20,
        "config": h("config"),
        "gov": None,
    }


def final_ids(node: LedgerNode) -> list[bytes]:
    """The ids of ``node``'s final log. Read from the chain: LedgerNode.final_log() also re-reads every event to
    hash its leaf, too slow for a check after every step. A node still waiting for the charter has nothing final
    (final_log() raises there: see the xfail test below)."""
    return node.chain.final_log()[0] if node.store.swarm_id is not None else []


def stored_ids(node: LedgerNode) -> set[bytes]:
    return {e.id for e in node.store.iter_events()}


def assert_prefix_consistent(nodes: list[LedgerNode]) -> None:
    """Safety: the final logs form one chain under the prefix order (no two peers finalised different things)."""
    logs = sorted((final_ids(n) for n in nodes), key=len)
    for shorter, longer in zip(logs, logs[1:], strict=False):
        assert longer[: len(shorter)] == shorter, "two peers finalised conflicting logs"


def assert_causal(node: LedgerNode, ids: list[bytes]) -> None:
    """Every event of the total order comes after its prev and its parents."""
    position = {i: n for n, i in enumerate(ids)}
    assert len(position) == len(ids), "an event appears twice in the final log"
    for n, event_id in enumerate(ids):
        e = node.store.get(event_id)
        for dep in (*e.parents, *([e.prev] if e.prev else [])):
            assert position.get(dep, n) < n, f"{e.short()} is ordered before one of its causes"


class Swarm:
    """A founder and joiners on one fake network. Each step: advance the clock, tick all, gossip, check safety."""

    def __init__(self, size: int, seed: int, drop: float, fanout: int, workload_seed: int = 0) -> None:
        self.clock = FakeClock()
        self.net = FakeNetwork(self.clock, seed=seed, drop=drop)
        self.rng = random.Random(workload_seed)  # who writes what when: apart from the network's choices
        self.fanout = fanout
        self.nodes = [self.net.add_node(identity_from_seed(f"peer{i}"), EPOCH_MS) for i in range(size)]
        self.founder = self.nodes[0]
        self.authored: set[bytes] = set()  # every non-consensus event the workload created
        self.steps = 0
        self.trace: list[tuple[int, ...]] = []  # every peer's final log size, after each step

    def by_id(self, member: str) -> LedgerNode:
        return self.net.nodes[member]

    def append(self, node: LedgerNode, kind: str, body: dict) -> Event:
        event = node.append_own(kind, body)
        self.authored.add(event.id)
        return event

    def step(self) -> None:
        self.net.step(STEP_MS, self.fanout)
        self.steps += 1
        assert_prefix_consistent(self.nodes)
        self.trace.append(tuple(len(final_ids(n)) for n in self.nodes))

    def bootstrap(
        self,
        max_steps: int = 60,
        rules: dict | None = None,
        founders: list[str] | None = None,
        training: dict | None = None,
    ) -> None:
        """Found the swarm (charter ``rules``, ``founders`` and ``training``: defaults for the ledger alone); every
        peer joins as soon as the charter reached it."""
        charter = self.founder.found(
            "sim", training or {"model": "tiny"}, rules or {"epoch_ms": EPOCH_MS}, founders=founders
        )
        self.authored.add(charter.id)
        joined = {self.founder.me}
        for _ in range(max_steps):
            self.step()
            for node in self.nodes:
                if node.me not in joined and node.store.swarm_id is not None:
                    self.append(node, "join", {"maddrs": []})
                    joined.add(node.me)
            if len(joined) == len(self.nodes):
                return
        raise AssertionError(f"only {len(joined)} of {len(self.nodes)} peers got the charter")

    def workload(self, steps: int, make, nodes: list[LedgerNode] | None = None) -> None:
        """Over ``steps`` steps, each of ``nodes`` appends one event ``make(node, i)`` at a random step i."""
        when: dict[int, list[LedgerNode]] = {}
        for node in nodes or self.nodes:
            when.setdefault(self.rng.randrange(steps), []).append(node)
        for i in range(steps):
            for node in when.get(i, []):
                self.append(node, *make(node, i))
            self.step()

    def converged(self) -> bool:
        first = final_ids(self.nodes[0])
        return self.authored <= set(first) and all(final_ids(n) == first for n in self.nodes[1:])

    def run_until_converged(self, max_steps: int) -> int:
        """Step until every peer has the same final log holding everything authored; then until every peer stores
        the same events (the last cosigns arrive after the log they finalise). Returns the steps taken."""
        for i in range(max_steps):
            self.step()
            if i % 5 == 4 and self.converged():
                break
        else:
            sizes = sorted({len(final_ids(n)) for n in self.nodes})
            raise AssertionError(f"no common final log after {max_steps} steps (sizes {sizes})")
        for j in range(max_steps):
            # equal heads mean equal stores: each feed is hash-linked (assert_converged compares the events)
            if all(n.store.heads() == self.nodes[0].store.heads() for n in self.nodes):
                return i + j + 1
            self.step()
        raise AssertionError(f"peers store different events {max_steps} steps after their final logs agreed")

    def assert_converged(self) -> None:
        ids, leaves, last_cut = self.nodes[0].final_log()
        assert self.authored <= set(ids)
        assert all(e.kind in CONSENSUS_KINDS for e in self.nodes[0].store.iter_events() if e.id not in ids)
        assert_causal(self.nodes[0], ids)
        assert last_cut is not None and last_cut.body["root"] == root(leaves) and last_cut.body["size"] == len(leaves)
        stored = stored_ids(self.nodes[0])
        for node in self.nodes:
            assert stored_ids(node) == stored
            assert node.final_log() == (ids, leaves, last_cut)
            assert root(node.final_log()[1]) == root(leaves)
            assert not any(node.rejects.values()), f"honest traffic rejected: {dict(node.reject_reasons)}"


# --- 50 peers, losses, a partition ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_fifty_peers_lossy_partitioned_network_converge_safely():
    swarm = Swarm(50, seed=11, drop=0.1, fanout=2)
    swarm.bootstrap()
    swarm.workload(10, lambda node, step: ("commit", commit_body(node.me, step)))
    swarm.run_until_converged(100)  # all 50 joins are final: everyone is eligible, a quorum is 34
    assert len(swarm.founder.chain.members(swarm.founder.final_log()[2].id)) == 50

    members = [n.me for n in swarm.nodes]
    minority = swarm.rng.sample(members, 12)  # 38 of 50 ≥ 2/3 on the other side
    majority = [m for m in members if m not in minority]
    swarm.net.partition(minority)
    before = {m: final_ids(swarm.by_id(m)) for m in members}
    swarm.workload(30, lambda node, step: ("round", round_body(step, [node.me])))
    for _ in range(100):  # the majority must finalise again (a leader on its side three epochs running)
        if all(len(final_ids(swarm.by_id(m))) > len(before[m]) for m in majority):
            break
        swarm.step()
    else:
        raise AssertionError("the 38-peer side of the partition finalised nothing new")
    for m in minority:  # 12 of 50 cannot notarize anything
        assert final_ids(swarm.by_id(m)) == before[m]
    assert swarm.net.stats["unreachable"] > 0 and swarm.net.stats["dropped"] > 0

    swarm.net.heal()
    swarm.run_until_converged(200)
    swarm.assert_converged()


def test_final_log_before_the_charter_is_empty():
    net = FakeNetwork(FakeClock(), seed=0)
    assert net.add_node(identity_from_seed("newcomer"), EPOCH_MS).final_log() == ([], [], None)


# --- determinism --------------------------------------------------------------------------------------------------


def small_run(seed: int) -> Swarm:
    """Ten peers, 10% losses, a 7/3 partition that heals."""
    swarm = Swarm(10, seed=seed, drop=0.1, fanout=2)
    swarm.bootstrap()
    swarm.workload(20, lambda node, n: ("commit", commit_body(node.me, n)))
    swarm.net.partition([n.me for n in swarm.nodes[7:]])
    swarm.workload(20, lambda node, n: ("round", round_body(n, [node.me])))
    swarm.net.heal()
    swarm.run_until_converged(300)
    swarm.assert_converged()
    return swarm


def logical_content(node: LedgerNode, ids: list[bytes]) -> dict[str, list[tuple[str, bytes]]]:
    """What each author said in a log, in its feed's order, apart from when it wrote it, what it had seen (parents)
    and where its cuts and cosigns fell between (seq)."""
    feeds: dict[str, list[tuple[int, str, bytes]]] = {}
    for e in map(node.store.get, ids):
        if e.kind not in CONSENSUS_KINDS:
            feeds.setdefault(e.author, []).append((e.seq, e.kind, cbor.encode(e.body)))
    return {author: [(kind, body) for _, kind, body in sorted(feed)] for author, feed in feeds.items()}


def test_same_seed_same_run():
    a, b = small_run(seed=5), small_run(seed=5)
    assert a.trace == b.trace
    assert a.net.stats == b.net.stats
    assert a.founder.final_log() == b.founder.final_log()
    assert stored_ids(a.founder) == stored_ids(b.founder)


def test_other_delivery_order_same_content():
    """Another seed delivers in another order. Each run converges on one log holding every authored event, and the
    two logs say the same things; they are not the same bytes, by design: an event's parents record what its author
    had seen (so its id depends on delivery), and cut proposals close different frontiers at different times."""
    a, b = small_run(seed=5), small_run(seed=6)
    assert a.trace != b.trace  # the runs did differ
    ids_a, ids_b = final_ids(a.founder), final_ids(b.founder)
    assert logical_content(a.founder, ids_a) == logical_content(b.founder, ids_b)
    assert ids_a[0] == ids_b[0]  # the same charter: the same swarm
    assert ids_a != ids_b


def test_final_log_is_a_function_of_the_stored_events():
    """The same events stored in different orders (any order a store accepts) give the same final log and root."""
    swarm = small_run(seed=8)
    events = list(swarm.founder.store.iter_events())
    expected = swarm.founder.final_log()
    rng = random.Random(8)
    for trial in range(3):
        store = LedgerStore(":memory:", clock=swarm.clock.now_s)
        for e in random_causal_order(events, rng):
            store.append(e)
        node = LedgerNode(store, identity_from_seed(f"auditor{trial}"), swarm.clock.now_ms, epoch_ms=EPOCH_MS)
        assert node.final_log() == expected


def random_causal_order(events: list[Event], rng: random.Random) -> list[Event]:
    """A random topological order: the charter first, every event after its prev and parents."""
    by_id = {e.id: e for e in events}
    deps = {e.id: {d for d in (*e.parents, *([e.prev] if e.prev else [])) if d in by_id} for e in events}
    charter = next(e.id for e in events if e.kind == "charter")
    out, done = [by_id[charter]], {charter}
    while len(out) < len(events):
        ready = sorted(i for i in by_id if i not in done and deps[i] <= done)
        pick = rng.choice(ready)
        out.append(by_id[pick])
        done.add(pick)
    return out


# --- liveness needs 2/3 ------------------------------------------------------------------------------------------


def three_members(rules: dict | None = None, founders: bool = False) -> Swarm:
    """Three members, all joins final; ``founders``: all three found the swarm (else the first alone does)."""
    swarm = Swarm(3, seed=21, drop=0.0, fanout=2)
    swarm.bootstrap(rules=rules, founders=[n.me for n in swarm.nodes] if founders else None)
    swarm.run_until_converged(200)
    assert len(swarm.founder.chain.members(swarm.founder.final_log()[2].id)) == 3
    return swarm


def test_no_finality_with_fewer_than_two_thirds_online_then_resumes():
    swarm = three_members()
    founder, a, b = swarm.nodes
    swarm.net.partition([founder.me], [a.me], [b.me])  # nobody reaches anybody: each side holds 1/3
    before = [final_ids(n) for n in swarm.nodes]
    cuts_before = sum(len(list(n.store.iter_events(kind="cut", author=n.me))) for n in swarm.nodes)
    for node in swarm.nodes:
        swarm.append(node, "commit", commit_body(node.me, 1))
    for _ in range(100):  # ten epochs
        swarm.step()
    assert [final_ids(n) for n in swarm.nodes] == before
    # leaders did propose (each side leads about a third of the epochs), nobody could notarize
    assert sum(len(list(n.store.iter_events(kind="cut", author=n.me))) for n in swarm.nodes) > cuts_before
    swarm.net.heal()
    swarm.run_until_converged(200)
    swarm.assert_converged()


def test_two_of_three_are_a_quorum():
    """2/3 is enough (3·2 ≥ 2·3): the two members cut off from the founder go on finalising; the founder, alone, does
    not; after healing it catches up on their log."""
    swarm = three_members()
    founder, a, b = swarm.nodes
    swarm.net.partition([founder.me])
    before = final_ids(founder)
    for node in swarm.nodes:
        swarm.append(node, "commit", commit_body(node.me, 1))
    for _ in range(200):
        swarm.step()
        if all(set(final_ids(n)) >= {e.id for e in n.store.iter_events(author=n.me, kind="commit")} for n in (a, b)):
            break
    else:
        raise AssertionError("the two-member side finalised nothing")
    assert final_ids(founder) == before
    swarm.net.heal()
    swarm.run_until_converged(200)
    swarm.assert_converged()


# --- equivocation -----------------------------------------------------------------------------------------------


def split_equivocation(seed: int = 3) -> tuple[Swarm, LedgerNode, Event, Event]:
    """Seven members, all joins final. Then the seventh, mallory, leaves the network and signs two different
    events with the same seq: A goes into the stores of half the honest peers, B into the other half's."""
    swarm = Swarm(7, seed=seed, drop=0.1, fanout=2)
    swarm.bootstrap()
    swarm.run_until_converged(200)
    mallory = swarm.nodes.pop()
    del swarm.net.nodes[mallory.me]
    seq, head = mallory.store.heads()[mallory.me]
    a, b = (
        Event.create(
            mallory.identity,
            swarm=mallory.store.swarm_id,
            seq=seq + 1,
            prev=head,
            kind="commit",
            body=commit_body(mallory.me, n),
            time_ms=swarm.clock.now_ms(),
        )
        for n in (1, 2)
    )
    for i, node in enumerate(swarm.nodes):
        assert node._store(a if i % 2 == 0 else b)
    return swarm, mallory, a, b


def serve_other_version(node: LedgerNode, mallory: LedgerNode, other: Event) -> None:
    """Mallory's own server answers ``node``'s pull with the version ``node`` does not hold."""

    def call(request: bytes) -> bytes:
        if cbor.decode(request)["op"] == "heads":
            return cbor.encode({"swarm": mallory.store.swarm_id, "heads": {mallory.me: [other.seq + 1, h("x")]}})
        return cbor.encode({"events": [other.wire]})

    node.sync_with(mallory.me, call)
    assert mallory.me in node.store.banned()


def assert_equivocation_proven(swarm: Swarm, mallory: LedgerNode, a: Event, b: Event) -> None:
    for node in swarm.nodes:
        assert mallory.me in node.store.banned()
        proofs = [e.body for e in node.store.iter_events(kind="equivocation")]
        assert proofs, f"{node.identity.short_id} stores no equivocation event"
        for proof in proofs:
            assert sorted([proof["a"], proof["b"]]) == sorted([a.wire, b.wire])
            assert LedgerStore(":memory:").record_equivocation_proof(proof["a"], proof["b"]) == mallory.me
        with pytest.raises(InvalidEvent, match="banned"):
            node.store.append(
                Event.create(
                    mallory.identity,
                    swarm=a.swarm,
                    seq=a.seq + 1,
                    prev=a.id,
                    kind="leave",
                    body={"reason": "x"},
                    time_ms=swarm.clock.now_ms(),
                )
            )


def test_equivocation_split_between_halves_is_detected():
    swarm, mallory, a, b = split_equivocation()
    for _ in range(100):
        swarm.step()
    assert_equivocation_proven(swarm, mallory, a, b)


def test_equivocation_proof_spreads_and_bans_everywhere():
    """Once one peer sees both versions (here mallory hands it the other one), the proof travels in every heads reply:
    every honest peer bans mallory, refuses its further events, and writes the proof, which anyone can check offline,
    on its own feed."""
    swarm, mallory, a, b = split_equivocation()
    serve_other_version(swarm.nodes[0], mallory, b)
    for _ in range(50):
        swarm.step()
    assert_equivocation_proven(swarm, mallory, a, b)


def test_honest_peers_converge_after_an_equivocation():
    swarm, mallory, a, b = split_equivocation()
    serve_other_version(swarm.nodes[0], mallory, b)
    for node in swarm.nodes:
        swarm.append(node, "commit", commit_body(node.me, 3))
    for _ in range(100):
        swarm.step()
    honest = [{e.id for e in n.store.iter_events() if e.author != mallory.me} for n in swarm.nodes]
    assert all(ids == honest[0] for ids in honest)
    # and every peer's copy audits, whichever version of mallory's event it holds (the other is in quarantine)
    for node in swarm.nodes:
        wires = [e.wire for e in node.store.iter_events()]
        report = audit(wires, quarantine=node.store.quarantined_wires())
        assert mallory.me in report.equivocators


def test_finality_resumes_after_an_equivocation(monkeypatch):
    monkeypatch.setattr("koinon.ledger.node.MAX_PARENTS", 0)  # nobody cites mallory's events: no replication split
    swarm, mallory, a, b = split_equivocation()
    serve_other_version(swarm.nodes[0], mallory, b)
    for node in swarm.nodes:
        swarm.append(node, "commit", commit_body(node.me, 3))
    for _ in range(100):
        swarm.step()
    assert_equivocation_proven(swarm, mallory, a, b)
    for node in swarm.nodes:
        assert swarm.authored <= set(final_ids(node))


# --- who gets a vote ----------------------------------------------------------------------------------------------


def test_outsiders_joining_do_not_take_the_quorum():
    """Under the charter rule `admission: vote` a `join` says where a key listens, nothing more: only founders and
    members admitted by an executed `admit` proposal cosign cuts (DESIGN §7: weight comes from admission or verified
    work, never from counting keys). Ten outsiders' joins are stored and finalised like any event, yet the three
    members stay the only cosigners and go on finalising. (Under `admission: open` the same ten joins would make
    thirteen members, of whom the three honest ones are less than 2/3: finality would stop.)"""
    swarm = three_members(rules={"epoch_ms": EPOCH_MS, "admission": "vote"}, founders=True)
    swarm_id = swarm.founder.store.swarm_id
    joins = []
    for i in range(10):
        outsider = identity_from_seed(f"sybil{i}")
        join = Event.create(
            outsider, swarm=swarm_id, seq=1, prev=None, kind="join", body={"maddrs": []}, time_ms=swarm.clock.now_ms()
        )
        assert swarm.founder._store(join)  # as if the outsider had synced it to the founder
        joins.append(join.id)
    for node in swarm.nodes:
        swarm.append(node, "commit", commit_body(node.me, 2))
    for _ in range(300):
        swarm.step()
    honest = {n.me for n in swarm.nodes}
    chain = swarm.founder.chain
    assert all(chain.members(c) <= honest for c in chain.cuts if chain.members(c) is not None)  # no vote for a key
    assert swarm.authored <= set(final_ids(swarm.founder))  # the members' commits became final after the joins
    assert set(joins) <= set(final_ids(swarm.founder))  # the joins are in the log: the case was exercised
    assert chain.members(chain.final_cuts()[-1].id) == honest
