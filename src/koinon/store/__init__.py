"""Checkpoints (DESIGN §8): ``checkpoint.py`` writes θ as safetensors named by content hash, atomically.

- ``fetch.py``: manifests, serving checkpoints in chunks, the resumable peer-to-peer fetch.
- ``provenance.py``: the provable model card.
- ``releases.py``: ``CheckpointKeeper`` — a training peer's side: save and record checkpoints with their lineage,
  fetch the released ones it lacks.
"""

from koinon.store.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["load_checkpoint", "save_checkpoint"]
