"""From a :class:`~zeroseg.config.DataConfig` to the datasets a zero-shot method trains and evaluates on.

The model's label space is the split's evaluated classes (``split.class_names``), in dataset order. Dataset
label ids are mapped into it with a lookup table; for *training* labels, unseen classes are then handled by
the configured :data:`UnseenPolicy`:

- ``drop`` (ZS3Net's rule): training images that contain any unseen pixel are removed from the labelled
  training set. They are kept aside, without labels, as the unlabelled pool that ZS5Net self-training reads.
- ``ignore`` (SPNet/ZegFormer): unseen pixels become 255 and every image is kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from zeroseg.config import DataConfig
from zeroseg.data.dataset import SegmentationDataset, build_dataset
from zeroseg.data.splits import Split, load_split
from zeroseg.data.synthetic import write_benchmark
from zeroseg.data.transforms import eval_transform, train_transform
from zeroseg.errors import ZeroSegError

IGNORE = 255


@dataclass
class ZeroShotData:
    """Everything a method needs to know about its data.

    Attributes:
        split: the zero-shot split.
        class_names: the model's output classes (evaluated classes, dataset order).
        seen_ids / unseen_ids: indices into ``class_names``.
        train: labelled training set (seen labels only; unseen handled by the policy).
        train_plain: the same images without augmentation (feature extraction).
        unlabelled: training images removed by the ``drop`` policy, for transductive self-training; their
            labels have unseen pixels set to 255 (used only by the ``official`` protocol).
        train_full: training images with *all* labels including unseen ones -- only the ``official``
            protocol (valeoai/ZS3) reads it.
        val: evaluation set with all labels.
    """

    split: Split
    class_names: tuple[str, ...]
    seen_ids: tuple[int, ...]
    unseen_ids: tuple[int, ...]
    train: Dataset
    train_plain: Dataset
    unlabelled: Dataset | None
    train_full: Dataset
    val: Dataset


def ensure_synthetic(cfg: DataConfig) -> Path:
    """Generate the embedded benchmark under ``cfg.root`` unless it is already complete there."""
    root = Path(cfg.root)
    write_benchmark(root, cfg.synthetic)
    return root


def resolve_split(cfg: DataConfig) -> Split:
    """The split named by ``cfg.split``: a registered name, a JSON path, or the dataset root's split.json."""
    candidate = Path(cfg.split)
    if cfg.dataset in ("synthetic", "folder") and not candidate.suffix == ".json":
        local = Path(cfg.root) / "split.json"
        if local.is_file() and cfg.split in (json.loads(local.read_text()).get("name"), "default"):
            return load_split(str(local))
    return load_split(cfg.split)


def label_lut(dataset_classes: tuple[str, ...], class_names: tuple[str, ...], drop: tuple[str, ...] = ()) -> np.ndarray:
    """A (256,) uint8 table mapping dataset ids to indices of ``class_names``; others and ``drop`` -> 255."""
    lut = np.full(256, IGNORE, dtype=np.uint8)
    index = {n: i for i, n in enumerate(class_names)}
    for i, n in enumerate(dataset_classes):
        if n in index and n not in drop:
            lut[i] = index[n]
    return lut


class _Subset(Dataset):
    def __init__(self, base: SegmentationDataset, indices: list[int]) -> None:
        self.base, self.indices = base, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.base[self.indices[i]]


def _first(ds: SegmentationDataset, limit: int | None) -> Dataset:
    return ds if limit is None or limit >= len(ds) else _Subset(ds, list(range(limit)))


def build_zero_shot_data(cfg: DataConfig, *, progress: bool = True) -> ZeroShotData:
    """Build the datasets of an experiment (see module docstring for the label policy)."""
    reader = cfg.dataset
    if reader == "synthetic":
        ensure_synthetic(cfg)
        reader = "folder"
    split = resolve_split(cfg)
    class_names = split.class_names
    if not class_names:
        raise ZeroSegError(f"split '{split.name}': empty class list")
    ds_classes = tuple(split.dataset_class_names)
    unseen = tuple(split.unseen)
    train_tf = train_transform(cfg.crop_size, cfg.scale_range)
    eval_tf = eval_transform(cfg.eval_size)

    full_lut = label_lut(ds_classes, class_names)
    seen_lut = label_lut(ds_classes, class_names, drop=unseen)

    def make(list_name: str, transform, lut: np.ndarray, seed: int | None = None) -> SegmentationDataset:
        return build_dataset(reader, cfg.root, list_name, transform=transform, label_lut=lut, seed=seed)

    # Augmented sets draw from per-sample generators only when data.augmentation_seed is set (see DataConfig).
    aug_seed = cfg.augmentation_seed
    train_full = _first(make(cfg.train_split, train_tf, full_lut, aug_seed), cfg.max_train_images)
    train = _first(make(cfg.train_split, train_tf, seen_lut, aug_seed), cfg.max_train_images)
    train_plain = _first(make(cfg.train_split, eval_tf, seen_lut), cfg.max_train_images)
    unlabelled: Dataset | None = None
    if cfg.unseen_policy == "drop":
        base = make(cfg.train_split, None, full_lut)
        unseen_idx = np.array([class_names.index(n) for n in unseen], dtype=np.int64)
        keep, dropped = [], []
        n = len(train) if cfg.max_train_images is None else min(cfg.max_train_images, len(base))
        for i in tqdm(range(n), desc="scan unseen pixels", leave=False, disable=not progress):
            label = full_lut[base.load_pair(i)[1]]
            (dropped if np.isin(label, unseen_idx).any() else keep).append(i)
        if not keep:
            raise ZeroSegError(
                f"{cfg.root}: every training image contains an unseen class; the 'drop' policy leaves nothing"
            )
        train = _Subset(train.base if isinstance(train, _Subset) else train, keep)
        train_plain = _Subset(train_plain.base if isinstance(train_plain, _Subset) else train_plain, keep)
        unlabelled = _Subset(make(cfg.train_split, eval_tf, seen_lut), dropped) if dropped else None
    val = _first(make(cfg.val_split, eval_tf, full_lut), cfg.max_val_images)
    seen_ids = tuple(i for i, n in enumerate(class_names) if n not in unseen)
    unseen_ids = tuple(i for i, n in enumerate(class_names) if n in unseen)
    return ZeroShotData(split, class_names, seen_ids, unseen_ids, train, train_plain, unlabelled, train_full, val)


def collate(batch: list) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Stack (image, label, stem) samples of equal size."""
    images = torch.stack([b[0] for b in batch])
    labels = torch.stack([b[1] for b in batch])
    return images, labels, [b[2] for b in batch]
