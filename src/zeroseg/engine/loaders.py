"""Data loaders of training and evaluation: seeded shuffles, rank shards, per-epoch reseeding."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from zeroseg.data.io import SegmentationDataset, collate
from zeroseg.engine.distributed import ShardSampler, world_size


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


def prepare_epoch(loader: DataLoader, seed: int, epoch: int) -> DataLoader:
    """Make epoch ``epoch`` of ``loader`` a function of ``(seed, epoch)`` alone: its shuffle order and, for datasets
    built with ``data.augmentation_seed``, its augmentation. A resumed run thus sees the same batches."""
    reseed_loader(loader, seed * 100_003 + epoch)
    set_dataset_epoch(loader.dataset, epoch)
    return loader


def infinite_batches(loader: DataLoader, seed: int, start_epoch: int = 0) -> Iterator[tuple[int, Any]]:
    """``(epoch, batch)`` over successive epochs, each prepared by :func:`prepare_epoch` (iteration-based training)."""
    for epoch in itertools.count(start_epoch):
        for batch in prepare_epoch(loader, seed, epoch):
            yield epoch, batch
