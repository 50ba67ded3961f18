"""Pseudo-gradient encodings on the wire.

- ``fp16``: IEEE half precision, hivemind's ``FLOAT16`` wire format but without its clamp to ±65504, so Inf stays
  Inf (and is rejected by the receiver). Relative error ≤ 2⁻¹¹ for values in fp16's normal range.
- ``int8``: per-block absmax quantisation, Koinon's own: blocks of ``INT8_BLOCK`` values, scale = absmax/127
  (float32), q = round(x/scale) ∈ [−127, 127]. Absolute error ≤ scale/2 = absmax/254 per block. Wire layout:
  ``int8[n] ‖ float32 scales[ceil(n/INT8_BLOCK)]``, little-endian. A NaN or ±Inf in a block makes that block's
  scale non-finite, so a receiver sees (and rejects) a poisoned part instead of a silently clipped one.

hivemind's wire format names encodings by a fixed protobuf enum. Koinon's int8 travels under the enum value
``BLOCKWISE_8BIT`` (hivemind's own implementation of it needs bitsandbytes, which Koinon does not install);
:func:`install` registers our implementation for that value in this process. Every Koinon peer does so, and a
non-Koinon hivemind peer is never in a Koinon averaging group (different prefix).
"""

from __future__ import annotations

import numpy as np
import torch
from hivemind.compression import CompressionBase, CompressionInfo, Float16Compression, NoCompression
from hivemind.compression import serialization as _serialization
from hivemind.proto import runtime_pb2

INT8_BLOCK = 256


class Float16(Float16Compression):
    """fp16 without hivemind's clamp to ±65504: an Inf (or a value beyond fp16's range) arrives as Inf, so the
    receiving reducer sees the poisoned part and rejects it instead of averaging a silently clipped value."""

    def compress(self, tensor: torch.Tensor, info: CompressionInfo, allow_inplace: bool = False) -> runtime_pb2.Tensor:
        if not torch.is_floating_point(tensor) or tensor.dtype == torch.bfloat16:
            raise ValueError(f"{self.__class__.__name__} does not support {tensor.dtype} tensors")
        tensor = tensor.detach().cpu()
        half = tensor.to(torch.float32).to(torch.float16)
        return runtime_pb2.Tensor(
            compression=self.compression_type,
            buffer=half.numpy().tobytes(),
            size=tensor.shape,
            dtype=tensor.numpy().dtype.name,
            requires_grad=False,
        )


class BlockwiseInt8(CompressionBase):
    """Int8 with one float32 absmax scale per block of ``INT8_BLOCK`` values."""

    compression_type = runtime_pb2.CompressionType.BLOCKWISE_8BIT

    @staticmethod
    def quantize(flat: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(int8 codes of shape (n,), float32 scales of shape (ceil(n/INT8_BLOCK),))."""
        n = flat.numel()
        padded = torch.zeros(-(-n // INT8_BLOCK) * INT8_BLOCK, dtype=torch.float32)
        padded[:n] = flat.reshape(-1).to(torch.float32)
        blocks = padded.view(-1, INT8_BLOCK)  # (nb, BLOCK)
        absmax = blocks.abs().amax(dim=1)  # NaN propagates: a poisoned block keeps a NaN scale
        scales = absmax / 127.0
        safe = torch.where(scales > 0, scales, torch.ones_like(scales))
        codes = torch.round(blocks / safe[:, None]).clamp_(-127, 127).nan_to_num_(0.0).to(torch.int8)
        return codes.view(-1)[:n].numpy(), scales.numpy().astype("<f4")

    @staticmethod
    def dequantize(codes: np.ndarray, scales: np.ndarray) -> torch.Tensor:
        n = codes.size
        padded = np.zeros(scales.size * INT8_BLOCK, dtype=np.float32)
        padded[:n] = codes.astype(np.float32)
        out = padded.reshape(-1, INT8_BLOCK) * scales.astype(np.float32)[:, None]
        return torch.from_numpy(out.reshape(-1)[:n].copy())

    def compress(self, tensor: torch.Tensor, info: CompressionInfo, allow_inplace: bool = False) -> runtime_pb2.Tensor:
        if not torch.is_floating_point(tensor):
            raise ValueError(f"{self.__class__.__name__} does not support {tensor.dtype} tensors")
        tensor = tensor.detach().cpu()
        codes, scales = self.quantize(tensor)
        return runtime_pb2.Tensor(
            compression=self.compression_type,
            buffer=codes.tobytes() + scales.tobytes(),
            size=tensor.shape,
            dtype=tensor.numpy().dtype.name,
            requires_grad=False,
        )

    def extract(self, serialized_tensor: runtime_pb2.Tensor) -> torch.Tensor:
        shape = tuple(serialized_tensor.size)
        n = int(np.prod(shape)) if shape else 1
        nb = -(-n // INT8_BLOCK)
        buffer = serialized_tensor.buffer
        if len(buffer) != n + 4 * nb:
            raise ValueError(f"int8 part has {len(buffer)} bytes, expected {n + 4 * nb} for shape {shape}")
        codes = np.frombuffer(buffer, dtype=np.int8, count=n)
        scales = np.frombuffer(buffer, dtype="<f4", offset=n, count=nb)
        return self.dequantize(codes, scales).reshape(shape)

    def estimate_compression_ratio(self, info: CompressionInfo) -> float:
        return (8.0 + 32.0 / INT8_BLOCK) / 32.0


_ENCODINGS: dict[str, CompressionBase] = {
    "fp16": Float16(),
    "int8": BlockwiseInt8(),
    "none": NoCompression(),
}


def install() -> None:
    """Make hivemind decode ``BLOCKWISE_8BIT`` parts with :class:`BlockwiseInt8` in this process."""
    _serialization._BASE_COMPRESSION_TYPES["BLOCKWISE_8BIT"] = _ENCODINGS["int8"]
    _serialization._BASE_COMPRESSION_TYPES["FLOAT16"] = _ENCODINGS["fp16"]


def get_compression(name: str) -> CompressionBase:
    install()
    return _ENCODINGS[name]


def roundtrip(tensor: torch.Tensor, compression: CompressionBase) -> torch.Tensor:
    """What a receiver decodes from ``tensor`` sent with ``compression``."""
    install()
    info = CompressionInfo.from_tensor(tensor)
    return _serialization.deserialize_torch_tensor(compression.compress(tensor, info)).detach()
