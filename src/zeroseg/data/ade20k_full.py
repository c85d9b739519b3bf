"""ADE20K-full (847 classes) as ``zeroseg data prepare ade20k-847`` (and MaskFormer) lays it out.

Get the data: the ADE20K_2021_17_01 release (https://groups.csail.mit.edu/vision/datasets/ADE20K/, after
registration), then ``zeroseg data prepare ade20k-847 --raw ADE20K_2021_17_01 --out DIR``.

Expected tree (``root`` may be ``ADE20K_2021_17_01`` itself or a folder holding it)::

    ADE20K_2021_17_01/
        images_detectron2/training/<id>.jpg, images_detectron2/validation/<id>.jpg
        annotations_detectron2/training/<id>.png, annotations_detectron2/validation/<id>.png

Labels are 16-bit PNGs holding the 847 train ids of ``ADE847_CLASSES`` and 65535 for unlabelled pixels
(:data:`~zeroseg.data.io.IGNORE_WIDE`); MaskFormer's own ``<id>.tif`` files (same values) are read too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zeroseg.data.io import Sample, find_dataset_dir, read_label_png
from zeroseg.errors import ZeroSegError

_NESTED = ("ADE20K_2021_17_01",)
_SPLIT_DIRS = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}
IMAGES, ANNOTATIONS = "images_detectron2", "annotations_detectron2"


def ade_full_dir(root: str | Path) -> Path:
    """The prepared ``ADE20K_2021_17_01`` folder under ``root``."""
    return find_dataset_dir(root, (IMAGES, ANNOTATIONS), _NESTED, "ADE20K-full (prepared ADE20K_2021_17_01)")


def list_samples(root: str | Path, split: str) -> list[Sample]:
    """List the (image, label) pairs of ``training``/``validation`` (also ``train``/``val``).

    Raises:
        ZeroSegError: missing root or split folders, no images, or an unknown split.
    """
    if split not in _SPLIT_DIRS:
        raise ZeroSegError(f"unknown ADE20K-full split '{split}'; choose train (training) or val (validation)")
    base = ade_full_dir(root)
    img_dir, ann_dir = base / IMAGES / _SPLIT_DIRS[split], base / ANNOTATIONS / _SPLIT_DIRS[split]
    for d in (img_dir, ann_dir):
        if not d.is_dir():
            raise ZeroSegError(f"{d}: folder not found")
    images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() == ".jpg" and p.is_file())
    if not images:
        raise ZeroSegError(f"{img_dir}: no .jpg images")
    present = {p.name for p in ann_dir.iterdir()}
    samples = []
    for img in images:
        tif = f"{img.stem}.tif"
        name = tif if tif in present and f"{img.stem}.png" not in present else f"{img.stem}.png"
        samples.append(Sample(img, ann_dir / name))
    return samples


def read_label(path: str | Path) -> np.ndarray:
    """ADE20K-full label as 847-class train ids (65535 = ignore). Returns (H, W) uint16."""
    return read_label_png(Path(path), wide=True)
