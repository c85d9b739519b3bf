import json
from pathlib import Path

from zeroseg.demo import run_demo, summarize


def test_quick_demo_writes_report(tmp_path: Path) -> None:
    report = run_demo(out=tmp_path, seeds=[0], quick=True, progress=False)
    runs = json.loads((tmp_path / "report.json").read_text())
    assert [r["name"] for r in runs][1:] == [
        "ZS3Net (GloVe)",
        "ZS5Net (GloVe, transductive self-training)",
        "CONTROL: ZS3Net with random class embeddings",
    ]
    for r in runs:
        assert set(r) == {"name", "seed", "seen_miou", "unseen_miou", "hiou", "wall_s"}
        assert 0 <= r["unseen_miou"] <= 100 and r["wall_s"] > 0
    text = report.read_text()
    assert "CONTROL" in text and "--quick" in text and (tmp_path / "panel.png").is_file()


def test_summarize_mean_and_std() -> None:
    runs = [
        {"name": "a", "seen_miou": 10.0, "unseen_miou": 1.0, "hiou": 2.0},
        {"name": "a", "seen_miou": 20.0, "unseen_miou": 3.0, "hiou": 4.0},
        {"name": "b", "seen_miou": 5.0, "unseen_miou": 5.0, "hiou": 5.0},
    ]
    rows = summarize(runs)
    assert [r["name"] for r in rows] == ["a", "b"]
    assert rows[0]["seen_miou"] == 15.0 and rows[0]["seen_miou_std"] == 5.0 and rows[0]["seeds"] == 2
    assert rows[1]["hiou_std"] == 0.0


def test_quick_zegformer_demo_via_cli(tmp_path: Path) -> None:
    from zeroseg.cli import main

    assert main(["demo", "--method", "zegformer", "--quick", "--seeds", "0", "--out", str(tmp_path), "--quiet"]) == 0
    runs = json.loads((tmp_path / "report.json").read_text())
    assert [r["name"] for r in runs] == ["ZegFormer (GloVe)", "CONTROL: ZegFormer with random class embeddings"]
    text = (tmp_path / "report.md").read_text()
    assert "ZegFormer on the embedded benchmark" in text and "inductive" in text
    assert (tmp_path / "panel.png").is_file()
