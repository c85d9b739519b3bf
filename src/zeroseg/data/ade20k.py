"""ADE20K SceneParsing (150 classes), the ``ADEChallengeData2016`` release.

Get the data: http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip

Expected tree (``root`` may be ``ADEChallengeData2016`` itself or a folder holding it, e.g. ``data/ade``)::

    ADEChallengeData2016/
        images/training/<id>.jpg, images/validation/<id>.jpg
        annotations/training/<id>.png, annotations/validation/<id>.png   values 0..150, 0 = "other"

:func:`read_label` applies the ``reduce_zero_label`` rule of mmsegmentation's ``ADE20KDataset``:
0 ("other") -> 255, k -> k-1, so ids index ``ADE150_CLASSES``; 255 stays 255.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zeroseg.data.io import Sample, find_dataset_dir, image_folder_pair, read_label_png
from zeroseg.errors import ZeroSegError

_NESTED = ("ADEChallengeData2016", "ade/ADEChallengeData2016")
_SPLIT_DIRS = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}


def ade_dir(root: str | Path) -> Path:
    """The ``ADEChallengeData2016`` folder under ``root``."""
    return find_dataset_dir(root, ("images", "annotations"), _NESTED, "ADE20K (ADEChallengeData2016)")


def list_samples(root: str | Path, split: str) -> list[Sample]:
    """List the (image, label) pairs of ``training``/``validation`` (also ``train``/``val``).

    Raises:
        ZeroSegError: missing root or split folders, no images, or an unknown split.
    """
    if split not in _SPLIT_DIRS:
        raise ZeroSegError(f"unknown ADE20K split '{split}'; choose train (training) or val (validation)")
    ann_dir, images = image_folder_pair(ade_dir(root), _SPLIT_DIRS[split])
    return [Sample(img, ann_dir / f"{img.stem}.png") for img in images]


def read_label(path: str | Path) -> np.ndarray:
    """ADE20K label as 150-class ids: 0 -> 255, k -> k-1, 255 -> 255. Returns (H, W) uint8."""
    raw = read_label_png(Path(path))
    out = raw - np.uint8(1)  # uint8 wrap-around turns 0 into 255
    out[raw == 255] = 255
    return out
