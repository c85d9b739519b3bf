from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models on a 2-core machine: with several threads, spin-waiting costs more than it gains.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a tiny experiment (32 px synthetic benchmark, tiny backbone, 1 epoch per stage) to tmp_path.

    Keyword arguments replace top-level values or update sections, e.g.
    ``tiny_config(segmenter={"epochs": 2}, selftrain={"enabled": True, "epochs": 1})``.
    """

    def make(**changes) -> Path:
        cfg = {
            "name": "tiny",
            "out_dir": str(tmp_path / "runs"),
            "data": {
                "root": str(tmp_path / "synth"),
                "batch_size": 8,
                "eval_batch_size": 8,
                "crop_size": 32,
                "synthetic": {"num_train": 32, "num_val": 6, "image_size": 32},
            },
            "segmenter": {"backbone": "tiny", "epochs": 1},
            "generator": {"epochs": 1, "pixels_per_class": 16},
            "classifier": {"epochs": 1},
        }
        for key, value in changes.items():
            if isinstance(value, dict) and isinstance(cfg.get(key), dict):
                cfg[key].update(value)
            else:
                cfg[key] = value
        path = tmp_path / "tiny.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    return make
