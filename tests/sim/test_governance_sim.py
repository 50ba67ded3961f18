"""Governance on the fake network and clock: proposals, votes and decisions among many peers (docs/governance.md).

What must hold, whatever the delivery order, the losses and the partitions:

- **agreement**: every peer ends with the same governance state: the same proposals in the same states, with the
  same histories and tallies, and the same configuration after every final cut. In Koinon a round uses the
  configuration of the final cut index its all-gather agreed on, so "the same configuration at every round on every
  peer" is: ``chain.final_governance(i).config_hash()`` is the same on every peer, for every final cut index ``i``;
- **order does not matter**: the same events, delivered in other orders (other network seeds, losses, a partition),
  give the same governance state after every final cut, on every peer;
- **the same decisions**: the same workload (who proposes what, who votes how, a partition that heals) run on other
  networks decides the same way (cut indices differ: cuts close other frontiers, by design);
- **time is the cut**: a vote whose ``time`` is back-dated into the window, but which reaches the log after the
  close, changes nothing;
- **keys are not votes**: under ``admission: vote``, a hundred outsiders who join and vote change no outcome and
  never cosign a cut.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from koinon.config import TrainingConfig
from koinon.governance.charter import training_body
from koinon.governance.state import TERMINAL, GovState, Proposal
from koinon.ledger.event import Event
from koinon.ledger.node import LedgerNode
from tests.sim.fakenet import FakeClock, FakeNetwork, identity_from_seed
from tests.sim.test_ledger_sim import EPOCH_MS, Swarm, assert_prefix_consistent, commit_body, final_ids

STEP_MS = 200  # five gossip steps per epoch (fan-out 3 carries a cut and its cosigns across 20 peers in time)
PEERS = 20
# delay 1: a vote authored once its author sees the proposal in a final cut k lands in cut k + 2 or later, after the
# opening (cut k + 1), since cut k + 1 exists before k is final. The votes land 2 to 5 cuts after the opening on
# seeds 1-6 (a partition that heals included); a window of 10 cuts leaves a wide margin on every network
RULES = {"epoch_ms": EPOCH_MS, "delay": 1, "window": 10, "timelock": 1}
SEEDS = (1, 2, 3)  # network seeds of the live runs: other delivery orders, other losses
REPLAY_SEED = 7  # the network (and the peers' starting prefixes) of the replay of one run's events


class GovSwarm(Swarm):
    """A Swarm (tests/sim/test_ledger_sim.py) whose charter carries a training configuration and governance rules."""

    def __init__(self, size: int, seed: int, drop: float = 0.1, fanout: int = 3) -> None:
        super().__init__(size, seed=seed, drop=drop, fanout=fanout)
        self._beat = 0

    def step(self) -> None:
        self.net.step(STEP_MS, self.fanout)
        self.steps += 1
        assert_prefix_consistent(self.nodes)

    def start(self, rules: dict, founders: list[str] | None = None) -> None:
        self.bootstrap(rules=rules, founders=founders, training=training_body(TrainingConfig()))
        self.run_until_converged(300)

    def heartbeat(self) -> None:
        """One commit by the next peer in turn: training goes on, so cuts go on (a cut needs new content)."""
        node = self.nodes[self._beat % len(self.nodes)]
        self._beat += 1
        self.append(node, "commit", commit_body(node.me, self._beat))

    def run(
        self,
        until: Callable[[], bool],
        max_steps: int,
        beat_every: int = 5,
        each: Callable[[int], None] | None = None,
    ) -> None:
        """Step (with heartbeats) until ``until()``; ``each(step)`` runs before every step."""
        for i in range(max_steps):
            if until():
                return
            if each is not None:
                each(i)
            if i % beat_every == 0:
                self.heartbeat()
            self.step()
        raise AssertionError(f"not done after {max_steps} steps")


def gov(node: LedgerNode) -> GovState:
    return node.chain.final_governance()


def proposal(node: LedgerNode, e: Event) -> Proposal | None:
    return gov(node).proposals.get(e.id)


def view(state: GovState, names: dict[bytes, str] | None = None) -> dict:
    """Everything governance decided, comparable with ==. ``names``: proposal id → label; with them, cut indices
    and event ids (which depend on delivery) are left out, so runs on other networks compare too."""

    def one(p: Proposal) -> dict:
        out = {"action": p.action, "state": p.state, "proposer": p.proposer, "effect": p.effect}
        out["states"] = [s for _, s in p.history]
        if p.result is not None:
            out["tally"] = p.result.to_dict() | {"delegated": p.result.delegated, "direct": p.result.direct}
        out["votes"] = {m: c for m, (c, _) in p.votes.items()}
        out["ignored"] = sorted(reason.split(": ", 1)[0] for _, reason in p.ignored)  # who was ignored
        if names is None:
            out |= {"history": p.history, "reason": p.reason, "ignored": p.ignored, "votes": p.votes}
            out |= {"window": (p.included, p.open, p.close, p.execute_at)}
        return out

    return {
        "proposals": {names[i] if names else i: one(p) for i, p in state.proposals.items()},
        "config": state.config_hash(),
        "members": sorted(state.members),
        "excluded": state.excluded(),
        "eligible": sorted(state.eligible()),
        "delegations": state.delegations,
        "resolutions": [r["text"] for r in state.resolutions],
        # across networks, two decisions taking effect in one cut on one network may fall in two on another
        "decisions": sorted(d["action"] for d in state.decisions) if names else state.decisions,
        "config_history": [h for _, h, _ in state.config_history] if names else state.config_history,
        "rules": state.rules,
    }


def configs(node: LedgerNode) -> list[str | None]:
    """The configuration hash in force after each final cut index (the config a round agreeing on it uses)."""
    return [node.chain.final_governance(i).config_hash() for i in range(len(node.chain.final_cuts()))]


# --- twenty peers, four proposals, a partition --------------------------------------------------------------------

# who votes how (peer index → choice; silent peers are left out). Peer 19 is expelled. 17 delegates to 3 and 18 to
# 17, so both reach peer 3, who votes on everything; 15 and 16 delegate to each other (a cycle: they count only where
# one of them votes).
PLAN = {
    "H=20": {**{i: "yes" for i in range(12)}, 12: "no", 13: "no", 14: "no", 15: "abstain", 19: "no"},
    "expel 19": {**{i: "yes" for i in range(14)}, 19: "no"},
    "resolution": {**{i: "yes" for i in range(10)}, 10: "no", 19: "no"},
    "outer_lr 0.5": {**{i: "yes" for i in range(5)}, **{i: "no" for i in range(5, 13)}, 19: "no"},
}
REPLACED = (5, "H=20", "no")  # peer 5 first votes no on H=20, then a step later yes: the last one counts
MINORITY = range(14, 20)  # cut off for the first VOTE_PARTITION steps of the vote (14 of 20 ≥ 2/3 finalise on)
VOTE_PARTITION = 10
BACKDATED = 16  # votes on H=20 after its close, with a time inside the window


@dataclass
class Run:
    swarm: GovSwarm
    props: dict[str, Event]  # label → proposal event
    backdated: Event

    @property
    def names(self) -> dict[bytes, str]:
        return {e.id: label for label, e in self.props.items()}


def govern(seed: int) -> Run:
    """The workload: 20 peers found and join; delegations; four proposals; votes from many peers while six are cut
    off; a replaced vote; every decision taken; then a back-dated vote; everything final everywhere."""
    swarm = GovSwarm(PEERS, seed=seed)
    swarm.start(RULES)
    nodes, me = swarm.nodes, [n.me for n in swarm.nodes]
    for a, b in [(17, 3), (18, 17), (15, 16), (16, 15)]:
        swarm.append(nodes[a], "delegate", {"to": me[b]})
    swarm.run_until_converged(300)

    def propose(by: int, action: str, effect: dict, text: str) -> Event:
        return swarm.append(nodes[by], "proposal", {"action": action, "effect": effect, "text": text})

    def vote(i: int, label: str, choice: str) -> None:
        swarm.append(nodes[i], "vote", {"proposal": props[label].id, "choice": choice})

    props = {
        "H=20": propose(1, "set-config", {"changes": {"inner_steps": 20}}, "H=20"),
        "resolution": propose(3, "resolution", {}, "We train on public-domain text only."),
        "outer_lr 0.5": propose(4, "set-config", {"changes": {"outer_lr": "0.5"}}, "outer_lr 0.5"),
    }
    todo = {(i, label): choice for label, plan in PLAN.items() for i, choice in plan.items()}
    replacer, replaced, first_choice = REPLACED
    todo[(replacer, replaced)] = first_choice
    replace = [(replacer, replaced, PLAN[replaced][replacer])]

    def each(step: int) -> None:
        if step == 0:
            swarm.net.partition([me[i] for i in MINORITY])
        if step == VOTE_PARTITION:
            swarm.net.heal()
        # the expel comes once the others are final: it closes after them, so peer 19's votes count in all three
        # on every network (a member expelled before a close stops counting: tests/unit/test_governance_state.py)
        if "expel 19" not in props and all(proposal(nodes[2], e) for e in props.values()):
            props["expel 19"] = propose(2, "expel", {"member": me[19]}, "expel peer 19")
        for (i, label), choice in sorted(todo.items()):
            if label in props and proposal(nodes[i], props[label]) is not None:  # final here: lands after opening
                vote(i, label, choice)
                del todo[(i, label)]
                if (i, label) == (replacer, replaced):
                    return  # the replacement follows at the next step (the same cut or a later one: last counts)
        if replace and (replacer, replaced) not in todo:
            vote(*replace.pop())

    def decided() -> bool:
        if todo or replace or len(props) < len(PLAN):
            return False
        return all((p := proposal(n, e)) is not None and p.state in TERMINAL for n in nodes for e in props.values())

    swarm.run(decided, 400, each=each)
    # a vote on H=20, signed now but dated just after the proposal: it reaches the log after the close
    node, old = nodes[BACKDATED], props["H=20"]
    seq, prev = node.store.heads()[node.me]
    parents = [i for a, (_, i) in node.store.heads().items() if a != node.me][:16]
    body = {"proposal": old.id, "choice": "no"}
    backdated = Event.create(
        node.identity,
        swarm=old.swarm,
        seq=seq + 1,
        prev=prev,
        kind="vote",
        body=body,
        time_ms=old.time + 1,
        parents=parents,
    )
    assert node._store(backdated)
    swarm.authored.add(backdated.id)
    swarm.run_until_converged(300)
    return Run(swarm, props, backdated)


@pytest.fixture(scope="module")
def runs() -> dict[int, Run]:
    return {seed: govern(seed) for seed in SEEDS}


@pytest.mark.slow
def test_every_peer_ends_with_the_same_governance(runs):
    for run in runs.values():
        nodes = run.swarm.nodes
        final = [c.id for c in nodes[0].chain.final_cuts()]
        expected_configs, expected = configs(nodes[0]), view(gov(nodes[0]))
        for node in nodes:
            assert [c.id for c in node.chain.final_cuts()] == final
            assert configs(node) == expected_configs  # the configuration in force at every round
            assert view(gov(node)) == expected
        # and the configuration changed exactly once, at the cut H=20 took effect, and stayed
        h20 = gov(nodes[0]).proposals[run.props["H=20"].id]
        changed = [i for i in range(1, len(final)) if expected_configs[i] != expected_configs[i - 1]]
        assert changed == [h20.execute_at] and expected_configs[-1] == TrainingConfig(inner_steps=20).config_hash()


@pytest.mark.slow
def test_the_same_workload_decides_the_same_on_other_networks(runs):
    views = {seed: view(gov(run.swarm.founder), run.names) for seed, run in runs.items()}
    first = views[SEEDS[0]]
    for seed in SEEDS[1:]:
        assert views[seed] == first, f"seed {seed} decided otherwise than seed {SEEDS[0]}"
    assert len({tuple(final_ids(run.swarm.founder)) for run in runs.values()}) == len(runs)  # the runs differed
    assert all(run.swarm.net.stats["dropped"] and run.swarm.net.stats["unreachable"] for run in runs.values())

    me = [n.me for n in runs[SEEDS[0]].swarm.nodes]
    props = first["proposals"]
    # 20 members: H=20 has 11 direct yes + peer 5's replaced vote (yes) + 17 and 18 through 3: yes 14; no: 12, 13,
    # 14, 19; abstain: 15, and 16 through the 16 ↔ 15 cycle, which reaches 15's vote
    assert {k: props["H=20"]["tally"][k] for k in ("yes", "no", "abstain", "total")} == {
        "yes": 14,
        "no": 4,
        "abstain": 2,
        "total": 20,
    }
    assert props["H=20"]["tally"]["delegated"] == {me[17]: me[3], me[18]: me[3], me[16]: me[15]}
    assert props["H=20"]["votes"][me[5]] == "yes"
    assert props["H=20"]["states"] == ["pending", "active", "passed", "queued", "executed"]
    assert props["expel 19"]["state"] == "executed" and first["excluded"] == [me[19]]
    assert me[19] not in first["eligible"] and len(first["eligible"]) == 19
    assert props["resolution"]["state"] == "executed"
    assert first["resolutions"] == ["We train on public-domain text only."]
    # outer_lr: yes 0-4, and 17, 18 through peer 3 (who voted yes): 7; no 5-12 and 19: 9; 15 ↔ 16 count nothing
    assert props["outer_lr 0.5"]["tally"]["yes"] == 7 and props["outer_lr 0.5"]["tally"]["no"] == 9
    assert props["outer_lr 0.5"]["state"] == "rejected"
    assert first["config"] == TrainingConfig(inner_steps=20).config_hash()
    assert first["decisions"] == ["expel", "resolution", "set-config"]


@pytest.mark.slow
def test_a_back_dated_vote_after_the_close_changes_nothing(runs):
    for run in runs.values():
        founder = run.swarm.founder
        chain = founder.chain
        h20 = gov(founder).proposals[run.props["H=20"].id]
        backdated_in = next(
            i for i, c in enumerate(chain.final_cuts()) if run.backdated.id in chain.order_through(c.id)
        )
        assert backdated_in > h20.close
        counted = [founder.store.get(i) for _, i in h20.votes.values()]
        assert run.backdated.time < min(v.time for v in counted)  # it claims to be older than every vote that counted
        assert run.backdated.author not in h20.votes and h20.result.to_dict()["no"] == 4
        assert h20.ignored[-1][0] == run.backdated.id and "the window closed" in h20.ignored[-1][1]
        # and the states of the cuts before it do not show it (each final cut keeps its own state)
        before = founder.chain.final_governance(backdated_in - 1).proposals[h20.id]
        assert all(i != run.backdated.id for i, _ in before.ignored)


# --- the same events, in other orders -----------------------------------------------------------------------------


def causal_shuffle(events: list[Event], rng: random.Random) -> list[Event]:
    """A random order in which every event comes after its prev and its parents (the charter first)."""
    by_id = {e.id: e for e in events}
    waiting = {e.id: {d for d in (*e.parents, *([e.prev] if e.prev else [])) if d in by_id} for e in events}
    children: dict[bytes, list[bytes]] = {}
    for i, deps in waiting.items():
        for d in deps:
            children.setdefault(d, []).append(i)
    charter = next(e.id for e in events if e.kind == "charter")
    ready = [(-1.0, charter)] + [(rng.random(), i) for i, d in waiting.items() if not d and i != charter]
    heapq.heapify(ready)
    out = []
    while ready:
        _, i = heapq.heappop(ready)
        out.append(by_id[i])
        for c in children.get(i, ()):
            waiting[c].discard(i)
            if not waiting[c]:
                heapq.heappush(ready, (rng.random(), c))
    assert len(out) == len(events)
    return out


@pytest.mark.slow
def test_the_same_events_in_other_orders_give_the_same_governance_at_every_cut(runs):
    """Every event of a finished run (cuts and cosigns included) replayed to 20 fresh peers: each starts with its
    own random causal prefix (twenty orders), then they gossip with 10% losses and a partition that heals. After
    every step, every cut a peer holds as final has the same governance state as in the original run, and at the end
    every peer holds all of it. (One network seed: each peer is an order of its own, and a replay costs as much as
    a run, the Chain re-reading each cut's events.)"""
    source = runs[SEEDS[0]].swarm
    events = list(source.founder.store.iter_events())
    reference = source.founder.chain
    final = [c.id for c in reference.final_cuts()]
    expected = [view(reference.final_governance(i)) for i in range(len(final))]
    heads = source.founder.store.heads()

    rng = random.Random(REPLAY_SEED)
    net = FakeNetwork(FakeClock(source.clock.now_ms()), seed=REPLAY_SEED, drop=0.1)
    nodes = [net.add_node(identity_from_seed(f"replay{i}"), EPOCH_MS) for i in range(PEERS)]
    for k, node in enumerate(nodes):
        order = causal_shuffle(events, rng)
        for e in order[: len(order) if k == 0 else rng.randrange(1, len(order))]:  # peer 0 holds everything
            assert node._store(e)
    net.partition([n.me for n in nodes[: PEERS // 3]])
    checked = [0] * PEERS
    for step in range(200):
        if step == 5:
            net.heal()
        net.gossip(3)  # replication only: nobody ticks, so no new cut or cosign is written
        for k, node in enumerate(nodes):
            have = [c.id for c in node.chain.final_cuts()]
            assert have == final[: len(have)]
            for i in range(checked[k], len(have)):
                assert view(node.chain.final_governance(i)) == expected[i], f"peer {k}, final cut {i}"
            checked[k] = len(have)
        if all(n == len(final) for n in checked) and all(n.store.heads() == heads for n in nodes):
            break
    else:
        raise AssertionError(f"final cuts held after 200 steps: {sorted(checked)} of {len(final)}")
    assert all(len(list(n.store.iter_events())) == len(events) for n in nodes)
    assert all(view(gov(n)) == expected[-1] for n in nodes)
    assert net.stats["dropped"] > 0 and net.stats["unreachable"] > 0


# --- a hundred outsiders ------------------------------------------------------------------------------------------


def outsiders_run(outsiders: int) -> tuple[GovSwarm, Event, list[Event]]:
    """Four founders under `admission: vote`; one proposal, 3 yes and 1 no. ``outsiders`` fresh keys each sign a join
    and a no vote (the first also a proposal and a delegation), handed to the members' stores while the vote is
    open, as if each outsider had synced its feed to one member."""
    swarm = GovSwarm(4, seed=31, drop=0.1, fanout=2)
    swarm.start({**RULES, "admission": "vote"}, founders=[n.me for n in swarm.nodes])
    nodes = swarm.nodes
    body = {"action": "set-config", "effect": {"changes": {"inner_steps": 20}}, "text": "H=20"}
    e = swarm.append(nodes[1], "proposal", body)
    choices = ["yes", "yes", "yes", "no"]
    todo = set(range(4))
    sybils: list[Event] = []

    def feed(k: int) -> list[Event]:
        who, now = identity_from_seed(f"outsider{k}"), swarm.clock.now_ms()
        bodies = [("join", {"maddrs": []}), ("vote", {"proposal": e.id, "choice": "no"})]
        if k == 0:
            own = {"action": "set-config", "effect": {"changes": {"inner_steps": 1}}, "text": "H=1"}
            bodies += [("proposal", own), ("delegate", {"to": nodes[3].me})]
        out: list[Event] = []
        for kind, b in bodies:
            prev = out[-1].id if out else None
            out.append(Event.create(who, swarm=e.swarm, seq=len(out) + 1, prev=prev, kind=kind, body=b, time_ms=now))
        return out

    def each(step: int) -> None:
        for i in sorted(todo):
            if proposal(nodes[i], e) is not None:
                swarm.append(nodes[i], "vote", {"proposal": e.id, "choice": choices[i]})
                todo.discard(i)
        if outsiders and not sybils and proposal(nodes[0], e) is not None:
            for k in range(outsiders):
                events = feed(k)
                for x in events:
                    assert nodes[k % 4]._store(x)
                sybils.extend(events)

    swarm.run(lambda: not todo and proposal(nodes[0], e).state in TERMINAL, 400, each=each)
    swarm.authored |= {s.id for s in sybils}
    swarm.run_until_converged(300)
    return swarm, e, sybils


def test_a_hundred_outsiders_who_join_and_vote_change_nothing():
    alone, e0, _ = outsiders_run(0)
    crowd, e1, sybils = outsiders_run(100)
    members = {n.me for n in crowd.nodes}
    p0, p1 = gov(alone.founder).proposals[e0.id], gov(crowd.founder).proposals[e1.id]
    expected = ("executed", {"yes": 3, "no": 1, "abstain": 0, "total": 4})
    assert (p0.state, p0.result.to_dict()) == expected
    assert (p1.state, p1.result.to_dict()) == expected
    assert p1.result.delegated == {} and set(p1.result.direct) == members
    outsiders = {s.author for s in sybils}
    assert len(outsiders) == 100 and not outsiders & members
    # each outsider's vote was ignored for not being a member, not for its timing: it landed inside the window
    assert sum(r.endswith("not a member when the window opened") for _, r in p1.ignored) == 100
    assert set(final_ids(crowd.founder)) >= {s.id for s in sybils}  # stored and ordered, weightless
    for node in crowd.nodes:
        state = gov(node)
        assert state.members == members and state.eligible() == members and state.delegations == {}
        assert [p.action for p in state.proposals.values()] == ["set-config"]  # the outsider's proposal: ignored
        assert state.config.inner_steps == 20
        chain = node.chain
        for cut in chain.cuts:  # no outsider ever may cosign, nor did
            assert chain.members(cut) is None or chain.members(cut) <= members
            assert chain.cosigners.get(cut, set()) <= members


@pytest.mark.slow
def test_pruned_governance_states_are_recomputed_identically(runs):
    """A long-running peer keeps per-cut governance states for the newest heights only; asking for an older final
    cut recomputes it from genesis, and it must equal what was computed the first time."""
    node = runs[1].swarm.nodes[0]
    before = configs(node)
    views = [view(node.chain.final_governance(i)) for i in range(len(before))]
    node.chain.keep_states = 2
    node.chain._gov.clear()
    node.chain.final_governance()  # computes every state from genesis, then prunes to the newest heights
    assert len(node.chain._gov) <= 2 * 2 + 3
    assert configs(node) == before
    assert [view(node.chain.final_governance(i)) for i in range(len(before))] == views
