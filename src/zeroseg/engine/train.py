"""One optimiser step for every method: micro-batches (gradient accumulation), DDP, bf16 autocast, and a loss
normalised over the *whole global batch* by a pluggable normaliser.

A method describes its loss by two functions:

- ``normaliser(micro_batch) -> {group: n}``: what each group of loss terms is averaged over in that micro-batch,
  known from the targets before any forward pass (cross-entropy: valid pixels; ZegFormer's set criterion: the
  class-weight sum of the matched and unmatched queries, and the number of target masks);
- ``loss_terms(net, micro_batch) -> [(group, mean loss), ...]``: the loss terms of that micro-batch, each the
  mean over its own micro-batch normaliser of the group.

:func:`train_step` rescales term ``t`` of group ``g`` in micro-batch ``m`` by ``n_m[g] / N[g]`` where ``N[g]``
sums ``n_m[g]`` over every micro-batch of every rank: the step then optimises exactly the loss of the full global
batch in one piece (see :func:`train_step`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from tqdm import tqdm  # not tqdm.auto: its asyncio variant calls iter() on a DataLoader in __init__

from zeroseg.engine.distributed import all_reduce_sum, world_size
from zeroseg.errors import ZeroSegError

AMP_MODES = ("none", "bf16")

#: ``micro_batch -> {group: normaliser}`` (0-d tensors or floats).
Normaliser = Callable[[Any], dict[str, Any]]
#: ``(net, micro_batch) -> [(group, mean loss over the micro-batch's normaliser of that group), ...]``.
LossTerms = Callable[[nn.Module, Any], Sequence[tuple[str, torch.Tensor]]]


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


def parallel(model: nn.Module) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` when several ranks train it, else ``model`` itself.

    Convert BatchNorm first when wanted (:func:`~zeroseg.engine.distributed.maybe_sync_batchnorm`).
    """
    if world_size() <= 1:
        return model
    return nn.parallel.DistributedDataParallel(model)


def float_outputs(value: Any) -> Any:
    """Network outputs in fp32 for the loss (autocast produces bf16 logits); nested dicts and lists are walked."""
    if torch.is_tensor(value):
        return value.float() if value.dtype in (torch.float16, torch.bfloat16) else value
    if isinstance(value, dict):
        return {k: float_outputs(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(float_outputs(v) for v in value)
    return value


def train_step(
    net: nn.Module,
    micro_batches: Sequence[Any],
    *,
    loss_terms: LossTerms,
    normaliser: Normaliser,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    device: torch.device | str,
    amp: str = "none",
    clip_grad_norm: float | None = None,
) -> float | None:
    """One optimiser (and scheduler) step over the micro-batches of one global batch.

    Args:
        net: the network, or a ``DistributedDataParallel`` around it (gradients are all-reduced only with the
            last micro-batch; every rank must pass the same number of micro-batches).
        micro_batches: this rank's share of the step, already split (e.g. ``torch.chunk``).
        loss_terms / normaliser: see the module docstring.
        optimizer / scheduler: stepped once (the scheduler may be None).
        device: where the model runs (for autocast).
        amp: "none" or "bf16" (:func:`autocast_context`); ``loss_terms`` should compute its losses in fp32
            (:func:`float_outputs` converts autocast outputs).
        clip_grad_norm: clip the global L2 norm of all gradients before the step (None or 0: no clipping).

    Returns:
        the step's loss (the full global batch's loss; equal on all ranks), or None when the step was skipped:
        no group has a positive normaliser in the whole global batch, or the loss is not finite (no optimiser
        or scheduler step, on every rank alike).

    Exactness: let micro-batch ``m`` (of any rank) have, for group ``g``, summed loss ``S_m[g]`` and normaliser
    ``n_m[g]``, so that ``loss_terms`` returns ``L_m[g] = S_m[g] / n_m[g]``, and let ``N[g] = sum_m n_m[g]`` over all
    micro-batches of all ranks (from the targets, before any forward pass; all-reduced under DDP). The step
    optimises ``L = sum_g sum_m S_m[g] / N[g]``: micro-batch ``m`` backpropagates ``w * sum_g L_m[g] * n_m[g] /
    N[g]`` (``w``: the world size under DDP, else 1). Gradients add up over a rank's micro-batches, and DDP's
    average over ranks cancels ``w``, so the gradient is exactly ``grad L``, the one a single process computes on
    the whole batch. A plain average of per-micro-batch means would weight a micro-batch with few valid pixels
    (or few target masks) as much as a full one. With one process and one micro-batch every factor is 1.0, so
    the numbers are those of a plain loop. Layers that use batch statistics (BatchNorm) still see one
    micro-batch at a time (with ``engine.sync_bn``: the micro-batches of all ranks together).
    """
    autocast_context(device, amp)  # validates amp before any work
    ddp = isinstance(net, nn.parallel.DistributedDataParallel)
    world = world_size() if ddp else 1
    norms = [normaliser(mb) for mb in micro_batches]
    groups = sorted({g for n in norms for g in n})
    local = torch.tensor([[float(n.get(g, 0.0)) for g in groups] for n in norms], dtype=torch.float64)
    totals = local.sum(0)
    if ddp:
        totals = all_reduce_sum(totals.to(device)).cpu()
    total = dict(zip(groups, totals.tolist(), strict=True))
    if not any(v > 0 for v in total.values()):
        return None
    optimizer.zero_grad(set_to_none=True)
    step_loss = torch.zeros((), dtype=torch.float64)
    for i, mb in enumerate(micro_batches):
        sync = net.no_sync() if ddp and i < len(micro_batches) - 1 else contextlib.nullcontext()
        with sync:
            with autocast_context(device, amp):
                terms = loss_terms(net, mb)
            factor = {g: (local[i, k].item() / total[g] if total[g] > 0 else 0.0) for k, g in enumerate(groups)}
            part = sum(t * factor[g] for g, t in terms)
            (part * world if world > 1 else part).backward()
        step_loss += float(part.detach())
    if ddp:
        step_loss = all_reduce_sum(step_loss.to(device)).cpu()
    value = float(step_loss)
    if not math.isfinite(value):
        optimizer.zero_grad(set_to_none=True)
        return None
    if clip_grad_norm:
        nn.utils.clip_grad_norm_(net.parameters(), clip_grad_norm)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return value


def pixel_loss(criterion: nn.Module, *, scale: float = 1.0) -> tuple[LossTerms, Normaliser]:
    """The ``(loss_terms, normaliser)`` pair of a per-pixel criterion on ``(images, labels, ...)`` batches.

    Args:
        criterion: a mean-reducing loss ``criterion(logits (B,C,H,W), labels (B,H,W))``; see
            :func:`loss_normaliser`.
        scale: a constant factor on every term, e.g. ``1 / global batch`` for valeoai/ZS3's
            ``batch_average`` (:func:`train_one_epoch`); 1.0 leaves the numbers of a plain mean untouched.
    """

    def terms(net: nn.Module, batch: Any) -> list[tuple[str, torch.Tensor]]:
        images, labels = batch[0], batch[1]
        if not bool(loss_normaliser(criterion, labels) > 0):
            # No valid pixel here (other micro-batches have some): zero gradient, but DDP still needs the backward.
            return [("pixels", net(images).sum() * 0.0)]
        loss = criterion(float_outputs(net(images)), labels)
        return [("pixels", loss * scale if scale != 1.0 else loss)]

    def normaliser(batch: Any) -> dict[str, torch.Tensor]:
        return {"pixels": loss_normaliser(criterion, batch[1])}

    return terms, normaliser


def split_batch(batch: Sequence[Any], parts: int, device: torch.device | str) -> list[tuple[Any, ...]]:
    """``parts`` micro-batches of ``(images, labels, ...)``: tensors moved to ``device`` and chunked along dim 0,
    lists sliced alike.

    Raises:
        ZeroSegError: ``parts`` < 1.
    """
    if parts < 1:
        raise ZeroSegError(f"engine.grad_accum {parts}: must be >= 1")
    n = len(batch[0])
    size = -(-n // parts)
    cols = []
    for item in batch:
        if torch.is_tensor(item):
            cols.append(list(torch.chunk(item.to(device), parts)))
        else:
            cols.append([item[i : i + size] for i in range(0, n, size)])
    return list(zip(*cols, strict=True))


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
    batch_average: bool = False,
) -> float:
    """One pass over ``loader`` of a per-pixel criterion: one :func:`train_step` per loader batch.

    Args:
        model: the network, or a ``DistributedDataParallel`` around it (then every rank must call this with
            loaders that give the same number of batches).
        loader: batches ``(images (B,3,H,W), labels (B,H,W), ...)``; under DDP each rank's share of the step.
        optimizer / scheduler: stepped once per batch (scheduler may be None).
        criterion: a mean-reducing loss ``criterion(logits, labels)``; see :func:`loss_normaliser`.
        device: where the batches go.
        desc / progress: tqdm bar.
        amp / clip_grad_norm: as in :func:`train_step`.
        grad_accum: micro-batches per batch (``torch.chunk`` along dim 0).
        batch_average: also divide the loss by the global batch size ``B`` (this rank's batch times the world
            size; every rank holds an equal share, see :func:`check_engine_config`), as valeoai/ZS3's
            ``loss /= n``. The factor is one constant per step, so the result is exact under accumulation and
            DDP: the step optimises ``(1 / B) * sum_m S_m / N``.

    Returns:
        the mean over steps of the step loss (the full global batch's mean loss; equal on all ranks).
    """
    if grad_accum < 1:
        raise ZeroSegError(f"engine.grad_accum {grad_accum}: must be >= 1")
    autocast_context(device, amp)
    model.train()
    terms, normaliser = pixel_loss(criterion)
    total, count = 0.0, 0
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress)
    for batch in bar:
        if batch_average:
            terms, normaliser = pixel_loss(criterion, scale=1.0 / (len(batch[0]) * world_size()))
        value = train_step(
            model,
            split_batch(batch[:2], grad_accum, device),
            loss_terms=terms,
            normaliser=normaliser,
            optimizer=optimizer,
            scheduler=scheduler,
            device=device,
            amp=amp,
            clip_grad_norm=clip_grad_norm,
        )
        if value is None:
            continue
        total += value
        count += 1
        bar.set_postfix(loss=f"{total / count:.3f}")
    return total / max(count, 1)
