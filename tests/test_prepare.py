"""``zeroseg data prepare``: tiny raw trees in the publishers' formats -> exact labels, pixel by pixel.

Every expected value below is worked out by hand from the published mapping (cited per test), never read
from the code under test.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from zeroseg.cli import main
from zeroseg.data.check import check_dataset
from zeroseg.data.classes import ADE847_CLASSES, COCO_STUFF_171_CLASSES, CONTEXT60_CLASSES, CONTEXT459_CLASSES
from zeroseg.data.io import IGNORE_WIDE, read_label_png
from zeroseg.data.prepare import prepare
from zeroseg.data.prepare import runner as runner_mod
from zeroseg.data.prepare.ade20k_full import load_index, resize_nearest, resized_shape
from zeroseg.data.splits import list_splits
from zeroseg.errors import ZeroSegError


def _jpg(path: Path, h: int, w: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, "JPEG")


def _png(path: Path, arr: np.ndarray, mode: str | None = None) -> None:
    """Save ids as a grayscale PNG, or as a palette PNG (``mode="P"``, the VOC ``SegmentationClass`` format)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "P":
        img = Image.frombytes("P", (arr.shape[1], arr.shape[0]), arr.tobytes())
        img.putpalette([v for k in range(256) for v in ((k * 37) % 256, (k * 91) % 256, k)])
    else:
        img = Image.fromarray(arr)
    img.save(path)


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _lines(path: Path) -> list[str]:
    return path.read_text().split()


# ------------------------------------------------------------------------------------------------ VOC + SBD
VOC_A = np.array([[0, 1, 255], [15, 20, 0]], dtype=np.uint8)  # VOC train id "a", with a 255 border pixel
VOC_B = np.array([[3, 3, 0], [0, 255, 7]], dtype=np.uint8)  # VOC val id "b"
SBD_A = np.array([[9, 9, 9], [9, 9, 9]], dtype=np.uint8)  # SBD's label of "a": must NOT win over VOC's
SBD_C = np.array([[0, 12, 12], [19, 0, 2]], dtype=np.uint8)  # SBD-only id "c"


def _voc_raw(root: Path, sbd_c: np.ndarray = SBD_C) -> Path:
    voc = root / "VOCdevkit" / "VOC2012"
    for i in "abcd":
        _jpg(voc / "JPEGImages" / f"{i}.jpg", 2, 3)
    _png(voc / "SegmentationClass" / "a.png", VOC_A, "P")
    _png(voc / "SegmentationClass" / "b.png", VOC_B, "P")
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("a\n")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("b\n")
    sbd = root / "benchmark_RELEASE" / "dataset"
    (sbd / "cls").mkdir(parents=True)
    for i, seg in (("a", SBD_A), ("b", SBD_A), ("c", sbd_c)):
        scipy.io.savemat(sbd / "cls" / f"{i}.mat", {"GTcls": {"Segmentation": seg, "Boundaries": np.zeros((1, 1))}})
    (sbd / "train.txt").write_text("a\nc\n")
    (sbd / "val.txt").write_text("b\n")  # SBD val holds a VOC val image: it must stay out of train_aug
    return root


def test_voc_sbd_train_aug_labels_and_lists(tmp_path):
    raw, out = _voc_raw(tmp_path / "raw"), tmp_path / "out"
    [summary] = prepare("voc", raw, out, progress=False)
    base = out / "VOC2012"
    # mmseg voc_aug.py: trainaug = (VOC train + SBD train + SBD val) - VOC val = {a, c}.
    assert _lines(base / "ImageSets/Segmentation/train_aug.txt") == ["a", "c"]
    assert _lines(base / "ImageSets/Segmentation/val.txt") == ["b"]
    np.testing.assert_array_equal(_read(base / "SegmentationClassAug/a.png"), VOC_A)  # VOC label wins over SBD
    np.testing.assert_array_equal(_read(base / "SegmentationClassAug/c.png"), SBD_C)
    np.testing.assert_array_equal(_read(base / "SegmentationClassAug/b.png"), VOC_B)
    assert summary.num_images == 3 and summary.written == 3 and not summary.problems
    # Pixel counts over a, b, c by hand: background = 2 (a) + 2 (b) + 2 (c) = 6; person (15) = 1.
    assert summary.pixel_counts["background"] == 6 and summary.pixel_counts["person"] == 1
    assert summary.ignore_pixels == 2
    for split in ("train_aug", "val", "train"):
        report = check_dataset("voc", out, split)
        assert report["num_problems"] == 0 and report["num_ok"] == report["num_images"] > 0


def test_sbd_value_outside_voc_classes_is_a_one_line_error(tmp_path, capsys):
    bad = SBD_C.copy()
    bad[0, 0] = 21
    raw = _voc_raw(tmp_path / "raw", sbd_c=bad)
    with pytest.raises(ZeroSegError, match=r"c\.mat: unexpected value\(s\) 21"):
        prepare("voc", raw, tmp_path / "out", progress=False)
    rc = main(["data", "prepare", "voc", "--raw", str(raw), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and err.endswith("unexpected value(s) 21 in SBD GTcls.Segmentation (ids 0..20)")


def test_skip_bad_lists_the_file_and_leaves_its_id_out(tmp_path, capsys):
    raw = _voc_raw(tmp_path / "raw")
    (raw / "benchmark_RELEASE/dataset/cls/c.mat").write_bytes(b"not a mat file")
    out = tmp_path / "out"
    rc = main(["data", "prepare", "voc", "--raw", str(raw), "--out", str(out), "--skip-bad", "--quiet"])
    text = capsys.readouterr().out
    assert rc == 1 and "c.mat: cannot read MATLAB file" in text
    assert _lines(out / "VOC2012/ImageSets/Segmentation/train_aug.txt") == ["a"]
    assert not (out / "VOC2012/SegmentationClassAug/c.png").exists()


def test_rerun_skips_and_verifies_and_redoes_a_damaged_output(tmp_path):
    raw, out = _voc_raw(tmp_path / "raw"), tmp_path / "out"
    prepare("voc", raw, out, progress=False)
    [again] = prepare("voc", raw, out, progress=False)
    assert (again.written, again.verified) == (0, 3)
    damaged = out / "VOC2012/SegmentationClassAug/c.png"
    damaged.write_bytes(damaged.read_bytes()[:20])  # e.g. a file cut short by a copy tool
    [third] = prepare("voc", raw, out, progress=False)
    assert (third.written, third.verified) == (1, 2)
    np.testing.assert_array_equal(_read(damaged), SBD_C)


def test_kill_mid_run_then_rerun_gives_the_same_output(tmp_path, monkeypatch):
    raw = _voc_raw(tmp_path / "raw")
    prepare("voc", raw, tmp_path / "clean", progress=False)
    real, calls = runner_mod.atomic_write_png, []

    def dying(path, label):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies while writing its 2nd label
        return real(path, label)

    monkeypatch.setattr(runner_mod, "atomic_write_png", dying)
    with pytest.raises(KeyboardInterrupt):
        prepare("voc", raw, tmp_path / "out", progress=False)
    aug = tmp_path / "out/VOC2012/SegmentationClassAug"
    assert sorted(p.name for p in aug.iterdir()) == ["a.png"]  # nothing half-written, no temporary file left
    assert not (tmp_path / "out/VOC2012/ImageSets/Segmentation/train_aug.txt").exists()  # lists come last
    monkeypatch.setattr(runner_mod, "atomic_write_png", real)
    [summary] = prepare("voc", raw, tmp_path / "out", progress=False)
    assert (summary.written, summary.verified) == (2, 1)
    for rel in ("SegmentationClassAug/a.png", "SegmentationClassAug/b.png", "SegmentationClassAug/c.png"):
        np.testing.assert_array_equal(_read(tmp_path / "out/VOC2012" / rel), _read(tmp_path / "clean/VOC2012" / rel))
    for name in ("train.txt", "val.txt", "trainval.txt", "train_aug.txt"):
        rel = f"VOC2012/ImageSets/Segmentation/{name}"
        assert (tmp_path / "out" / rel).read_text() == (tmp_path / "clean" / rel).read_text()


def test_process_pool_gives_the_same_labels(tmp_path):
    raw = _voc_raw(tmp_path / "raw")
    prepare("voc", raw, tmp_path / "one", progress=False)
    [summary] = prepare("voc", raw, tmp_path / "two", workers=2, progress=False)
    assert summary.written == 3
    for i in "abc":
        rel = f"VOC2012/SegmentationClassAug/{i}.png"
        np.testing.assert_array_equal(_read(tmp_path / "two" / rel), _read(tmp_path / "one" / rel))


# ------------------------------------------------------------------------------------------------ Context
# LabelMap ids (labels.txt numbering): 0 unlabelled, 2 aeroplane, 9 bag, 458 wood, 459 wool, 100 (not in the 59).
CTX_MAP = np.array([[0, 2, 9], [458, 459, 100]], dtype=np.uint16)


def _context_raw(root: Path, label_map: np.ndarray = CTX_MAP, labels_txt: str | None = None) -> Path:
    voc = root / "VOCdevkit" / "VOC2010"
    for i in ("2008_000002", "2008_000003"):
        _jpg(voc / "JPEGImages" / f"{i}.jpg", 2, 3)
        (voc / "trainval").mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(voc / "trainval" / f"{i}.mat", {"LabelMap": label_map})
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "train.txt").write_text("2008_000002\n")
    (voc / "ImageSets" / "Main" / "val.txt").write_text("2008_000003\n")
    if labels_txt is not None:
        (voc / "labels.txt").write_text(labels_txt)
    return root


def test_context_59_60_and_459_labels(tmp_path):
    lines = "".join(f"{k}: {n}\n" for k, n in enumerate(CONTEXT459_CLASSES, start=1))
    raw, out = _context_raw(tmp_path / "raw", labels_txt=lines), tmp_path / "out"
    s60, s459 = prepare("context", raw, out, progress=False)
    base = out / "VOC2010"
    # mmseg pascal_context.py: the sorted 59 ids -> 1..59: 2 (aeroplane) -> 1, 9 (bag) -> 2, 458 (wood) -> 59;
    # 459 (wool) and 100 are outside the 59 -> background 0, like unlabelled 0.
    np.testing.assert_array_equal(
        _read(base / "SegmentationClassContext/2008_000002.png"), np.array([[0, 1, 2], [59, 0, 0]], np.uint8)
    )
    assert (CONTEXT60_CLASSES[1], CONTEXT60_CLASSES[2], CONTEXT60_CLASSES[59]) == ("aeroplane", "bag", "wood")
    # PC-459: k -> k - 1, unlabelled 0 -> 65535, stored as a 16-bit PNG.
    label459 = read_label_png(base / "SegmentationClassContext459/2008_000002.png", wide=True)
    np.testing.assert_array_equal(label459, np.array([[65535, 1, 8], [457, 458, 99]], np.uint16))
    assert Image.open(base / "SegmentationClassContext459/2008_000002.png").mode == "I;16"
    assert (CONTEXT459_CLASSES[1], CONTEXT459_CLASSES[457], CONTEXT459_CLASSES[458]) == ("aeroplane", "wood", "wool")
    assert s459.pixel_counts["wool"] == 2 and s459.ignore_pixels == 2 and s60.pixel_counts["background"] == 6
    for dataset in ("context60", "context59", "context459"):
        for split in ("train", "val"):
            report = check_dataset(dataset, out, split)
            assert report["num_problems"] == 0 and report["num_images"] == 1
    assert check_dataset("context459", out, "val")["pixel_counts"]["wood"] == 1


def test_context_labelmap_out_of_range_and_wrong_labels_txt(tmp_path):
    raw = _context_raw(tmp_path / "raw", label_map=np.array([[460, 1]], dtype=np.uint16))
    with pytest.raises(ZeroSegError, match=r"2008_000002\.mat: unexpected value\(s\) 460 in LabelMap"):
        prepare("context", raw, tmp_path / "out", progress=False)
    raw2 = _context_raw(tmp_path / "raw2", labels_txt="1: accordion\n2: airplane-ish\n")
    with pytest.raises(ZeroSegError, match="id 2 is 'airplane-ish'"):
        prepare("context", raw2, tmp_path / "out2", progress=False)


# ------------------------------------------------------------------------------------------------ COCO-Stuff
def test_coco_stuff_raw_ids_to_171(tmp_path):
    raw = tmp_path / "raw"
    # Raw ids (labels.txt minus one): 0 person, 11 unused ("street sign"), 12 stop sign, 91 banner, 181 wood.
    lab = np.array([[0, 11, 12], [91, 181, 255]], dtype=np.uint8)
    _jpg(raw / "images/val2017/000000000139.jpg", 2, 3)
    _png(raw / "annotations/val2017/000000000139.png", lab)
    [summary] = prepare("coco-stuff", raw, tmp_path / "out", progress=False)
    out = _read(tmp_path / "out/coco_stuff164k/annotations/val2017/000000000139_labelTrainIds.png")
    # 12 -> 11 (one unused id, 11, below it); 91 -> 91 - 11 = 80 (all 11 unused ids lie below 91); 181 -> 170.
    np.testing.assert_array_equal(out, np.array([[0, 255, 11], [80, 170, 255]], np.uint8))
    assert (COCO_STUFF_171_CLASSES[11], COCO_STUFF_171_CLASSES[80]) == ("stop sign", "banner")
    assert summary.pixel_counts["banner"] == 1 and summary.ignore_pixels == 2
    assert check_dataset("coco-stuff-171", tmp_path / "out", "val")["num_problems"] == 0


def test_coco_stuff_value_that_is_no_id_is_an_error(tmp_path):
    raw = tmp_path / "raw"
    _jpg(raw / "images/val2017/x.jpg", 1, 2)
    _png(raw / "annotations/val2017/x.png", np.array([[3, 200]], dtype=np.uint8))
    with pytest.raises(ZeroSegError, match=r"x\.png: unexpected value\(s\) 200"):
        prepare("coco-stuff", raw, tmp_path / "out", progress=False)


# ------------------------------------------------------------------------------------------------ ADE20K-150
def test_ade20k_150_as_is_and_checked(tmp_path):
    raw = tmp_path / "raw" / "ADEChallengeData2016"
    lab = np.array([[0, 1, 150]], dtype=np.uint8)
    _jpg(raw / "images/validation/ADE_val_00000001.jpg", 1, 3)
    _png(raw / "annotations/validation/ADE_val_00000001.png", lab)
    [summary] = prepare("ade20k-150", tmp_path / "raw", tmp_path / "out", progress=False)
    written = tmp_path / "out/ADEChallengeData2016/annotations/validation/ADE_val_00000001.png"
    np.testing.assert_array_equal(_read(written), lab)
    assert summary.pixel_counts["wall"] == 1 and summary.pixel_counts["flag"] == 1 and summary.ignore_pixels == 1
    assert check_dataset("ade20k-150", tmp_path / "out", "val")["num_problems"] == 0
    _png(raw / "annotations/validation/ADE_val_00000001.png", np.array([[0, 151, 2]], dtype=np.uint8))
    with pytest.raises(ZeroSegError, match=r"ADE_val_00000001\.png: unexpected value\(s\) 151"):
        prepare("ade20k-150", tmp_path / "raw", tmp_path / "out2", progress=False)


# ------------------------------------------------------------------------------------------------ ADE20K-847
def _seg_rgb(classes: np.ndarray) -> np.ndarray:
    """The ADE full-release encoding: R = class // 256 * 10 (+ an instance remainder), G = class % 256."""
    r = (classes // 256) * 10 + 3  # +3: R // 10 must drop it
    g = classes % 256
    return np.stack([r, g, np.full_like(classes, 7)], axis=-1).astype(np.uint8)


def _ade_full_raw(root: Path) -> Path:
    release = root / "ADE20K_2021_17_01"
    entries = [
        ("validation/cultural/apse__indoor", "ADE_val_00000001.jpg"),
        ("training/urban/street", "ADE_train_00000005.jpg"),
    ]
    # class-mask values: 2978 wall (train id 0), 312 building (1), 5 (no ADE-847 class), 0 (unlabelled).
    classes = np.array([[2978, 312, 5], [0, 2978, 312]])
    for k, (sub, name) in enumerate(entries):
        folder = release / "images" / "ADE" / sub
        _jpg(folder / name, 2, 3, seed=k)
        Image.fromarray(_seg_rgb(classes)).save(folder / name.replace(".jpg", "_seg.png"))
    index = {
        "filename": [n for _, n in entries],
        "folder": [f"ADE20K_2021_17_01/images/ADE/{s}" for s, _ in entries],
        "objectnames": ["wall", "building, edifice"],
        "objectPresence": np.zeros((2, 2), dtype=np.int64),
        "scene": np.array(["apse", "street"]),
    }
    (release / "index_ade20k.pkl").write_bytes(pickle.dumps(index))
    return root


def test_ade20k_847_from_the_release_index(tmp_path):
    raw, out = _ade_full_raw(tmp_path / "raw"), tmp_path / "out"
    [summary] = prepare("ade20k-847", raw, out, progress=False)
    ann = out / "ADE20K_2021_17_01/annotations_detectron2"
    expected = np.array([[0, 1, IGNORE_WIDE], [IGNORE_WIDE, 0, 1]], dtype=np.uint16)
    np.testing.assert_array_equal(read_label_png(ann / "validation/ADE_val_00000001.png", wide=True), expected)
    np.testing.assert_array_equal(read_label_png(ann / "training/ADE_train_00000005.png", wide=True), expected)
    assert (ADE847_CLASSES[0], ADE847_CLASSES[1]) == ("wall", "building, edifice")
    assert summary.pixel_counts["wall"] == 4 and summary.ignore_pixels == 4
    for split in ("train", "val"):
        assert check_dataset("ade20k-847", out, split)["num_problems"] == 0


def test_ade_index_is_read_with_a_restricted_unpickler(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "index_ade20k.pkl"
    path.write_bytes(pickle.dumps({"filename": [Evil()], "folder": ["x"]}))
    with pytest.raises(ZeroSegError, match="global builtins.print is not allowed"):
        load_index(path)
    path.write_bytes(pickle.dumps({"filename": ["a.jpg"], "folder": ["f"], "presence": np.arange(3)}))
    assert load_index(path)["presence"].tolist() == [0, 1, 2]


def test_ade_full_resize_rules():
    # MaskFormer: shorter side 512 when larger; the other side round(long / short * 512).
    assert resized_shape(600, 800) == (512, 683) and resized_shape(800, 600) == (683, 512)
    assert resized_shape(512, 900) is None
    # OpenCV INTER_NEAREST 4 -> 3 columns: source x = floor(x * 4 / 3) = 0, 1, 2; 3 -> 2 rows: 0, 1.
    label = np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(resize_nearest(label, 2, 3), np.array([[0, 1, 2], [4, 5, 6]]))


# ------------------------------------------------------------------------------------------------ seen-only
def test_seen_only_labels_by_split_name(tmp_path):
    raw, voc = _voc_raw(tmp_path / "raw"), tmp_path / "voc"
    prepare("voc", raw, voc, progress=False)
    [summary] = prepare("seen", voc, tmp_path / "seen", split="voc-spnet-15-5", progress=False)
    # ZegFormer prepare_pascal_voc_seen.py: VOC id k (1..15) -> k - 1; background and 16..20 (unseen) -> 255.
    out = _read(tmp_path / "seen/annotations/train_aug/a.png")  # a = [[0, 1, 255], [15, 20, 0]]
    np.testing.assert_array_equal(out, np.array([[255, 0, 255], [14, 255, 255]], np.uint8))
    out_c = _read(tmp_path / "seen/annotations/train_aug/c.png")  # c = [[0, 12, 12], [19, 0, 2]]
    np.testing.assert_array_equal(out_c, np.array([[255, 11, 11], [255, 255, 1]], np.uint8))
    assert _lines(tmp_path / "seen/classes.txt")[:2] == ["aeroplane", "bicycle"]
    assert len((tmp_path / "seen/classes.txt").read_text().splitlines()) == 15
    assert summary.num_images == 2
    assert check_dataset("folder", tmp_path / "seen", "train_aug")["num_problems"] == 0
    with pytest.raises(ZeroSegError, match="no seen classes"):
        prepare("seen", voc, tmp_path / "x", split="voc-open", progress=False)


# ------------------------------------------------------------------------------------------------ wide labels
def test_wide_label_reader_and_open_vocabulary_splits(tmp_path):
    p = tmp_path / "l.png"
    _png(p, np.array([[3, 255]], dtype=np.uint8))
    with pytest.raises(ZeroSegError, match="expected a 16-bit label PNG"):
        read_label_png(p, wide=True)  # 8-bit 255 would be ambiguous: class 255 or ignore
    _png(p, np.array([[300, 65535]], dtype=np.uint16))
    with pytest.raises(ZeroSegError, match="does not fit in 0..255"):
        read_label_png(p)
    assert read_label_png(p, wide=True).tolist() == [[300, 65535]]
    assert {"context459-open", "ade20k-847-open"} <= set(list_splits())


def test_atomic_png_write_leaves_no_partial_file(tmp_path, monkeypatch):
    from zeroseg.files import atomic_write_png

    def broken_save(self, fp, format=None, **params):  # the disk fills up half-way through the PNG
        f = open(fp, "wb") if isinstance(fp, (str, Path)) else fp
        f.write(b"\x89PNG\r\n\x1a\n partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError):
        atomic_write_png(tmp_path / "x.png", np.zeros((2, 2), np.uint8))
    assert list(tmp_path.iterdir()) == []
