"""PASCAL VOC 2012 (21 classes, background = 0) in the common mmsegmentation / DeepLab layout.

Get the data:

* VOC2012 trainval: http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ (``VOCtrainval_11-May-2012.tar``).
* Optional SBD augmentation (``benchmark.tgz`` from the Berkeley "semantic contours" page), converted to
  id PNGs in ``SegmentationClassAug`` by mmsegmentation's ``tools/dataset_converters/voc_aug.py`` (which
  also writes ``ImageSets/Segmentation/trainaug.txt``, 10,582 ids) or the DeepLab ``SegmentationClassAug``
  download.

Expected tree (``root`` may be ``VOC2012`` itself, ``VOCdevkit`` or the folder holding ``VOCdevkit``)::

    VOCdevkit/VOC2012/
        JPEGImages/<id>.jpg
        SegmentationClass/<id>.png          palette PNGs: index = class id, 255 = object border (ignore)
        SegmentationClassAug/<id>.png       optional, grayscale id PNGs (SBD + VOC)
        ImageSets/Segmentation/train.txt, val.txt, trainval.txt
        ImageSets/Segmentation/train_aug.txt or trainaug.txt   optional

Splits: ``train``, ``val``, ``trainval`` read ``SegmentationClass``; ``train_aug`` (also ``trainaug``)
reads ``SegmentationClassAug`` with ids from ``train_aug.txt`` / ``trainaug.txt`` or, if neither exists,
every ``SegmentationClassAug`` file whose id is not in ``val.txt``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from zeroseg.data.classes import palette
from zeroseg.data.io import Sample, find_dataset_dir, read_id_list, read_label_png
from zeroseg.errors import ZeroSegError

_NESTED = ("VOC2012", "VOCdevkit/VOC2012")
_AUG_SPLITS = ("train_aug", "trainaug")
SPLITS = ("train", "val", "trainval", "train_aug")


def voc_dir(root: str | Path) -> Path:
    """The ``VOC2012`` folder under ``root`` (see module docstring)."""
    return find_dataset_dir(root, ("JPEGImages",), _NESTED, "PASCAL VOC 2012")


def list_samples(root: str | Path, split: str) -> list[Sample]:
    """List the (image, label) pairs of a VOC split.

    Args:
        root: dataset root (see module docstring).
        split: ``train``, ``val``, ``trainval`` or ``train_aug``.

    Raises:
        ZeroSegError: missing root, folders or list files, or an unknown split.
    """
    base = voc_dir(root)
    lists = base / "ImageSets" / "Segmentation"
    images = base / "JPEGImages"
    if split in _AUG_SPLITS:
        labels = base / "SegmentationClassAug"
        if not labels.is_dir():
            raise ZeroSegError(f"{labels}: folder not found (needed for split '{split}')")
        for list_name in ("train_aug.txt", "trainaug.txt"):
            if (lists / list_name).is_file():
                ids = read_id_list(lists / list_name)
                break
        else:
            val = set(read_id_list(lists / "val.txt"))
            ids = sorted(p.stem for p in labels.glob("*.png") if p.stem not in val)
            if not ids:
                raise ZeroSegError(f"{labels}: no label PNGs outside val.txt")
    elif split in ("train", "val", "trainval"):
        labels = base / "SegmentationClass"
        if not labels.is_dir():
            raise ZeroSegError(f"{labels}: folder not found")
        ids = read_id_list(lists / f"{split}.txt")
    else:
        raise ZeroSegError(f"unknown VOC split '{split}'; choose one of {', '.join(SPLITS)}")
    return [Sample(images / f"{i}.jpg", labels / f"{i}.png") for i in ids]


def read_label(path: str | Path) -> np.ndarray:
    """Read a VOC label PNG as class ids (0..20, 255 = ignore).

    Palette PNGs (``SegmentationClass``) give their indices, grayscale PNGs (``SegmentationClassAug``)
    their values. An RGB-rendered label is mapped back through the VOC colour map (white-ish border
    colour (224, 224, 192) -> 255).

    Returns:
        label: (H, W) uint8.
    """
    path = Path(path)
    if path.is_file():
        try:
            with Image.open(path) as img:
                is_rgb = img.mode == "RGB"
        except Exception:  # noqa: BLE001 - read_label_png reports decode errors with the file name
            is_rgb = False
        if is_rgb:
            return _rgb_label_to_ids(path)
    return read_label_png(path)


def _rgb_label_to_ids(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    colours = palette(256)
    # Packing RGB into one int turns a per-pixel 3-channel compare into a scalar compare.
    keys = (colours[:21, 0].astype(np.int64) << 16) | (colours[:21, 1].astype(np.int64) << 8) | colours[:21, 2]
    border = (224 << 16) | (224 << 8) | 192  # palette(256)[255], the VOC "void" colour
    packed = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    out = np.full(packed.shape, 255, dtype=np.uint8)
    known = packed == border
    for class_id, key in enumerate(keys):
        hit = packed == key
        out[hit] = class_id
        known |= hit
    if not known.all():
        r, g, b = rgb[~known][0]
        raise ZeroSegError(f"{path}: colour ({r}, {g}, {b}) is not a VOC class colour")
    return out
