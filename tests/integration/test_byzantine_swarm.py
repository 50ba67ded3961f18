"""One Byzantine peer among four real peers (issue 5): with the robust default reducer θ stays finite and identical
on the honest peers and the eval loss falls; with the plain mean the same attack visibly hurts.

Each swarm is 3 honest peers and one attacker (``koinon start --attack KIND``) on loopback for ``ROUNDS`` rounds
of H = 10. A peer has one attack kind for its whole life, so every (attack, reducer) pair costs a swarm (≈ 30 s on
two cores): this file runs four — sign_flip and alie against the default reducer, sign_flip and scale against
``--reducer mean`` — and leaves scale against the robust reducer, noise, ipm and nan to the unit tests,
test_bad_pseudo_gradients.py and the attack benchmark (bench/byz_bench.py: every attack, reducer and f/n). sign_flip and scale are the attacks a plain mean cannot survive (one peer moves the average
anywhere it likes); alie is the one built to slip past coordinate-wise defences.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.swarmkit import FAST, PeerProcess, stop_all

pytestmark = pytest.mark.slow

ROUNDS = 4
FALL = 0.9  # nats/byte the honest eval loss must fall by with the robust reducer (≈ 1.0 after round 1, ≈ 2.8 after 4)
RISE = 0.2  # with the plain mean, a round with the attacker must raise the eval loss this much (seen: ≥ +0.35)


@dataclass
class SwarmRun:
    attack: str
    reducer: str
    start_loss: float
    honest: list[dict[int, dict]]  # per honest peer: round → its metrics.jsonl record
    attacker: str  # member id

    @property
    def contributors(self) -> dict[int, list[str]]:
        """Round → the members whose Δ counted, as the honest peers recorded it."""
        return {r: v["contributors"] for h in self.honest for r, v in sorted(h.items())}

    def worst_rise(self) -> tuple[float, dict[int, float]]:
        """The largest increase of the eval loss over one round the attacker counted in (inf: θ went non-finite),
        and honest-0's eval losses by round (0: the start)."""
        rise = -math.inf
        for h in self.honest:
            previous = self.start_loss
            for _round, v in sorted(h.items()):
                loss = v["eval_loss"]
                if self.attacker in v["contributors"]:
                    rise = max(rise, loss - previous if math.isfinite(loss) else math.inf)
                previous = loss
        return rise, {0: round(self.start_loss, 3)} | {
            r: round(v["eval_loss"], 3) for r, v in sorted(self.honest[0].items())
        }

    @property
    def attacked_rounds(self) -> list[int]:
        """Rounds in which the attacker's Δ counted (with full weight) in the honest peers' average."""
        return sorted(r for r, members in self.contributors.items() if self.attacker in members)


def run_swarm(home: Path, attack: str, reducer: str | None, must_finish: bool, enough=None) -> SwarmRun:
    """Run the swarm until the honest peers finish ``ROUNDS`` rounds (or 240 s pass), or until ``enough`` says
    what the peers recorded so far already decides the test."""
    args = ["--wait-for-peers", "4", "--rounds", str(ROUNDS), *FAST, *(["--reducer", reducer] if reducer else [])]
    honest = [PeerProcess(home / "honest-0", extra=args)]
    peers = list(honest)

    def so_far() -> SwarmRun:
        return SwarmRun(
            attack=attack,
            reducer=reducer or "default",
            start_loss=honest[0].metrics("start")[0]["eval_loss"],
            honest=[p.rounds() for p in honest],
            attacker=mallory.metrics("start")[0]["member"],
        )

    try:
        boot = honest[0].maddrs()
        honest += [PeerProcess(home / f"honest-{i}", boot, extra=args) for i in (1, 2)]
        mallory = PeerProcess(home / "mallory", boot, extra=[*args, "--attack", attack])
        peers = [*honest, mallory]
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and any(p.proc.poll() is None for p in honest):
            if enough is not None and all(p.metrics("start") for p in (honest[0], mallory)) and enough(so_far()):
                return so_far()
            time.sleep(1.0)
        for p in honest:
            code = p.proc.poll()  # None: a swarm wrecked by the attack may never finish; what it did is the result
            assert code == 0 or not must_finish, f"{p.home.name} exited {code}:\n{p.log_tail()}"
        return so_far()
    finally:
        stop_all(peers)


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    """Runs each (attack, reducer) swarm once for the whole module."""
    runs: dict[tuple[str, str | None], SwarmRun] = {}

    def get(attack: str, reducer: str | None = None) -> SwarmRun:
        if (attack, reducer) not in runs:
            home = tmp_path_factory.mktemp(f"{attack}-{reducer or 'default'}")
            if reducer == "mean":  # the test needs one round the attacker hurt: stop the swarm once there is one
                runs[attack, reducer] = run_swarm(home, attack, reducer, False, lambda run: run.worst_rise()[0] > RISE)
            else:
                runs[attack, reducer] = run_swarm(home, attack, reducer, must_finish=True)
        return runs[attack, reducer]

    return get


@pytest.mark.parametrize("attack", ["sign_flip", "alie"])
def test_robust_reducer_trains_through_one_byzantine_peer_among_four(swarm, attack):
    run = swarm(attack)
    a, b, c = run.honest
    assert run.attacked_rounds, f"the attacker never counted in an average: nothing was tested ({run.contributors})"
    for r in sorted(set(a) | set(b) | set(c)):
        # The exact all-reduce gives every member of a group the same θ. On a loaded machine a round can split in
        # two groups (each with its own θ; the next round's all-gather re-syncs the minority), and a peer that fell
        # behind re-syncs and has no record of the round: so compare the honest peers that averaged together.
        groups: dict[tuple[str, ...], set[str]] = {}
        for h in run.honest:
            if r in h and not h[r]["resynced"]:
                groups.setdefault(tuple(h[r]["group"]), set()).add(h[r]["theta"])
        for group, thetas in groups.items():
            assert len(thetas) == 1, f"round {r}: honest members of one group diverged: {group} → {thetas}"
        assert all(math.isfinite(h[r]["eval_loss"]) for h in run.honest if r in h), f"round {r}: θ is not finite"
    assert all(ROUNDS in h for h in run.honest), "an honest peer did not end at the last round"
    # (not "all end on one θ": a last round that splits on a loaded machine is settled only if the other group
    # finishes within peer._settle's wait, a known limit in docs/training.md)
    # The reducer out-votes one attacker among three or more contributors. A round that split (on a loaded
    # machine) can leave fewer, and the canonical-state tie-break may then adopt the attacker's state: a known
    # limit of state sync, not of the reducer (docs/training.md, "Byzantine peers and state sync"). So the swarm is
    # judged at its newest round with three or more contributors (the attacker counted in some round: above).
    full = {r: v for h in run.honest for r, v in h.items() if len(v["contributors"]) >= 3}
    assert full, f"no round had three or more contributors: nothing to judge ({run.contributors})"
    losses = {r: round(v["eval_loss"], 3) for r, v in sorted(a.items())}
    sizes = {r: len(v["contributors"]) for h in run.honest for r, v in sorted(h.items())}
    end = full[max(full)]["eval_loss"]
    assert end < run.start_loss - FALL, (
        f"{attack}: the eval loss did not fall enough by round {max(full)}: start {run.start_loss:.3f}, "
        f"honest-0 by round {losses}, contributors per round {sizes}"
    )


@pytest.mark.parametrize("attack", ["sign_flip", "scale"])
def test_plain_mean_is_hurt_by_the_same_attack(swarm, attack):
    """With the mean, a round in which the attacker counted sends the eval loss *up* (honest DiLoCo rounds only
    bring it down this early in training; the robust runs fall by ≈ 1 nat in round 1 alone). Not the end loss: the
    attacker may fall behind a round under load and be left out, and a few honest rounds then undo the damage."""
    mean = swarm(attack, "mean")
    assert mean.attacked_rounds, f"the attacker never counted in an average: nothing was tested ({mean.contributors})"
    rise, losses = mean.worst_rise()
    assert rise > RISE, (
        f"{attack} with the plain mean never raised the eval loss by more than {RISE} in a round the attacker "
        f"counted in ({mean.attacked_rounds}); eval losses by round: {losses}"
    )
