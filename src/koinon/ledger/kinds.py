"""The registry of event kinds and their body schemas (docs/ledger.md §3).

Each kind names a body schema; the store refuses an event whose kind is unknown or whose body does not match.
Other packages (governance, verification) add their kinds with :func:`register_kind` without touching the core.
A schema maps field names to checkers; all fields are required and no others are allowed, so a body has one
meaning and one encoding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from koinon.errors import InvalidEvent
from koinon.identity.keys import public_key_from_member_id

Checker = Callable[[object], bool]


def uint(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 63  # what SQLite can store


def text(limit: int = 1024) -> Checker:
    return lambda v: isinstance(v, str) and len(v) <= limit


def hash32(v: object) -> bool:
    return isinstance(v, bytes) and len(v) == 32


def optional(check: Checker) -> Checker:
    return lambda v: v is None or check(v)


def member(v: object) -> bool:
    if not isinstance(v, str):
        return False
    try:
        public_key_from_member_id(v)
    except Exception:
        return False
    return True


def array(check: Checker, limit: int = 4096) -> Checker:
    return lambda v: isinstance(v, list) and len(v) <= limit and all(check(x) for x in v)


def member_set(limit: int = 4096) -> Checker:
    """A list of member ids, sorted and without repeats (one encoding per set)."""
    check = array(member, limit)
    return lambda v: check(v) and all(a < b for a, b in zip(v, v[1:], strict=False))


def height(v: object) -> bool:
    """A round height: a count of certified rounds, at least 1 (height 0 is genesis, which no round makes)."""
    return uint(v) and v >= 1


def mapping(v: object) -> bool:
    return isinstance(v, dict)


def frontier(v: object) -> bool:
    """{member id: [seq, head id]}"""
    return isinstance(v, dict) and all(
        member(k) and isinstance(x, list) and len(x) == 2 and uint(x[0]) and hash32(x[1]) for k, x in v.items()
    )


@dataclass(frozen=True)
class Kind:
    name: str
    schema: dict[str, Checker]
    doc: str

    def check(self, body: dict) -> None:
        missing = set(self.schema) - set(body)
        extra = set(body) - set(self.schema)
        if missing or extra:
            raise InvalidEvent(
                f"{self.name} body: missing {sorted(missing) or 'nothing'}, unexpected {sorted(extra) or 'nothing'}"
            )
        for name, check in self.schema.items():
            if not check(body[name]):
                raise InvalidEvent(f"{self.name} body: field {name!r} has an invalid value")


REGISTRY: dict[str, Kind] = {}


def register_kind(name: str, schema: dict[str, Checker], doc: str) -> Kind:
    """Add an event kind. Registering the same name twice with another schema is a programming error."""
    if name in REGISTRY and REGISTRY[name].schema is not schema:
        raise ValueError(f"event kind {name!r} is already registered")
    REGISTRY[name] = Kind(name, schema, doc)
    return REGISTRY[name]


def check_body(kind: str, body: dict) -> None:
    if kind not in REGISTRY:
        raise InvalidEvent(f"unknown event kind {kind!r}")
    REGISTRY[kind].check(body)


register_kind(
    "charter",
    {"name": text(128), "founders": array(member, 1024), "training": mapping, "rules": mapping},
    "Genesis: the swarm's name, founding members, training configuration and rules. Its id is the swarm id.",
)
register_kind("join", {"maddrs": array(text(256), 16)}, "A member joins (or re-joins) and says where it listens.")
register_kind("leave", {"reason": text(256)}, "A member leaves cleanly.")
register_kind(
    "round",
    {
        "round": uint,  # the author's attempt counter (commits carry the same number)
        "height": height,  # the height this round makes: θ_height, if certified
        "theta": hash32,  # θ_height: sha256 of θ after the round
        "prev_theta": hash32,  # θ_{height−1}: the certified θ the round started from (the genesis θ at height 1)
        "state": hash32,  # sha256 of the post-round state: height, θ and outer momentum
        "participants": member_set(4096),  # the round's contributors, sorted
        "samples": uint,
        "bytes": uint,
        "config": hash32,
        "gov": optional(uint),
    },
    "A contributor's signed statement of a finished round: the height it makes, θ before and after, the post-round "
    "state hash, the contributors (sorted member ids), its attempt counter, samples and bytes, the hash of the "
    "configuration in force and the final cut index whose governance state set it (null: the charter). The first "
    "round events of a height by a strict majority of the electorate that agree on (prev θ, θ, state, contributors) "
    "certify θ_height (koinon.swarm.rounds.RoundChain; koinon.ledger.lineage reads it off the ledger).",
)
register_kind(
    "commit",
    {
        "round": uint,
        "theta": hash32,  # θ the round started from (the swarm's θ after the previous round)
        "config": hash32,  # the configuration trained under
        "data": array(hash32, 64),  # content hashes of the data sources the shard is drawn from
        "group": array(member, 4096),  # the members the shard was dealt among (rendezvous hashing)
        "shards": hash32,  # sha256 of the training blocks of this member's shard (4 bytes each, in order)
        "seed": hash32,  # the batch sampler's seed: sha256("member|round")
        "step0": uint,  # inner steps this member had taken before the round (AdamW's step count)
        "steps": uint,
        "samples": uint,
        "trace": array(hash32, 2 * 513),  # sha256 of (parameters, AdamW moments) at each segment bound
        "delta": hash32,  # sha256 of the pseudo-gradient Δ it averages
    },
    "A contribution commitment, made before averaging: what a peer claims to have computed in a round, with the "
    "hashes of its optimiser state at each segment bound, so a verifier can re-execute any one segment.",
)
register_kind(
    "checkpoint",
    {
        "theta": hash32,  # the checkpoint's id: sha256 of θ as float32 bytes
        "round": uint,
        "parent": optional(hash32),  # the previous checkpoint this member recorded (null: the first)
        "config": hash32,
        "gov": optional(uint),  # the final cut whose governance state was in force (null: the charter)
        "contributors": array(member, 4096),  # members whose Δ counted in the rounds since the parent
        "data": array(hash32, 64),  # content hashes of the data sources trained on
        "samples": uint,  # samples averaged in the rounds since the parent
        "manifest": hash32,  # sha256 of the chunk manifest (koinon.store.fetch)
        "size": uint,
    },
    "A saved checkpoint and its lineage: its θ hash, round, parent, configuration and decisions in force, who "
    "contributed and on what data since the parent, and the manifest peers fetch it by.",
)
register_kind(
    "verdict",
    {"commit": hash32, "ok": lambda v: isinstance(v, bool), "error": uint, "got": hash32},
    "A verifier's (or referee's) result for a sampled commitment: whether its re-execution of the chosen segment "
    "matched (error: relative distance in parts per million), and the hash of the parameters it computed. A "
    "failing verdict is an accusation; the commit's trace hashes are its evidence.",
)
register_kind(
    "cut",
    {
        "index": uint,
        "epoch": uint,
        "frontier": frontier,
        "prev": optional(hash32),
        "root": hash32,
        "size": uint,
        "theta": optional(hash32),
    },
    "A proposed cut: the frontier it closes, the previous cut, the log root and size after it.",
)
register_kind(
    "cosign", {"epoch": uint, "cut": hash32}, "A member's vote for a cut proposal (by its event id), one per epoch."
)
register_kind(
    "equivocation",
    {"a": lambda v: isinstance(v, bytes), "b": lambda v: isinstance(v, bytes)},
    "Proof that an author signed two different events with the same seq: both events, encoded.",
)
