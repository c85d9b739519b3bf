"""Tests for zeroseg.engine.evaluation: folder evaluation goldens, user-facing errors, table rendering."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zeroseg.data.io import read_label_png
from zeroseg.engine.evaluation import evaluate_label_folders, format_metrics_table
from zeroseg.errors import ZeroSegError

NAMES = ["sky", "cat", "dog"]

# Two tiny images; 255 = ignore.
GT_A = [[0, 1, 1], [2, 255, 2]]
PRED_A = [[0, 1, 0], [2, 2, 1]]
GT_B = [[1, 1], [0, 0]]
PRED_B = [[1, 1], [0, 0]]
# (gt, pred) pairs: A: (0,0) (1,1) (1,0) (2,2) [skip] (2,1);  B: (1,1) (1,1) (0,0) (0,0)
# Confusion matrix, rows = gt:  gt0 [3, 0, 0]   gt1 [1, 3, 0]   gt2 [0, 1, 1]
# Pred sums 4, 4, 1; TP 3, 3, 1 (7 of 9 pixels).
# IoU: 3/(3+4-3) = 75%, 3/(4+4-3) = 60%, 1/(2+1-1) = 50%  -> mIoU 185/3 = 61.67
# seen {0,1}: 67.5, unseen {2}: 50 -> hIoU = 2*67.5*50/117.5 = 57.45
# pixel acc 7/9 = 77.78; Acc 100, 75, 50 -> mean 75; fwIoU (3*.75 + 4*.6 + 2*.5)/9 = 5.65/9 = 62.78


def _palette_png(path: Path, ids: list[list[int]]) -> None:
    img = Image.fromarray(np.array(ids, dtype=np.uint8), mode="P")
    # A palette whose colours differ from the indices, so reading colours instead of indices would show.
    pal = [(37 * i) % 256 for i in range(768)]
    img.putpalette(pal)
    img.save(path)


def _gray_png(path: Path, ids: list[list[int]]) -> None:
    Image.fromarray(np.array(ids, dtype=np.uint8), mode="L").save(path)


@pytest.fixture()
def folders(tmp_path: Path) -> tuple[Path, Path]:
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    _palette_png(gt / "a.png", GT_A)
    _palette_png(gt / "b.png", GT_B)
    _gray_png(pred / "a.png", PRED_A)
    _palette_png(pred / "b.png", PRED_B)
    _gray_png(pred / "extra.png", [[0]])  # predictions without ground truth are ignored
    return pred, gt


def test_golden_folder_evaluation(folders: tuple[Path, Path]) -> None:
    pred, gt = folders
    out = evaluate_label_folders(pred, gt, NAMES, seen_ids=[0, 1], unseen_ids=[2])
    assert out["num_images"] == 2
    m = out["metrics"]
    assert [r["iou"] for r in m["per_class"]] == [75.0, 60.0, 50.0]
    assert [r["acc"] for r in m["per_class"]] == [100.0, 75.0, 50.0]
    assert [r["split"] for r in m["per_class"]] == ["seen", "seen", "unseen"]
    assert m["miou"] == 61.67
    assert m["seen_miou"] == 67.5
    assert m["unseen_miou"] == 50.0
    assert m["hiou"] == 57.45
    assert m["pixel_acc"] == 77.78
    assert m["mean_acc"] == 75.0
    assert m["fwiou"] == 62.78
    assert m["num_pixels"] == 9


def test_read_label_png_reads_palette_indices(tmp_path: Path) -> None:
    _palette_png(tmp_path / "p.png", GT_A)
    arr = read_label_png(tmp_path / "p.png")
    assert arr.tolist() == GT_A
    # One 16-bit rule for every label reader: ids 0..255 are read, a wider id is a one-line error.
    Image.fromarray(np.array([[254, 2]], dtype=np.uint16)).save(tmp_path / "wide.png")
    assert read_label_png(tmp_path / "wide.png").tolist() == [[254, 2]]
    Image.fromarray(np.array([[300, 2]], dtype=np.uint16)).save(tmp_path / "wide.png")
    with pytest.raises(ZeroSegError, match=r"wide\.png: label id 300 does not fit in 0\.\.255"):
        read_label_png(tmp_path / "wide.png")


def test_gt_reader_maps_dataset_ids(folders: tuple[Path, Path], tmp_path: Path) -> None:
    pred, _ = folders
    # Ground truth stored shifted by one with 0 = unlabelled; the reader maps it back.
    gt = tmp_path / "gt_shifted"
    gt.mkdir()
    for name, ids in (("a", GT_A), ("b", GT_B)):
        shifted = [[0 if v == 255 else v + 1 for v in row] for row in ids]
        _gray_png(gt / f"{name}.png", shifted)

    def reader(path: Path) -> torch.Tensor:
        raw = np.array(Image.open(path)).astype(np.int64)
        return torch.from_numpy(np.where(raw == 0, 255, raw - 1))[None]  # (1, H, W) is accepted

    out = evaluate_label_folders(pred, gt, NAMES, [0, 1], [2], gt_reader=reader)
    assert out["metrics"]["miou"] == 61.67


def test_missing_predictions_listed(tmp_path: Path) -> None:
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    for i in range(8):
        _gray_png(gt / f"img{i}.png", [[0]])
    _gray_png(pred / "img0.png", [[0]])
    with pytest.raises(ZeroSegError) as info:
        evaluate_label_folders(pred, gt, NAMES, [0], [1])
    msg = str(info.value)
    assert msg == f"7 of 8 ground-truth files have no prediction in {pred}: img1, img2, img3, img4, img5, ..."
    assert "\n" not in msg


def test_empty_and_missing_folders(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "gt").mkdir()
    _gray_png(tmp_path / "gt" / "a.png", [[0]])
    with pytest.raises(ZeroSegError, match=r"ground-truth folder .*empty: no \.png files"):
        evaluate_label_folders(tmp_path / "gt", tmp_path / "empty", NAMES, [0], [1])
    with pytest.raises(ZeroSegError, match=r"prediction folder .*empty: no \.png files"):
        evaluate_label_folders(tmp_path / "empty", tmp_path / "gt", NAMES, [0], [1])
    with pytest.raises(ZeroSegError, match=r"prediction folder .*nope: not a directory"):
        evaluate_label_folders(tmp_path / "nope", tmp_path / "gt", NAMES, [0], [1])
    with pytest.raises(ZeroSegError, match="class_names is empty"):
        evaluate_label_folders(tmp_path / "gt", tmp_path / "gt", [], None, None)


def test_size_mismatch_names_file_and_sizes(folders: tuple[Path, Path]) -> None:
    pred, gt = folders
    _gray_png(pred / "b.png", [[0, 0, 0]])
    with pytest.raises(ZeroSegError) as info:
        evaluate_label_folders(pred, gt, NAMES, [0, 1], [2])
    assert str(info.value) == f"{pred / 'b.png'}: prediction is 1x3 (HxW) but ground truth b.png is 2x2"


def test_out_of_range_ids_name_the_file(folders: tuple[Path, Path]) -> None:
    pred, gt = folders
    _palette_png(gt / "b.png", [[1, 7], [0, 0]])
    with pytest.raises(ZeroSegError) as info:
        evaluate_label_folders(pred, gt, NAMES, [0, 1], [2])
    assert str(info.value) == f"{gt / 'b.png'}: label id 7 outside 0..2 (3 classes, 255 = ignore)"
    _palette_png(gt / "b.png", GT_B)
    _gray_png(pred / "a.png", [[0, 1, 0], [2, 200, 3]])  # 200 sits on an ignored pixel: allowed
    with pytest.raises(ZeroSegError) as info:
        evaluate_label_folders(pred, gt, NAMES, [0, 1], [2])
    assert str(info.value) == f"{pred / 'a.png'}: label id 3 outside 0..2 (3 classes, 255 = ignore)"


def test_colour_and_corrupt_predictions(folders: tuple[Path, Path]) -> None:
    pred, gt = folders
    Image.new("RGB", (3, 2)).save(pred / "a.png")
    with pytest.raises(ZeroSegError, match=r"a\.png: image mode RGB is not a label map"):
        evaluate_label_folders(pred, gt, NAMES, [0, 1], [2])
    (pred / "a.png").write_bytes(b"not a png")
    with pytest.raises(ZeroSegError, match=r"a\.png: cannot read image"):
        evaluate_label_folders(pred, gt, NAMES, [0, 1], [2])


def test_format_metrics_table(folders: tuple[Path, Path]) -> None:
    pred, gt = folders
    out = evaluate_label_folders(pred, gt, NAMES, seen_ids=[0, 1], unseen_ids=[2])
    table = format_metrics_table(out, title="VOC toy")
    lines = table.splitlines()
    assert lines[0] == "VOC toy"
    assert lines[1].split() == ["id", "class", "split", "IoU", "Acc"]
    assert lines[3].split() == ["0", "sky", "seen", "75.00", "100.00"]
    assert lines[5].split() == ["2*", "dog", "unseen", "50.00", "50.00"]
    assert "mIoU (all)       61.67" in lines
    assert "mIoU (seen)      67.50" in lines
    assert "mIoU (unseen)    50.00" in lines
    assert "hIoU             57.45" in lines
    assert "pixel acc        77.78" in lines
    assert "mean acc         75.00" in lines
    assert "fwIoU            62.78" in lines
    assert lines[-1] == "2 images, 9 pixels; * = unseen class"
    # The bare metrics dict renders too; undefined values print as n/a.
    bare = dict(out["metrics"], seen_miou=None, hiou=None)
    text = format_metrics_table(bare)
    assert "hIoU               n/a" in text.splitlines()
    assert text.splitlines()[-1] == "9 pixels; * = unseen class"


def test_evaluate_predictor_skips_the_wide_ignore_id_of_16_bit_label_spaces():
    """PC-459/ADE-847 labels are 16-bit with ignore 65535: those pixels are skipped, not an out-of-range error."""
    from types import SimpleNamespace

    from zeroseg.engine.evaluator import evaluate_predictor

    labels = torch.tensor([[[0, 1], [65535, 1]]])  # one ignored pixel
    val = [(torch.zeros(3, 2, 2), labels[0], "a")]
    data = SimpleNamespace(
        val=val,
        class_names=("a", "b", "c"),
        seen_ids=(0, 1),
        unseen_ids=(2,),
        split=SimpleNamespace(dataset_class_names=tuple(f"c{i}" for i in range(459))),
    )
    cfg = SimpleNamespace(eval_batch_size=1, num_workers=0)
    m = evaluate_predictor(lambda x: torch.tensor([[[0, 1], [2, 0]]]), data, cfg, device="cpu", progress=False)
    # 3 counted pixels: (0->0), (1->1), (1->0); class 0 IoU 1/2, class 1 IoU 1/2, class 2 never present.
    assert m["num_pixels"] == 3
    assert m["per_class"][0]["iou"] == pytest.approx(50.0) and m["per_class"][1]["iou"] == pytest.approx(50.0)
