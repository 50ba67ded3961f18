"""Pseudo-gradient encodings on the wire (src/koinon/swarm/compression.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hivemind.compression import CompressionInfo
from hivemind.proto import runtime_pb2

from koinon.swarm.compression import INT8_BLOCK, BlockwiseInt8, get_compression, roundtrip


def _log_uniform(n: int, low_exp: float, high_exp: float, generator: torch.Generator) -> torch.Tensor:
    """Values with random signs and magnitudes 2**u, u uniform in [low_exp, high_exp]."""
    exps = torch.empty(n).uniform_(low_exp, high_exp, generator=generator)
    signs = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    return (signs * torch.exp2(exps)).to(torch.float32)


def test_fp16_round_trip_relative_error_within_half_ulp():
    g = torch.Generator().manual_seed(0)
    # float16's normal range is [2**-14, 65504]; stay inside it
    x = _log_uniform(20_000, -14, 15.9, g)
    y = roundtrip(x, get_compression("fp16"))
    assert y.dtype == torch.float32 and y.shape == x.shape
    rel = ((y - x).abs() / x.abs()).max().item()
    assert rel <= 2**-11
    assert rel > 2**-13  # it really went through float16 (float32 would be ~2**-24)


def test_fp16_keeps_out_of_range_values_visible():
    # no clamp: a value beyond fp16's range (or an Inf) arrives as Inf, so the receiver can reject the part
    x = torch.tensor([1e6, -1e6, 65504.0, float("inf")], dtype=torch.float32)
    y = roundtrip(x, get_compression("fp16"))
    assert y.tolist() == [float("inf"), float("-inf"), 65504.0, float("inf")]


def test_none_round_trip_is_exact():
    x = torch.randn(1000)
    assert torch.equal(roundtrip(x, get_compression("none")), x)


@pytest.mark.parametrize("n", [1, 255, 256, 257, 3 * 256 + 17])
def test_int8_round_trip_error_within_absmax_over_254_per_block(n: int):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, generator=g)
    # blocks of very different magnitudes: the bound is per block, not global
    x = x * torch.exp2(torch.arange(n) // INT8_BLOCK * 4.0 - 8.0)
    y = roundtrip(x, get_compression("int8"))
    assert y.shape == x.shape and y.dtype == torch.float32
    for start in range(0, n, INT8_BLOCK):
        xb, yb = x[start : start + INT8_BLOCK], y[start : start + INT8_BLOCK]
        absmax = xb.abs().max().item()
        bound = absmax / 254 * (1 + 1e-5) + 1e-12  # + float32 slack in scale = absmax/127 and q·scale
        err = (yb - xb).abs().max().item()
        assert err <= bound, f"block at {start}: error {err} > {bound}"
        # and the block's largest element is reproduced almost exactly (code ±127)
        i = int(xb.abs().argmax())
        assert math.isclose(yb[i].item(), xb[i].item(), rel_tol=1e-6)


def test_int8_multidimensional_shape_is_preserved():
    x = torch.randn(3, 5, 70)
    y = roundtrip(x, get_compression("int8"))
    assert y.shape == (3, 5, 70)
    assert (y - x).abs().max() <= x.abs().max() / 254 * 1.001


def test_int8_all_zeros_round_trip_exactly():
    x = torch.zeros(600)
    y = roundtrip(x, get_compression("int8"))
    assert torch.equal(y, x)
    assert not torch.signbit(y).any()


def test_int8_zero_block_next_to_nonzero_blocks():
    x = torch.zeros(3 * INT8_BLOCK)
    x[:INT8_BLOCK] = torch.linspace(-1, 1, INT8_BLOCK)
    x[2 * INT8_BLOCK :] = 1e-3
    y = roundtrip(x, get_compression("int8"))
    assert torch.equal(y[INT8_BLOCK : 2 * INT8_BLOCK], torch.zeros(INT8_BLOCK))
    assert torch.allclose(y[2 * INT8_BLOCK :], x[2 * INT8_BLOCK :], rtol=1e-6, atol=0)


@pytest.mark.parametrize("poison", [float("nan"), float("inf"), float("-inf")])
def test_int8_non_finite_value_poisons_exactly_its_block(poison: float):
    x = torch.randn(4 * INT8_BLOCK)
    x[2 * INT8_BLOCK + 10] = poison
    with np.errstate(invalid="ignore"):  # 0 · inf while decoding is the point here
        y = roundtrip(x, get_compression("int8"))
    poisoned = y[2 * INT8_BLOCK : 3 * INT8_BLOCK]
    assert not torch.isfinite(poisoned).any(), "every value of the poisoned block must be non-finite"
    others = torch.cat([y[: 2 * INT8_BLOCK], y[3 * INT8_BLOCK :]])
    assert torch.isfinite(others).all()


def _compress_int8(x: torch.Tensor) -> runtime_pb2.Tensor:
    return BlockwiseInt8().compress(x, CompressionInfo.from_tensor(x))


@pytest.mark.parametrize("n", [1, 256, 257, 1000, 4096])
def test_int8_wire_size(n: int):
    msg = _compress_int8(torch.randn(n))
    assert msg.compression == runtime_pb2.CompressionType.BLOCKWISE_8BIT
    assert len(msg.buffer) == n + 4 * math.ceil(n / 256)


@pytest.mark.parametrize("delta", [-1, 1, -4])
def test_int8_extract_rejects_buffer_of_wrong_length(delta: int):
    msg = _compress_int8(torch.randn(300))
    bad = runtime_pb2.Tensor()
    bad.CopyFrom(msg)
    bad.buffer = msg.buffer[:delta] if delta < 0 else msg.buffer + b"\x00" * delta
    with pytest.raises(ValueError, match="int8 part has"):
        BlockwiseInt8().extract(bad)
    assert BlockwiseInt8().extract(msg).shape == (300,)  # the intact message decodes


def test_int8_rejects_integer_tensors():
    x = torch.arange(10)
    with pytest.raises(ValueError):
        BlockwiseInt8().compress(x, CompressionInfo.from_tensor(x))
