"""Tests for zeroseg.metrics: hand-computed goldens, torchmetrics agreement, distributed all_reduce."""

from __future__ import annotations

import json
import math

import pytest
import torch

from zeroseg.errors import ZeroSegError
from zeroseg.metrics import ConfusionMatrix, LabelRangeError, compute_metrics, harmonic_mean

# Golden 4-class matrix, rows = ground truth, columns = prediction.
#   gt0: 4 right, 1 -> class 1, 1 -> class 2     (GT_0 = 6)
#   gt1: 2 -> class 0, 6 right                    (GT_1 = 8)
#   class 2: no ground truth, predicted once      (GT_2 = 0, Pred_2 = 1)
#   class 3: absent from ground truth and prediction
# Column sums (Pred_c): 6, 7, 1, 0.  Total 14 pixels, 10 correct.
GOLDEN = [
    [4, 1, 1, 0],
    [2, 6, 0, 0],
    [0, 0, 0, 0],
    [0, 0, 0, 0],
]


def _pixels_for(mat: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat (pred, target) pixel lists that produce ``mat``."""
    preds, targets = [], []
    for g, row in enumerate(mat):
        for p, count in enumerate(row):
            preds += [p] * count
            targets += [g] * count
    return torch.tensor(preds), torch.tensor(targets)


def test_update_builds_golden_matrix_and_skips_ignore() -> None:
    pred, target = _pixels_for(GOLDEN)
    # Ignored pixels carry arbitrary predictions, including the out-of-range 255 that writers put there.
    pred = torch.cat([pred, torch.tensor([0, 3, 255])])
    target = torch.cat([target, torch.tensor([255, 255, 255])])
    perm = torch.randperm(pred.numel(), generator=torch.Generator().manual_seed(0))
    cm = ConfusionMatrix(4)
    cm.update(pred[perm], target[perm])
    assert cm.mat.dtype == torch.int64
    assert cm.mat.tolist() == GOLDEN


def test_golden_metrics_by_hand() -> None:
    m = compute_metrics(torch.tensor(GOLDEN), seen_ids=[0, 1], unseen_ids=[2, 3])
    # IoU_c = TP / (GT + Pred - TP)
    #   IoU_0 = 4 / (6 + 6 - 4) = 4/8 = 0.5
    #   IoU_1 = 6 / (8 + 7 - 6) = 6/9 = 2/3
    #   IoU_2 = 0 / (0 + 1 - 0) = 0        (predicted but absent: counts as 0)
    #   IoU_3 = 0 / 0 -> undefined (None) (absent from both: excluded from means)
    assert m.per_class_iou[:3] == pytest.approx([0.5, 2 / 3, 0.0])
    assert m.per_class_iou[3] is None
    # mIoU = (1/2 + 2/3 + 0) / 3 = 7/18
    assert m.miou == pytest.approx(7 / 18)
    # seen {0,1}: (1/2 + 2/3) / 2 = 7/12; unseen {2,3}: only class 2 defined -> 0; hIoU = 0
    assert m.seen_miou == pytest.approx(7 / 12)
    assert m.unseen_miou == 0.0
    assert m.hiou == 0.0
    # pixel acc = 10/14; Acc_0 = 4/6, Acc_1 = 6/8, Acc_2/3 undefined -> mean (2/3 + 3/4) / 2 = 17/24
    assert m.pixel_acc == pytest.approx(10 / 14)
    assert m.per_class_acc[:2] == pytest.approx([2 / 3, 3 / 4])
    assert m.per_class_acc[2:] == [None, None]
    assert m.mean_acc == pytest.approx(17 / 24)
    # fwIoU = 6/14 * 1/2 + 8/14 * 2/3 = 9/42 + 16/42 = 25/42
    assert m.fwiou == pytest.approx(25 / 42)
    assert m.num_pixels == 14
    assert (m.seen_ids, m.unseen_ids) == ((0, 1), (2, 3))


def test_golden_hiou_and_zs3_absent_as_zero() -> None:
    # seen {0,3}: class 3 undefined -> S = 1/2; unseen {1,2}: U = (2/3 + 0) / 2 = 1/3
    # hIoU = 2 * 1/2 * 1/3 / (1/2 + 1/3) = (1/3) / (5/6) = 2/5
    m = compute_metrics(torch.tensor(GOLDEN), seen_ids=[3, 0], unseen_ids=[1, 2])
    assert m.seen_miou == pytest.approx(0.5)
    assert m.unseen_miou == pytest.approx(1 / 3)
    assert m.hiou == pytest.approx(0.4)
    # ZS3's nanmean(nan_to_num(iou)): class 3 counts as 0 -> mIoU = (1/2 + 2/3 + 0 + 0) / 4 = 7/24,
    # S = (1/2 + 0) / 2 = 1/4
    z = compute_metrics(torch.tensor(GOLDEN), seen_ids=[3, 0], unseen_ids=[1, 2], absent_as_zero=True)
    assert z.miou == pytest.approx(7 / 24)
    assert z.seen_miou == pytest.approx(0.25)
    assert z.per_class_iou[3] is None


def test_harmonic_mean() -> None:
    assert harmonic_mean(0.6, 0.3) == pytest.approx(0.4)  # 2*0.18/0.9
    assert harmonic_mean(0.0, 0.0) == 0.0
    assert harmonic_mean(0.5, 0.0) == 0.0
    assert math.isnan(harmonic_mean(math.nan, 0.5))


def test_no_split_and_empty_matrix_are_nan() -> None:
    m = compute_metrics(torch.tensor(GOLDEN))
    assert math.isnan(m.seen_miou) and math.isnan(m.unseen_miou) and math.isnan(m.hiou)
    e = compute_metrics(torch.zeros(3, 3, dtype=torch.int64), [0], [1, 2])
    assert e.per_class_iou == [None, None, None]
    assert math.isnan(e.miou) and math.isnan(e.pixel_acc) and math.isnan(e.hiou)
    d = e.to_dict(["a", "b", "c"])
    assert d["miou"] is None and d["hiou"] is None and d["num_pixels"] == 0
    json.dumps(d, allow_nan=False)  # strict JSON: no NaN leaks out


def test_to_dict_percent_names_and_splits() -> None:
    m = compute_metrics(torch.tensor(GOLDEN), seen_ids=[0, 1], unseen_ids=[2])
    d = m.to_dict(["bg", "cat", "dog", "cow"])
    assert d["miou"] == 38.89  # 7/18 = 0.38888...
    assert d["seen_miou"] == 58.33  # 7/12
    assert d["unseen_miou"] == 0.0
    assert d["pixel_acc"] == 71.43  # 10/14
    assert d["mean_acc"] == 70.83  # 17/24
    assert d["fwiou"] == 59.52  # 25/42
    assert d["num_classes"] == 4
    assert d["per_class"][1] == {"id": 1, "name": "cat", "split": "seen", "iou": 66.67, "acc": 75.0}
    assert d["per_class"][2]["split"] == "unseen"
    assert d["per_class"][3] == {"id": 3, "name": "cow", "split": None, "iou": None, "acc": None}
    assert m.to_dict()["per_class"][0]["name"] == "class_0"
    with pytest.raises(ZeroSegError, match="got 3 class names for a 4-class"):
        m.to_dict(["a", "b", "c"])


def test_bad_split_ids() -> None:
    mat = torch.tensor(GOLDEN)
    with pytest.raises(ZeroSegError, match=r"both seen and unseen"):
        compute_metrics(mat, [0, 1], [1, 2])
    with pytest.raises(ZeroSegError, match=r"unseen ids \[7\] outside 0..3"):
        compute_metrics(mat, [0], [7])
    with pytest.raises(ValueError, match="square"):
        compute_metrics(torch.zeros(2, 3))


def test_batched_uint8_equals_per_image() -> None:
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 5, (3, 7, 9), generator=g).to(torch.uint8)
    target[:, 0, :] = 255
    pred = torch.randint(0, 5, (3, 7, 9), generator=g).to(torch.uint8)
    batched, single = ConfusionMatrix(5), ConfusionMatrix(5)
    batched.update(pred, target)
    for i in range(3):
        single.update(pred[i], target[i])
    assert torch.equal(batched.mat, single.mat)
    # 3 images * 6 non-ignored rows * 9 columns
    assert int(batched.mat.sum()) == 3 * 6 * 9


def test_out_of_range_ids_raise_and_leave_matrix_untouched() -> None:
    cm = ConfusionMatrix(4)
    cm.update(torch.tensor([1]), torch.tensor([1]))
    with pytest.raises(LabelRangeError) as info:
        cm.update(torch.tensor([0, 1, 2]), torch.tensor([37, 1, 40]))
    assert info.value.which == "target" and info.value.bad_ids == [37, 40]
    assert str(info.value) == "target label ids 37, 40 outside 0..3 (4 classes, 255 = ignore)"
    with pytest.raises(LabelRangeError, match=r"prediction label id 9 outside 0..3") as info:
        cm.update(torch.tensor([9, 1]), torch.tensor([0, 1]))
    assert info.value.which == "prediction"
    with pytest.raises(LabelRangeError, match="target label id -1"):
        cm.update(torch.tensor([0]), torch.tensor([-1]))
    assert cm.mat.sum().item() == 1
    with pytest.raises(ValueError, match="integer class ids"):
        cm.update(torch.tensor([0.0]), torch.tensor([0]))
    with pytest.raises(ValueError, match="differs from target shape"):
        cm.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    cm.update(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long))
    cm.update(torch.tensor([3]), torch.tensor([255]))  # only ignored pixels: nothing counted
    assert cm.mat.sum().item() == 1


def test_ignore_index_inside_range() -> None:
    cm = ConfusionMatrix(3, ignore_index=0)
    cm.update(torch.tensor([2, 1, 2, 0]), torch.tensor([0, 1, 2, 0]))
    assert cm.mat.tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 1]]


def test_merge_reset_and_all_reduce_noop() -> None:
    a, b = ConfusionMatrix(4), ConfusionMatrix(4)
    pred, target = _pixels_for(GOLDEN)
    a.update(pred[:7], target[:7])
    b.update(pred[7:], target[7:])
    assert a.merge(b) is a
    assert a.mat.tolist() == GOLDEN
    a.all_reduce()  # no process group: unchanged
    assert a.mat.tolist() == GOLDEN
    assert a.compute([0, 1], [2, 3]).miou == pytest.approx(7 / 18)
    with pytest.raises(ValueError, match="cannot merge a 3-class"):
        a.merge(ConfusionMatrix(3))
    a.reset()
    assert a.mat.sum().item() == 0


def test_agrees_with_torchmetrics_jaccard() -> None:
    tm = pytest.importorskip("torchmetrics.classification")
    num_classes = 6
    g = torch.Generator().manual_seed(123)
    # Class 5 never occurs in target or prediction: torchmetrics' macro mean must skip it, as we do.
    target = torch.randint(0, 5, (4, 16, 16), generator=g)
    pred = torch.where(torch.rand(4, 16, 16, generator=g) < 0.6, target, torch.randint(0, 5, (4, 16, 16), generator=g))
    target[torch.rand(4, 16, 16, generator=g) < 0.1] = 255
    cm = ConfusionMatrix(num_classes)
    per_class = tm.MulticlassJaccardIndex(num_classes, average=None, ignore_index=255)
    macro = tm.MulticlassJaccardIndex(num_classes, average="macro", ignore_index=255)
    for i in range(4):
        cm.update(pred[i], target[i])
        per_class.update(pred[i], target[i])
        macro.update(pred[i], target[i])
    ours = cm.compute()
    theirs = per_class.compute()
    assert ours.per_class_iou[5] is None and theirs[5].item() == 0.0  # torchmetrics: zero_division=0
    assert torch.tensor(ours.per_class_iou[:5]) == pytest.approx(theirs[:5], abs=1e-6)
    assert ours.miou == pytest.approx(macro.compute().item(), abs=1e-6)


def _dist_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        cm = ConfusionMatrix(3)
        # rank 0 sees pixel (gt 0, pred 0) once; rank 1 sees (gt 2, pred 1) twice.
        if rank == 0:
            cm.update(torch.tensor([0]), torch.tensor([0]))
        else:
            cm.update(torch.tensor([1, 1]), torch.tensor([2, 2]))
        cm.all_reduce()
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(cm.mat.tolist(), f)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_all_reduce_two_gloo_ranks(tmp_path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(
        _dist_worker,
        args=(2, str(tmp_path / "init"), str(tmp_path)),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    expected = [[1, 0, 0], [0, 0, 0], [0, 2, 0]]
    for rank in range(2):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == expected
