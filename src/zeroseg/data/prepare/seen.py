"""Seen-only training labels (unseen -> 255) for a named split, the files ZegFormer/SPNet train on.

Input (``--raw``): a prepared dataset tree of the split's dataset (e.g. the ``--out`` of ``prepare voc``).
Output (``--out``, dataset ``folder``)::

    classes.txt                        the split's seen classes in dataset order (line k = id k)
    images/<subset>/<stem>.<ext>       links
    annotations/<subset>/<stem>.png    ids = indices of the seen classes; unseen, ignored (e.g. VOC 15/5's
                                       background) and unlabelled pixels -> 255

The ids are contiguous over the seen classes as in dingjiansw101/ZegFormer
``datasets/pascal/prepare_pascal_voc_seen.py`` (15 VOC classes, background -> 255) and
``datasets/coco-stuff/prepare_coco_stuff_sem_seg_seen.py`` (156 classes); the map is
:func:`zeroseg.data.zero_shot.label_lut` from the dataset's classes to the seen ones.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from zeroseg.data import folder
from zeroseg.data.io import IGNORE, LabelReader
from zeroseg.data.prepare.runner import Converted, Plan, Task
from zeroseg.data.readers import get_reader
from zeroseg.data.splits import load_split
from zeroseg.data.zero_shot import label_lut
from zeroseg.errors import ZeroSegError


def convert_seen(path: Path, read_label: LabelReader, lut: np.ndarray) -> Converted:
    """A dataset label -> seen-only ids through ``lut`` (validated by the dataset reader first)."""
    return Converted(lut[read_label(path)])


def plan_seen(raw: Path, out: Path, split: str, subset: str | None = None) -> list[Plan]:
    """Seen-only labels of ``split`` for the ``subset`` file list (default: the dataset's training list).

    Raises:
        ZeroSegError: an unknown split, a split without seen classes (the ``-open`` ones), a wide dataset, or a
            missing prepared tree.
    """
    sp = load_split(split)
    if sp.dataset not in {"voc", "context59", "context60", "coco-stuff-171", "ade20k-150"}:
        raise ZeroSegError(f"split '{sp.name}': seen-only labels need a prepared dataset, not '{sp.dataset}'")
    seen = set(sp.seen)
    names = tuple(c for c in sp.dataset_class_names if c in seen)
    if not names:
        raise ZeroSegError(f"split '{sp.name}' has no seen classes; there are no seen-only labels to write")
    subset = subset or {"voc": "train_aug"}.get(sp.dataset, "train")
    reader = get_reader(sp.dataset)
    samples = reader.list_samples(raw, subset)
    lut = label_lut(sp.dataset_class_names, names)
    tasks = []
    for s in samples:
        tasks.append(
            Task(
                key=s.stem,
                source=s.label_path,
                convert=partial(convert_seen, s.label_path, reader.read_label, lut),
                label_out=out / "annotations" / subset / f"{s.stem}.png",
                image_src=s.image_path,
                image_out=out / "images" / subset / s.image_path.name,
            )
        )
    return [
        Plan(
            name="folder",
            root=out,
            class_names=names,
            read_label=folder.read_label,
            ignore_index=IGNORE,
            tasks=tasks,
            files={out / "classes.txt": "".join(f"{n}\n" for n in names)},
            check_splits=(subset,),
        )
    ]
