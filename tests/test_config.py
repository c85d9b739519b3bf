from dataclasses import replace
from pathlib import Path

import pytest

from zeroseg.config import (
    ExperimentConfig,
    load_config,
    packaged_configs,
    read_config_mapping,
    save_config,
)
from zeroseg.data.splits import list_splits
from zeroseg.errors import ZeroSegError

REPO = Path(__file__).resolve().parents[1]
#: The per-dataset configs whose ZS3 split K is chosen by ``data.split`` (they set no ``name``).
#: ZS3Net's K (number of unseen classes) is 2, 4, 6, 8 or 10 on both datasets (the splits zeroseg declares).
KS = (2, 4, 6, 8, 10)
K_CONFIGS = {
    "voc_zs3net": [f"voc-zs3-k{k}" for k in KS],
    "voc_zs_mmd": [f"voc-zs3-k{k}" for k in KS],
    "context_zs3net": [f"context-zs3-k{k}" for k in KS],
    "context_zs3net_gc": [f"context-zs3-k{k}" for k in KS],
    "context_zs_mmd": [f"context-zs3-k{k}" for k in KS],
}


def test_defaults_and_overrides(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("name: a\nsegmenter: {backbone: resnet18, epochs: 3}\n")
    cfg = load_config(p, ["segmenter.epochs=5", "data.scale_range=[0.5, 2.0]", "classifier.protocol=official"])
    assert cfg.segmenter.backbone == "resnet18"
    assert cfg.segmenter.epochs == 5
    assert cfg.data.scale_range == (0.5, 2.0)
    assert cfg.classifier.protocol == "official"
    assert cfg.segmenter.lr == 0.007  # official default untouched
    assert cfg.generator.sigmas == (2.0, 5.0, 10.0, 20.0, 40.0, 80.0)


def test_round_trip(tmp_path: Path) -> None:
    cfg = load_config(None, ["name=x", "selftrain.enabled=true"])
    save_config(cfg, tmp_path / "r.yaml")
    again = load_config(tmp_path / "r.yaml")
    assert again == cfg


@pytest.mark.parametrize(
    "override, message",
    [
        (["segmenter.epoch=3"], "unknown config key 'segmenter.epoch'"),
        (["segmenter.epochs=abc"], "config key 'segmenter.epochs': expected int"),
        (["classifier.protocol=loose"], "'loose' is not one of"),
        (["noequals"], "not of the form key=value"),
        (["data.unseen_policy=keep"], "'keep' is not one of"),
    ],
)
def test_bad_values_name_the_key(override: list[str], message: str) -> None:
    with pytest.raises(ZeroSegError, match=message):
        load_config(None, override)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ZeroSegError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ZeroSegError, match="bad.yaml: not valid YAML"):
        load_config(bad)


def test_packaged_configs_are_one_per_method_and_dataset() -> None:
    assert packaged_configs() == [
        "coco_stuff_zegformer",
        "coco_stuff_zegformer_eval_ade150",
        "coco_stuff_zegformer_eval_context59",
        "coco_stuff_zegformer_eval_voc20",
        "context_zs3net",
        "context_zs3net_gc",
        "context_zs_mmd",
        "synthetic_zegformer",
        "synthetic_zs3net",
        "synthetic_zs_mmd",
        "voc_zegformer",
        "voc_zs3net",
        "voc_zs_mmd",
    ]
    # README's `configs/<name>.yaml` commands go through the committed relative symlink to the package data.
    link = REPO / "configs"
    assert link.is_symlink() and not Path(link.readlink()).is_absolute()
    assert sorted(p.stem for p in link.glob("*.yaml")) == packaged_configs()


@pytest.mark.parametrize("name", packaged_configs())
def test_every_shipped_config_loads(name: str) -> None:
    by_name = load_config(name)
    assert isinstance(by_name, ExperimentConfig)
    assert load_config(REPO / "configs" / f"{name}.yaml") == by_name == load_config(f"{name}.yaml")
    if name in K_CONFIGS:
        assert "name" not in read_config_mapping(name)
        assert by_name.name == f"{name}_{K_CONFIGS[name][0]}"
    else:
        assert by_name.name == name


@pytest.mark.parametrize("name", sorted(K_CONFIGS))
def test_every_k_split_loads_into_its_own_run_directory(name: str) -> None:
    splits = K_CONFIGS[name]
    assert set(splits) <= set(list_splits())  # every K a header documents is a declared split
    cfgs = [load_config(name, [f"data.split={split}"]) for split in splits]
    assert [c.data.split for c in cfgs] == splits
    assert [c.name for c in cfgs] == [f"{name}_{split}" for split in splits]
    assert len({c.run_dir for c in cfgs}) == len(splits)
    # An explicit name wins over the split-derived one.
    assert load_config(name, ["data.split=" + splits[-1], "name=mine"]).name == "mine"


def test_split_json_file_names_the_run_by_its_stem(tmp_path: Path) -> None:
    cfg = load_config("voc_zs3net", [f"data.split={tmp_path / 'my_split.json'}"])
    assert cfg.name == "voc_zs3net_my_split"


def test_zegformer_schedules_are_overrides() -> None:
    ten = load_config("voc_zegformer")
    thirty = load_config("voc_zegformer", ["zegformer.iters=30000", "name=voc_zegformer_30k"])
    assert (ten.zegformer.iters, thirty.zegformer.iters) == (10000, 30000)
    assert ten.run_dir != thirty.run_dir
    # The official 30k schedule differs from the 10k one only in its iterations (and the run name).
    assert thirty == replace(ten, name="voc_zegformer_30k", zegformer=replace(ten.zegformer, iters=30000))


def test_unknown_config_name_is_one_line_listing_the_packaged_names() -> None:
    with pytest.raises(ZeroSegError) as err:
        load_config("voc_zs3net_k4")
    message = str(err.value)
    assert "\n" not in message and message.startswith("voc_zs3net_k4: no such config")
    assert all(name in message for name in packaged_configs())


def test_cli_train_takes_a_bare_config_name(capsys) -> None:
    from zeroseg.cli import main

    assert main(["train", "no_such_config"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "voc_zs3net" in err
