"""Checkpoints: safetensors tensors + a JSON metadata sidecar, written atomically.

A checkpoint ``NAME`` is two files, ``NAME.safetensors`` (tensors only: nothing is unpickled on load) and
``NAME.json`` (metadata: split, class names, embedding provider, config, stage). Both are written to
temporary names and renamed into place, the JSON last, so a checkpoint whose JSON exists is complete: a kill
at any moment leaves either the previous checkpoint or the new one, never a torn one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from zeroseg.errors import ZeroSegError


def _paths(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_suffix(".safetensors"), p.with_suffix(".json")


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Atomically write ``tensors`` and ``meta``; returns the .safetensors path."""
    st_path, js_path = _paths(path)
    st_path.parent.mkdir(parents=True, exist_ok=True)
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    tmp_st = st_path.with_name(st_path.name + ".tmp")
    tmp_js = js_path.with_name(js_path.name + ".tmp")
    save_file(flat, str(tmp_st))
    tmp_js.write_text(json.dumps(meta, indent=2, default=str) + "\n")
    with open(tmp_st, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp_st, st_path)
    os.replace(tmp_js, js_path)
    return st_path


def checkpoint_exists(path: str | Path) -> bool:
    """True when a complete checkpoint (both files) is at ``path``."""
    st_path, js_path = _paths(path)
    return st_path.is_file() and js_path.is_file()


def load_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """Only the JSON metadata of a checkpoint (cheap; used to pick the method that reads it).

    Raises:
        ZeroSegError: a missing or corrupt checkpoint, naming the file.
    """
    st_path, js_path = _paths(path)
    if not st_path.is_file():
        raise ZeroSegError(f"{st_path}: checkpoint not found")
    if not js_path.is_file():
        raise ZeroSegError(f"{js_path}: checkpoint metadata missing (incomplete checkpoint)")
    try:
        return json.loads(js_path.read_text())
    except json.JSONDecodeError as e:
        raise ZeroSegError(f"{js_path}: corrupt checkpoint metadata ({e.msg})") from None


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint` (no pickle involved).

    Raises:
        ZeroSegError: a missing, incomplete or corrupt checkpoint, naming the file.
    """
    meta = load_checkpoint_meta(path)
    st_path, _ = _paths(path)
    try:
        tensors = load_file(str(st_path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ZeroSegError(f"{st_path}: corrupt checkpoint ({str(e).splitlines()[0]})") from None
    return tensors, meta


def prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """``{prefix + key: tensor}`` -- to store several modules in one checkpoint."""
    return {f"{prefix}{k}": v for k, v in state.items()}


def unprefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``tensors`` under ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def save_training_state(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    meta: dict[str, Any],
) -> Path:
    """Write what a training loop needs to continue exactly where it stopped: the model weights, the optimiser's
    state (moments), the scheduler's step and the CPU RNG state, plus ``meta`` (e.g. the epoch or iteration)."""
    from zeroseg.engine.train import optimizer_to_tensors

    opt_t, opt_meta = optimizer_to_tensors(optimizer)
    tensors = {**prefixed(model.state_dict(), "model."), **prefixed(opt_t, "opt."), "rng.cpu": torch.get_rng_state()}
    return save_checkpoint(path, tensors, {**meta, "optimizer": opt_meta, "scheduler": scheduler.state_dict()})


def load_training_state(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[dict[str, Any], torch.Tensor]:
    """Restore a :func:`save_training_state` checkpoint into ``model``, ``optimizer`` and ``scheduler``.

    Returns:
        ``(meta, cpu_rng_state)``: the caller sets the RNG state when its data stream has reached the same point.
    """
    from zeroseg.engine.train import optimizer_from_tensors

    tensors, meta = load_checkpoint(path)
    model.load_state_dict(unprefixed(tensors, "model."))
    optimizer_from_tensors(optimizer, unprefixed(tensors, "opt."), meta["optimizer"])
    scheduler.load_state_dict(meta["scheduler"])
    return meta, tensors["rng.cpu"]
