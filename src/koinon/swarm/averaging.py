"""Exact averaging of pseudo-gradients over hivemind, so every participant receives the *same* bytes.

hivemind's butterfly all-reduce splits the vector into parts; peer k reduces part k for the whole group and sends
it back. Stock hivemind sends back ``average − sender's part`` and each peer adds that delta to its own tensor,
which leaves peers' results a few ulps apart and, when a reducer dies mid-exchange, silently leaves that part
un-averaged on some peers (shared/HIVEMIND.md, traps 2 and 3). ``ExactAllReduceRunner`` changes three things:

1. The reducer sends back the averaged part itself, encoded with the sender's compression; the reducer passes
   its own result through the same encode/decode, so all peers hold identical values for every part.
2. A part that contains NaN/Inf, has the wrong shape or an invalid weight is rejected: it counts with weight 0
   (the exchange goes on, so the sender's all-reduce does not fail and split the round), and the rejection is
   logged with the sender's peer id and counted. A part that does not even decode ends the sender's stream.
3. ``ExactAverager`` copies results into the averaged tensors only when *every* part arrived; otherwise the
   attempt raises, hivemind retries matchmaking (without whoever died) within the step's deadline, and the
   local tensors are untouched in between.
4. Who counts, and with which wire encoding and reducer, is decided inside the all-reduce by :func:`group_decision`
   (``swarm/rounds.py``: ``decide_group``), a pure function of the group's all-gathered metadata
   (``step(gather=...)``), which every member receives identically, so every member takes the same decision
   without another message. Each member's gather is signed with its member key: a leader that relays the
   gathered data cannot change what a member said. Members that are not ``contributors`` (another pre-round
   state, electorate, configuration or governance state than the group's key; expelled; no samples; a bad
   signature or malformed metadata) still take part in the protocol, so nobody's all-reduce fails, but their
   parts count with weight 0; all members receive the contributors' average. Whether that average may become the
   swarm's next θ (a *candidate* group) is the host's decision from the same data (``Peer`` and
   ``RoundProtocol``). If all contributors have weight 0 the average is zeros (:class:`ExactPartReducer`; stock
   hivemind 1.1.12 would divide 0 by 0). When no member sent valid metadata, everyone counts with the averager's
   configured compression and reducer.
5. Each part is aggregated by the reducer of the group's key (``aggregation/reducers.py``: mean, trimmed mean,
   median, CenteredClip): the part reducer keeps every sender's (part, weight) and, once the part is complete,
   sends every sender ``reduce(reducer, parts, weights)`` instead of a running weighted mean. Left-out and
   rejected senders count with weight 0, which every reducer leaves out. This defends against Byzantine
   *senders*; a Byzantine peer that reduces a part for the others is not handled here (docs/training.md,
   "What remains open").

Bytes sent (all parts and results this peer put on the wire) are counted in shared memory, so the host process
can report them.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
from collections.abc import AsyncIterator, Mapping, Sequence

import torch
from hivemind.averaging import DecentralizedAverager
from hivemind.averaging.allreduce import AllReduceRunner, AveragingMode
from hivemind.averaging.partition import AllreduceException, BannedException, TensorPartReducer
from hivemind.compression import deserialize_torch_tensor, serialize_torch_tensor
from hivemind.p2p import PeerID
from hivemind.proto import averaging_pb2
from hivemind.utils.asyncio import aiter_with_timeout, amap_in_executor
from hivemind.utils.mpfuture import MPFuture
from hivemind.utils.streaming import combine_from_streaming

from koinon.aggregation import REDUCERS
from koinon.aggregation.reducers import reduce
from koinon.errors import StateError
from koinon.identity import verify_signature
from koinon.swarm.compression import get_compression
from koinon.swarm.compression import install as install_compression
from koinon.swarm.rounds import GroupDecision, decide_group
from koinon.swarm.rounds import left_out as _left_out

logger = logging.getLogger("koinon.swarm")


MAX_STATE_METADATA = 4096  # bytes of a donor's msgpack metadata (ours is three short fields)
STATE_TENSORS = 2  # a served state is θ and the outer momentum
STATE_SLACK = 64 * 1024  # serialization overhead allowed on top of 2 × 4 bytes per parameter
PART_SLACK = 4096  # bytes an all-reduce part may carry beyond 4 per value of the largest part (protobuf framing)


class StateCollector:
    """One donor's state-download stream, collected within a budget: at most ``STATE_TENSORS`` tensors,
    ``MAX_STATE_METADATA`` bytes of metadata, and 2 × 4 bytes per parameter of ``size`` (+ ``STATE_SLACK``) in all.

    A donor is any signer of a certificate, and it decides what it streams: without a budget one message more or
    one byte more would be kept until memory runs out. ``add`` raises :class:`~koinon.errors.StateError` the moment
    the stream leaves the budget, so a lying donor costs at most the budget before the next signer is tried."""

    def __init__(self, size: int) -> None:
        self.budget = STATE_TENSORS * size * 4 + STATE_SLACK
        self.received = 0
        self.metadata = b""
        self._parts: list = []
        self._tensors: list[list] = []

    def add(self, message: averaging_pb2.DownloadData) -> None:
        self.received += message.ByteSize()
        if self.received > self.budget:
            raise StateError(f"the donor streamed over {self.budget} bytes, more than θ and momentum take")
        if message.metadata:
            if self.metadata or len(message.metadata) > MAX_STATE_METADATA:
                raise StateError(f"metadata sent twice or over {MAX_STATE_METADATA} bytes")
            self.metadata = message.metadata
        if message.tensor_part.dtype and self._parts:
            self._tensors.append(self._parts)
            self._parts = []
        if message.HasField("tensor_part"):
            self._parts.append(message.tensor_part)
        if len(self._tensors) + bool(self._parts) > STATE_TENSORS:
            raise StateError(f"more than {STATE_TENSORS} tensors")

    def result(self) -> tuple[bytes, list[torch.Tensor]]:
        """(metadata bytes, tensors); raises StateError if a tensor does not decode."""
        groups = [*self._tensors, *([self._parts] if self._parts else [])]
        try:
            return self.metadata, [deserialize_torch_tensor(combine_from_streaming(g)) for g in groups]
        except Exception as e:  # malformed bytes from the network
            raise StateError(f"a served tensor does not decode ({type(e).__name__}: {e})") from e


def part_budget(shapes: Sequence[torch.Size]) -> int:
    """The most bytes one all-reduce part may take: 4 per value of the largest part (float32 is the widest
    encoding we use) plus ``PART_SLACK``."""
    return max((s.numel() for s in shapes), default=0) * 4 + PART_SLACK


def decode_part(msg: averaging_pb2.AveragingData, most: int) -> tuple[torch.Tensor | None, float, int, str]:
    """(part, weight, compression, "") or (None, 0, 0, why) for a sender's message: a part over ``most`` bytes is
    refused before it is decoded (memory stays O(part)), and bytes that do not decode are refused, never raised."""
    if msg.tensor_part.ByteSize() > most:
        return None, 0.0, 0, f"a part of {msg.tensor_part.ByteSize()} bytes, over the {most} a part takes"
    try:
        return deserialize_torch_tensor(msg.tensor_part), msg.weight, msg.tensor_part.compression, ""
    except Exception as e:  # malformed bytes from the network: reject the sender, never crash
        return None, 0.0, 0, f"undecodable part ({type(e).__name__}: {e})"


def _peer_key(peer: object) -> str | None:
    """Base58 peer id from a base58 string or a ``PeerID`` (what ``step()`` returns); None for anything else."""
    if isinstance(peer, str):
        return peer
    if isinstance(peer, PeerID):
        return peer.to_base58()
    return None


def by_member(gathered: Mapping[object, object]) -> dict[str, object]:
    """The gathered dict keyed by base58 member id (``step()`` returns ``PeerID`` keys)."""
    out: dict[str, object] = {}
    for peer, info in gathered.items():
        key = _peer_key(peer)
        if key is not None:
            out[key] = info
    return out


def _known_encodings(info: object) -> object:
    """``info``, or None (malformed) when it names a compression or reducer this peer does not have."""
    if isinstance(info, dict):
        compression, reducer = info.get("compression"), info.get("reducer")
        try:
            get_compression(compression)  # type: ignore[arg-type]
        except (KeyError, TypeError):
            return None
        if reducer not in REDUCERS:
            return None
    return info


def group_decision(gathered: Mapping[object, object]) -> GroupDecision | None:
    """:func:`koinon.swarm.rounds.decide_group` on a gathered dict keyed by ``PeerID`` or base58 strings, with
    member signatures checked by ``identity.verify_signature``; a member naming an unknown compression or reducer
    counts as malformed."""
    return decide_group({m: _known_encodings(v) for m, v in by_member(gathered).items()}, verify_signature)


def left_out(gathered: Mapping[object, object], decision: GroupDecision) -> dict[str, str]:
    """Why each member of ``gathered`` that is not a contributor was left out (base58 peer id → reason)."""
    return _left_out(by_member(gathered), decision, verify_signature)


class ExactPartReducer(TensorPartReducer):
    """hivemind's part reducer, except that a complete part is aggregated by ``reduce(reducer, parts, weights)``.

    Stock hivemind 1.1.12 keeps a running weighted sum and returns ``accumulator / denominator``: a single
    Byzantine sender moves that mean anywhere, and when every sender counted with weight 0 it is 0/0 = NaN. Here
    every sender's (part, weight) for the current part is kept until the part is complete (``num_current_senders``
    parts, as in hivemind: a sender banned before it sent this part is not waited for), then the configured
    reducer (``aggregation/reducers.py``) aggregates them, in sender order, once; every sender of the part awaits
    that same tensor. Senders with weight 0 (rejected or left-out parts, replaced by zeros) do not count, and a
    part nobody counts in averages to zeros.
    """

    def __init__(self, part_shapes: Sequence[torch.Size], num_senders: int, reducer: str = "mean") -> None:
        self.reducer = reducer
        self.received: dict[int, tuple[torch.Tensor, float]] = {}  # sender index → (its current part, weight)
        super().__init__(part_shapes, num_senders)
        if reducer not in REDUCERS:
            self.finished.set()  # never used: keeps hivemind's __del__ from warning "received 0.0% of input tensors"
            raise ValueError(f"unknown reducer {reducer!r}; choose one of {', '.join(REDUCERS)}")

    def reset_accumulators(self) -> None:
        self.received = {}
        super().reset_accumulators()

    async def accumulate_part(
        self, sender_index: int, part_index: int, tensor_part: torch.Tensor, weight: float = 1.0
    ) -> torch.Tensor:
        """hivemind 1.1.12's ``TensorPartReducer.accumulate_part`` (same waiting, banning and futures), except that
        the part is kept for the reducer instead of being added into a running sum."""
        assert 0 <= sender_index < self.num_senders, "invalid sender index"
        assert 0 <= part_index < self.num_parts, "invalid part index"
        self.num_parts_received[sender_index] += 1

        while part_index > self.current_part_index:
            # wait for previous parts to finish processing ...
            await asyncio.wait(
                {self.current_part_future, asyncio.create_task(self.finished.wait())},
                return_when=asyncio.FIRST_COMPLETED,
            )
            if self.finished.is_set():
                raise AllreduceException(f"attempted to aggregate part in a finalized {self.__class__.__name__}")

        if self.sender_failed_after[sender_index] != float("inf"):
            raise BannedException(f"sender {sender_index} was banned in background")
        assert part_index == self.current_part_index

        current_part_future = self.current_part_future

        if part_index < self.sender_failed_after[sender_index]:
            self.received[sender_index] = (tensor_part, weight)
            self.current_part_accumulated_from += 1
            self.denominator += weight
            self.check_current_part_finished()
        return await current_part_future

    def check_current_part_finished(self) -> None:
        assert self.current_part_accumulated_from <= self.num_current_senders
        if self.current_part_accumulated_from == self.num_current_senders:
            senders = sorted(self.received)
            if senders:
                parts = [self.received[i][0] for i in senders]
                weights = [self.received[i][1] for i in senders]
                aggregate = reduce(self.reducer, parts, weights)  # (part size,) float32
            else:  # every sender failed before sending this part
                aggregate = torch.zeros(self.part_shapes[self.current_part_index])
            self.current_part_future.set_result(aggregate)
            self.reset_accumulators()


class ExactAllReduceRunner(AllReduceRunner):
    """An ``AllReduceRunner`` that yields averaged parts (not deltas), identical on every peer.

    ``left_out_peers`` (peer id → reason): group members whose parts count with weight 0 (see :func:`group_decision`);
    they still send and receive, so the exchange completes for everybody. ``reducer``: how this peer aggregates the
    part it reduces for the group (a name in ``aggregation.REDUCERS``).
    """

    bytes_sent: mp.Value  # set by ExactAverager
    rejected: mp.Value

    def __init__(
        self, *, left_out_peers: Mapping[PeerID, str] | None = None, reducer: str = "mean", **kwargs: object
    ) -> None:
        super().__init__(**kwargs)
        self.left_out_peers = dict(left_out_peers or {})
        if self.peer_id in self.left_out_peers:
            self.weight = 0.0  # what we send says so too; the reducers zero our parts anyway
        # a failed reducer's parts are filled with our local part; we then refuse the whole result (see run_exact)
        self.tensor_part_container.return_deltas = False
        stock = self.tensor_part_reducer
        stock.finished.set()  # never used: keeps its __del__ from warning "received 0.0% of input tensors"
        self.tensor_part_reducer = ExactPartReducer(stock.part_shapes, stock.num_senders, reducer=reducer)

    def _count(self, nbytes: int) -> None:
        with self.bytes_sent.get_lock():
            self.bytes_sent.value += nbytes

    def _note_rejection(self, peer_id: PeerID, reason: str) -> None:
        logger.warning("rejected pseudo-gradient part from peer %s: %s", peer_id.to_base58(), reason)
        with self.rejected.get_lock():
            self.rejected.value += 1

    async def _reject(self, peer_id: PeerID, reason: str) -> None:
        self._note_rejection(peer_id, reason)
        await self._ban_sender(peer_id)

    async def _communicate_with_peer(self, peer_id: PeerID) -> None:
        if peer_id != self.peer_id:
            return await super()._communicate_with_peer(peer_id)
        peer_index = self.ordered_peer_ids.index(peer_id)
        sender_index = self.sender_peer_ids.index(peer_id)
        compression = self.tensor_part_container.compression
        for part_index, tensor_part in enumerate(self.parts_for_local_averaging):
            # our own part is encoded and decoded as it would be on the way to a remote reducer
            tensor_part = deserialize_torch_tensor(serialize_torch_tensor(tensor_part, compression.compression_type))
            weight = self.weight
            if self.peer_id in self.left_out_peers:
                tensor_part, weight = torch.zeros_like(tensor_part), 0.0  # decided by group_decision
            elif not torch.isfinite(tensor_part).all():
                # left out of this part's average with weight 0, without breaking the protocol for the others
                logger.warning("our own pseudo-gradient part %d contains NaN or Inf: contributing nothing", part_index)
                tensor_part, weight = torch.zeros_like(tensor_part), 0.0
            averaged_part = await self.tensor_part_reducer.accumulate_part(
                sender_index, part_index, tensor_part, weight=weight
            )
            result = deserialize_torch_tensor(serialize_torch_tensor(averaged_part, compression.compression_type))
            self.tensor_part_container.register_processed_part(peer_index, part_index, result)

    async def _generate_input_for_peer(self, peer_index: int) -> AsyncIterator[averaging_pb2.AveragingData]:
        async for message in super()._generate_input_for_peer(peer_index):
            self._count(message.ByteSize())
            yield message

    async def _accumulate_parts_streaming(
        self, stream: AsyncIterator[averaging_pb2.AveragingData], sender_index: int
    ) -> AsyncIterator[averaging_pb2.AveragingData]:
        sender = self.sender_peer_ids[sender_index]
        part_index = 0
        loop = asyncio.get_event_loop()
        shapes = self.tensor_part_reducer.part_shapes
        most = part_budget(shapes)

        try:
            async for part, weight, compression, error in amap_in_executor(
                lambda msg: decode_part(msg, most), stream, max_prefetch=self.tensor_part_container.prefetch
            ):
                if not error and part_index >= len(shapes):
                    error = f"more than the {len(shapes)} parts of the all-reduce"
                if error:  # not even a tensor of ours: the stream is garbage, stop listening to it
                    await self._reject(sender, error)
                    break
                expected = shapes[part_index]
                if sender in self.left_out_peers:
                    # not a contributor this round (group_decision, logged once by ExactAverager): weight 0, and a
                    # zero tensor so that even a NaN it sent cannot reach the accumulator (0 · NaN = NaN)
                    part, weight = torch.zeros(expected), 0.0
                elif part.shape != expected:
                    error = f"part {part_index} has shape {tuple(part.shape)}, expected {tuple(expected)}"
                elif not torch.isfinite(part).all():
                    error = f"part {part_index} contains NaN or Inf"
                elif not (weight >= 0 and weight < float("inf")):
                    error = f"invalid weight {weight}"
                if error:
                    # left out of this part's average (weight 0) but the exchange goes on: banning the sender
                    # would make its all-reduce fail and send it looking for another group, splitting the round
                    self._note_rejection(sender, error)
                    part, weight = torch.zeros(expected), 0.0
                try:
                    averaged = await self.tensor_part_reducer.accumulate_part(
                        sender_index, part_index, part, weight=weight
                    )
                    part_index += 1
                except BannedException:
                    break
                serialized = await loop.run_in_executor(None, serialize_torch_tensor, averaged, compression)
                reply = averaging_pb2.AveragingData(code=averaging_pb2.AVERAGED_PART, tensor_part=serialized)
                self._count(reply.ByteSize())
                yield reply
        finally:
            if part_index != self.tensor_part_reducer.num_parts:
                await self._ban_sender(sender)


class ExactAverager(DecentralizedAverager):
    """A ``DecentralizedAverager`` that runs :class:`ExactAllReduceRunner` and applies results all-or-nothing.

    ``reducer`` (keyword, default ``mean``) is used only when a group's gathered metadata yields no decision;
    otherwise the reducer the group's canonical members voted for is used.

    It also serves and fetches a peer's state (θ, outer momentum, round) through hivemind's download RPC; the
    host process provides the state with :meth:`set_state_provider`.
    """

    def __init__(self, *args: object, reducer: str = "mean", **kwargs: object) -> None:
        if reducer not in REDUCERS:
            raise ValueError(f"unknown reducer {reducer!r}; choose one of {', '.join(REDUCERS)}")
        self.reducer = reducer
        install_compression()
        self.bytes_sent = mp.Value("q", 0)
        self.rejected = mp.Value("q", 0)
        self._state_provider = None
        super().__init__(*args, **kwargs)

    async def _run_allreduce_inplace_(
        self, tensors: Sequence[torch.Tensor], group_info, group_id: bytes | None = None, **kwargs
    ) -> None:
        group_id = group_info.group_id if group_id is None else group_id
        gathered = self._decode_gathered(group_info)
        decision = group_decision(gathered)
        leaving: dict[PeerID, str] = {}
        reducer = self.reducer
        if decision is None:
            logger.debug("no well-formed gathered metadata: everyone counts, configured compression and reducer")
        else:
            reducer = decision.reducer
            # every member computes this same decision from the same gathered bytes, so all of them partition the
            # vector for the same encoding and zero the same senders
            kwargs["compression"] = get_compression(decision.compression)
            reasons = left_out(gathered, decision)
            leaving = {p: reasons[p.to_base58()] for p in group_info.peer_ids if p.to_base58() in reasons}
            if leaving:
                logger.info(
                    "height %d: %d of %d group members left out of the average (weight 0): %s",
                    decision.height,
                    len(leaving),
                    len(group_info.peer_ids),
                    "; ".join(f"{p.to_base58()}: {why}" for p, why in leaving.items()),
                )
        runner = ExactAllReduceRunner(
            p2p=self._p2p,
            servicer_type=type(self),
            prefix=self.prefix,
            tensors=tensors,
            group_id=group_id,
            ordered_peer_ids=group_info.peer_ids,
            left_out_peers=leaving,
            reducer=reducer,
            **kwargs,
        )
        runner.bytes_sent, runner.rejected = self.bytes_sent, self.rejected
        assert group_id in self._running_groups, f"group {group_id} was not registered"
        self._running_groups[group_id].set_result(runner)
        if runner.modes[group_info.peer_ids.index(self.peer_id)] == AveragingMode.AUX:
            async for _ in runner:
                raise ValueError("auxiliary peers should not receive averaged tensors")
            return
        results = [result async for result in runner]
        failed = runner.tensor_part_container.failed_size
        if failed:
            raise AllreduceException(f"{failed} of {runner.tensor_part_container.total_size} values were not averaged")
        if not all(bool(torch.isfinite(result).all()) for result in results):
            raise AllreduceException("a reducer returned NaN or Inf; the result is refused")
        for tensor, result in zip(tensors, results, strict=True):
            tensor.copy_(result.reshape(tensor.shape))

    def _decode_gathered(self, group_info) -> dict[str, object]:
        """Each member's ``step(gather=...)`` value by base58 peer id, decoded as hivemind's ``_aggregate_with_group``
        does (``[bandwidth, mode, user bytes]``); a member whose bytes do not decode maps to None (malformed)."""
        gathered: dict[str, object] = {}
        for peer_id, blob in zip(group_info.peer_ids, group_info.gathered or (), strict=False):
            try:
                _bandwidth, _mode, user_bytes = self.serializer.loads(blob)
                gathered[peer_id.to_base58()] = self.serializer.loads(user_bytes)
            except Exception:  # bytes off the network: a malformed member, never a crash
                gathered[peer_id.to_base58()] = None
        return gathered

    def configure_matchmaking(self, min_group_size: int, target_group_size: int | None) -> None:
        """Change group sizes for the next step (the swarm's size changes as peers come and go)."""
        future = MPFuture()
        kwargs = dict(min_group_size=min_group_size, target_group_size=target_group_size, future=future)
        self._outer_pipe.send(("_configure_matchmaking", [], kwargs))
        future.result(timeout=10)

    async def _configure_matchmaking(self, min_group_size: int, target_group_size: int | None, future) -> None:
        mm = self._matchmaking
        mm.min_group_size = min_group_size
        mm.target_group_size = target_group_size
        mm.potential_leaders.target_group_size = target_group_size
        future.set_result(None)

    # --- state sharing -------------------------------------------------------------------------------------------
    def set_state_provider(self, provider) -> None:
        """``provider()`` returns (metadata dict, [tensors]) in the host process; served to downloading peers."""
        self._state_provider = provider

    def get_current_state(self):
        if self._state_provider is None:
            return dict(round=-1), [], None
        metadata, tensors = self._state_provider()
        return metadata, tensors, None

    def download_state(self, peer: PeerID, timeout: float, size: int) -> tuple[dict, list[torch.Tensor]] | None:
        """Fetch (metadata, tensors) from one given peer, at most what θ and momentum of ``size`` parameters take
        (:class:`StateCollector`); None if it fails, streams more, or has nothing to share."""
        future = MPFuture()
        self._outer_pipe.send(
            ("_download_state_from", [], dict(peer=peer.to_bytes(), timeout=timeout, size=size, future=future))
        )
        return future.result(timeout=timeout + 5)

    async def _download_state_from(self, peer: bytes, timeout: float, size: int, future) -> None:
        try:
            stub = self.get_stub(self._p2p, PeerID(peer), namespace=self.prefix)
            stream = await stub.rpc_download_state(averaging_pb2.DownloadRequest())
            collector = StateCollector(size)
            async for message in aiter_with_timeout(stream, timeout=timeout):
                collector.add(message)
            blob, tensors = collector.result()
            metadata = self.serializer.loads(blob) if blob else None
            future.set_result((metadata, tensors) if isinstance(metadata, dict) else None)
        except Exception as e:
            logger.info("state download from %s failed: %r", PeerID(peer).to_base58(), e)
            if not future.done():
                future.set_result(None)


__all__ = [
    "ExactAllReduceRunner",
    "ExactAverager",
    "ExactPartReducer",
    "StateCollector",
    "decode_part",
    "part_budget",
    "group_decision",
    "left_out",
]
