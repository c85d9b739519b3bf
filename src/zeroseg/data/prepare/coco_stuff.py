"""COCO-Stuff 164k: ``stuffthingmaps_trainval2017`` raw ids -> the 171 contiguous ids.

Inputs (``--raw``; the official downloads, https://github.com/nightrome/cocostuff#downloads)::

    images/train2017/<id>.jpg, images/val2017/<id>.jpg         train2017.zip, val2017.zip
    annotations/train2017/<id>.png, annotations/val2017/...    stuffthingmaps_trainval2017.zip: 0..181, 255

Output (``--out``, dataset ``coco-stuff-171``)::

    coco_stuff164k/images/<split>/<id>.jpg                        links
    coco_stuff164k/annotations/<split>/<id>_labelTrainIds.png     ids 0..170, 255 = unlabelled

The map is ``COCO_STUFF_RAW_TO_171`` (mmseg ``coco_stuff164k.py`` ``clsID_to_trID``); the 11 raw ids COCO never
annotated map to 255 like 255 itself. A raw value 182..254 is no COCO-Stuff id: the file is reported as corrupt.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from zeroseg.data import coco_stuff as coco_reader
from zeroseg.data.classes import COCO_STUFF_171_CLASSES, coco_stuff_lut
from zeroseg.data.io import IGNORE
from zeroseg.data.prepare.common import check_values, first_dir, raw_label
from zeroseg.data.prepare.runner import Converted, Plan, Task
from zeroseg.errors import ZeroSegError

SPLITS = ("train2017", "val2017")
_VALID = (*range(182), IGNORE)


def convert_stuffthingmap(path: Path) -> Converted:
    """A raw stuffthingmaps PNG -> 171-class ids (uint8)."""
    raw = raw_label(path)
    check_values(raw, _VALID, path, "a COCO-Stuff stuffthingmap (ids 0..181, 255)")
    return Converted(coco_stuff_lut()[raw])


def plan_coco_stuff(raw: Path, out: Path) -> list[Plan]:
    """The COCO-Stuff plan (both splits, see module docstring).

    Raises:
        ZeroSegError: a missing images/annotations tree or a split folder without images.
    """
    base = first_dir(raw, ("", "coco_stuff164k", "coco_stuff", "coco-stuff"), ("images", "annotations"), "COCO-Stuff")
    dst = out / "coco_stuff164k"
    tasks = []
    for split in SPLITS:
        img_dir, ann_dir = base / "images" / split, base / "annotations" / split
        if not img_dir.is_dir():
            continue
        images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() == ".jpg")
        for img in images:
            src = ann_dir / f"{img.stem}.png"
            tasks.append(
                Task(
                    key=img.stem,
                    source=src,
                    convert=partial(convert_stuffthingmap, src),
                    label_out=dst / "annotations" / split / f"{img.stem}_labelTrainIds.png",
                    image_src=img,
                    image_out=dst / "images" / split / img.name,
                )
            )
    if not tasks:
        raise ZeroSegError(f"{base}: no images/train2017 or images/val2017 .jpg files")
    return [
        Plan(
            name="coco-stuff-171",
            root=out,
            class_names=COCO_STUFF_171_CLASSES,
            read_label=coco_reader.read_label,
            ignore_index=IGNORE,
            tasks=tasks,
            check_splits=("train", "val"),
        )
    ]
