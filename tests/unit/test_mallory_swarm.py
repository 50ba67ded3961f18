"""Mallory on the swarm's byte streams (issue 17): a state donor and an all-reduce sender decide what they stream,
so what a peer keeps of it is bounded before it is decoded. Real hivemind messages, no sockets."""

from __future__ import annotations

import tracemalloc

import pytest
import torch
from hivemind.compression import serialize_torch_tensor
from hivemind.proto import averaging_pb2, runtime_pb2
from hivemind.utils.serializer import MSGPackSerializer
from hivemind.utils.streaming import split_for_streaming
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from koinon.errors import StateError
from koinon.swarm.averaging import (
    MAX_STATE_METADATA,
    StateCollector,
    decode_part,
    part_budget,
)

SIZE = 1000  # parameters of the model being synced


def served(tensors: list[torch.Tensor], metadata: dict | None = None) -> list[averaging_pb2.DownloadData]:
    """The messages hivemind's ``rpc_download_state`` streams for (metadata, tensors)."""
    blob = MSGPackSerializer.dumps(metadata if metadata is not None else dict(height=3, theta="ab", state="cd"))
    out = []
    for t in tensors:
        for part in split_for_streaming(serialize_torch_tensor(t), 4096):
            out.append(averaging_pb2.DownloadData(tensor_part=part, metadata=blob))
            blob = b""
    return out


def collect(messages) -> tuple[bytes, list[torch.Tensor]]:
    c = StateCollector(SIZE)
    for m in messages:
        c.add(m)
    return c.result()


def test_an_honest_donors_state_is_collected_whole():
    theta, momentum = torch.randn(SIZE), torch.randn(SIZE)
    blob, (a, b) = collect(served([theta, momentum]))
    assert MSGPackSerializer.loads(blob)["height"] == 3
    assert torch.equal(a, theta) and torch.equal(b, momentum)


def test_mallory_streams_a_state_ten_times_too_big_and_is_cut_off_within_the_budget():
    c = StateCollector(SIZE)
    messages = served([torch.randn(10 * SIZE), torch.randn(10 * SIZE)])
    with pytest.raises(StateError, match="more than θ and momentum take"):
        for m in messages:
            c.add(m)
    assert c.received <= c.budget + max(m.ByteSize() for m in messages)


def test_mallory_streams_a_third_tensor():
    with pytest.raises(StateError, match="more than 2 tensors"):
        collect(served([torch.randn(10), torch.randn(10), torch.randn(10)]))


def test_mallory_sends_metadata_too_big_or_twice():
    with pytest.raises(StateError, match="metadata"):
        collect(served([torch.randn(10)], metadata={"pad": "x" * MAX_STATE_METADATA}))
    twice = served([torch.randn(SIZE), torch.randn(SIZE)])
    twice[-1].metadata = twice[0].metadata
    with pytest.raises(StateError, match="metadata"):
        collect(twice)


def test_bytes_that_are_no_tensor_are_refused_with_a_clear_error():
    junk = averaging_pb2.DownloadData(
        metadata=b"\x80", tensor_part=runtime_pb2.Tensor(buffer=b"\x01\x02\x03", size=[7], dtype="float32")
    )
    with pytest.raises(StateError, match="does not decode"):
        collect([junk])


_tensor_parts = st.builds(
    runtime_pb2.Tensor,
    buffer=st.binary(max_size=5000),
    size=st.lists(st.integers(0, 1 << 20), max_size=4),
    dtype=st.sampled_from(["", "float32", "float16", "int64", "bool", "nonsense"]),
    compression=st.integers(0, 8),
)
_messages = st.builds(averaging_pb2.DownloadData, metadata=st.binary(max_size=5000), tensor_part=_tensor_parts)


@settings(max_examples=150, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_messages, max_size=12))
def test_fuzzed_state_streams_give_a_state_or_a_state_error_within_bounded_memory(messages):
    tracemalloc.start()
    try:
        try:
            collect(messages)
        except StateError:
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * StateCollector(SIZE).budget + (1 << 20), f"peak {peak} bytes for {len(messages)} messages"


def test_mallory_sends_an_all_reduce_part_bigger_than_any_part_and_it_is_refused_before_decoding():
    shapes = [torch.Size([100]), torch.Size([50])]
    most = part_budget(shapes)
    honest = averaging_pb2.AveragingData(tensor_part=serialize_torch_tensor(torch.randn(100)), weight=1.0)
    part, weight, _, error = decode_part(honest, most)
    assert error == "" and part.shape == (100,) and weight == 1.0
    huge = averaging_pb2.AveragingData(tensor_part=serialize_torch_tensor(torch.randn(100_000)), weight=1.0)
    part, _, _, error = decode_part(huge, most)
    assert part is None and "over the" in error


@settings(max_examples=150, derandomize=True, deadline=None)
@given(_tensor_parts, st.floats(allow_nan=True))
def test_fuzzed_all_reduce_parts_decode_or_give_a_reason_never_raise(tensor_part, weight):
    part, _, _, error = decode_part(averaging_pb2.AveragingData(tensor_part=tensor_part, weight=weight), 4096)
    assert (part is None) == bool(error)
