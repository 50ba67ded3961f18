"""What ``koinon start`` asks of a peer (``PeerOptions``): its home and data, its addresses and the swarm to join,
the founding configuration and charter, when to stop, and the testing tools (``--attack``, ``--slowdown``).

Separate from ``peer.py`` because more than the round loop reads it: ``services.py`` (addresses, the swarm's name
and id, what to found with) and, through ``Peer``, ``trainer.py`` (data, threads, the testing tools).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from koinon.config import TrainingConfig


@dataclass
class PeerOptions:
    home: Path
    data: list[Path] | None = None  # None: the Python standard library
    initial_peers: list[str] = field(default_factory=list)
    listen: list[str] = field(default_factory=lambda: ["/ip4/0.0.0.0/tcp/0"])
    announce: list[str] = field(default_factory=list)
    config: TrainingConfig = field(default_factory=TrainingConfig)
    swarm: str = "koinon"
    max_rounds: int | None = None  # stop once the swarm's θ has this many certified rounds
    wait_for_peers: int = 1  # before round 1, wait (up to ``wait_timeout``) until this many peers are announced
    wait_timeout: float = 60.0
    matchmaking_time: float = 2.0
    averaging_timeout: float = 30.0
    threads: int = 0  # torch threads; 0 keeps torch's default
    checkpoint_every: int = 10
    attack: str | None = None
    slowdown: float = 1.0  # testing tool: each inner step takes this many times as long (a slow machine)
    epoch_ms: int = 2000  # ledger cut epochs (a charter rule: joiners take the founder's value)
    swarm_id: str | None = None  # hex: refuse to join a swarm whose charter has another id
    charter: dict | None = None  # the genesis body to found with (None: the example charter with ``config``)
    min_contributors: int | None = None  # founding without a charter: the rule (None: the example charter's)
