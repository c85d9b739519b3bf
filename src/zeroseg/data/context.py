"""PASCAL-Context (59 or 60 classes) in the converted mmsegmentation layout.

Get the data:

* VOC2010 images: http://host.robots.ox.ac.uk/pascal/VOC/voc2010/ (``VOCtrainval_03-May-2010.tar``).
* ``trainval_merged.json`` (Detail API annotations), converted with mmsegmentation's
  ``tools/dataset_converters/pascal_context.py`` (needs https://github.com/zhanghang1989/detail-api), which
  writes ``SegmentationClassContext`` PNGs and the ``SegmentationContext`` lists.

Expected tree (``root`` may be ``VOC2010`` itself, ``VOCdevkit`` or the folder holding ``VOCdevkit``)::

    VOCdevkit/VOC2010/
        JPEGImages/<id>.jpg
        SegmentationClassContext/<id>.png        values 0..59, 0 = background
        ImageSets/SegmentationContext/train.txt, val.txt

``zeroseg data prepare context`` writes this tree from the publishers' downloads (see docs/datasets.md), plus
``SegmentationClassContext459/<id>.png``: 16-bit PNGs with the full 459-class ids (``LabelMap - 1``,
65535 = ignore) read by the ``context459`` dataset (:func:`list_samples_459`, :func:`read_label_459`).

Label ids follow the converter: 0 = background, 1..59 = the 59 classes in alphabetical order
(``CONTEXT60_CLASSES``). ``context60`` keeps them as they are; ``context59`` drops background
(0 -> 255) and shifts the rest down (k -> k-1, the ``reduce_zero_label`` rule), giving ``CONTEXT59_CLASSES``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zeroseg.data.io import Sample, find_dataset_dir, read_id_list, read_label_png
from zeroseg.errors import ZeroSegError

_NESTED = ("VOC2010", "VOCdevkit/VOC2010")
SPLITS = ("train", "val")
LABELS_459 = "SegmentationClassContext459"


def context_dir(root: str | Path) -> Path:
    """The ``VOC2010`` folder under ``root`` that holds the converted Context labels."""
    return find_dataset_dir(root, ("JPEGImages", "SegmentationClassContext"), _NESTED, "PASCAL-Context")


def list_samples(root: str | Path, split: str) -> list[Sample]:
    """List the (image, label) pairs of a Pascal-Context split (``train`` or ``val``).

    Raises:
        ZeroSegError: missing root, folders or list file, or an unknown split.
    """
    if split not in SPLITS:
        raise ZeroSegError(f"unknown Pascal-Context split '{split}'; choose one of {', '.join(SPLITS)}")
    base = context_dir(root)
    ids = read_id_list(base / "ImageSets" / "SegmentationContext" / f"{split}.txt")
    return [Sample(base / "JPEGImages" / f"{i}.jpg", base / "SegmentationClassContext" / f"{i}.png") for i in ids]


def read_label_60(path: str | Path) -> np.ndarray:
    """Context label as 60-class ids (0 = background, 255 = ignore). Returns (H, W) uint8."""
    return read_label_png(Path(path))


def read_label_59(path: str | Path) -> np.ndarray:
    """Context label as 59-class ids: background and 255 -> 255, k -> k-1. Returns (H, W) uint8."""
    raw = read_label_png(Path(path))
    out = raw - np.uint8(1)  # uint8 wrap-around turns 0 into 255 already
    out[raw == 255] = 255
    return out


def list_samples_459(root: str | Path, split: str) -> list[Sample]:
    """List the (image, 459-class label) pairs of a Pascal-Context split (``train`` or ``val``).

    Raises:
        ZeroSegError: missing root, folders or list file, or an unknown split.
    """
    if split not in SPLITS:
        raise ZeroSegError(f"unknown Pascal-Context split '{split}'; choose one of {', '.join(SPLITS)}")
    base = find_dataset_dir(root, ("JPEGImages", LABELS_459), _NESTED, "PASCAL-Context 459")
    ids = read_id_list(base / "ImageSets" / "SegmentationContext" / f"{split}.txt")
    return [Sample(base / "JPEGImages" / f"{i}.jpg", base / LABELS_459 / f"{i}.png") for i in ids]


def read_label_459(path: str | Path) -> np.ndarray:
    """Context label as 459-class ids (65535 = ignore). Returns (H, W) uint16."""
    return read_label_png(Path(path), wide=True)


read_label = read_label_60
