"""ADE20K SceneParsing (150 classes): ``ADEChallengeData2016`` as it is, every label checked.

Input (``--raw``): ``ADEChallengeData2016.zip`` unpacked, ``images/{training,validation}/<id>.jpg`` and
``annotations/{training,validation}/<id>.png`` (ids 0..150, 0 = "other"). Output (``--out``, dataset
``ade20k-150``): ``ADEChallengeData2016/`` with the same tree, images linked and the labels rewritten with the
same values after checking that each holds only 0..150 (the ``ade20k-150`` reader applies mmseg's
``reduce_zero_label``: 0 -> 255, k -> k - 1).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from zeroseg.data import ade20k as ade_reader
from zeroseg.data.classes import ADE150_CLASSES
from zeroseg.data.io import IGNORE
from zeroseg.data.prepare.common import check_values, first_dir, raw_label
from zeroseg.data.prepare.runner import Converted, Plan, Task
from zeroseg.errors import ZeroSegError

SPLITS = ("training", "validation")


def convert_ade150(path: Path) -> Converted:
    """An ADEChallengeData2016 annotation, unchanged after a value check (0..150)."""
    label = raw_label(path)
    check_values(label, range(len(ADE150_CLASSES) + 1), path, "an ADE20K-150 annotation (ids 0..150)")
    return Converted(label)


def plan_ade20k_150(raw: Path, out: Path) -> list[Plan]:
    """The ADE20K-150 plan.

    Raises:
        ZeroSegError: a missing tree or no images.
    """
    base = first_dir(raw, ("", "ADEChallengeData2016"), ("images", "annotations"), "ADEChallengeData2016")
    dst = out / "ADEChallengeData2016"
    tasks = []
    for split in SPLITS:
        img_dir = base / "images" / split
        if not img_dir.is_dir():
            continue
        for img in sorted(p for p in img_dir.iterdir() if p.suffix.lower() == ".jpg"):
            src = base / "annotations" / split / f"{img.stem}.png"
            tasks.append(
                Task(
                    key=img.stem,
                    source=src,
                    convert=partial(convert_ade150, src),
                    label_out=dst / "annotations" / split / f"{img.stem}.png",
                    image_src=img,
                    image_out=dst / "images" / split / img.name,
                )
            )
    if not tasks:
        raise ZeroSegError(f"{base}: no images/training or images/validation .jpg files")
    return [
        Plan(
            name="ade20k-150",
            root=out,
            class_names=ADE150_CLASSES,
            read_label=ade_reader.read_label,
            ignore_index=IGNORE,
            tasks=tasks,
            check_splits=("train", "val"),
        )
    ]
