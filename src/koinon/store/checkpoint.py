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
    folder: Path, model: torch.nn.Module, theta: torch.Tensor, round_no: int, config: TrainingConfig
) -> Path:
    """Save θ (as the model's named tensors) and return the checkpoint's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    digest = theta_hash(theta)
    path = folder / f"{digest[:16]}.safetensors"
    if not path.exists():
        load_flat_parameters(model, theta)
        tensors = {name: p.detach().clone().contiguous() for name, p in model.named_parameters()}
        metadata = {"theta_hash": digest, "round": str(round_no), "config": config.canonical_json().decode()}
        _atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
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
