"""The training loop (bf16 autocast, gradient accumulation, DDP-exact loss), an evaluation loop and the small
utilities every method shares."""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from tqdm import tqdm  # not tqdm.auto: its asyncio variant calls iter() on a DataLoader in __init__

from zeroseg.data.io import SegmentationDataset, collate
from zeroseg.engine.distributed import ShardSampler, all_reduce_sum, world_size
from zeroseg.errors import ZeroSegError
from zeroseg.metrics import ConfusionMatrix, compute_metrics


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


AMP_MODES = ("none", "bf16")


def autocast_context(device: torch.device | str, amp: str) -> contextlib.AbstractContextManager:
    """The context to run forward passes in for ``engine.amp``.

    Args:
        device: where the model runs.
        amp: "none" (fp32) or "bf16".

    Returns:
        ``torch.autocast("cuda", dtype=torch.bfloat16)`` for "bf16" on a CUDA device (bf16 has fp32's exponent
        range, so no GradScaler is needed); a no-op context otherwise. On CPU "bf16" is ignored without an
        error (CPU training stays fp32), so one config runs on either.

    Raises:
        ZeroSegError: an unknown ``amp`` value.
    """
    if amp not in AMP_MODES:
        raise ZeroSegError(f"engine.amp {amp!r}: expected one of {', '.join(AMP_MODES)}")
    if amp == "bf16" and torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def check_engine_config(engine: Any, *, batch_size: int, world: int, batch_key: str = "data.batch_size") -> None:
    """Validate ``engine`` (an :class:`~zeroseg.config.EngineConfig`) against the global batch and the ranks.

    Args:
        engine: has ``amp`` and ``grad_accum``.
        batch_size: the global batch of one optimiser step.
        world: number of ranks that share it.
        batch_key: the config key of ``batch_size``, for the message.

    Raises:
        ZeroSegError: ``engine.amp`` unknown, ``engine.grad_accum < 1``, or ``batch_size`` not divisible by
            ``world * grad_accum`` (every rank's micro-batches must hold whole, equal shares of the batch).
    """
    if engine.amp not in AMP_MODES:
        raise ZeroSegError(f"engine.amp {engine.amp!r}: expected one of {', '.join(AMP_MODES)}")
    accum = engine.grad_accum
    if not isinstance(accum, int) or accum < 1:
        raise ZeroSegError(f"engine.grad_accum {accum!r}: must be an integer >= 1")
    if batch_size % (world * accum):
        raise ZeroSegError(
            f"{batch_key} {batch_size}: must be divisible by world_size ({world}) x engine.grad_accum ({accum}) "
            f"= {world * accum}"
        )


def loss_normaliser(criterion: nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """What ``criterion``'s mean divides its summed loss by, for the targets ``labels``.

    ``nn.CrossEntropyLoss`` (reduction "mean", class-index targets): the number of pixels whose label is not
    ``ignore_index`` (the sum of their class weights when ``weight`` is set). Any other criterion is taken to
    average over samples: ``labels.shape[0]``.

    Returns:
        a 0-d float64 tensor on ``labels``' device.
    """
    if isinstance(criterion, nn.CrossEntropyLoss) and criterion.reduction == "mean" and not labels.is_floating_point():
        valid = labels != criterion.ignore_index
        if criterion.weight is None:
            return valid.sum().double()
        return criterion.weight[labels[valid]].double().sum()
    return torch.tensor(float(labels.shape[0]), dtype=torch.float64, device=labels.device)


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
    amp: str = "none",
    grad_accum: int = 1,
    clip_grad_norm: float | None = None,
) -> float:
    """One pass over ``loader``; one optimiser (and scheduler) step per loader batch.

    Args:
        model: the network, or a ``DistributedDataParallel`` around it (then every rank must call this with
            loaders that give the same number of batches, and equal micro-batch counts per batch).
        loader: batches ``(images (B,3,H,W), labels (B,H,W), ...)``; under DDP each rank's share of the step.
        optimizer / scheduler: stepped once per batch (scheduler may be None).
        criterion: a mean-reducing loss ``criterion(logits, labels)``; see :func:`loss_normaliser`.
        device: where the batches go.
        desc / progress: tqdm bar.
        amp: "none" or "bf16" (forward under :func:`autocast_context`: bf16 on CUDA, ignored on CPU). The loss
            is computed in fp32 from the logits.
        grad_accum: micro-batches per batch (``torch.chunk`` along dim 0); gradients accumulate over them.
        clip_grad_norm: clip the global L2 norm of all gradients before each step (None: no clipping).

    Returns:
        the mean over steps of the step loss (the full global batch's mean loss; equal on all ranks).

    The loss of a step is the mean over the *whole global batch*, however it is split. Let micro-batch ``m``
    (of any rank) have summed loss ``S_m`` and normaliser ``N_m`` (valid pixels, :func:`loss_normaliser`), so
    the criterion returns ``L_m = S_m / N_m``, and let ``N = sum_m N_m`` over all micro-batches of all ranks
    (computed from the labels before any forward pass and, under DDP, all-reduced). The step optimises
    ``L = sum_m S_m / N``. Micro-batch ``m`` backpropagates ``l_m = w * L_m * N_m / N = w * S_m / N`` where
    ``w`` is the world size under DDP and 1 otherwise. Gradients add up over a rank's micro-batches (DDP
    skips its all-reduce, ``model.no_sync()``, for all but the last), so rank ``r`` holds
    ``w * sum_{m in r} grad S_m / N``; DDP averages over ranks: ``(1/w) * sum_r w * sum_{m in r} grad S_m / N
    = grad L``. This is exactly the gradient a single process computes on the whole batch. A plain average of
    per-micro-batch (or per-rank) means would weight a micro-batch holding mostly ignore (255) pixels as much
    as a full one. With one process and ``grad_accum`` 1, ``l = L * 1.0``: the same numbers as a plain loop.

    Layers that use batch statistics (BatchNorm) see one micro-batch at a time (with ``engine.sync_bn``: the
    micro-batches of all ranks together), so for such models accumulation matches a smaller batch, not the
    full one. A step whose global batch has no valid pixel (``N == 0``), or whose loss is not finite, is
    skipped (no optimiser or scheduler step) on every rank alike.
    """
    if grad_accum < 1:
        raise ZeroSegError(f"engine.grad_accum {grad_accum}: must be >= 1")
    autocast_context(device, amp)  # validates amp before the first batch
    model.train()
    ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    world = world_size() if ddp else 1
    total, count = 0.0, 0
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress)
    for batch in bar:
        images, labels = batch[0].to(device), batch[1].to(device)
        chunks = list(zip(torch.chunk(images, grad_accum), torch.chunk(labels, grad_accum), strict=True))
        norms = torch.stack([loss_normaliser(criterion, y) for _, y in chunks])
        local = torch.cat([norms, norms.sum()[None]])
        if ddp:
            local[-1:] = all_reduce_sum(local[-1:])
        *micro_n, n_total = local.tolist()
        if n_total <= 0:
            # No target pixel in the whole (global) batch: nothing to learn from it.
            continue
        optimizer.zero_grad(set_to_none=True)
        step_loss = torch.zeros((), device=device)
        for i, (x, y) in enumerate(chunks):
            sync = model.no_sync() if ddp and i < len(chunks) - 1 else contextlib.nullcontext()
            with sync:
                with autocast_context(device, amp):
                    logits = model(x)
                if logits.dtype in (torch.float16, torch.bfloat16):
                    logits = logits.float()  # the loss in fp32 (autocast's low-precision outputs)
                if micro_n[i] > 0:
                    part = criterion(logits, y) * (micro_n[i] / n_total)
                else:  # no valid pixel here (others have some): zero gradient, but DDP still needs the backward
                    part = logits.sum() * 0.0
                (part * world if world > 1 else part).backward()
            step_loss += part.detach()
        if ddp:
            step_loss = all_reduce_sum(step_loss)
        value = step_loss.item()
        if not math.isfinite(value):
            optimizer.zero_grad(set_to_none=True)
            continue
        if clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += value
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


# --------------------------------------------------------------------------------------------- data loading
def make_loader(
    ds: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    workers: int,
    seed: int,
    shard: bool = False,
    global_order: bool = False,
) -> DataLoader:
    """A loader of (image, label, stem) batches.

    Args:
        ds: a dataset of (image, label, stem) samples.
        batch_size: images per batch; with ``shard`` and ``shuffle`` the *global* batch of all ranks.
        shuffle: a seeded random order (training) or the natural one.
        workers: DataLoader worker processes.
        seed: seed of the shuffle order (see :func:`reseed_loader` for per-epoch orders).
        shard: under torch.distributed, each rank reads its own slice (:class:`ShardSampler`): for training
            ``batch_size`` is split over the ranks (``batch_size // world`` each; samples beyond a multiple
            of the world size are left out of the epoch so that all ranks take the same number of steps); for
            evaluation every image is read exactly once. Stages that are cheap (generator, classifier) read
            everything on every rank with the same seed, so all ranks stay identical without communication.
        global_order: with ``shard`` and ``shuffle``, use the :class:`ShardSampler` order in a single process
            too, so that one process sees, step by step, the union of what the ranks of a torchrun run see
            (``data.augmentation_seed`` turns it on). Off: the single-process order of a plain shuffled loader.

    Returns:
        the DataLoader; its sampler is a :class:`ShardSampler` in the sharded case.
    """
    if shard and (world_size() > 1 or (global_order and shuffle)):
        per_rank = max(1, batch_size // world_size()) if shuffle else batch_size
        sampler = ShardSampler(len(ds), shuffle=shuffle, seed=seed, drop_remainder=shuffle)
        # An own generator, so that iterating the loader draws its base seed from it, not the global RNG.
        return DataLoader(
            ds,
            batch_size=per_rank,
            sampler=sampler,
            num_workers=workers,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(seed),
        )
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        collate_fn=collate,
        drop_last=False,
        generator=torch.Generator().manual_seed(seed),
    )


def training_loader(ds: Dataset, data_cfg: Any, *, seed: int) -> DataLoader:
    """The shuffled, sharded loader every training stage uses: ``make_loader`` with ``data_cfg``'s global batch
    and workers, and the rank-independent order when ``data_cfg.augmentation_seed`` is set.

    Args:
        ds: the training set.
        data_cfg: a :class:`~zeroseg.config.DataConfig`.
        seed: the shuffle seed of the stage.
    """
    return make_loader(
        ds,
        data_cfg.batch_size,
        shuffle=True,
        workers=data_cfg.num_workers,
        seed=seed,
        shard=True,
        global_order=data_cfg.augmentation_seed is not None,
    )


def reseed_loader(loader: DataLoader, seed: int) -> None:
    """Make the shuffle order of an epoch a function of ``seed`` alone (resumed runs see the same batches)."""
    if isinstance(loader.sampler, ShardSampler):
        loader.sampler.seed, loader.sampler.epoch = seed, 0
    else:
        loader.generator.manual_seed(seed)


def set_dataset_epoch(ds: Dataset, epoch: int) -> None:
    """Set the augmentation epoch of every :class:`SegmentationDataset` inside ``ds`` (subsets, concatenations).

    It only matters for datasets built with a seed (``data.augmentation_seed``); others ignore it.
    """
    if isinstance(ds, SegmentationDataset):
        ds.set_epoch(epoch)
    elif isinstance(ds, ConcatDataset):
        for part in ds.datasets:
            set_dataset_epoch(part, epoch)
    elif hasattr(ds, "base"):
        set_dataset_epoch(ds.base, epoch)


# --------------------------------------------------------------------------------------------- results
def metrics_dict(cm_mat: torch.Tensor, data_like: Any) -> dict:
    """Metrics (percent) of a confusion matrix over ``data_like.class_names``, split by its seen/unseen ids."""
    m = compute_metrics(cm_mat, seen_ids=list(data_like.seen_ids), unseen_ids=list(data_like.unseen_ids))
    return m.to_dict(list(data_like.class_names))


@dataclass
class RunResult:
    """What :func:`train` returns: the metrics after each evaluated stage and the final checkpoint."""

    stages: dict[str, dict]
    checkpoint: Path
    wall_s: float
