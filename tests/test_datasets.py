"""Dataset readers, SegmentationDataset, transforms and data check, on tiny trees built in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zeroseg.data import ade20k, coco_stuff, context, folder, voc
from zeroseg.data.check import check_dataset, format_check_report
from zeroseg.data.classes import SYNTHETIC_CLASSES, VOC_CLASSES, palette
from zeroseg.data.io import SegmentationDataset, read_label_png
from zeroseg.data.readers import build_dataset, get_reader
from zeroseg.data.splits import get_split
from zeroseg.data.transforms import (
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    Resize,
    eval_transform,
    train_transform,
)
from zeroseg.data.zero_shot import label_lut
from zeroseg.errors import ZeroSegError

H, W = 6, 8


def _rgb(path: Path, h: int = H, w: int = W, value: tuple[int, int, int] = (255, 0, 0)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[:] = value
    Image.fromarray(arr).save(path)


def _gray(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8), mode="L").save(path)


def _palette_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr.astype(np.uint8), mode="P")
    img.putpalette(palette(256).ravel().tolist())
    img.save(path)


def _voc_label(cls: int) -> np.ndarray:
    """Class ``cls`` inside a 255 border ring, background elsewhere."""
    lab = np.zeros((H, W), dtype=np.uint8)
    lab[1:5, 1:7] = 255
    lab[2:4, 2:6] = cls
    return lab


def _make_voc(root: Path) -> Path:
    base = root / "VOCdevkit" / "VOC2012"
    lists = base / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    ids = {"train": ["2007_000001", "2007_000002"], "val": ["2007_000003"]}
    for split, names in ids.items():
        (lists / f"{split}.txt").write_text("\n".join(names) + "\n")
    for k, name in enumerate(ids["train"] + ids["val"]):
        _rgb(base / "JPEGImages" / f"{name}.jpg")
        _palette_png(base / "SegmentationClass" / f"{name}.png", _voc_label(k + 8))  # cat, chair, cow
    for k, name in enumerate(["2007_000001", "2007_000003", "2008_000009"]):
        _rgb(base / "JPEGImages" / f"{name}.jpg")
        _gray(base / "SegmentationClassAug" / f"{name}.png", np.full((H, W), k + 1))
    return base


# ---------------------------------------------------------------------------------------------- readers


def test_voc_reader_palette_labels(tmp_path):
    base = _make_voc(tmp_path)
    for root in (tmp_path, tmp_path / "VOCdevkit", base):  # any of the usual roots works
        samples = voc.list_samples(root, "train")
        assert [s.stem for s in samples] == ["2007_000001", "2007_000002"]
    lab = voc.read_label(samples[1].label_path)
    assert lab.dtype == np.uint8 and lab.shape == (H, W)
    assert lab.tolist() == _voc_label(9).tolist()
    assert sorted(np.unique(lab).tolist()) == [0, 9, 255]
    assert voc.list_samples(tmp_path, "val")[0].label_path.parent.name == "SegmentationClass"


def test_voc_train_aug_from_list_and_fallback(tmp_path):
    base = _make_voc(tmp_path)
    # No train_aug list: every SegmentationClassAug file minus val.txt.
    aug = voc.list_samples(tmp_path, "train_aug")
    assert [s.stem for s in aug] == ["2007_000001", "2008_000009"]
    assert voc.read_label(aug[1].label_path).tolist() == np.full((H, W), 3).tolist()
    # DeepLab-style list lines are reduced to ids.
    (base / "ImageSets/Segmentation/train_aug.txt").write_text(
        "/JPEGImages/2008_000009.jpg /SegmentationClassAug/2008_000009.png\n"
    )
    assert [s.stem for s in voc.list_samples(tmp_path, "trainaug")] == ["2008_000009"]


def test_voc_rgb_label_is_mapped_through_palette(tmp_path):
    pal = palette(256)
    ids = np.array([[0, 15], [20, 255]], dtype=np.uint8)
    path = tmp_path / "rgb.png"
    Image.fromarray(pal[ids]).save(path)
    assert voc.read_label(path).tolist() == [[0, 15], [20, 255]]
    Image.fromarray(np.full((2, 2, 3), 7, dtype=np.uint8)).save(path)
    with pytest.raises(ZeroSegError, match=r"rgb\.png: colour \(7, 7, 7\) is not a VOC class colour"):
        voc.read_label(path)


def test_voc_errors_name_paths(tmp_path):
    with pytest.raises(ZeroSegError, match="nowhere: dataset root not found"):
        voc.list_samples(tmp_path / "nowhere", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZeroSegError, match="not a PASCAL VOC 2012 tree"):
        voc.list_samples(tmp_path / "empty", "train")
    _make_voc(tmp_path)
    with pytest.raises(ZeroSegError, match=r"trainval\.txt: list file not found"):
        voc.list_samples(tmp_path, "trainval")
    with pytest.raises(ZeroSegError, match="unknown VOC split 'test'"):
        voc.list_samples(tmp_path, "test")


def _make_context(root: Path) -> Path:
    base = root / "VOCdevkit" / "VOC2010"
    (base / "ImageSets" / "SegmentationContext").mkdir(parents=True)
    (base / "ImageSets" / "SegmentationContext" / "val.txt").write_text("2008_000002\n")
    _rgb(base / "JPEGImages" / "2008_000002.jpg")
    lab = np.zeros((H, W), dtype=np.uint8)
    lab[0, :4] = [0, 1, 20, 59]
    lab[1, 0] = 255
    _gray(base / "SegmentationClassContext" / "2008_000002.png", lab)
    return base


def test_context_60_and_59(tmp_path):
    _make_context(tmp_path)
    (sample,) = context.list_samples(tmp_path, "val")
    lab60 = context.read_label_60(sample.label_path)
    lab59 = context.read_label_59(sample.label_path)
    assert lab60[0, :4].tolist() == [0, 1, 20, 59] and lab60[1, 0] == 255
    assert lab59[0, :4].tolist() == [255, 0, 19, 58] and lab59[1, 0] == 255
    assert (lab59[2:] == 255).all()  # background rows
    with pytest.raises(ZeroSegError, match=r"SegmentationContext/train\.txt: list file not found"):
        context.list_samples(tmp_path, "train")


def test_coco_stuff_raw_ids_mapped_to_171(tmp_path):
    root = tmp_path / "coco_stuff164k"
    _rgb(root / "images" / "val2017" / "000000000139.jpg", 2, 4)
    _gray(
        root / "annotations" / "val2017" / "000000000139.png",
        np.array([[0, 11, 20, 181], [255, 123, 171, 200]]),
    )
    # An mmseg-converted label is used as is when the raw PNG is absent.
    _rgb(root / "images" / "val2017" / "000000000285.jpg", 1, 2)
    _gray(root / "annotations" / "val2017" / "000000000285_labelTrainIds.png", np.array([[19, 255]]))
    samples = coco_stuff.list_samples(tmp_path, "val")
    assert [s.stem for s in samples] == ["000000000139", "000000000285"]
    assert coco_stuff.read_label(samples[0].label_path).tolist() == [[0, 255, 19, 170], [255, 112, 160, 255]]
    assert coco_stuff.read_label(samples[1].label_path).tolist() == [[19, 255]]
    with pytest.raises(ZeroSegError, match="unknown COCO-Stuff split 'test'"):
        coco_stuff.list_samples(tmp_path, "test")


def test_ade20k_reduce_zero_label(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    _rgb(root / "images" / "validation" / "ADE_val_00000001.jpg", 1, 4)
    _gray(root / "annotations" / "validation" / "ADE_val_00000001.png", np.array([[0, 1, 150, 255]]))
    (root / "images" / "training").mkdir()
    (root / "annotations" / "training").mkdir()
    for split in ("val", "validation"):
        (sample,) = ade20k.list_samples(tmp_path, split)
        assert ade20k.read_label(sample.label_path).tolist() == [[255, 0, 149, 255]]
    with pytest.raises(ZeroSegError, match=r"training: no \.jpg images"):
        ade20k.list_samples(root, "train")


def _make_folder(root: Path, classes=("bg", "circle", "square")) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(classes) + "\n\n")
    _rgb(root / "images" / "train" / "a.png", value=(0, 0, 255))
    _gray(root / "annotations" / "train" / "a.png", np.array([[0, 1, 2, 255] * 2] * H))
    _rgb(root / "images" / "train" / "b.jpg")
    _gray(root / "annotations" / "train" / "b.png", np.full((H, W), 2))
    return root


def test_folder_layout_and_split_json(tmp_path):
    root = _make_folder(tmp_path / "shapes")
    assert folder.read_classes(root) == ("bg", "circle", "square")
    samples = folder.list_samples(root, "train")
    assert [s.image_path.name for s in samples] == ["a.png", "b.jpg"]
    assert folder.read_label(samples[0].label_path)[0].tolist() == [0, 1, 2, 255] * 2
    assert folder.load_folder_split(root) is None
    (root / "split.json").write_text(json.dumps({"dataset": "shapes", "unseen": ["square"]}))
    split = folder.load_folder_split(root)
    assert split.unseen_label_ids == (2,) and split.seen == ("bg", "circle")
    (root / "classes.txt").write_text("a\nb\na\n")
    with pytest.raises(ZeroSegError, match="class 'a' listed twice"):
        folder.read_classes(root)


def test_synthetic_key_uses_folder_layout(tmp_path):
    root = _make_folder(tmp_path / "syn", SYNTHETIC_CLASSES)
    ds = build_dataset("synthetic", root, "train")
    assert ds.class_names == SYNTHETIC_CLASSES and len(ds) == 2
    (root / "classes.txt").write_text("sky\n")
    with pytest.raises(ZeroSegError, match="does not match the 16 synthetic benchmark classes"):
        build_dataset("synthetic", root, "train")


# ---------------------------------------------------------------------------------------------- dataset


def test_segmentation_dataset_item_golden(tmp_path):
    _make_voc(tmp_path)
    ds = build_dataset("voc", tmp_path, "train")
    assert len(ds) == 2 and ds.num_classes == 21 and ds.class_names == VOC_CLASSES
    image, label, stem = ds[0]
    assert stem == "2007_000001"
    assert image.shape == (3, H, W) and image.dtype == torch.float32
    assert label.shape == (H, W) and label.dtype == torch.int64
    assert label.tolist() == _voc_label(8).tolist()
    # A pure-red JPEG pixel normalises to about ((1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225).
    assert image[:, 3, 3].tolist() == pytest.approx([2.2489, -2.0357, -1.8044], abs=0.05)


def test_dataset_applies_label_lut_after_validation(tmp_path):
    _make_voc(tmp_path)  # train labels: cat (8), chair (9) in a 255 ring on background
    s = get_split("voc-zs3-k6")  # unseen includes cat (8), not chair (9)
    ds = build_dataset("voc", tmp_path, "train", label_lut=label_lut(VOC_CLASSES, s.class_names, drop=s.unseen))
    assert set(ds[0][1].unique().tolist()) == {0, 255}
    assert set(ds[1][1].unique().tolist()) == {0, 9, 255}
    with pytest.raises(ZeroSegError, match=r"label_lut must have shape \(256,\)"):
        build_dataset("voc", tmp_path, "train", label_lut=np.zeros(21, dtype=np.uint8))


def test_read_label_png_16_bit_rule(tmp_path):
    # 16-bit PNGs are read when every value is an id 0..255; anything wider is an error, never truncated.
    Image.fromarray(np.array([[7, 255]], dtype=np.uint16)).save(tmp_path / "ok16.png")
    out = read_label_png(tmp_path / "ok16.png")
    assert out.dtype == np.uint8 and out.tolist() == [[7, 255]]
    Image.fromarray(np.array([[300, 2]], dtype=np.uint16)).save(tmp_path / "wide.png")
    with pytest.raises(ZeroSegError, match=r"wide\.png: label id 300 does not fit in 0\.\.255") as info:
        read_label_png(tmp_path / "wide.png")
    assert "\n" not in str(info.value)
    Image.fromarray(np.zeros((2, 2, 4), dtype=np.uint8), mode="RGBA").save(tmp_path / "rgba.png")
    with pytest.raises(ZeroSegError, match=r"rgba\.png: image mode RGBA is not a label map"):
        read_label_png(tmp_path / "rgba.png")


def test_dataset_errors_name_the_file(tmp_path):
    root = _make_folder(tmp_path / "f")
    (root / "images" / "train" / "b.jpg").write_bytes(b"not a jpeg")
    ds = build_dataset("folder", root, "train")
    with pytest.raises(ZeroSegError, match=r"b\.jpg: cannot decode image"):
        ds[1]
    _gray(root / "annotations" / "train" / "a.png", np.zeros((H + 1, W)))
    with pytest.raises(ZeroSegError, match=r"a\.png: label size 8x7 differs from image size 8x6"):
        ds[0]
    _gray(root / "annotations" / "train" / "a.png", np.full((H, W), 37))
    with pytest.raises(ZeroSegError, match=r"a\.png: label id 37 outside 0\.\.2 \(folder 3 classes\)"):
        ds[0]
    (root / "annotations" / "train" / "a.png").unlink()
    with pytest.raises(ZeroSegError, match=r"a\.png: label file not found"):
        ds[0]
    with pytest.raises(ZeroSegError, match="unknown dataset 'vocc'"):
        build_dataset("vocc", root, "train")


def test_dataset_seeded_transform_is_reproducible(tmp_path):
    root = _make_folder(tmp_path / "f")
    samples = folder.list_samples(root, "train")
    make = lambda: SegmentationDataset(  # noqa: E731
        samples, folder.read_label, ("bg", "circle", "square"), transform=train_transform(5), seed=3
    )
    a, b = make(), make()
    img_a, lab_a, _ = a[0]
    img_b, lab_b, _ = b[0]
    assert img_a.shape == (3, 5, 5) and lab_a.shape == (5, 5)
    assert torch.equal(img_a, img_b) and torch.equal(lab_a, lab_b)
    outs = set()
    for epoch in range(6):
        a.set_epoch(epoch)
        outs.add(tuple(a[0][1].flatten().tolist()))
    assert len(outs) > 1  # the epoch changes the augmentation stream
    assert get_reader("folder").class_names(root) == ("bg", "circle", "square")


# ---------------------------------------------------------------------------------------------- transforms


def test_random_crop_pads_image_zero_and_label_ignore():
    image = torch.ones(3, 2, 3)
    label = torch.ones(2, 3, dtype=torch.long)
    out_img, out_lab = RandomCrop((4, 5))(image, label, torch.Generator().manual_seed(0))
    assert out_img.shape == (3, 4, 5) and out_lab.shape == (4, 5)
    assert out_img.sum().item() == 3 * 2 * 3  # original pixels survive, padding is 0
    assert out_lab[:2, :3].eq(1).all() and (out_lab == 255).sum().item() == 20 - 6


def test_flip_scale_resize_golden():
    image = torch.arange(6, dtype=torch.float32).view(1, 2, 3).repeat(3, 1, 1)
    label = torch.tensor([[0, 1, 2], [3, 4, 5]])
    img, lab = RandomHorizontalFlip(1.0)(image, label)
    assert lab.tolist() == [[2, 1, 0], [5, 4, 3]] and img[0].tolist() == [[2, 1, 0], [5, 4, 3]]
    img, lab = RandomHorizontalFlip(0.0)(image, label)
    assert torch.equal(lab, label)
    img, lab = RandomScale((2.0, 2.0))(image, label)
    assert img.shape == (3, 4, 6)
    assert lab.tolist() == [[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2], [3, 3, 4, 4, 5, 5], [3, 3, 4, 4, 5, 5]]
    img, lab = Resize(4)(torch.zeros(3, 2, 3), label)
    assert img.shape == (3, 4, 6) and lab.shape == (4, 6)
    img, lab = eval_transform(4, resize_label=False)(torch.zeros(3, 2, 3), label)
    assert img.shape == (3, 4, 6) and torch.equal(lab, label)
    img, lab = eval_transform()(image, label)
    assert torch.equal(img, image) and torch.equal(lab, label)


def test_train_transform_seeded():
    image = torch.rand(3, 10, 12, generator=torch.Generator().manual_seed(1))
    label = torch.randint(0, 4, (10, 12), generator=torch.Generator().manual_seed(2))
    t = train_transform(8, (0.5, 2.0))
    a = t(image, label, torch.Generator().manual_seed(7))
    b = t(image, label, torch.Generator().manual_seed(7))
    assert a[0].shape == (3, 8, 8) and a[1].shape == (8, 8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert set(a[1].unique().tolist()) <= {0, 1, 2, 3, 255}


# ---------------------------------------------------------------------------------------------- check


def test_check_dataset_reports_corrupt_image_and_size_mismatch(tmp_path):
    root = _make_folder(tmp_path / "f")
    _rgb(root / "images" / "train" / "c.png")
    _gray(root / "annotations" / "train" / "c.png", np.ones((H, W + 2)))
    (root / "images" / "train" / "b.jpg").write_bytes(b"\x00garbage")
    report = check_dataset("folder", root, "train")
    assert report["num_images"] == 3 and report["num_ok"] == 1
    assert report["num_problems"] == 2
    problems = "\n".join(report["problems"])
    assert "b.jpg: cannot decode image" in problems
    assert "c.png: label size 10x6 differs from image size 8x6" in problems
    # a.png: 2 rows x (bg, circle, square, 255) x 2 per row; b: 48 x square; c: 60 x circle
    assert report["pixel_counts"] == {"bg": 12, "circle": 12 + 60, "square": 12 + 48}
    assert report["ignore_pixels"] == 12
    json.dumps(report)  # JSON-able
    text = format_check_report(report)
    assert "images: 3  ok: 1  problems: 2" in text and "b.jpg: cannot decode image" in text


def test_check_dataset_out_of_range_ids(tmp_path):
    _make_voc(tmp_path)
    base = tmp_path / "VOCdevkit" / "VOC2012"
    _palette_png(base / "SegmentationClass" / "2007_000002.png", np.full((H, W), 37))
    report = check_dataset("voc", tmp_path, "train")
    assert report["num_problems"] == 1
    assert "2007_000002.png: label id(s) 37 outside 0..20 (voc)" in report["problems"][0]
    assert report["pixel_counts"]["cat"] == 8 and report["pixel_counts"]["background"] == 24
