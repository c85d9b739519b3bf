"""Methods: one file per method that reads top to bottom as its whole pipeline.

This package's entry points dispatch on ``cfg.method`` with a plain ``if``; methods never import each other.
"""

from __future__ import annotations

from pathlib import Path

from zeroseg.config import ExperimentConfig
from zeroseg.errors import ZeroSegError


def run_method(cfg: ExperimentConfig, *, progress: bool = True):
    """Train ``cfg.method`` end to end (every stage, resuming after the last complete one)."""
    if cfg.method in ("zs3net", "supervised"):
        from zeroseg.methods import zs3net

        return zs3net.train(cfg, progress=progress)
    if cfg.method == "zs_mmd":
        from zeroseg.methods import zs_mmd

        return zs_mmd.train(cfg, progress=progress)
    raise ZeroSegError(f"method '{cfg.method}' is not implemented yet; available: zs3net, zs_mmd")


def evaluate_checkpoint(cfg: ExperimentConfig, checkpoint: str | Path, *, progress: bool = True) -> dict:
    """Evaluate a final checkpoint on the validation set of ``cfg.data``; returns a JSON-able dict."""
    from zeroseg.data.build import build_zero_shot_data
    from zeroseg.methods import zs3net

    predictor = zs3net.ZS3Predictor(checkpoint, device=cfg.device)
    meta = predictor.meta

    data = build_zero_shot_data(cfg.data, progress=progress)
    if list(data.class_names) != meta["class_names"]:
        raise ZeroSegError(
            f"{checkpoint}: trained for classes {meta['class_names'][:4]}..., config's split has "
            f"{list(data.class_names)[:4]}... (different split or dataset)"
        )
    from torch.utils.data import DataLoader

    from zeroseg.data.build import collate
    from zeroseg.engine.loop import evaluate_model

    loader = DataLoader(data.val, batch_size=cfg.data.eval_batch_size, collate_fn=collate)
    cm = evaluate_model(
        lambda x: predictor.predict(x)[0],
        loader,
        num_classes=len(data.class_names),
        device=predictor.device,
        progress=progress,
    )
    return {
        "method": meta["method"],
        "stage": meta["stage"],
        "protocol": meta["protocol"],
        "transductive": meta["transductive"],
        "checkpoint": str(checkpoint),
        "split": meta["split"]["name"],
        "metrics": zs3net.metrics_dict(cm.mat, data),
    }
