"""A synthetic, seeded governance ledger for bench/gov_bench.py: a large swarm voting, stored in a ``LedgerStore``.

:func:`plan` lays the swarm's life out cut by cut (nothing signed yet), :func:`build` signs and stores it:

- a ``charter`` by member 0 (founders = [member 0]; training = ``training_body(TrainingConfig())``; rules: open
  admission, ``window``/``timelock``/``delay`` in cuts and a quorum of 1/200: 50 votes of 10,000);
- a ``join`` by every other member, in the first cuts (``per_cut`` events each);
- proposals spread evenly over the following ``proposal_cuts`` cuts, half ``set-config`` (a valid change of a
  mutable setting), half ``resolution``;
- votes: a skewed number per proposal (log-normal, summing to exactly ``votes``), each by a random member in a
  random cut of the proposal's window; some members vote again (the later vote replaces the earlier one), and a
  few votes land outside the window (in the proposal's own cut, after it: too early; or after the close: too late);
- delegations (about ``delegations``, ~10 % of them revocations) spread over the voting cuts, so proposals that
  open at different cuts see different delegation snapshots; chains and cycles occur by chance;
- empty cuts at the end until every proposal is closed and executed or not.

Every event is made with ``Event.create`` by its author's Ed25519 key (keys derived from the seed), with ``seq``
and ``prev`` its author's next link and ``parents`` the newest heads of up to ``parents`` other authors (the rule
of ``LedgerNode.append_own``, which takes up to 64), then ``LedgerStore.append``-ed without re-verifying the
signature (it was just made) into a store file whose ``synchronous`` is lowered for the generation only. The
store's insertion order is the log order, and cut ``k`` is the next ``cut_sizes[k]`` events of it: a valid
causal order, as the ledger's canonical order within each cut would be.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from koinon.config import TrainingConfig
from koinon.governance.charter import training_body
from koinon.identity import Identity
from koinon.ledger.event import Event
from koinon.ledger.store import LedgerStore

START_MS = 1_700_000_000_000
# valid set-config changes (mutable settings; floats as decimal text, as the CLI writes them)
CHANGES = (
    lambda r: {"inner_steps": r.randint(10, 200)},
    lambda r: {"batch_size": r.choice([4, 8, 16, 32])},
    lambda r: {"inner_lr": r.choice(["0.0005", "0.001", "0.002"])},
    lambda r: {"outer_lr": r.choice(["0.5", "0.7", "0.9"])},
    lambda r: {"compression": r.choice(["fp16", "int8", "none"])},
)


@dataclass(frozen=True)
class Params:
    seed: int = 4
    members: int = 10_000
    proposals: int = 1_000
    votes: int = 100_000
    delegations: int = 1_000
    per_cut: int = 1_000  # events per cut while members join
    proposal_cuts: int = 80  # cuts over which the proposals are spread
    window: int = 20  # cuts during which a proposal's votes count
    timelock: int = 2
    delay: int = 1
    quorum: tuple[int, int] = (1, 200)  # 50 of 10,000 members: proposals with few votes expire, most do not
    revote: float = 0.05  # share of votes by a member who already voted on that proposal
    early: float = 0.005  # share of votes in the proposal's own cut (before its window opens)
    late: float = 0.005  # share of votes after the window closed
    parents: int = 4  # newest heads of other authors cited by each event (LedgerNode.append_own: up to 64)

    def rules(self) -> dict:
        return {
            "epoch_ms": 2000,
            "admission": "open",
            "window": self.window,
            "timelock": self.timelock,
            "delay": self.delay,
            "quorum": list(self.quorum),
        }

    def key(self, sources: list[Path]) -> str:
        """Cache key: the parameters and the sources that decide the stored bytes."""
        h = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode())
        for path in sources:
            h.update(path.read_bytes())
        return h.hexdigest()[:16]


@dataclass
class Planned:
    author: int  # index of the member
    kind: str
    body: dict
    tag: str = ""  # for votes: "in", "early" or "late" (what the generator meant; the bench checks the state agrees)


def identities(p: Params) -> list[Identity]:
    keys = [hashlib.sha256(b"koinon-gov-bench/%d/%d" % (p.seed, i)).digest() for i in range(p.members)]
    return [Identity(Ed25519PrivateKey.from_private_bytes(k), Path("gov-bench")) for k in keys]


def plan(p: Params, members: list[str]) -> list[list[Planned]]:
    """The events of each cut, in log order (proposal ids are filled in while signing: see :func:`build`)."""
    if p.members < 2 or p.proposals < 1 or p.votes < p.proposals:
        raise ValueError("need at least 2 members, 1 proposal and one vote per proposal")
    rng = random.Random(p.seed)
    join_cuts = math.ceil((p.members - 1) / p.per_cut)
    first = join_cuts  # first cut with proposals
    last_close = first + p.proposal_cuts - 1 + p.delay + p.window - 1
    n_cuts = last_close + max(p.timelock, 3) + 1  # late votes land up to 3 cuts after a close
    cuts: list[list[Planned]] = [[] for _ in range(n_cuts)]
    for m in range(1, p.members):
        cuts[(m - 1) // p.per_cut].append(
            Planned(m, "join", {"maddrs": [f"/ip4/10.{m >> 16}.{m >> 8 & 255}.{m & 255}/tcp/31337"]})
        )

    # proposals: where, by whom, what; then how many votes each gets
    included = [first + k * p.proposal_cuts // p.proposals for k in range(p.proposals)]
    weights = [rng.lognormvariate(0, 1) for _ in range(p.proposals)]
    counts = [max(1, int(p.votes * w / sum(weights))) for w in weights]
    diff, order, turn = p.votes - sum(counts), rng.sample(range(p.proposals), k=p.proposals), 0
    while diff:  # rounding: add or take single votes, proposal by proposal, until the total is exact
        k, turn = order[turn % p.proposals], turn + 1
        if diff > 0:
            counts[k], diff = counts[k] + 1, diff - 1
        elif counts[k] > 1:
            counts[k], diff = counts[k] - 1, diff + 1
    early_votes: list[list[Planned]] = [[] for _ in range(n_cuts)]
    other: list[list[Planned]] = [[] for _ in range(n_cuts)]
    for k in range(p.proposals):
        c = included[k]
        if k % 2:
            body = {"action": "resolution", "effect": {}, "text": f"Resolution {k}: the swarm notes item {k}."}
        else:
            body = {"action": "set-config", "effect": {"changes": rng.choice(CHANGES)(rng)}, "text": f"Config {k}"}
        cuts[c].append(Planned(rng.randrange(p.members), "proposal", body))
        open_, close = c + p.delay, c + p.delay + p.window - 1
        p_yes, p_abstain = rng.uniform(0.2, 0.8), 0.1
        voted: list[int] = []
        for _ in range(counts[k]):
            if voted and rng.random() < p.revote:
                voter = rng.choice(voted)
            else:
                voter = rng.randrange(p.members)
                voted.append(voter)
            x = rng.random()
            choice = "abstain" if x < p_abstain else "yes" if x < p_abstain + (1 - p_abstain) * p_yes else "no"
            body = {"proposal": k, "choice": choice}  # the proposal's index; its id replaces it when signing
            y = rng.random()
            if y < p.early:
                early_votes[c].append(Planned(voter, "vote", body, "early"))
            elif y < p.early + p.late:
                other[close + rng.randint(1, 3)].append(Planned(voter, "vote", body, "late"))
            else:
                other[rng.randint(open_, close)].append(Planned(voter, "vote", body, "in"))

    # delegations over the voting cuts; ~10 % revoke (to = null) a member's delegation
    delegating: list[int] = []
    for _ in range(p.delegations):
        c = rng.randint(first, last_close)
        if delegating and rng.random() < 0.1:
            other[c].append(Planned(rng.choice(delegating), "delegate", {"to": None}))
        else:
            who, to = rng.randrange(p.members), rng.randrange(p.members)
            delegating.append(who)
            other[c].append(Planned(who, "delegate", {"to": to}))
    for c in range(n_cuts):
        rng.shuffle(other[c])
        cuts[c] += other[c] + early_votes[c]  # a too-early vote follows its proposal in the same cut
    return cuts


def build(p: Params, path: Path, log=print) -> dict:
    """Sign and store the planned ledger in a new store file at ``path``; returns the metadata the bench needs."""
    ids = identities(p)
    members = [i.member_id for i in ids]
    cuts = plan(p, members)
    store = LedgerStore(path)
    store._db.execute("PRAGMA synchronous=OFF")  # generation only: the bench reads a closed, checkpointed file
    charter = Event.create(
        ids[0],
        swarm=b"",
        seq=1,
        prev=None,
        kind="charter",
        body={
            "name": "gov-bench",
            "founders": [members[0]],
            "training": training_body(TrainingConfig()),
            "rules": p.rules(),
        },
        time_ms=START_MS,
    )
    store.append(charter, verify_signatures=False)
    heads: dict[int, tuple[int, bytes]] = {0: (1, charter.id)}
    recent: list[tuple[int, bytes]] = [(0, charter.id)]  # (author, id) in log order
    proposal_ids: list[bytes] = []
    n_events = 1
    tags: list[str] = []
    total = sum(map(len, cuts))
    for c, planned in enumerate(cuts):
        for item in planned:
            seq, prev = heads.get(item.author, (0, None))
            parents, seen = [], {item.author}
            for author, event_id in reversed(recent):  # the newest event of an author is its head
                if len(parents) == p.parents:
                    break
                if author not in seen:
                    seen.add(author)
                    parents.append(event_id)
            body = item.body
            if item.kind == "vote":
                body = {"proposal": proposal_ids[body["proposal"]], "choice": body["choice"]}
            elif item.kind == "delegate" and body["to"] is not None:
                body = {"to": members[body["to"]]}
            e = Event.create(
                ids[item.author],
                swarm=charter.id,
                seq=seq + 1,
                prev=prev,
                kind=item.kind,
                body=body,
                time_ms=START_MS + n_events,
                parents=parents,
            )
            store.append(e, verify_signatures=False)
            heads[item.author] = (seq + 1, e.id)
            recent.append((item.author, e.id))
            n_events += 1
            if len(recent) > 4 * p.parents + 64:
                del recent[: -2 * p.parents - 32]
            if item.kind == "proposal":
                proposal_ids.append(e.id)
            if item.kind == "vote":
                tags.append(item.tag)
        if c % 20 == 0:
            log(f"generate: cut {c} of {len(cuts)} ({sum(map(len, cuts[: c + 1])):,} of {total:,} events)")
    store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    kinds: dict[str, int] = {}
    for planned in cuts:
        for item in planned:
            kinds[item.kind] = kinds.get(item.kind, 0) + 1
    return {
        "cut_sizes": [len(planned) for planned in cuts],
        "kinds": {"charter": 1, **kinds},
        "vote_tags": {t: tags.count(t) for t in ("in", "early", "late")},
        "events": 1 + total,
    }
