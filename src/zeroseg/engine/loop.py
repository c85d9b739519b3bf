"""A plain training loop, an evaluation loop and the small utilities every method shares."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm  # not tqdm.auto: its asyncio variant calls iter() on a DataLoader in __init__

from zeroseg.metrics import ConfusionMatrix


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; returns a torch.Generator seeded the same way for explicit use."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def poly_lambda(total_iters: int, power: float = 0.9) -> Callable[[int], float]:
    """DeepLab's poly schedule factor ``(1 - it / total) ** power`` for ``LambdaLR``."""
    total = max(1, total_iters)
    return lambda it: max(0.0, 1.0 - min(it, total) / total) ** power


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state into tensors (for safetensors) and JSON-able metadata."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for k, v in state.items():
            if torch.is_tensor(v):
                tensors[f"optim.{idx}.{k}"] = v
            else:
                scalars.setdefault(str(idx), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Inverse of :func:`optimizer_to_tensors`."""
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for idx, kv in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(kv)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    *,
    criterion: nn.Module,
    device: torch.device,
    desc: str = "train",
    progress: bool = True,
) -> float:
    """One pass over ``loader`` of (image (B,3,H,W), label (B,H,W), ...) batches; returns the mean loss."""
    model.train()
    total, count = 0.0, 0
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress)
    for batch in bar:
        images, labels = batch[0].to(device), batch[1].to(device)
        logits = model(images)
        loss = criterion(logits, labels)
        if not torch.isfinite(loss):
            # An all-ignore batch has no target pixels: nothing to learn from it.
            continue
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += loss.item()
        count += 1
        bar.set_postfix(loss=f"{total / count:.3f}")
    return total / max(count, 1)


@torch.inference_mode()
def evaluate_model(
    predict: Callable[[torch.Tensor], torch.Tensor],
    loader: Iterable,
    *,
    num_classes: int,
    device: torch.device,
    desc: str = "eval",
    progress: bool = True,
) -> ConfusionMatrix:
    """Accumulate a confusion matrix of ``predict(images) -> labels (B,H,W)`` against the loader's labels."""
    cm = ConfusionMatrix(num_classes)
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
        images, labels = batch[0].to(device), batch[1].to(device)
        cm.update(predict(images).cpu(), labels.cpu())
    cm.all_reduce()
    return cm
