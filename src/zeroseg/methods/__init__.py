"""Methods: one file per method that reads top to bottom as its whole pipeline.

This package's entry points dispatch on ``cfg.method`` (training) or on the checkpoint's recorded method
(evaluation, prediction) with a plain ``if``. A method may extend another by importing its stages (ZS-MMD
extends ZS3Net); there are no cycles.
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
    if cfg.method == "zegformer":
        from zeroseg.methods import zegformer

        return zegformer.train(cfg, progress=progress)
    raise ZeroSegError(f"method '{cfg.method}' is unknown; available: zs3net, zs_mmd, zegformer, supervised")


def checkpoint_method(checkpoint: str | Path) -> str:
    """The method recorded in a checkpoint's JSON metadata (``zs3net``, ``zs5net``, ``zs_mmd``, ``zegformer``)."""
    from zeroseg.engine.checkpoint import load_checkpoint_meta

    return str(load_checkpoint_meta(checkpoint).get("method"))


def load_predictor(checkpoint: str | Path, *, device: str = "cpu"):
    """The predictor of any final checkpoint: ``.predict(images) -> (labels, scores)``, ``.set_classes(names)``,
    ``.class_names`` and ``.meta``."""
    if checkpoint_method(checkpoint) == "zegformer":
        from zeroseg.methods.zegformer import ZegFormerPredictor

        return ZegFormerPredictor(checkpoint, device=device)
    from zeroseg.methods.zs3net import ZS3Predictor

    return ZS3Predictor(checkpoint, device=device)


def evaluate_checkpoint(cfg: ExperimentConfig, checkpoint: str | Path, *, progress: bool = True) -> dict:
    """Evaluate a final checkpoint (ZS3Net, ZS5Net, ZS-MMD or ZegFormer) on the validation set of ``cfg.data``.

    Under torchrun the validation images are sharded over the ranks and the confusion matrices summed, which
    gives exactly the single-process result. Returns a JSON-able dict.
    """
    if checkpoint_method(checkpoint) == "zegformer":
        from zeroseg.methods import zegformer

        return zegformer.evaluate_checkpoint(cfg, checkpoint, progress=progress)
    from zeroseg.methods import zs3net

    return zs3net.evaluate_checkpoint(cfg, checkpoint, progress=progress)
