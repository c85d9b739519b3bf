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
    """Evaluate a final checkpoint (ZS3Net, ZS5Net or ZS-MMD) on the validation set of ``cfg.data``.

    Under torchrun the validation images are sharded over the ranks and the confusion matrices summed, which
    gives exactly the single-process result. Returns a JSON-able dict.
    """
    from zeroseg.methods import zs3net

    return zs3net.evaluate_checkpoint(cfg, checkpoint, progress=progress)
