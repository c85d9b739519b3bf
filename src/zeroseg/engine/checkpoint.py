"""Checkpoints: one safetensors file holding the tensors and, in its header, the JSON metadata.

A checkpoint ``NAME`` is the single file ``NAME.safetensors``: tensors (nothing is unpickled on load) plus the
metadata (split, class names, embedding provider, config, stage) as the header entry ``zeroseg``. It is written
to a temporary name, flushed to disk and renamed into place in one step, so a kill at any moment leaves either
the previous checkpoint or the new one, never a torn one: tensors and metadata cannot come from two different
saves. On load the header is parsed and its metadata checked (``format``), and the tensor data must cover the
header's offsets exactly (safetensors' own check), so a truncated or foreign file is a one-line error.

Checkpoints written by earlier versions (tensors-only ``NAME.safetensors`` beside a ``NAME.json`` sidecar) are
still read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load, save

from zeroseg.errors import ZeroSegError

FORMAT = "zeroseg-checkpoint/2"
_META_KEY = "zeroseg"


def checkpoint_path(path: str | Path) -> Path:
    """The file of checkpoint ``path`` (``NAME``, ``NAME.safetensors`` or a legacy ``NAME.json``)."""
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_suffix(".safetensors")


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Atomically write ``tensors`` and ``meta`` as one file; returns its path.

    Raises:
        ZeroSegError: the folder cannot be written (read-only, full disk, a file in the way), naming it. Whatever
            was at ``path`` before is left untouched.
    """
    st_path = checkpoint_path(path)
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header = {_META_KEY: json.dumps({**meta, "format": FORMAT}, default=str)}
    data = save(flat, metadata=header)
    tmp = st_path.with_name(f".{st_path.name}.{os.getpid()}.tmp")
    try:
        st_path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, st_path)
    except OSError as e:
        raise ZeroSegError(f"{st_path}: cannot write checkpoint ({e.strerror or e.__class__.__name__})") from None
    finally:
        tmp.unlink(missing_ok=True)
    legacy = st_path.with_suffix(".json")
    if legacy.is_file():
        legacy.unlink()  # a sidecar of an earlier version would otherwise describe other tensors
    return st_path


def checkpoint_exists(path: str | Path) -> bool:
    """True when a checkpoint file is at ``path`` (it is complete by construction: see the module docstring)."""
    return checkpoint_path(path).is_file()


def _short(e: BaseException) -> str:
    return (str(e).splitlines() or [e.__class__.__name__])[0][:160]


def load_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """Only the metadata of a checkpoint (reads the header, not the tensors).

    Raises:
        ZeroSegError: a missing, truncated or foreign file, or unreadable metadata, naming the file.
    """
    st_path = checkpoint_path(path)
    if not st_path.is_file():
        raise ZeroSegError(f"{st_path}: checkpoint not found")
    try:
        with safe_open(str(st_path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ZeroSegError(f"{st_path}: not a readable checkpoint ({_short(e)})") from None
    if _META_KEY in header:
        text, source = header[_META_KEY], st_path
    else:
        sidecar = st_path.with_suffix(".json")
        if not sidecar.is_file():
            raise ZeroSegError(f"{st_path}: no zeroseg metadata in this safetensors file (not a zeroseg checkpoint)")
        try:
            text, source = sidecar.read_text(encoding="utf-8"), sidecar
        except (OSError, UnicodeDecodeError) as e:
            raise ZeroSegError(f"{sidecar}: unreadable checkpoint metadata ({_short(e)})") from None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise ZeroSegError(f"{source}: corrupt checkpoint metadata ({e.msg})") from None
    if not isinstance(meta, dict):
        raise ZeroSegError(f"{source}: checkpoint metadata must be a JSON object")
    return meta


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint` (no pickle involved).

    Raises:
        ZeroSegError: a missing, truncated or corrupt checkpoint, naming the file.
    """
    meta = load_checkpoint_meta(path)
    st_path = checkpoint_path(path)
    try:
        tensors = load(st_path.read_bytes())
    except (SafetensorError, OSError, ValueError) as e:
        raise ZeroSegError(f"{st_path}: corrupt checkpoint ({_short(e)})") from None
    return tensors, meta


def require(meta: dict[str, Any], keys: tuple[str, ...], path: str | Path) -> None:
    """Raise a one-line error naming ``path`` when its metadata lacks any of ``keys``."""
    missing = [k for k in keys if k not in meta]
    if missing:
        raise ZeroSegError(f"{checkpoint_path(path)}: checkpoint metadata lacks {', '.join(missing)}")


def load_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], path: str | Path, what: str) -> None:
    """``module.load_state_dict(tensors)`` with a one-line error naming the checkpoint and what does not match
    (missing or unexpected keys, shapes)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong = sorted(k for k in set(own) & set(tensors) if own[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                parts.append(f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)})")
        raise ZeroSegError(f"{checkpoint_path(path)}: {what} does not match the model: {'; '.join(parts)}")
    module.load_state_dict(tensors)


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
