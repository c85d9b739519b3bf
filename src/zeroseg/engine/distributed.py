"""torch.distributed plumbing: process-group set-up under ``torchrun``, exact sharding, rank-0 side effects.

A run started by ``torchrun --nproc_per_node N zeroseg train CONFIG`` gets ``WORLD_SIZE``/``RANK``/
``LOCAL_RANK`` from the environment; :func:`init_distributed` then joins the process group (NCCL on GPU,
gloo on CPU). Without those variables everything here degrades to the single-process case, so the same code
runs either way.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
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
    """

    def __init__(self, num_samples: int, *, shuffle: bool, seed: int = 0) -> None:
        self.n, self.shuffle, self.seed, self.epoch = num_samples, shuffle, seed, 0
        self.rank, self.world = rank(), world_size()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        else:
            order = list(range(self.n))
        return iter(order[self.rank :: self.world])

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


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
