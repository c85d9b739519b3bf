import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zeroseg.cli import main
from zeroseg.data.readers import build_dataset
from zeroseg.data.splits import load_split
from zeroseg.data.synthetic import COLOURS, SynthConfig, render_scene, write_benchmark
from zeroseg.errors import ZeroSegError


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    cfg = SynthConfig(seed=3, image_size=24, num_train=5, num_val=2)
    write_benchmark(tmp_path / "a", cfg)
    write_benchmark(tmp_path / "b", cfg)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    write_benchmark(tmp_path / "c", SynthConfig(seed=4, image_size=24, num_train=5, num_val=2))
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_layout_reads_back_through_the_real_reader(tmp_path: Path) -> None:
    root = write_benchmark(tmp_path / "s", SynthConfig(image_size=32, num_train=6, num_val=3))
    names = (root / "classes.txt").read_text().split("\n")[:-1]
    assert names[:4] == ["sky", "grass", "sand", "road"] and names[4] == "red striped" and len(names) == 16
    split = load_split(str(root / "split.json"))
    assert split.unseen == ("red dotted", "green checkered", "blue striped", "yellow checkered")
    assert set(split.seen) | set(split.unseen) == set(names)
    ds = build_dataset("folder", root, "train")
    assert len(ds) == 6
    image, label, stem = ds[0]
    assert image.shape == (3, 32, 32) and label.shape == (32, 32) and stem == "00000"
    assert int(label.max()) < 16


def test_appearance_comes_from_the_attributes() -> None:
    """Pixels of 'red ...' classes are red (or the pattern's white), never another colour."""
    cfg = SynthConfig(image_size=48, objects_per_image=(3, 3))
    names = cfg.class_names
    for i in range(6):
        image, label = render_scene(cfg, np.random.default_rng([0, 9, i]))
        for k, name in enumerate(names):
            colour = name.split()[0]
            if colour not in COLOURS:
                continue
            px = image[label == k].astype(float)
            if len(px) == 0:
                continue
            nominal = np.array(COLOURS[colour])
            near_colour = np.linalg.norm(px - nominal, axis=1) < 90
            white = px.min(axis=1) > 200
            assert (near_colour | white).mean() > 0.97, name
            if name.endswith("plain"):
                assert white.mean() < 0.05


def test_resume_and_refuse_a_different_benchmark(tmp_path: Path) -> None:
    cfg = SynthConfig(image_size=20, num_train=4, num_val=1)
    root = write_benchmark(tmp_path / "s", cfg)
    (root / "images" / "train" / "00003.png").unlink()  # as if killed mid-way
    write_benchmark(root, cfg)
    assert (root / "images" / "train" / "00003.png").is_file()
    with pytest.raises(ZeroSegError, match="holds a different synthetic benchmark"):
        write_benchmark(root, SynthConfig(image_size=20, num_train=4, num_val=1, seed=1))


def test_bad_vocabulary() -> None:
    with pytest.raises(ZeroSegError, match="unknown colour 'teal'"):
        SynthConfig(colours=("teal",))
    with pytest.raises(ZeroSegError, match="unseen class 'red plaid' is not one of"):
        SynthConfig(unseen=("red plaid",))


def test_other_vocabulary_makes_another_benchmark(tmp_path: Path) -> None:
    cfg = SynthConfig(
        colours=("purple", "orange"),
        patterns=("striped", "plain"),
        unseen=("orange plain",),
        image_size=20,
        num_train=2,
        num_val=1,
    )
    root = write_benchmark(tmp_path / "v", cfg)
    split = json.loads((root / "split.json").read_text())
    assert split["classes"][4:] == ["purple striped", "purple plain", "orange striped", "orange plain"]
    assert split["unseen"] == ["orange plain"]


def test_cli_synth(tmp_path: Path, capsys) -> None:
    assert main(["synth", "--out", str(tmp_path / "x"), "--train", "3", "--val", "1", "--image-size", "24"]) == 0
    assert "3 train + 1 val images" in capsys.readouterr().out
    assert Image.open(tmp_path / "x" / "images" / "train" / "00002.png").size == (24, 24)


def test_cli_synth_with_another_vocabulary(tmp_path: Path) -> None:
    args = ["synth", "--out", str(tmp_path / "v"), "--train", "2", "--val", "1", "--image-size", "20"]
    args += ["--colours", "purple,orange", "--patterns", "striped,plain", "--unseen", "orange plain"]
    assert main(args) == 0
    split = load_split(str(tmp_path / "v" / "split.json"))
    assert split.unseen == ("orange plain",) and "purple plain" in split.seen
    assert main(["synth", "--out", str(tmp_path / "w"), "--colours", "teal"]) == 2
