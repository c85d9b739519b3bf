from pathlib import Path

import pytest

from zeroseg.config import ExperimentConfig, from_dict, load_config, save_config, to_dict
from zeroseg.demo import DEMO_CONFIG, ZEGFORMER_DEMO_CONFIG
from zeroseg.errors import ZeroSegError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


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


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.name == path.stem


@pytest.mark.parametrize(
    ("demo", "file"), [(DEMO_CONFIG, "synthetic_zs3net.yaml"), (ZEGFORMER_DEMO_CONFIG, "synthetic_zegformer.yaml")]
)
def test_demo_config_matches_shipped_file(demo: dict, file: str) -> None:
    shipped = to_dict(load_config(CONFIGS / file))
    assert to_dict(from_dict(demo)) == shipped
