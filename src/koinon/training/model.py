"""The shared model: a small GPT-2 built from a config (nothing downloaded), and θ as one flat float32 vector.

Tokens are bytes, numbered as ByT5 numbers them (id = byte + 3; 0 pad, 1 eos, 2 unk; vocabulary 384), so an
export can ship ``transformers``' ``ByT5Tokenizer``, which needs no vocabulary file.
"""

from __future__ import annotations

import hashlib

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from koinon.config import TrainingConfig

VOCAB_SIZE = 384
BYTE_OFFSET = 3
PAD_ID, EOS_ID = 0, 1

# n_layer, n_embd, n_head: "tiny" ≈ 0.46 M parameters (DESIGN §4's reference simulation), one step of 8×128
# tokens ≈ 45 ms on one core of the CI machine; "small" ≈ 3.4 M; "base" ≈ 11 M.
MODEL_PRESETS: dict[str, tuple[int, int, int]] = {
    "tiny": (2, 128, 4),
    "small": (4, 256, 4),
    "base": (6, 384, 6),
}


def encode_text(text: str) -> list[int]:
    """Text → token ids (its UTF-8 bytes, shifted past the special tokens)."""
    return [b + BYTE_OFFSET for b in text.encode()]


def token_bytes(ids: list[int]) -> bytes:
    """The bytes behind token ids; special tokens (pad, end-of-text, unknown) have none."""
    return bytes(i - BYTE_OFFSET for i in ids if BYTE_OFFSET <= i < BYTE_OFFSET + 256)


def decode_ids(ids: list[int]) -> str:
    """Token ids → text; bytes that are not UTF-8 become U+FFFD."""
    return token_bytes(ids).decode(errors="replace")


def gpt2_config(config: TrainingConfig) -> GPT2Config:
    n_layer, n_embd, n_head = MODEL_PRESETS[config.model_size]
    return GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_positions=config.seq_len,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        n_inner=4 * n_embd,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=EOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        tie_word_embeddings=True,
    )


def build_model(config: TrainingConfig) -> GPT2LMHeadModel:
    """Build the model with parameters drawn from ``config.seed``: every founding peer gets the same θ₀."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = GPT2LMHeadModel(gpt2_config(config))
    model.train()
    return model


def flat_parameters(model: torch.nn.Module) -> torch.Tensor:
    """θ as one float32 vector, in ``named_parameters()`` order (tied weights once). Shape: (P,)."""
    return torch.cat([p.detach().reshape(-1).to(torch.float32) for p in model.parameters()])


@torch.no_grad()
def load_flat_parameters(model: torch.nn.Module, flat: torch.Tensor) -> None:
    """Copy a flat vector made by :func:`flat_parameters` back into the model."""
    total = sum(p.numel() for p in model.parameters())
    if flat.numel() != total:
        raise ValueError(f"flat vector has {flat.numel()} values, the model has {total} parameters")
    offset = 0
    for p in model.parameters():
        p.copy_(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()


def theta_hash(flat: torch.Tensor) -> str:
    """SHA-256 of θ's little-endian float32 bytes: equal hashes mean bit-identical parameters."""
    assert flat.dtype == torch.float32 and flat.dim() == 1, f"expected a flat float32 vector, got {flat.dtype}"
    return hashlib.sha256(flat.contiguous().numpy().tobytes()).hexdigest()
