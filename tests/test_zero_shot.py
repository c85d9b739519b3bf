"""The seen-only label path (zeroseg.data.zero_shot): the one label map, the drop/ignore policies, the id spaces.

Every dataset here is hand-built in tmp_path; expected labels are written out from the rule, not from the code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zeroseg.config import DataConfig
from zeroseg.data.classes import VOC_CLASSES, palette
from zeroseg.data.splits import get_split
from zeroseg.data.zero_shot import build_zero_shot_data, label_lut
from zeroseg.errors import ZeroSegError

# Folder-layout toy: label ids 0 bg (ignored background), 1 cat, 2 dog, 3 cow, 4 bird; dog and cow unseen.
# Model classes are the evaluated ones in dataset order: cat 0, dog 1, cow 2, bird 3 (label id - 1).
TOY_CLASSES = ("bg", "cat", "dog", "cow", "bird")
SEEN_IDX, UNSEEN_IDX = (0, 3), (1, 2)
TRAIN = {
    "a": [[0, 1], [4, 255]],  # seen only -> kept by drop
    "b": [[1, 1], [3, 0]],  # one cow pixel -> dropped
    "c": [[2, 2], [255, 4]],  # dog -> dropped
    "d": [[0, 0], [0, 4]],  # seen only -> kept
}
# The same maps in model indices with unseen pixels -> 255 (seen-only labels), written out by hand.
SEEN_ONLY = {
    "a": [[255, 0], [3, 255]],
    "b": [[0, 0], [255, 255]],
    "c": [[255, 255], [255, 3]],
    "d": [[255, 255], [255, 3]],
}


def _write_pair(root: Path, split: str, stem: str, label) -> None:
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((2, 2, 3), 90, dtype=np.uint8)).save(root / "images" / split / f"{stem}.png")
    Image.fromarray(np.array(label, dtype=np.uint8), mode="L").save(root / "annotations" / split / f"{stem}.png")


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    root = tmp_path / "toy"
    root.mkdir()
    (root / "classes.txt").write_text("\n".join(TOY_CLASSES) + "\n")
    split = {
        "name": "toy",
        "dataset": "toy",
        "classes": list(TOY_CLASSES),
        "unseen": ["dog", "cow"],
        "background": "bg",
        "ignore_background": True,
    }
    (root / "split.json").write_text(json.dumps(split))
    for stem, label in TRAIN.items():
        _write_pair(root, "train", stem, label)
    _write_pair(root, "val", "v", [[0, 2], [3, 4]])
    return root


def _cfg(root: Path, policy: str) -> DataConfig:
    # crop 2 and scale 1 keep the augmented 2x2 maps whole (up to a flip).
    return DataConfig(
        dataset="folder",
        root=str(root),
        split=str(root / "split.json"),
        unseen_policy=policy,
        crop_size=2,
        scale_range=(1.0, 1.0),
        augmentation_seed=0,
    )


def _items(ds) -> dict[str, list]:
    return {stem: label.tolist() for _, label, stem in (ds[i] for i in range(len(ds)))}


def test_drop_removes_exactly_the_images_with_an_unseen_pixel(toy: Path) -> None:
    data = build_zero_shot_data(_cfg(toy, "drop"), progress=False)
    assert (data.seen_ids, data.unseen_ids) == (SEEN_IDX, UNSEEN_IDX)
    assert _items(data.train_plain) == {"a": SEEN_ONLY["a"], "d": SEEN_ONLY["d"]}
    assert sorted(_items(data.train)) == ["a", "d"]
    assert sorted(_items(data.train_full)) == sorted(TRAIN)  # the official protocol's all-label set keeps them


def test_unlabelled_pool_is_the_dropped_images_without_unseen_ground_truth(toy: Path) -> None:
    data = build_zero_shot_data(_cfg(toy, "drop"), progress=False)
    pool = _items(data.unlabelled)
    assert pool == {"b": SEEN_ONLY["b"], "c": SEEN_ONLY["c"]}
    for stem, label in pool.items():
        raw = np.array(TRAIN[stem])
        assert (np.array(label)[np.isin(raw, (2, 3))] == 255).all()  # every unseen pixel hidden


def test_ignore_keeps_every_image_and_relabels_unseen_pixels(toy: Path) -> None:
    data = build_zero_shot_data(_cfg(toy, "ignore"), progress=False)
    assert data.unlabelled is None
    assert _items(data.train_plain) == SEEN_ONLY
    assert sorted(_items(data.train)) == sorted(TRAIN)
    # Validation keeps every evaluated class, unseen included: bg 255, dog 1, cow 2, bird 3.
    assert _items(data.val) == {"v": [[255, 1], [2, 3]]}


@pytest.mark.parametrize("policy", ["drop", "ignore"])
def test_seen_only_training_labels_never_hold_an_unseen_id(toy: Path, policy: str) -> None:
    data = build_zero_shot_data(_cfg(toy, policy), progress=False)
    values: set[int] = set()
    for ds in (data.train, data.train_plain):
        for epoch in range(3):  # several augmentation draws
            if hasattr(ds, "base"):
                ds.base.set_epoch(epoch)
            for label in _items(ds).values():
                values |= set(np.unique(label).tolist())
    assert values & set(UNSEEN_IDX) == set()
    assert set(SEEN_IDX) <= values  # the seen classes are there, so the check is not vacuous


def test_unknown_policy_is_one_line_error(toy: Path) -> None:
    with pytest.raises(ZeroSegError, match="unknown unseen-class policy 'skip'; choose 'drop' or 'ignore'"):
        build_zero_shot_data(_cfg(toy, "skip"), progress=False)


def test_label_lut_golden() -> None:
    k2 = get_split("voc-zs3-k2")  # unseen cow (10), motorbike (14); background is a class
    lut = label_lut(VOC_CLASSES, k2.class_names, drop=k2.unseen)
    assert lut.shape == (256,) and lut.dtype == np.uint8
    assert lut[:21].tolist() == [*range(10), 255, 11, 12, 13, 255, *range(15, 21)]
    assert (lut[21:] == 255).all()
    label = np.array([[0, 10, 14], [20, 255, 3]], dtype=np.uint8)
    assert lut[label].tolist() == [[0, 255, 255], [20, 255, 3]]
    sp = get_split("voc-spnet-15-5")  # background ignored: model index = label id - 1
    assert label_lut(VOC_CLASSES, sp.class_names)[:22].tolist() == [255, *range(20), 255]
    assert label_lut(VOC_CLASSES, sp.class_names, drop=sp.unseen)[:22].tolist() == [255, *range(15)] + [255] * 6
    # Same names in and out with a drop: the identity on dataset ids (``zeroseg evaluate``'s table).
    assert label_lut(VOC_CLASSES, VOC_CLASSES, drop=["background"])[:22].tolist() == [255, *range(1, 21), 255]


def _voc_tree(root: Path) -> None:
    base = root / "VOC2012"
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    for split, stem in (("train", "t1"), ("val", "v1")):
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text(f"{stem}\n")
        (base / "JPEGImages").mkdir(exist_ok=True)
        (base / "SegmentationClass").mkdir(exist_ok=True)
        Image.fromarray(np.zeros((1, 4, 3), dtype=np.uint8)).save(base / "JPEGImages" / f"{stem}.jpg")
        img = Image.fromarray(np.array([[0, 15, 16, 255]], dtype=np.uint8), mode="P")  # bg, person, pottedplant
        img.putpalette(palette(256).ravel().tolist())
        img.save(base / "SegmentationClass" / f"{stem}.png")


def test_voc_15_5_label_ids_and_model_indices_differ_by_one(tmp_path: Path) -> None:
    split = get_split("voc-spnet-15-5")
    assert split.seen_label_ids == tuple(range(1, 16))  # aeroplane (1) .. person (15)
    assert split.unseen_label_ids == (16, 17, 18, 19, 20)  # pottedplant .. tvmonitor
    assert split.ignored_label_ids == (0,)
    _voc_tree(tmp_path)
    cfg = DataConfig(dataset="voc", root=str(tmp_path), split="voc-spnet-15-5", unseen_policy="ignore", crop_size=4)
    data = build_zero_shot_data(cfg, progress=False)
    assert data.class_names == VOC_CLASSES[1:]
    assert data.seen_ids == tuple(range(15)) and data.unseen_ids == (15, 16, 17, 18, 19)
    assert [data.class_names[i] for i in data.seen_ids] == [VOC_CLASSES[i] for i in split.seen_label_ids]
    assert [data.class_names[i] for i in data.unseen_ids] == [VOC_CLASSES[i] for i in split.unseen_label_ids]
    # person (label id 15) is model class 14, pottedplant (16) is 15; the background is ignored.
    assert _items(data.val) == {"v1": [[255, 14, 15, 255]]}
    assert _items(data.train_plain) == {"t1": [[255, 14, 255, 255]]}
