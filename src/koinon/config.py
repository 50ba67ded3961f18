"""Training configuration: one dataclass every peer of a swarm must agree on, with validation that says how to fix
a bad value. The hash of its canonical JSON names the configuration in force (peers with a different hash never
average together: it is part of the averaging prefix)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from koinon.aggregation import REDUCERS
from koinon.errors import ConfigError

COMPRESSIONS = ("fp16", "int8", "none")
MODEL_SIZES = ("tiny", "small", "base")


@dataclass(frozen=True)
class TrainingConfig:
    """DiLoCo hyper-parameters (Douillard et al. 2023, arXiv 2311.08105, Algorithm 1) and the workload."""

    model_size: str = "tiny"  # see training/model.py MODEL_PRESETS
    seq_len: int = 128  # tokens per training sequence (bytes)
    batch_size: int = 8  # sequences per inner step
    inner_steps: int = 50  # H: inner AdamW steps per round
    inner_lr: float = 1e-3  # AdamW learning rate (constant after warm-up)
    inner_warmup: int = 20  # linear warm-up of the inner lr, counted in a peer's own inner steps
    inner_weight_decay: float = 0.1
    outer_lr: float = 0.7  # DiLoCo's outer Nesterov SGD (paper: lr 0.7, momentum 0.9)
    outer_momentum: float = 0.9
    compression: str = "fp16"  # pseudo-gradient encoding on the wire: fp16 | int8 | none
    # how each part of the pseudo-gradient is aggregated (aggregation/reducers.py): robust to a Byzantine minority
    reducer: str = "centered_clip"  # mean | trimmed_mean | median | centered_clip
    # spot-checks (verification/): the share of contributions re-executed (per mille), how many segments a round's
    # inner steps are cut into (a check re-executes one), and how many rounds a proven cheater is left out
    verify_permille: int = 650
    verify_segments: int = 16
    penalty_rounds: int = 5
    seed: int = 0  # initial parameters θ₀ are built from this seed, so every founding peer starts equal

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), {"int": int, "float": (int, float), "str": str}[str(f.type)]
            if isinstance(value, bool) or not isinstance(value, kind):
                raise ConfigError(f"{f.name} must be of type {f.type}, got {value!r}")
        if self.model_size not in MODEL_SIZES:
            raise ConfigError(f"model_size {self.model_size!r} is unknown; choose one of {', '.join(MODEL_SIZES)}")
        if self.compression not in COMPRESSIONS:
            raise ConfigError(f"compression {self.compression!r} is unknown; choose one of {', '.join(COMPRESSIONS)}")
        if self.reducer not in REDUCERS:
            raise ConfigError(f"reducer {self.reducer!r} is unknown; choose one of {', '.join(REDUCERS)}")
        for name in ("seq_len", "batch_size", "inner_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.verify_permille <= 1000:
            raise ConfigError(f"verify_permille must be in [0, 1000], got {self.verify_permille}")
        if not 1 <= self.verify_segments <= 512:
            raise ConfigError(f"verify_segments must be in [1, 512], got {self.verify_segments}")
        if self.penalty_rounds < 0:
            raise ConfigError(f"penalty_rounds must be at least 0, got {self.penalty_rounds}")
        if not 0 < self.inner_lr < 1:
            raise ConfigError(f"inner_lr must be in (0, 1), got {self.inner_lr}")
        if self.inner_warmup < 0:  # a negative warm-up would make the inner learning rate negative
            raise ConfigError(f"inner_warmup must be at least 0 (0: no warm-up), got {self.inner_warmup}")
        if not self.inner_weight_decay >= 0:
            raise ConfigError(f"inner_weight_decay must be at least 0, got {self.inner_weight_decay}")
        if not 0 < self.outer_lr <= 2:
            raise ConfigError(f"outer_lr must be in (0, 2], got {self.outer_lr}")
        if not 0 <= self.outer_momentum < 1:
            raise ConfigError(f"outer_momentum must be in [0, 1), got {self.outer_momentum}")

    def canonical_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":")).encode()

    def segment_bounds(self) -> list[int]:
        """The inner steps at which a round's trace records the optimiser state: 0, …, H (one segment each gap)."""
        n = min(self.verify_segments, self.inner_steps)
        return [self.inner_steps * i // n for i in range(n + 1)]

    def config_hash(self) -> str:
        return hashlib.sha256(self.canonical_json()).hexdigest()

    def replace(self, **changes: object) -> TrainingConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
