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

Bytes sent (all parts and results this peer put on the wire) are counted in shared memory, so the host process
can report them.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
from collections.abc import AsyncIterator, Sequence

import torch
from hivemind.averaging import DecentralizedAverager
from hivemind.averaging.allreduce import AllReduceRunner, AveragingMode
from hivemind.averaging.partition import AllreduceException, BannedException
from hivemind.compression import deserialize_torch_tensor, serialize_torch_tensor
from hivemind.p2p import PeerID
from hivemind.proto import averaging_pb2
from hivemind.utils.asyncio import aiter_with_timeout, amap_in_executor
from hivemind.utils.mpfuture import MPFuture
from hivemind.utils.streaming import combine_from_streaming

from koinon.swarm.compression import install as install_compression

logger = logging.getLogger("koinon.swarm")


class ExactAllReduceRunner(AllReduceRunner):
    """An ``AllReduceRunner`` that yields averaged parts (not deltas), identical on every peer."""

    bytes_sent: mp.Value  # set by ExactAverager
    rejected: mp.Value

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        # a failed reducer's parts are filled with our local part; we then refuse the whole result (see run_exact)
        self.tensor_part_container.return_deltas = False

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
            # our own part goes through the wire encoding too, exactly as it would for a remote reducer
            # our own part is encoded and decoded as it would be on the way to a remote reducer
            tensor_part = deserialize_torch_tensor(serialize_torch_tensor(tensor_part, compression.compression_type))
            weight = self.weight
            if not torch.isfinite(tensor_part).all():
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

        def decode(msg: averaging_pb2.AveragingData) -> tuple[torch.Tensor | None, float, int, str]:
            try:
                return deserialize_torch_tensor(msg.tensor_part), msg.weight, msg.tensor_part.compression, ""
            except Exception as e:  # malformed bytes from the network: reject the sender, never crash
                return None, 0.0, 0, f"undecodable part ({type(e).__name__}: {e})"

        try:
            async for part, weight, compression, error in amap_in_executor(
                decode, stream, max_prefetch=self.tensor_part_container.prefetch
            ):
                if error:  # not even a tensor: the stream is garbage, stop listening to it
                    await self._reject(sender, error)
                    break
                expected = self.tensor_part_reducer.part_shapes[part_index]
                if part.shape != expected:
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

    It also serves and fetches a peer's state (θ, outer momentum, round) through hivemind's download RPC; the
    host process provides the state with :meth:`set_state_provider`.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        install_compression()
        self.bytes_sent = mp.Value("q", 0)
        self.rejected = mp.Value("q", 0)
        self._state_provider = None
        super().__init__(*args, **kwargs)

    async def _run_allreduce_inplace_(
        self, tensors: Sequence[torch.Tensor], group_info, group_id: bytes | None = None, **kwargs
    ) -> None:
        group_id = group_info.group_id if group_id is None else group_id
        runner = ExactAllReduceRunner(
            p2p=self._p2p,
            servicer_type=type(self),
            prefix=self.prefix,
            tensors=tensors,
            group_id=group_id,
            ordered_peer_ids=group_info.peer_ids,
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

    def download_state(self, peer: PeerID, timeout: float) -> tuple[dict, list[torch.Tensor]] | None:
        """Fetch (metadata, tensors) from one given peer; None if it fails or has nothing to share."""
        future = MPFuture()
        self._outer_pipe.send(("_download_state_from", [], dict(peer=peer.to_bytes(), timeout=timeout, future=future)))
        return future.result(timeout=timeout + 5)

    async def _download_state_from(self, peer: bytes, timeout: float, future) -> None:
        try:
            stub = self.get_stub(self._p2p, PeerID(peer), namespace=self.prefix)
            stream = await stub.rpc_download_state(averaging_pb2.DownloadRequest())
            metadata, parts, tensors = None, [], []
            async for message in aiter_with_timeout(stream, timeout=timeout):
                if message.metadata:
                    metadata = self.serializer.loads(message.metadata)
                if message.tensor_part.dtype and parts:
                    tensors.append(deserialize_torch_tensor(combine_from_streaming(parts)))
                    parts = []
                parts.append(message.tensor_part)
            if parts:
                tensors.append(deserialize_torch_tensor(combine_from_streaming(parts)))
            future.set_result((metadata, tensors) if metadata else None)
        except Exception as e:
            logger.info("state download from %s failed: %r", PeerID(peer).to_base58(), e)
            if not future.done():
                future.set_result(None)


__all__ = ["ExactAllReduceRunner", "ExactAverager"]
