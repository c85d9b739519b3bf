"""THE seen-only label map: from a :class:`~zeroseg.config.DataConfig` to the datasets a method trains and
evaluates on.

Two id spaces meet here. *Dataset label ids* index ``split.dataset_class_names`` (what the label files hold;
:attr:`Split.seen_label_ids <zeroseg.data.splits.Split.seen_label_ids>` and friends live there). *Model class
indices* index ``split.class_names``, the evaluated classes in dataset order (an ignored background is not
one of them); :attr:`ZeroShotData.seen_ids` / :attr:`ZeroShotData.unseen_ids` and every label a dataset built
here returns live there. :func:`label_lut` is the one table that maps the first space into the second;
everything it does not map becomes :data:`IGNORE`. For *training* labels, unseen classes are then handled by
the configured :data:`UnseenPolicy`:

- ``drop`` (ZS3Net's rule, ``lbl_contains_unseen`` in valeoai/ZS3 ``zs3/dataloaders/datasets/base.py``):
  training images that contain any unseen pixel are removed from the labelled training set. They are kept
  aside as the unlabelled pool that ZS5Net self-training reads, with seen-only labels: no unseen ground truth.
- ``ignore`` (SPNet/ZegFormer): unseen pixels become 255 and every image is kept.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from torch.utils.data import Dataset
from tqdm import tqdm

from zeroseg.data.io import IGNORE, IGNORE_WIDE, SegmentationDataset
from zeroseg.data.readers import build_dataset, get_reader
from zeroseg.data.splits import Split, load_split
from zeroseg.data.synthetic import write_benchmark
from zeroseg.data.transforms import Compose, eval_transform, official_train_transform, train_transform
from zeroseg.errors import ZeroSegError

if TYPE_CHECKING:  # zeroseg.config imports zeroseg.data.synthetic; data/ only needs the type
    from zeroseg.config import DataConfig

__all__ = [
    "IGNORE",
    "UNSEEN_POLICIES",
    "UnseenPolicy",
    "ZeroShotData",
    "build_zero_shot_data",
    "ensure_synthetic",
    "label_lut",
    "resolve_split",
]

UnseenPolicy = Literal["drop", "ignore"]
UNSEEN_POLICIES: tuple[str, ...] = ("drop", "ignore")


@dataclass
class ZeroShotData:
    """Everything a method needs to know about its data.

    Attributes:
        split: the zero-shot split.
        class_names: the model's output classes (evaluated classes, dataset order).
        seen_ids / unseen_ids: model class indices, i.e. indices into ``class_names`` (not dataset label ids:
            for VOC 15/5 with its ignored background they are the split's label ids minus one).
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


def label_lut(dataset_classes: Sequence[str], class_names: Sequence[str], drop: Sequence[str] = ()) -> np.ndarray:
    """The one label map: dataset label ids -> indices of ``class_names``; everything else -> ignore.

    Args:
        dataset_classes: the dataset's classes in label-id order (``split.dataset_class_names``).
        class_names: the target classes; a dataset class not in it (e.g. an ignored background) -> ignore.
        drop: classes mapped to ignore although in ``class_names`` (the unseen classes of seen-only labels).

    Returns:
        lut: (256,) uint8 with ignore :data:`IGNORE` = 255; for a wide label space (more than 255 dataset
        classes, 16-bit labels) (65536,) uint16 with ignore :data:`~zeroseg.data.io.IGNORE_WIDE` = 65535.
        Apply as ``lut[label]`` to a (H, W) label map; ``lut[ignore] == ignore``.
    """
    wide = len(dataset_classes) > IGNORE
    if len(class_names) > IGNORE and not wide:
        raise ZeroSegError(f"label_lut: {len(class_names)} target classes do not fit an 8-bit label space")
    ignore = IGNORE_WIDE if wide else IGNORE
    lut = np.full(ignore + 1, ignore, dtype=np.uint16 if wide else np.uint8)
    index = {n: i for i, n in enumerate(class_names)}
    dropped = set(drop)
    for i, n in enumerate(dataset_classes):
        if n in index and n not in dropped:
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


class _Empty(Dataset):
    """No samples: the training sets of an evaluation-only build."""

    def __len__(self) -> int:
        return 0

    def __getitem__(self, i: int):
        raise IndexError(i)


def data_train_transform(cfg: DataConfig) -> Compose:
    """The training augmentation of ``cfg.augmentation``: "relative" (:func:`train_transform` over
    ``scale_range``) or "official" (:func:`official_train_transform`, valeoai/ZS3's)."""
    if cfg.augmentation == "official":
        return official_train_transform(cfg.crop_size, cfg.base_size)
    if cfg.augmentation != "relative":
        raise ZeroSegError(f"data.augmentation {cfg.augmentation!r}: choose 'relative' or 'official'")
    return train_transform(cfg.crop_size, cfg.scale_range, pad_value=cfg.train_pad_value, pad_last=cfg.train_pad_last)


def build_zero_shot_data(cfg: DataConfig, *, progress: bool = True, train: bool = True) -> ZeroShotData:
    """Build the datasets of an experiment (see module docstring for the id spaces and the label policy).

    Args:
        cfg: the data config.
        progress: a progress bar over the ``drop`` policy's label scan.
        train: build the training sets; False (evaluation) leaves them empty and reads no training file.

    Raises:
        ZeroSegError: an unknown ``unseen_policy``, an empty split, a split made for other classes than the
            dataset's (another dataset, or a folder whose classes.txt lists them in another order), or a ``drop``
            policy that leaves no image.
    """
    if cfg.unseen_policy not in UNSEEN_POLICIES:
        raise ZeroSegError(f"unknown unseen-class policy '{cfg.unseen_policy}'; choose 'drop' or 'ignore'")
    reader = cfg.dataset
    if reader == "synthetic":
        ensure_synthetic(cfg)
        reader = "folder"
    split = resolve_split(cfg)
    class_names = split.class_names
    if not class_names:
        raise ZeroSegError(f"split '{split.name}': empty class list")
    ds_classes = tuple(split.dataset_class_names)
    on_disk = tuple(get_reader(reader).class_names(Path(cfg.root)))
    if on_disk != ds_classes:
        detail = (
            "the same classes in another order"
            if sorted(on_disk) == sorted(ds_classes)
            else f"{len(on_disk)} classes ({', '.join(on_disk[:3])}, ...)"
        )
        raise ZeroSegError(
            f"{cfg.root}: split '{split.name}' is for dataset '{split.dataset}' ({len(ds_classes)} classes: "
            f"{', '.join(ds_classes[:3])}, ...) but data.dataset '{cfg.dataset}' here has {detail}"
        )
    unseen = tuple(split.unseen)
    train_tf = data_train_transform(cfg)
    eval_tf = eval_transform(cfg.eval_size, rounding=cfg.eval_rounding)

    full_lut = label_lut(ds_classes, class_names)
    seen_lut = label_lut(ds_classes, class_names, drop=unseen)

    def make(list_name: str, transform, lut: np.ndarray, seed: int | None = None) -> SegmentationDataset:
        return build_dataset(reader, cfg.root, list_name, transform=transform, label_lut=lut, seed=seed)

    # Augmented sets draw from per-sample generators only when data.augmentation_seed is set (see DataConfig).
    aug_seed = cfg.augmentation_seed
    val = _first(make(cfg.val_split, eval_tf, full_lut), cfg.max_val_images)
    seen_ids = tuple(i for i, n in enumerate(class_names) if n not in unseen)
    unseen_ids = tuple(i for i, n in enumerate(class_names) if n in unseen)
    if not train:
        return ZeroShotData(split, class_names, seen_ids, unseen_ids, _Empty(), _Empty(), None, _Empty(), val)
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
    return ZeroShotData(split, class_names, seen_ids, unseen_ids, train, train_plain, unlabelled, train_full, val)
