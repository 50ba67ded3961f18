"""group_decision and the reducers inside a real all-reduce: ExactAverager instances (forked children of this
process) on a loopback DHT whose peer ids are member keys, so that the children verify the signed gathers.

Three members (``trio``, reducer "mean"): a member at another height, expelled, without samples or whose gather is
not signed by its key still takes part in the exchange but counts with weight 0; the compression of the group's key
overrides the configured one. Four members (``quartet``): one sends its pseudo-gradient scaled by 10⁶; the mean
follows it, the robust reducers (aggregation/reducers.py) do not. Values are chosen so that every expected
average is exact in float32 (sums of small integers divided by 4)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from koinon.aggregation.reducers import centered_clip, mean
from koinon.identity import Identity
from koinon.swarm import node
from koinon.swarm.averaging import ExactAverager, group_decision, left_out
from koinon.swarm.compression import get_compression
from koinon.swarm.rounds import gather_payload, sign_gather
from tests.sim.fakenet import identity_from_seed

pytestmark = pytest.mark.slow

N = 1000  # values per tensor
STATE, STALE_STATE = "5" * 64, "6" * 64
CONFIG = "c" * 64
SWARM = "group-averaging-test"
KEYS = [identity_from_seed(f"group-averaging/{name}") for name in "abcd"]  # the member key of each DHT below
SIGNER = {key.member_id: key for key in KEYS}


def _descendants(root: int) -> set[int]:
    """root and every process below it (from /proc: ppid is the 4th field of /proc/PID/stat)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(children.get(pid, []))
    return found


def _hivemind_sockets_of(pids: set[int]) -> set[str]:
    """Paths of the ``hivemind-*.sock`` unix sockets these processes hold: the ones this test must clean up
    (HIVEMIND.md trap 12) without touching other programs' sockets in the shared temp folder."""
    by_inode = {}
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 8 and "/hivemind-" in parts[7]:
            by_inode[parts[6]] = parts[7]
    paths = set()
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in by_inode:
                paths.add(by_inode[link[8:-1]])
    return paths


def _key_file(key: Identity, home: Path) -> Identity:
    """``key`` written where p2pd reads it (libp2p's Ed25519 private key format, as ``Identity.create`` writes it)."""
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    home.mkdir(parents=True, exist_ok=True)
    seed = key.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    (home / "identity.key").write_bytes(bytes([0x08, 0x01, 0x12, 0x40]) + seed + key.public_key)
    loaded = Identity.load(home)
    assert loaded.member_id == key.member_id
    return loaded


@pytest.fixture(scope="module")
def dhts(tmp_path_factory):
    """Four DHT peers on loopback whose peer ids are KEYS' member ids; the averagers below run on them (averagers
    are shut down first, trap 7)."""
    started, sockets = [], set()
    homes = tmp_path_factory.mktemp("members")
    keys = [_key_file(key, homes / str(i)) for i, key in enumerate(KEYS)]
    try:
        listen = ["/ip4/127.0.0.1/tcp/0"]
        started.append(node.start_dht(keys[0], listen, []))
        boot = [str(a) for a in started[0].get_visible_maddrs()]
        started += [node.start_dht(key, listen, boot) for key in keys[1:]]
        assert [dht.peer_id.to_base58() for dht in started] == [key.member_id for key in KEYS]
        sockets = _hivemind_sockets_of(_descendants(os.getpid()))
        yield started
    finally:
        sockets |= _hivemind_sockets_of(_descendants(os.getpid()))
        for dht in started:
            node.shutdown(None, dht)
        for path in sockets:
            Path(path).unlink(missing_ok=True)


def _averagers(dhts, prefix: str, **options: object):
    """One averager per DHT under ``prefix``, matched in groups of exactly ``len(dhts)``."""
    averagers, sockets = [], set()
    try:
        for dht in dhts:
            averager = node.start_averager(
                ExactAverager,
                [torch.zeros(N)],
                dht,
                start=True,
                prefix=prefix,
                min_group_size=len(dhts),
                target_group_size=len(dhts),
                min_matchmaking_time=0.5,
                request_timeout=0.25,
                next_chunk_timeout=5.0,
                allreduce_timeout=10.0,
                compression=get_compression("none"),  # configured; the group's key may override it
                allow_state_sharing=False,
                **options,
            )
            averagers.append(averager)
        sockets = _hivemind_sockets_of(_descendants(os.getpid()))
        yield averagers
    finally:
        sockets |= _hivemind_sockets_of(_descendants(os.getpid()))
        for averager in averagers:
            node.shutdown(averager, None)
        for path in sockets:
            Path(path).unlink(missing_ok=True)


@pytest.fixture(scope="module")
def trio(dhts):
    yield from _averagers(dhts[:3], "group_decision_test")


@pytest.fixture(scope="module")
def quartet(dhts):
    # parts of N/4 values (4 bytes each with compression "none"): each member reduces one part for the group.
    # With hivemind's default part size (512 KiB) the whole vector is one part, reduced by a single member.
    yield from _averagers(dhts, "robust_reducer_test", part_size_bytes=N)


def members(averagers) -> list[str]:
    return sorted(av.peer_id.to_base58() for av in averagers)


def gather(averager: ExactAverager, electorate: list[str], signer: str | None = None, **changes: object) -> dict:
    """The averager's member's signed gather (``signer``: sign with another member's key instead, as a forger)."""
    me = averager.peer_id.to_base58()
    info = dict(
        member=me,
        swarm=SWARM,
        attempt=1,
        height=5,
        state=STATE,
        electorate=electorate,
        k=2,
        config=CONFIG,
        gov=0,
        excluded=[],
        compression="none",
        reducer="mean",  # the trio's tests check weighted means
        samples=8,
    )
    return sign_gather({**info, **changes}, SIGNER[signer or me].sign)


def all_reduce(averagers, values, gathers, weights) -> tuple[list[torch.Tensor], dict]:
    """One step on all of them at once: (each one's averaged tensor, the gathered dict the first one got)."""
    for averager, value in zip(averagers, values, strict=True):
        with averager.get_tensors() as (tensor,):
            tensor.copy_(value)
    controls = [
        averager.step(gather=g, weight=w, timeout=20.0, wait=False)
        for averager, g, w in zip(averagers, gathers, weights, strict=True)
    ]
    gathered = [control.result(timeout=40) for control in controls]
    assert all(g is not None for g in gathered), "a step failed"
    results = []
    for averager in averagers:
        with averager.get_tensors() as (tensor,):
            results.append(tensor.clone())
    return results, gathered[0]


IDX = torch.arange(N, dtype=torch.float32)  # (N,)


def test_member_at_another_height_is_left_out(trio):
    a, b, c = trio
    e = members(trio)
    values = [IDX, 3 * IDX, 1000 + IDX]
    gathers = [gather(a, e), gather(b, e), gather(c, e, height=4, state=STALE_STATE)]
    results, gathered = all_reduce(trio, values, gathers, weights=[1.0, 3.0, 2.0])
    expected = (1 * IDX + 3 * (3 * IDX)) / 4  # = 2.5·i, exact; with c it would be (10 i + 2 (1000 + i)) / 6
    for result in results:
        assert torch.equal(result, expected), (result[:4], expected[:4])
    # the host recomputes the same decision from what step() returned (PeerID keys, msgpack round trip)
    decision = group_decision(gathered)
    assert decision.contributors == {a.peer_id.to_base58(), b.peer_id.to_base58()}
    assert (decision.height, decision.state, decision.candidate) == (5, STATE, True)
    assert set(left_out(gathered, decision)) == {c.peer_id.to_base58()}


def test_expelled_member_is_left_out(trio):
    a, b, c = trio
    e = members(trio)
    expelled = c.peer_id.to_base58()
    values = [IDX, 3 * IDX, 1000 + IDX]
    gathers = [gather(av, e, excluded=[expelled]) for av in trio]  # the same governance state everywhere
    results, gathered = all_reduce(trio, values, gathers, weights=[1.0, 3.0, 2.0])
    for result in results:
        assert torch.equal(result, 2.5 * IDX)
    decision = group_decision(gathered)
    assert decision.excluded == {expelled}
    assert expelled in decision.holders and expelled not in decision.contributors
    assert left_out(gathered, decision) == {expelled: "expelled by governance"}


def test_gather_signed_by_another_key_is_left_out(trio):
    # c's gather signed with a's key (what a leader relaying the gathered data could forge): c counts for nothing
    a, b, c = trio
    e = members(trio)
    values = [IDX, 3 * IDX, 1000 + IDX]
    gathers = [gather(a, e), gather(b, e), gather(c, e, signer=a.peer_id.to_base58())]
    results, gathered = all_reduce(trio, values, gathers, weights=[1.0, 3.0, 2.0])
    for result in results:
        assert torch.equal(result, 2.5 * IDX)
    decision = group_decision(gathered)
    assert left_out(gathered, decision) == {c.peer_id.to_base58(): "gathered metadata is not signed by its member"}


def test_contributors_with_weight_zero_average_to_zeros(trio):
    # stock hivemind would divide 0 by 0 here (NaN), and ExactAverager would refuse the result
    a, b, c = trio
    e = members(trio)
    values = [IDX + 1, 3 * IDX + 1, 1000 + IDX]
    gathers = [gather(a, e, samples=0), gather(b, e, samples=0), gather(c, e, height=4, state=STALE_STATE)]
    results, gathered = all_reduce(trio, values, gathers, weights=[0.0, 0.0, 2.0])
    for result in results:
        assert torch.equal(result, torch.zeros(N))
    decision = group_decision(gathered)  # a and b hold the key (two holders beat one) but contribute nothing
    assert (decision.holders, decision.contributors, decision.candidate) == (
        {a.peer_id.to_base58(), b.peer_id.to_base58()},
        frozenset(),
        False,
    )


def test_the_compression_of_the_groups_key_overrides_the_configured_one(trio):
    a, b, c = trio
    e = members(trio)
    x = torch.full((N,), 1 + 2**-13)  # exact in float32, rounds to 1.0 in fp16 (10-bit mantissa)
    gathers = [gather(a, e, compression="fp16"), gather(b, e, compression="fp16"), gather(c, e, compression="none")]
    results, gathered = all_reduce(trio, [x, x, x], gathers, weights=[1.0, 1.0, 1.0])
    for result in results:
        assert torch.equal(result, torch.ones(N)), "the parts did not travel as fp16"
    assert group_decision(gathered).compression == "fp16"
    # and with the key for "none", the same values come through exactly
    gathers = [gather(a, e, compression="none"), gather(b, e, compression="none"), gather(c, e, compression="fp16")]
    results, _ = all_reduce(trio, [x, x, x], gathers, weights=[1.0, 1.0, 1.0])
    for result in results:
        assert torch.equal(result, x)


@pytest.mark.parametrize("kind", ["old", "unsigned", "forged"])
def test_without_valid_metadata_everyone_counts(trio, kind):
    # no decision: everyone counts with the configured compression and reducer (the host must not apply such a
    # result as a round: RoundProtocol.after_group(None) keeps its contribution pending)
    e = members(trio)
    if kind == "old":  # what peer.py gathered before governance: no config/compression/excluded/gov, unsigned
        gathers = [
            dict(member=av.peer_id.to_base58(), round=r, state=STATE, samples=8)
            for av, r in zip(trio, (5, 5, 4), strict=True)
        ]
    elif kind == "unsigned":
        gathers = [{**gather(av, e), "sig": b""} for av in trio]
    else:  # every gather signed by the next member's key
        ids = [av.peer_id.to_base58() for av in trio]
        gathers = [gather(av, e, signer=ids[(i + 1) % 3]) for i, av in enumerate(trio)]
    results, gathered = all_reduce(trio, [IDX, 3 * IDX, 2 * IDX], gathers, weights=[1.0, 1.0, 2.0])
    for result in results:
        assert torch.equal(result, 2 * IDX)  # (i + 3i + 2·2i) / 4
    assert group_decision(gathered) is None


def test_signed_gathers_survive_the_wire():
    # the payload the signature covers is the same after msgpack (what hivemind uses for step(gather=...))
    from hivemind.utils.serializer import MSGPackSerializer

    e = sorted(key.member_id for key in KEYS)
    info = sign_gather(
        dict(
            member=KEYS[0].member_id,
            swarm=SWARM,
            attempt=1,
            height=5,
            state=STATE,
            electorate=e,
            k=2,
            config=CONFIG,
            gov=0,
            excluded=[],
            compression="none",
            reducer="mean",
            samples=8,
        ),
        KEYS[0].sign,
    )
    back = MSGPackSerializer.loads(MSGPackSerializer.dumps(info))
    assert back == info and gather_payload(back) == gather_payload(info)
    assert group_decision({KEYS[0].member_id: back}).contributors == {KEYS[0].member_id}


# --- one poisoned sender among four ----------------------------------------------------------------------------
# honest pseudo-gradients i, i + 1, i + 2 (honest mean i + 1); mallory's would be i + 3 but she sends 10⁶·(i + 3)
# and holds the group's key, so her part counts. The vector travels as 4 parts of 250 values (the quartet's
# part_size_bytes) and, with every bandwidth unspecified, hivemind gives each member one of them to reduce
# (load_balance_peers: equal spans); all four reduce honestly here (a Byzantine *reducer* is HIVEMIND.md trap 5,
# not this test).
POISONED = [IDX, IDX + 1, IDX + 2, 1e6 * (IDX + 3)]
PARTS = [slice(k * N // 4, (k + 1) * N // 4) for k in range(4)]


def poisoned_round(quartet, reducer: str) -> torch.Tensor:
    """One all-reduce whose key names ``reducer`` (mallory holds it too, or her part would count for nothing);
    the result every member got."""
    e = members(quartet)
    gathers = [gather(av, e, reducer=reducer) for av in quartet]  # mallory hides in the group's key
    results, gathered = all_reduce(quartet, POISONED, gathers, weights=[1.0] * 4)
    decision = group_decision(gathered)
    assert (decision.reducer, decision.candidate, len(decision.contributors)) == (reducer, True, 4)
    for result in results[1:]:
        assert torch.equal(result, results[0]), "members hold different results"
    return results[0]


def test_one_poisoned_sender_moves_the_mean_far(quartet):
    result = poisoned_round(quartet, "mean")
    # (i + (i + 1) + (i + 2) + 10⁶ (i + 3)) / 4 − (i + 1) = (10⁶ − 1)(i + 3)/4 ≥ 3 (10⁶ − 1)/4 ≈ 7.5·10⁵
    assert float((result - (IDX + 1)).min()) > 7e5
    assert torch.equal(result, mean(POISONED, [1.0] * 4))


@pytest.mark.parametrize("reducer", ["median", "trimmed_mean"])
def test_median_and_trimmed_mean_keep_to_the_honest_values(quartet, reducer):
    result = poisoned_round(quartet, reducer)
    # per coordinate, sorted (i, i + 1, i + 2, 10⁶ (i + 3)): the median is the middle two's mean, and the trimmed
    # mean (b = ⌊0.25·4⌋ = 1) drops i and the poisoned value and averages the same two: i + 1.5, exactly
    assert torch.equal(result, IDX + 1.5)


def test_centered_clip_stays_within_its_bound_of_the_honest_values(quartet):
    result = poisoned_round(quartet, "centered_clip")
    # in each part of m values: v₀ = the median = i + 1.5; honest distances 1.5√m, 0.5√m, 0.5√m, mallory's ≫, so
    # τ = (0.5√m + 1.5√m)/2 = √m and ‖v − v₀‖ ≤ L·τ = 3√m whatever mallory sends; over the 4 parts ‖v − v₀‖ ≤ 3√N,
    # i.e. a root-mean-square deviation of at most 3, against ≈ 3.7·10⁸ for the mean
    deviation = result - (IDX + 1.5)
    assert float(torch.linalg.vector_norm(deviation)) <= 3 * math.sqrt(N)
    # and it is exactly what the reducer computes on each part, as each part's reducer computed it
    expected = torch.cat([centered_clip([v[p] for v in POISONED], [1.0] * 4) for p in PARTS])
    assert torch.equal(result, expected)
