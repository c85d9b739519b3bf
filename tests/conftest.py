import json
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


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    # Refit caches and file digests of a test go to a folder of their own, never to ~/.cache/zeroseg.
    monkeypatch.setenv("ZEROSEG_CACHE", str(tmp_path_factory.mktemp("zeroseg-cache")))


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


#: A tiny open_clip ViT (32 px input, 2 x 2 patch grid, 16-d joint space) standing in for CLIP weights.
TINY_CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """The tiny CLIP model saved in open_clip's formats: ``cfg`` (model-config json), ``ckpt`` (open_clip's
    training checkpoint ``{"epoch", "state_dict": {"module." + key: tensor}}``), ``st`` (safetensors), and the
    in-memory ``model``."""
    import open_clip
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("clip")
    cfg_path = root / "tiny-clip.json"
    cfg_path.write_text(json.dumps(TINY_CLIP_CFG), encoding="utf-8")
    torch.manual_seed(0)
    model = open_clip.CLIP(**json.loads(json.dumps(TINY_CLIP_CFG))).eval()
    sd = model.state_dict()
    ckpt = root / "epoch_1.pt"
    torch.save({"epoch": 1, "name": "tiny", "state_dict": {f"module.{k}": v for k, v in sd.items()}}, ckpt)
    st_path = root / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(st_path))
    return {"cfg": cfg_path, "ckpt": ckpt, "st": st_path, "model": model, "root": root}
