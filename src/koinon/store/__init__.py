"""Checkpoints (DESIGN §8): ``checkpoint.py`` writes θ as safetensors named by content hash, atomically."""

from koinon.store.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["load_checkpoint", "save_checkpoint"]
