"""The CLI contracts of the foundation commands: splits, data check, evaluate, embed."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zeroseg.cli import main
from zeroseg.data.synthetic import SynthConfig, write_benchmark


def test_splits_list_and_json(capsys) -> None:
    assert main(["splits"]) == 0
    out = capsys.readouterr().out
    for name in (
        "voc-zs3-k2",
        "voc-zs3-k10",
        "context-zs3-k10",
        "voc-spnet-15-5",
        "coco-stuff-156-15",
        "synthetic",
    ):
        assert name in out
    assert main(["splits", "voc-zs3-k4", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert set(d) >= {"name", "dataset", "seen", "unseen", "background"}
    assert d["unseen"] == ["cow", "motorbike", "aeroplane", "sofa"] and d["background"] == "background"
    assert "background" in d["seen"] and len(d["seen"]) == 17


def test_unknown_split_is_one_line(capsys) -> None:
    assert main(["splits", "voc-zs3-k3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zeroseg: error: ") and err.count("\n") == 1 and "voc-zs3-k3" in err


def test_data_check_reports_problems(tmp_path: Path, capsys) -> None:
    root = write_benchmark(tmp_path / "s", SynthConfig(image_size=16, num_train=3, num_val=1))
    assert main(["data", "check", "--dataset", "folder", "--root", str(root), "--split", "train", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_images"] == 3 and report["num_problems"] == 0
    assert sum(report["pixel_counts"].values()) + report["ignore_pixels"] == 3 * 16 * 16
    (root / "images" / "train" / "00001.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "annotations" / "train" / "00002.png")
    assert main(["data", "check", "--dataset", "folder", "--root", str(root), "--split", "train"]) == 1
    out = capsys.readouterr().out
    assert "00001.png" in out and "00002.png" in out


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)


def test_evaluate_folders_golden(tmp_path: Path, capsys) -> None:
    # VOC ZS3 K=2 (unseen cow=10, motorbike=14). 4x4 images, hand-computed:
    gt = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [14, 14, 1, 1], [14, 14, 1, 255]])
    pr = np.array([[0, 0, 10, 10], [0, 0, 0, 10], [14, 14, 1, 1], [14, 1, 1, 1]])
    _png(tmp_path / "gt" / "a.png", gt)
    _png(tmp_path / "pred" / "a.png", pr)
    out = tmp_path / "m.json"
    assert (
        main(
            [
                "evaluate",
                "--pred",
                str(tmp_path / "pred"),
                "--gt",
                str(tmp_path / "gt"),
                "--split",
                "voc-zs3-k2",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    m = json.loads(out.read_text())["metrics"]
    # 15 scored pixels ((3,3) is 255). background: gt 4, pred 5, tp 4 -> 4/5. aeroplane (1): gt 3, pred 4
    # ((3,1) too), tp 3 -> 3/4. cow (10): gt 4, pred 3, tp 3 -> 3/4. motorbike (14): gt 4, pred 3, tp 3 -> 3/4.
    # Absent seen classes are left out: seen = (0.8 + 0.75) / 2 = 77.5, unseen = 75, hIoU = 2SU/(S+U).
    # Pixel accuracy = (4 + 3 + 3 + 3) / 15.
    assert m["seen_miou"] == pytest.approx(77.5)
    assert m["unseen_miou"] == pytest.approx(75.0)
    assert m["hiou"] == pytest.approx(2 * 77.5 * 75 / 152.5, abs=0.01)
    assert m["pixel_acc"] == pytest.approx(100 * 13 / 15, abs=0.01)


def test_evaluate_spnet_split_ignores_background_and_scores_label_ids(tmp_path: Path) -> None:
    # VOC 15/5 in dataset label ids: background (0) is ignored, person (15) seen, pottedplant (16) unseen.
    _png(tmp_path / "gt" / "a.png", np.array([[0, 0, 15, 16]]))
    _png(tmp_path / "pred" / "a.png", np.array([[15, 15, 15, 16]]))
    out = tmp_path / "m.json"
    args = ["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]
    assert main([*args, "--split", "voc-spnet-15-5", "--gt-format", "raw", "--json", str(out)]) == 0
    m = json.loads(out.read_text())["metrics"]
    # Two scored pixels, both right; counting the background would give 2/4.
    assert m["pixel_acc"] == pytest.approx(100.0)
    assert m["seen_miou"] == pytest.approx(100.0) and m["unseen_miou"] == pytest.approx(100.0)


def test_evaluate_missing_prediction_is_one_line(tmp_path: Path, capsys) -> None:
    _png(tmp_path / "gt" / "a.png", np.zeros((4, 4)))
    _png(tmp_path / "gt" / "b.png", np.zeros((4, 4)))
    _png(tmp_path / "pred" / "a.png", np.zeros((4, 4)))
    assert (
        main(
            [
                "evaluate",
                "--pred",
                str(tmp_path / "pred"),
                "--gt",
                str(tmp_path / "gt"),
                "--split",
                "voc-zs3-k2",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "b" in err


def test_embed_prints_similarity(capsys) -> None:
    assert main(["embed", "--classes", "cat, dog, airplane"]) == 0
    out = capsys.readouterr().out
    assert "50-d" in out and "airplane" in out
    assert main(["embed", "--classes", " , "]) == 2
    assert "empty class list" in capsys.readouterr().err
    assert main(["embed", "--encoder", "nope", "--classes", "a"]) == 2
