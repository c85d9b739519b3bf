"""COCO-Stuff 164k (171 classes) from the official stuffthingmaps.

Get the data (https://github.com/nightrome/cocostuff#downloads):
``train2017.zip`` and ``val2017.zip`` from http://images.cocodataset.org/zips/ unzipped into ``images/``,
``stuffthingmaps_trainval2017.zip`` unzipped into ``annotations/``.

Expected tree (``root`` may be the dataset folder or a parent holding ``coco_stuff164k``)::

    coco_stuff164k/
        images/train2017/<id>.jpg, images/val2017/<id>.jpg
        annotations/train2017/<id>.png, annotations/val2017/<id>.png

The raw stuffthingmaps PNGs hold ids 0..181 (0 = person, 181 = wood; 11 of them unused) and 255 for
unlabeled; :func:`read_label` maps them to the 171 contiguous ids of ``COCO_STUFF_171_CLASSES`` through
``COCO_STUFF_RAW_TO_171`` (mmsegmentation's ``clsID_to_trID``); anything unmapped becomes 255. Files already
converted by mmsegmentation (``<id>_labelTrainIds.png``) are used as they are when the raw file is absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zeroseg.data.classes import coco_stuff_lut
from zeroseg.data.io import Sample, find_dataset_dir, image_folder_pair, read_label_png
from zeroseg.errors import ZeroSegError

_NESTED = ("coco_stuff164k", "coco_stuff", "coco-stuff")
_SPLIT_DIRS = {"train": "train2017", "val": "val2017", "train2017": "train2017", "val2017": "val2017"}
_CONVERTED_SUFFIX = "_labelTrainIds"
_LUT = coco_stuff_lut()


def coco_stuff_dir(root: str | Path) -> Path:
    """The COCO-Stuff folder holding ``images/`` and ``annotations/``."""
    return find_dataset_dir(root, ("images", "annotations"), _NESTED, "COCO-Stuff 164k")


def list_samples(root: str | Path, split: str) -> list[Sample]:
    """List the (image, label) pairs of ``train`` / ``val`` (also ``train2017`` / ``val2017``).

    Raises:
        ZeroSegError: missing root or split folders, no images, or an unknown split.
    """
    if split not in _SPLIT_DIRS:
        raise ZeroSegError(f"unknown COCO-Stuff split '{split}'; choose train or val")
    ann_dir, images = image_folder_pair(coco_stuff_dir(root), _SPLIT_DIRS[split])
    # One directory listing instead of two stat calls per image (118k images in train2017).
    present = {p.name for p in ann_dir.iterdir()}
    samples = []
    for img in images:
        label = ann_dir / f"{img.stem}.png"
        if label.name not in present and f"{img.stem}{_CONVERTED_SUFFIX}.png" in present:
            label = ann_dir / f"{img.stem}{_CONVERTED_SUFFIX}.png"
        samples.append(Sample(img, label))
    return samples


def read_label(path: str | Path) -> np.ndarray:
    """COCO-Stuff label as 171-class ids (255 = ignore). Returns (H, W) uint8."""
    path = Path(path)
    raw = read_label_png(path)
    if path.stem.endswith(_CONVERTED_SUFFIX):
        return raw
    return _LUT[raw]
