"""Training: what one peer computes (DESIGN §4).

- ``model.py``: the causal LM built from a ``transformers`` GPT-2 config (no download), size presets, the flat
  parameter vector θ and its hash.
- ``data.py``: byte-level corpus from local files, held-out validation split, per-(member, round) shards.
- ``diloco.py``: DiLoCo's inner loop (AdamW, H steps) and the outer Nesterov SGD on the averaged pseudo-gradient.
"""

from koinon.training.data import Corpus, default_data_paths
from koinon.training.diloco import InnerTrainer, OuterOptimizer
from koinon.training.model import build_model, flat_parameters, load_flat_parameters, theta_hash

__all__ = [
    "Corpus",
    "InnerTrainer",
    "OuterOptimizer",
    "build_model",
    "default_data_paths",
    "flat_parameters",
    "load_flat_parameters",
    "theta_hash",
]
