"""PASCAL-Context: VOC2010 + the per-image ``LabelMap`` files -> 60-class (PC-59/60) and 459-class (PC-459) PNGs.

Inputs (``--raw``, e.g. ``VOCdevkit/VOC2010`` with ``trainval.tar.gz`` unpacked inside it, as CAT-Seg lays it)::

    VOC2010/JPEGImages/<id>.jpg                    VOCtrainval_03-May-2010.tar
    VOC2010/ImageSets/Main/{train,val}.txt         the Context train (4,998) / val (5,105) images
    trainval/<id>.mat                              trainval.tar.gz: LabelMap, ids 1..459 of labels.txt
    labels.txt                                     optional (``k: name`` lines); checked against our list

Outputs (``--out``; datasets ``context60``/``context59`` and ``context459``)::

    VOC2010/JPEGImages/<id>.jpg                    links
    VOC2010/SegmentationClassContext/<id>.png      8-bit: 0 = background, 1..59 = the 59 classes
    VOC2010/SegmentationClassContext459/<id>.png   16-bit: LabelMap - 1 (0..458), 65535 = ignore
    VOC2010/ImageSets/SegmentationContext/{train,val}.txt

The 59-class mapping is mmsegmentation's ``tools/dataset_converters/pascal_context.py``: the 59 classes are the
459-space ids in :data:`CONTEXT59_IDS_459`, sorted, and become 1..59; every other id is background 0 (the
Detail-API masks behind mmseg's converter leave everything outside the 59 at 0, so LabelMap 0, "unlabelled",
is background too). In PC-459 LabelMap 0 has no class and becomes 65535 (CAT-Seg's ``mask - 1`` in uint16).
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import numpy as np

from zeroseg.data import context as context_reader
from zeroseg.data.classes import CONTEXT59_CLASSES, CONTEXT60_CLASSES, CONTEXT459_CLASSES
from zeroseg.data.io import IGNORE, IGNORE_WIDE
from zeroseg.data.prepare.common import check_values, first_dir, load_mat_field, read_list
from zeroseg.data.prepare.runner import Converted, Plan, Task
from zeroseg.errors import ZeroSegError

#: The 459-space ids (``labels.txt`` numbering) of the 59 classes, mmseg ``pascal_context.py`` ``_mapping``
#: without its leading 0 (background), sorted: sorted ids give the alphabetical CONTEXT59_CLASSES order.
CONTEXT59_IDS_459: tuple[int, ...] = (
    2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104, 105, 113, 115, 144,
    158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308, 324, 326, 347, 349, 354, 355,
    360, 366, 368, 397, 415, 416, 420, 424, 427, 440, 445, 454, 458,
)  # fmt: skip

_NUM_459 = len(CONTEXT459_CLASSES)
if len(CONTEXT59_IDS_459) != len(CONTEXT59_CLASSES):  # guard against an edit of the id table
    raise AssertionError("CONTEXT59_IDS_459 must list one 459-space id per PC-59 class")


def context60_lut() -> np.ndarray:
    """LabelMap value (0..459) -> 60-class id. Returns (460,) uint8: the 59 classes -> 1..59, the rest -> 0."""
    lut = np.zeros(_NUM_459 + 1, dtype=np.uint8)
    for k, raw in enumerate(CONTEXT59_IDS_459):
        lut[raw] = k + 1
    return lut


def context459_lut() -> np.ndarray:
    """LabelMap value (0..459) -> 459-class id. Returns (460,) uint16: k -> k - 1, 0 -> 65535."""
    lut = np.arange(-1, _NUM_459, dtype=np.int64)
    lut[0] = IGNORE_WIDE
    return lut.astype(np.uint16)


def _label_map(path: Path) -> np.ndarray:
    lm = load_mat_field(path, "LabelMap")
    check_values(lm, range(_NUM_459 + 1), path, "LabelMap (ids 0..459)")
    return lm


def convert_60(path: Path) -> Converted:
    """A Context ``.mat`` -> 60-class ids (uint8)."""
    return Converted(context60_lut()[_label_map(path)])


def convert_459(path: Path) -> Converted:
    """A Context ``.mat`` -> 459-class ids (uint16, 65535 = unlabelled)."""
    return Converted(context459_lut()[_label_map(path)])


def _squash(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def check_labels_txt(path: Path) -> None:
    """Compare a Context ``labels.txt`` (``k: name``) with :data:`CONTEXT459_CLASSES`.

    Raises:
        ZeroSegError: unreadable file, or an id whose name differs (the LabelMap ids would then mean other classes).
    """
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as err:
        raise ZeroSegError(f"{path}: cannot read ({err.__class__.__name__})") from None
    for line in lines:
        if ":" not in line:
            continue
        idx, name = line.split(":", 1)
        if not idx.strip().isdigit():
            continue
        k = int(idx)
        if not 1 <= k <= _NUM_459 or _squash(CONTEXT459_CLASSES[k - 1]) != _squash(name):
            expected = CONTEXT459_CLASSES[k - 1] if 1 <= k <= _NUM_459 else "no class"
            raise ZeroSegError(f"{path}: id {k} is '{name.strip()}', zeroseg's PC-459 list has '{expected}'")


def plan_context(raw: Path, out: Path) -> list[Plan]:
    """The Context plans: ``context60`` (8-bit, also read as ``context59``) and ``context459`` (16-bit).

    Raises:
        ZeroSegError: a missing VOC2010 tree, ``trainval`` folder or list file, or a ``labels.txt`` that
            disagrees with the PC-459 list.
    """
    voc = first_dir(raw, ("", "VOC2010", "VOCdevkit/VOC2010"), ("JPEGImages", "ImageSets/Main"), "PASCAL VOC 2010")
    candidates = [b / sub for b in (voc, raw) for sub in ("trainval", "trainval/trainval")]
    mats = next((d for d in candidates if d.is_dir() and any(d.glob("*.mat"))), None)
    if mats is None:
        raise ZeroSegError(f"{raw}: no trainval/*.mat Context label maps here or in {voc} (unpack trainval.tar.gz)")
    for cand in (voc / "labels.txt", mats.parent / "labels.txt", raw / "labels.txt"):
        if cand.is_file():
            check_labels_txt(cand)
            break
    main = voc / "ImageSets" / "Main"
    splits = {name: read_list(main / f"{name}.txt") for name in ("train", "val")}
    ids = sorted(set(splits["train"]) | set(splits["val"]))
    base = out / "VOC2010"
    list_dir = base / "ImageSets" / "SegmentationContext"

    def tasks(convert, folder: str) -> list[Task]:
        return [
            Task(
                key=i,
                source=mats / f"{i}.mat",
                convert=partial(convert, mats / f"{i}.mat"),
                label_out=base / folder / f"{i}.png",
                image_src=voc / "JPEGImages" / f"{i}.jpg",
                image_out=base / "JPEGImages" / f"{i}.jpg",
            )
            for i in ids
        ]

    lists = {list_dir / f"{name}.txt": split_ids for name, split_ids in splits.items()}
    return [
        Plan(
            name="context60",
            root=out,
            class_names=CONTEXT60_CLASSES,
            read_label=context_reader.read_label_60,
            ignore_index=IGNORE,
            tasks=tasks(convert_60, "SegmentationClassContext"),
            lists=lists,
            check_splits=("train", "val"),
        ),
        Plan(
            name="context459",
            root=out,
            class_names=CONTEXT459_CLASSES,
            read_label=context_reader.read_label_459,
            ignore_index=IGNORE_WIDE,
            tasks=tasks(convert_459, context_reader.LABELS_459),
            lists=lists,
            check_splits=("train", "val"),
        ),
    ]
