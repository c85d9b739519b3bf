"""The bad-input table: every user mistake ends in exit status 2 and one line ``zeroseg: error: ...`` that names
the file or value, never a traceback, and nothing already written is lost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from zeroseg.cli import main, one_line


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A tiny ZS3Net run (1 epoch per stage) and an image to predict on."""
    root = tmp_path_factory.mktemp("bad")
    cfg = {
        "name": "tiny",
        "out_dir": str(root / "runs"),
        "data": {"root": str(root / "synth"), "batch_size": 8, "eval_batch_size": 8, "crop_size": 32,
                 "synthetic": {"num_train": 16, "num_val": 4, "image_size": 32}},  # fmt: skip
        "segmenter": {"backbone": "tiny", "epochs": 1},
        "generator": {"epochs": 1, "pixels_per_class": 8},
        "classifier": {"epochs": 1},
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--quiet"]) == 0
    image = root / "img.png"
    Image.fromarray(np.full((20, 24, 3), 90, dtype=np.uint8)).save(image)
    return {"root": root, "config": path, "ckpt": root / "runs" / "tiny" / "classifier", "image": image}


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _cases(t: dict[str, Path], tmp: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (argv, text the single error line must contain)."""
    cfg, ckpt, image = str(t["config"]), str(t["ckpt"]), str(t["image"])
    bad_yaml = _write(tmp / "latin1.yaml", "name: caf\xe9\n".encode("latin-1"))
    bad_split = _write(tmp / "split.json", "{not json")
    text = _write(tmp / "notes.txt", "not an image")
    not_png = _write(tmp / "fake.png", b"\x89PNG garbage")
    for folder in ("a", "b"):  # two inputs whose outputs would both be x.png
        (tmp / folder).mkdir()
        Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp / folder / "x.png")
    truncated = _write(tmp / "cut.safetensors", Path(ckpt + ".safetensors").read_bytes()[:200])
    a_file = _write(tmp / "plain_file", "x")
    bomb = tmp / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)  # 400 Mpx in a few KiB: Pillow's decompression-bomb limit
    out = str(tmp / "out")
    predict = ["predict", image, "--checkpoint", ckpt, "--out", out]
    return {
        "missing config": (["train", str(tmp / "nope.yaml")], "nope.yaml"),
        "non-UTF-8 config": (["train", str(bad_yaml)], "latin1.yaml: not a UTF-8 text file"),
        "negative epochs": (["train", cfg, "segmenter.epochs=-1"], "'segmenter.epochs': -1 must be >= 1"),
        "zero batch": (["train", cfg, "data.batch_size=0"], "'data.batch_size': 0 must be >= 1"),
        "negative workers": (["train", cfg, "data.num_workers=-2"], "'data.num_workers': -2 must be >= 0"),
        "unknown device": (["train", cfg, "device=banana"], "'device': 'banana' must be cpu, cuda"),
        "cuda without GPU": (["eval", cfg, "device=cuda:7", "--checkpoint", ckpt], "device 'cuda:7': no such CUDA"),
        "unknown key": (["train", cfg, "segmenter.epochz=1"], "unknown config key 'segmenter.epochz'"),
        "malformed split": (["eval", cfg, f"data.split={bad_split}", "--checkpoint", ckpt], "split.json"),
        "out_dir under a file": (["train", cfg, f"out_dir={a_file}/runs", "name=x"], "plain_file"),
        "missing checkpoint": (["eval", cfg, "--checkpoint", str(tmp / "none")], "none.safetensors: checkpoint not"),
        "truncated checkpoint": (["eval", cfg, "--checkpoint", str(truncated)], "cut.safetensors"),
        "json to a folder": (["eval", cfg, "--checkpoint", ckpt, "--json", str(tmp)], "--json names a folder"),
        "missing image": ([*predict[:1], str(tmp / "gone.jpg"), *predict[2:]], "gone.jpg: image file not found"),
        "text as image": ([*predict[:1], str(text), *predict[2:]], "notes.txt: cannot decode image"),
        "broken PNG": ([*predict[:1], str(not_png), *predict[2:]], "fake.png: cannot decode image"),
        "decompression bomb": ([*predict[:1], str(bomb), *predict[2:]], "bomb.png: cannot decode image"),
        "size zero": ([*predict, "--size", "0"], "--size 0: must be a positive"),
        "same stems": (["predict", str(tmp / "a" / "x.png"), str(tmp / "b" / "x.png"), *predict[2:]], "same file stem"),
        "empty classes": ([*predict, "--classes", " , ,"], "empty class list"),
        "out is a file": ([*predict[:-1], str(a_file)], "plain_file: --out is a file"),
        "segmenter as final": ([*predict[:2], "--checkpoint", str(t["ckpt"].parent / "segmenter"), *predict[4:]],
                               "not a final checkpoint"),  # fmt: skip
    }


def test_every_bad_input_is_one_line_with_exit_status_2(trained, tmp_path, capsys) -> None:
    cases = _cases(trained, tmp_path)
    failures = []
    for name, (argv, expected) in cases.items():
        capsys.readouterr()
        code = main(argv)
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        ok = code == 2 and len(err) == 1 and err[0].startswith("zeroseg: error: ") and expected in err[0]
        if not ok:
            failures.append(f"{name}: exit {code}, stderr {err}")
    assert not failures, "\n".join(failures)
    assert len(cases) >= 22


def test_nothing_written_is_lost_by_a_refused_command(trained, tmp_path, capsys) -> None:
    run = trained["ckpt"].parent
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    assert main(["train", str(trained["config"]), "classifier.epochs=3", "--quiet"]) == 2  # config changed
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    assert after == before


def test_huge_images_are_labelled_downscaled_at_their_own_size(trained, tmp_path, capsys) -> None:
    big = tmp_path / "big.png"
    Image.fromarray(np.full((300, 400, 3), 120, dtype=np.uint8)).save(big)
    out = tmp_path / "out"
    code = main(["predict", str(big), "--checkpoint", str(trained["ckpt"]), "--out", str(out), "--max-pixels", "3000"])
    assert code == 0
    assert "labelled at" in capsys.readouterr().err
    assert Image.open(out / "big.png").size == (400, 300)


def test_a_worker_traceback_is_reduced_to_the_users_line() -> None:
    wrapped = (
        "Caught ZeroSegError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\nzeroseg.errors.ZeroSegError: data/a.png: cannot decode image (truncated)\n'
    )
    assert one_line(wrapped) == "data/a.png: cannot decode image (truncated)"

