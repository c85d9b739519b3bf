"""PASCAL VOC 2012 + SBD -> ``SegmentationClassAug`` (DeepLab / mmsegmentation ``voc_aug.py``).

Inputs (``--raw`` holds both, e.g. the folder where the two archives were unpacked)::

    VOCdevkit/VOC2012/             VOCtrainval_11-May-2012.tar
        JPEGImages/<id>.jpg, SegmentationClass/<id>.png, ImageSets/Segmentation/{train,val}.txt
    benchmark_RELEASE/dataset/     benchmark.tgz (SBD, Hariharan et al.)
        cls/<id>.mat               struct GTcls, field Segmentation: uint8 ids 0..20
        train.txt, val.txt

Output (``--out``, read by the ``voc`` dataset)::

    VOC2012/JPEGImages/<id>.jpg            links to the raw images
    VOC2012/SegmentationClass/<id>.png     links to the raw VOC labels
    VOC2012/SegmentationClassAug/<id>.png  grayscale ids 0..20, 255 = ignore
    VOC2012/ImageSets/Segmentation/{train,val,trainval,train_aug}.txt

``train_aug`` = (VOC train + SBD train + SBD val) - VOC val, sorted: 10,582 ids on the full data, mmseg's
``trainaug.txt``. A VOC id keeps its VOC label (with its 255 object borders): mmseg trains VOC train ids from
``SegmentationClass`` and only the SBD-only ids (``aug.txt``) from the converted ``.mat`` files, and
DeepLab's ``SegmentationClassAug`` holds the VOC labels for VOC images. ``SegmentationClassAug`` also holds
the val labels, as DeepLab's does.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from zeroseg.data import voc as voc_reader
from zeroseg.data.classes import VOC_CLASSES
from zeroseg.data.io import IGNORE
from zeroseg.data.prepare.common import check_values, first_dir, load_mat_field, raw_label, read_list
from zeroseg.data.prepare.runner import Converted, Plan, Task

_VALID = (*range(len(VOC_CLASSES)), IGNORE)


def convert_voc_png(path: Path) -> Converted:
    """A VOC ``SegmentationClass`` palette PNG -> its ids (palette indices 0..20, 255 = border)."""
    label = raw_label(path)
    check_values(label, _VALID, path, "a VOC label (ids 0..20, 255)")
    return Converted(label)


def convert_sbd_mat(path: Path) -> Converted:
    """An SBD ``cls/<id>.mat`` -> ``GTcls.Segmentation`` as uint8 ids 0..20."""
    seg = load_mat_field(path, "GTcls", "Segmentation")
    check_values(seg, _VALID, path, "SBD GTcls.Segmentation (ids 0..20)")
    return Converted(seg.astype(np.uint8))


def plan_voc(raw: Path, out: Path) -> list[Plan]:
    """The VOC + SBD plan (see module docstring).

    Raises:
        ZeroSegError: a missing VOC or SBD tree or list file.
    """
    voc = first_dir(raw, ("", "VOC2012", "VOCdevkit/VOC2012"), ("JPEGImages", "SegmentationClass"), "PASCAL VOC 2012")
    sbd = first_dir(
        raw, ("", "dataset", "benchmark_RELEASE/dataset", "VOCaug/dataset"), ("cls", "train.txt"), "SBD benchmark"
    )
    lists = voc / "ImageSets" / "Segmentation"
    voc_train, voc_val = read_list(lists / "train.txt"), read_list(lists / "val.txt")
    sbd_ids = read_list(sbd / "train.txt") + read_list(sbd / "val.txt")
    train_aug = sorted((set(voc_train) | set(sbd_ids)) - set(voc_val))
    voc_ids = set(voc_train) | set(voc_val)
    base = out / "VOC2012"
    tasks = []
    for i in sorted(set(train_aug) | set(voc_val)):
        if i in voc_ids:
            source, convert = voc / "SegmentationClass" / f"{i}.png", convert_voc_png
            links = ((source, base / "SegmentationClass" / f"{i}.png"),)
        else:
            source, convert, links = sbd / "cls" / f"{i}.mat", convert_sbd_mat, ()
        tasks.append(
            Task(
                key=i,
                source=source,
                convert=partial(convert, source),
                label_out=base / "SegmentationClassAug" / f"{i}.png",
                image_src=voc / "JPEGImages" / f"{i}.jpg",
                image_out=base / "JPEGImages" / f"{i}.jpg",
                links=links,
            )
        )
    out_lists = base / "ImageSets" / "Segmentation"
    id_lists = {
        out_lists / "train.txt": voc_train,
        out_lists / "val.txt": voc_val,
        out_lists / "trainval.txt": voc_train + voc_val,
        out_lists / "train_aug.txt": train_aug,
    }
    return [
        Plan(
            name="voc",
            root=out,
            class_names=VOC_CLASSES,
            read_label=voc_reader.read_label,
            ignore_index=IGNORE,
            tasks=tasks,
            lists=id_lists,
            check_splits=("train_aug", "val"),
        )
    ]
