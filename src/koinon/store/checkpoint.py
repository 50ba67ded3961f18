"""Checkpoints: the model's tensors as safetensors, named by θ's hash, written atomically.

A save writes ``<hash>.safetensors.tmp``, fsyncs it, renames it over the final name and fsyncs the folder, then
updates ``LATEST`` the same way: a crash at any point leaves the previous checkpoint and pointer intact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from koinon.config import TrainingConfig
from koinon.errors import HashMismatch, StateError
from koinon.training.model import flat_parameters, load_flat_parameters, theta_hash


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    theta: torch.Tensor,
    round_no: int,
    config: TrainingConfig,
    update_latest: bool = True,
) -> Path:
    """Save θ (as the model's named tensors) and return the checkpoint's path. ``LATEST`` names it unless
    ``update_latest`` is False (a fetched, older checkpoint)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    digest = theta_hash(theta)
    path = folder / f"{digest[:16]}.safetensors"
    if not path.exists():
        load_flat_parameters(model, theta)
        tensors = {name: p.detach().clone().contiguous() for name, p in model.named_parameters()}
        metadata = {"theta_hash": digest, "round": str(round_no), "config": config.canonical_json().decode()}
        _atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    if update_latest:
        _atomic_write(folder / "LATEST", lambda tmp: tmp.write_text(path.name + "\n"))
    return path


def load_checkpoint(path: Path, model: torch.nn.Module) -> dict:
    """Load a checkpoint into ``model``; verify θ against the hash in its name and metadata."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as e:
        raise StateError(f"checkpoint {path} cannot be read ({e}); it may be truncated") from e
    names = [name for name, _ in model.named_parameters()]
    if set(names) - set(tensors):
        raise StateError(f"checkpoint {path} lacks tensors {sorted(set(names) - set(tensors))[:3]}")
    params = dict(model.named_parameters())
    misfit = [n for n in names if tensors[n].shape != params[n].shape]
    if misfit:
        raise StateError(
            f"checkpoint {path} does not fit this model (was it saved with another model size?): "
            f"{misfit[0]} has shape {tuple(tensors[misfit[0]].shape)}, expected {tuple(params[misfit[0]].shape)}"
        )
    flat = torch.cat([tensors[n].reshape(-1).to(torch.float32) for n in names])
    if theta_hash(flat) != metadata.get("theta_hash") or not path.name.startswith(theta_hash(flat)[:16]):
        raise HashMismatch(f"checkpoint {path} does not match its hash; the model was left unchanged")
    model.load_state_dict(tensors, strict=False)
    digest = theta_hash(flat_parameters(model))
    if digest != metadata.get("theta_hash") or not path.name.startswith(digest[:16]):
        raise HashMismatch(f"checkpoint {path} does not match its hash")
    return {
        "theta_hash": digest,
        "round": int(metadata.get("round", -1)),
        "config": json.loads(metadata.get("config", "{}")),
    }


def read_checkpoint(path: Path) -> tuple[torch.Tensor, dict]:
    """θ (flat, float32) and the metadata of a checkpoint file, without a model at hand (one is built from the
    configuration it records). Raises StateError/HashMismatch like :func:`load_checkpoint`."""
    from safetensors import safe_open

    from koinon.training.model import build_model

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        config = TrainingConfig(**json.loads(metadata.get("config", "{}")))
    except Exception as e:
        raise StateError(f"checkpoint {path} cannot be read ({e}); it may be truncated") from e
    model = build_model(config)
    meta = load_checkpoint(path, model)
    return flat_parameters(model), meta


def save_content(folder: Path, content: bytes, round_no: int, config: TrainingConfig) -> Path:
    """Save a checkpoint from its content (θ as float32 bytes, e.g. fetched from peers)."""
    from koinon.training.model import build_model

    model = build_model(config)
    flat = torch.frombuffer(bytearray(content), dtype=torch.float32)
    if flat.numel() != sum(p.numel() for p in model.parameters()):
        raise StateError(f"the checkpoint's {flat.numel()} values do not fit a {config.model_size} model")
    return save_checkpoint(folder, model, flat, round_no, config, update_latest=False)


def resolve_checkpoint(folder: Path, ref: str) -> Path:
    """A checkpoint file in ``folder`` by reference: ``latest`` or a θ hash (8 hex digits at least)."""
    folder = Path(folder)
    if ref == "latest":
        try:
            name = (folder / "LATEST").read_text().strip()
        except OSError:
            raise StateError(f"no checkpoint in {folder} yet (no LATEST); train a round or fetch one") from None
        return folder / name
    text = ref.strip().lower()
    if len(text) < 8 or any(c not in "0123456789abcdef" for c in text):
        raise StateError(f"checkpoint {ref!r}: give `latest`, `release:TAG` or at least 8 hex digits of its θ hash")
    matches = sorted(p for p in folder.glob("*.safetensors") if p.name.startswith(text[:16]))
    if len(matches) != 1:
        raise StateError(
            f"checkpoint {ref!r}: {'no' if not matches else len(matches)} checkpoint(s) in {folder} match"
            + ("; `koinon checkpoints` lists them" if not matches else "")
        )
    return matches[0]
