"""torch.distributed plumbing: process-group set-up under ``torchrun``, exact sharding, rank-0 side effects.

A run started by ``torchrun --nproc_per_node N zeroseg train CONFIG`` gets ``WORLD_SIZE``/``RANK``/
``LOCAL_RANK`` from the environment; :func:`init_distributed` then joins the process group (NCCL on GPU,
gloo on CPU). Without those variables everything here degrades to the single-process case, so the same code
runs either way.

:func:`maybe_sync_batchnorm` (``engine.sync_bn``) turns BatchNorm layers into layers that normalise over the
global batch of all ranks: ``torch.nn.SyncBatchNorm`` on GPU, :class:`CPUSyncBatchNorm` on CPU (gloo).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import Sampler


def init_distributed(device: str) -> str:
    """Join the process group when launched by torchrun; returns the device this rank should use.

    Args:
        device: the configured device ("cpu", "cuda", "cuda:0", ...).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        return device
    use_cuda = device.startswith("cuda") and torch.cuda.is_available()
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return device


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on rank 0 (or without a process group): the process that logs and writes files."""
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


class ShardSampler(Sampler[int]):
    """Rank ``r`` of ``w`` takes indices ``r, r + w, r + 2w, ...`` of an (optionally shuffled) order.

    Unlike ``DistributedSampler`` it never pads with repeated samples, so a sharded evaluation counts every
    image exactly once and equals the single-process result. For training, ``set_epoch`` reshuffles with
    ``seed + epoch`` identically on every rank.

    With per-rank batches of ``b`` images, step ``k`` of the ranks together reads positions ``k*b*w`` to
    ``(k+1)*b*w - 1`` of the order: exactly the global batch a single process reading the same order in
    batches of ``b*w`` gets at step ``k``.

    Args:
        num_samples: dataset length.
        shuffle: permute with ``torch.randperm`` seeded by ``seed + epoch`` (else the natural order).
        seed: base seed of the permutation.
        drop_remainder: use only the first ``num_samples - num_samples % world`` positions of the order, so
            every rank gets the same number of samples (hence of batches and micro-batches: DDP needs every
            rank to take the same number of steps). For training; evaluation must keep it False.
    """

    def __init__(self, num_samples: int, *, shuffle: bool, seed: int = 0, drop_remainder: bool = False) -> None:
        self.n, self.shuffle, self.seed, self.epoch = num_samples, shuffle, seed, 0
        self.rank, self.world = rank(), world_size()
        self.drop_remainder = drop_remainder

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        else:
            order = list(range(self.n))
        return iter(order[: self._used()][self.rank :: self.world])

    def _used(self) -> int:
        return self.n - self.n % self.world if self.drop_remainder else self.n

    def __len__(self) -> int:
        return len(range(self.rank, self._used(), self.world))


def broadcast_state(*modules: torch.nn.Module | None) -> None:
    """Make every rank's copy of ``modules`` equal to rank 0's (parameters and buffers, in place).

    Called at the end of each stage: DDP keeps parameters in step during training, but BatchNorm statistics
    of the last step and anything drawn from a rank's own random stream (a re-initialised classifier, the
    generator's noise) may differ; rank 0's result is the one that was saved.
    """
    if world_size() <= 1:
        return
    for module in modules:
        if module is None:
            continue
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over ranks: every rank gets ``sum_r x_r``; the gradient of ``x_r`` is the sum over
    ranks of the output gradients (each rank's loss depends on every rank's input)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


class CPUSyncBatchNorm(_BatchNorm):
    """BatchNorm synchronised over the ranks for CPU tensors (gloo), which ``torch.nn.SyncBatchNorm`` rejects.

    In training mode with several ranks it computes the batch mean and (biased) variance over the images of
    all ranks with differentiable all-reduces (per-channel sums and the pixel count, then the sums of squared
    deviations), normalises with them and updates the running statistics with the unbiased global variance,
    as BatchNorm does for one process holding the whole batch. The backward pass all-reduces the matching
    gradient terms, so each rank's input gradient includes the other ranks' losses through the shared
    statistics (as ``torch.nn.SyncBatchNorm`` does). In eval mode or with one process it is plain BatchNorm.
    Parameter and buffer names equal BatchNorm's, so state dicts load into the unconverted model. It always
    synchronises over the default (world) process group, and every rank must run the same forward passes.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:  # noqa: A002 (torch's name)
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (torch's name)
        if not self.training or world_size() <= 1:
            return super().forward(input)
        x = input
        self._check_input_dim(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, c] + [1] * (x.dim() - 2)
        local_count = x.numel() // max(c, 1)
        totals = _AllReduceSum.apply(torch.cat([x.sum(dims), x.new_full((1,), float(local_count))]))
        count = totals[c].detach()
        mean = totals[:c] / count
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / count
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                n = float(count)
                self.running_mean.mul_(1.0 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1.0 - factor).add_(var.detach() * (n / max(n - 1.0, 1.0)), alpha=factor)
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer of ``module`` by a synchronised one sharing its parameters and buffers.

    Layers on a CPU become :class:`CPUSyncBatchNorm`, others ``torch.nn.SyncBatchNorm`` (CUDA; DDP rejects
    the latter on CPU). Layers that already synchronise are kept. As ``torch.nn.SyncBatchNorm.
    convert_sync_batchnorm``, children are replaced in place; a BatchNorm ``module`` itself is returned as a
    new layer.
    """
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, (nn.SyncBatchNorm, CPUSyncBatchNorm)):
        ref = module.weight if module.affine else module.running_mean
        on_cpu = ref is None or ref.device.type == "cpu"
        cls = CPUSyncBatchNorm if on_cpu else nn.SyncBatchNorm
        out = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child))
    return out


def maybe_sync_batchnorm(model: nn.Module, enabled: bool) -> nn.Module:
    """``engine.sync_bn``: BatchNorm -> synchronised BatchNorm when ``enabled`` and several ranks train.

    Without a process group (or with ``enabled`` False) ``model`` is returned unchanged, so single-process
    runs keep plain BatchNorm. Call it before building the optimizer and before wrapping the model in DDP;
    the converted layers keep their parameters (same tensors) and their state-dict keys.

    Args:
        model: the network, converted in place (its children are replaced).
        enabled: the config switch.

    Returns:
        the model (a new object only when ``model`` is itself a BatchNorm layer).
    """
    if not enabled or world_size() <= 1:
        return model
    return convert_sync_batchnorm(model)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over ranks (a new tensor; ``tensor`` itself without a process group). Not differentiable."""
    out = tensor.clone()
    if world_size() > 1:
        dist.all_reduce(out)
    return out
