"""The dataset-name -> layout table and :func:`build_dataset`.

Each layout module (:mod:`~zeroseg.data.voc`, :mod:`~zeroseg.data.context`, :mod:`~zeroseg.data.coco_stuff`,
:mod:`~zeroseg.data.ade20k`, :mod:`~zeroseg.data.folder`) knows one folder layout and builds on
:mod:`zeroseg.data.io`; this module imports them all (imports go io -> layouts -> readers, never back).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zeroseg.data import ade20k, ade20k_full, coco_stuff, context, folder, voc
from zeroseg.data.classes import (
    ADE150_CLASSES,
    ADE847_CLASSES,
    COCO_STUFF_171_CLASSES,
    CONTEXT59_CLASSES,
    CONTEXT60_CLASSES,
    CONTEXT459_CLASSES,
    VOC_CLASSES,
)
from zeroseg.data.io import IGNORE, IGNORE_WIDE, LabelReader, PairedTransform, Sample, SegmentationDataset
from zeroseg.errors import ZeroSegError


@dataclass(frozen=True)
class DatasetReader:
    """How to list, read and name the classes of one dataset layout.

    Attributes:
        list_samples: ``(root, split) -> list[Sample]``.
        read_label: ``path -> (H, W) uint8`` in the dataset class space.
        class_names: ``root -> class names``; most datasets ignore the root, the folder layout reads it.
        ignore_index: the ignore value of ``read_label``'s maps: 255 for uint8 labels, 65535 for the uint16
            labels of the wide (more than 255 classes) datasets.
    """

    list_samples: Callable[[Path, str], list[Sample]]
    read_label: LabelReader
    class_names: Callable[[Path], tuple[str, ...]]
    ignore_index: int = IGNORE


def dataset_readers() -> dict[str, DatasetReader]:
    """The plain dataset-name -> reader table used by :func:`build_dataset` and ``check_dataset``."""

    def fixed(names: tuple[str, ...]) -> Callable[[Path], tuple[str, ...]]:
        return lambda root: names

    return {
        "voc": DatasetReader(voc.list_samples, voc.read_label, fixed(VOC_CLASSES)),
        "context60": DatasetReader(context.list_samples, context.read_label_60, fixed(CONTEXT60_CLASSES)),
        "context59": DatasetReader(context.list_samples, context.read_label_59, fixed(CONTEXT59_CLASSES)),
        "coco-stuff-171": DatasetReader(coco_stuff.list_samples, coco_stuff.read_label, fixed(COCO_STUFF_171_CLASSES)),
        "ade20k-150": DatasetReader(ade20k.list_samples, ade20k.read_label, fixed(ADE150_CLASSES)),
        "context459": DatasetReader(
            context.list_samples_459, context.read_label_459, fixed(CONTEXT459_CLASSES), IGNORE_WIDE
        ),
        "ade20k-847": DatasetReader(
            ade20k_full.list_samples, ade20k_full.read_label, fixed(ADE847_CLASSES), IGNORE_WIDE
        ),
        "folder": DatasetReader(folder.list_samples, folder.read_label, folder.read_classes),
        "synthetic": DatasetReader(folder.list_samples, folder.read_label, folder.synthetic_classes),
    }


def get_reader(dataset: str) -> DatasetReader:
    """Look up a dataset layout by name; ZeroSegError listing the known names otherwise."""
    readers = dataset_readers()
    if dataset not in readers:
        raise ZeroSegError(f"unknown dataset '{dataset}'; known datasets: {', '.join(readers)}")
    return readers[dataset]


def build_dataset(
    dataset: str,
    root: str | Path,
    split: str,
    *,
    transform: PairedTransform | None = None,
    label_lut: np.ndarray | None = None,
    seed: int | None = None,
    class_names: Sequence[str] | None = None,
) -> SegmentationDataset:
    """Build a :class:`SegmentationDataset` for a named dataset layout.

    Args:
        dataset: ``"voc"``, ``"context59"``, ``"context60"``, ``"context459"``, ``"coco-stuff-171"``,
            ``"ade20k-150"``, ``"ade20k-847"``,
            ``"folder"`` or ``"synthetic"`` (the embedded benchmark, stored in the folder layout).
        root: dataset root folder (see each reader's docstring for the tree it expects).
        split: data split, e.g. ``"train"``, ``"val"``, ``"train_aug"`` (VOC).
        transform: paired transform from :mod:`zeroseg.data.transforms`.
        label_lut: table applied to validated labels: (256,) uint8, or (65536,) uint16 for the wide datasets.
        seed: seeds the per-sample augmentation generators.
        class_names: override the class list (checked for length against the reader's list).
    """
    reader = get_reader(dataset)
    root = Path(root)
    names = reader.class_names(root)
    if class_names is not None:
        if tuple(class_names) != tuple(names):
            raise ZeroSegError(f"{root}: given class names differ from the {len(names)} classes of '{dataset}'")
    samples = reader.list_samples(root, split)
    return SegmentationDataset(
        samples,
        reader.read_label,
        names,
        label_lut=label_lut,
        transform=transform,
        seed=seed,
        name=dataset,
        ignore_index=reader.ignore_index,
    )
