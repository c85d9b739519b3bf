"""Faults and bad inputs: checkpoints that cannot tear, runs that cannot mix, resumes that are exact."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from zeroseg.cli import main
from zeroseg.config import load_config
from zeroseg.data.io import load_image
from zeroseg.engine import checkpoint as ckpt_mod
from zeroseg.engine.checkpoint import load_checkpoint, load_checkpoint_meta, save_checkpoint
from zeroseg.engine.run import config_changes, read_metrics, start_run
from zeroseg.errors import ZeroSegError
from zeroseg.methods import zs3net, zs_mmd


# --------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_is_one_file_with_its_metadata(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "c", {"w": torch.arange(3.0)}, {"epoch": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]
    tensors, meta = load_checkpoint(tmp_path / "c")
    assert meta["epoch"] == 2 and meta["format"] == ckpt_mod.FORMAT
    assert torch.equal(tensors["w"], torch.arange(3.0))
    assert load_checkpoint_meta(path)["epoch"] == 2


def test_a_failed_save_leaves_the_previous_checkpoint_whole(tmp_path: Path, monkeypatch) -> None:
    save_checkpoint(tmp_path / "c", {"w": torch.zeros(2)}, {"epoch": 1})
    real_replace = os.replace

    def killed_at_rename(src, dst):
        raise KeyboardInterrupt  # a kill at the one rename that commits the new checkpoint

    monkeypatch.setattr(ckpt_mod.os, "replace", killed_at_rename)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "c", {"w": torch.ones(2)}, {"epoch": 2})
    monkeypatch.setattr(ckpt_mod.os, "replace", real_replace)
    tensors, meta = load_checkpoint(tmp_path / "c")
    assert meta["epoch"] == 1 and torch.equal(tensors["w"], torch.zeros(2))  # old tensors with old metadata
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temporary file left


def test_disk_full_during_a_save_is_one_line_and_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    save_checkpoint(tmp_path / "c", {"w": torch.zeros(2)}, {"epoch": 1})

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_mod.os, "fsync", full)
    with pytest.raises(ZeroSegError, match=r"c\.safetensors: cannot write checkpoint \(No space left on device\)"):
        save_checkpoint(tmp_path / "c", {"w": torch.ones(2)}, {"epoch": 2})
    assert load_checkpoint_meta(tmp_path / "c")["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "no_metadata"])
def test_damaged_checkpoints_are_one_line_errors(tmp_path: Path, damage: str) -> None:
    path = save_checkpoint(tmp_path / "c", {"w": torch.arange(100.0)}, {"epoch": 1})
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[:-40])
    elif damage == "garbage":
        path.write_bytes(b"\x00\x01not a checkpoint" * 10)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        from safetensors.torch import save_file

        save_file({"w": torch.zeros(1)}, str(path))  # a plain safetensors file, not a zeroseg checkpoint
    with pytest.raises(ZeroSegError) as err:
        load_checkpoint(tmp_path / "c")
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_legacy_two_file_checkpoints_still_load(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, str(tmp_path / "old.safetensors"))
    (tmp_path / "old.json").write_text(json.dumps({"method": "zs3net", "stage": "classifier"}))
    tensors, meta = load_checkpoint(tmp_path / "old")
    assert meta["stage"] == "classifier" and torch.equal(tensors["w"], torch.ones(2))


# --------------------------------------------------------------------------------------------- metrics, config
def test_corrupt_metrics_json_says_how_to_recover(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text("")  # what an in-place write leaves after a kill
    with pytest.raises(ZeroSegError, match="metrics.json: unreadable metrics .*delete it to re-evaluate"):
        read_metrics(path)


def test_config_changes_name_the_keys() -> None:
    saved = {"seed": 0, "device": "cpu", "generator": {"lr": 0.001, "epochs": 6}}
    now = {"seed": 0, "device": "cuda", "generator": {"lr": 0.002, "epochs": 6}, "extra": 1}
    assert config_changes(saved, now) == ["extra", "generator.lr"]  # device may change on resume


def test_resume_with_a_changed_config_is_refused(tiny_config, capsys) -> None:
    cfg = tiny_config()
    assert main(["train", str(cfg), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["train", str(cfg), "generator.lr=0.5", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "differs in generator.lr" in err[0] and "--allow-changed-config" in err[0]
    saved = yaml.safe_load((load_config(cfg).run_dir / "config.yaml").read_text())
    assert saved["generator"]["lr"] != 0.5  # the saved config is not overwritten by the refused run
    assert main(["train", str(cfg), "generator.lr=0.5", "--quiet", "--allow-changed-config"]) == 0


def test_a_second_process_cannot_enter_a_running_run(tiny_config, capsys) -> None:
    cfg = load_config(tiny_config())
    with start_run(cfg, progress=False):
        in_use = f"run directory in use by another zeroseg process \\(pid {os.getpid()}\\)"
        with pytest.raises(ZeroSegError, match=in_use):
            start_run(cfg, progress=False)
    with start_run(cfg, progress=False):  # released when the first run ended
        pass


# --------------------------------------------------------------------------------------------- exact resume
def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)[0]


@pytest.mark.parametrize("dies_in", ["train_generator", "train_classifier", "self_train"])
def test_resume_after_a_kill_at_any_stage_boundary_is_bit_identical(tiny_config, monkeypatch, dies_in) -> None:
    """Killed when stage N starts, resumed: every tensor of the final checkpoint equals the uninterrupted run's
    (the stage checkpoint before it carries the random states that stage N then draws from)."""
    path = tiny_config(selftrain={"enabled": True, "epochs": 1})
    straight = load_config(path, ["name=straight"])
    zs3net.train(straight, progress=False)
    killed = load_config(path, ["name=killed"])
    real = getattr(zs3net, dies_in)

    def dies(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(zs3net, dies_in, dies)
    with pytest.raises(KeyboardInterrupt):
        zs3net.train(killed, progress=False)
    monkeypatch.setattr(zs3net, dies_in, real)
    zs3net.train(killed, progress=False)
    a, b = _tensors(straight.run_dir / "selftrain"), _tensors(killed.run_dir / "selftrain")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_zs_mmd_resume_inside_the_rounds_is_bit_identical(tiny_config, monkeypatch) -> None:
    rounds = {"rounds": 2, "generator_epochs": 1, "threshold": 0.0, "min_pseudo_per_class": 1}
    path = tiny_config(method="zs_mmd", zs_mmd=rounds)
    straight = load_config(path, ["name=straight"])
    zs_mmd.train(straight, progress=False)
    killed = load_config(path, ["name=killed"])
    real, calls = zs_mmd.retrain_generator, {"n": 0}

    def dies_in_round_2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(zs_mmd, "retrain_generator", dies_in_round_2)
    with pytest.raises(KeyboardInterrupt):
        zs_mmd.train(killed, progress=False)
    monkeypatch.setattr(zs_mmd, "retrain_generator", real)
    zs_mmd.train(killed, progress=False)
    a, b = _tensors(straight.run_dir / "zs_mmd_round2"), _tensors(killed.run_dir / "zs_mmd_round2")
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --------------------------------------------------------------------------------------------- consistency
def test_a_split_for_another_dataset_is_refused(tiny_config, capsys) -> None:
    cfg = tiny_config(data={"split": "voc-zs3-k2"})
    assert main(["train", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "split 'voc-zs3-k2' is for dataset 'voc'" in err[0]


def test_classes_txt_in_another_order_than_split_json_is_refused(tiny_config, tmp_path, capsys) -> None:
    cfg = load_config(tiny_config())
    from zeroseg.data.zero_shot import build_zero_shot_data

    build_zero_shot_data(cfg.data, progress=False)  # writes the benchmark
    classes = Path(cfg.data.root) / "classes.txt"
    names = classes.read_text().split("\n")
    names[0], names[1] = names[1], names[0]
    classes.write_text("\n".join(names))
    folder = dataclasses.replace(cfg.data, dataset="folder")  # the generic layout reads classes.txt as it is
    with pytest.raises(ZeroSegError, match="the same classes in another order"):
        build_zero_shot_data(folder, progress=False)


def test_eval_with_another_split_is_refused(tiny_config, tmp_path, capsys) -> None:
    cfg = tiny_config()
    assert main(["train", str(cfg), "--quiet"]) == 0
    run = load_config(cfg).run_dir
    other = tmp_path / "other_split.json"
    split = json.loads((Path(load_config(cfg).data.root) / "split.json").read_text())
    split["name"] = "other"  # same classes, another partition: red dotted seen, red striped unseen
    split["seen"] = [c if c != "red striped" else "red dotted" for c in split["seen"]]
    split["unseen"] = [c if c != "red dotted" else "red striped" for c in split["unseen"]]
    other.write_text(json.dumps(split))
    capsys.readouterr()
    code = main(["eval", str(cfg), f"data.split={other}", "--checkpoint", str(run / "classifier"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "evaluate with the split it was trained on" in err[0]


# --------------------------------------------------------------------------------------------- images
def test_16_bit_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32896], [65535, 514, 1000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "wide.png")
    assert Image.open(tmp_path / "wide.png").mode.startswith("I")
    rgb = load_image(tmp_path / "wide.png")
    # round(v / 257): 0, 1, 128, 255, 2, round(3.89) = 4 -- not 255 everywhere above 255 as Pillow's RGB conversion
    expected = np.array([[0, 1, 128], [255, 2, 4]], dtype=np.uint8)
    assert rgb.shape == (2, 3, 3) and (rgb == expected[..., None]).all()


def test_float_images_are_refused(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((2, 2), dtype=np.float32)).save(tmp_path / "f.tiff")
    with pytest.raises(ZeroSegError, match="f.tiff: floating-point image"):
        load_image(tmp_path / "f.tiff")
