"""Methods: one file per method that reads top to bottom as its whole pipeline, and the one table of them.

:data:`METHODS` maps a method's name -- the same in configs (``method:``), in checkpoint metadata
(``"method"``) and on the command line (``zeroseg demo --method``) -- to what the CLI, the demo and
:func:`load_predictor` need: its training function, its predictor and its final stages. ZS5Net is ZS3Net with
``selftrain.enabled`` (checkpoint stage ``selftrain``, ``"variant": "zs5net"``); ZS3Net-GC is ZS3Net with
``graph.enabled``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zeroseg.config import ExperimentConfig
from zeroseg.engine.checkpoint import load_checkpoint_meta
from zeroseg.errors import ZeroSegError
from zeroseg.methods import zegformer, zs3net, zs_mmd


@dataclass(frozen=True)
class Method:
    """One method of the toolkit.

    Attributes:
        name: the method's name everywhere (config, checkpoint, CLI).
        train: ``train(cfg, progress=..., allow_changed=...) -> RunResult``: every stage, resuming after the last
            complete one.
        predictor: ``predictor(checkpoint, device=...)`` of a final checkpoint: ``.predict(images)``,
            ``.set_classes(names)``, ``.class_names``, ``.meta``.
        evaluate: ``evaluate(cfg, checkpoint, progress=...) -> dict`` on ``cfg.data``'s validation set.
        final_stages: the checkpoint stages a predictor serves.
    """

    name: str
    train: Callable[..., Any]
    predictor: Callable[..., Any]
    evaluate: Callable[..., dict]
    final_stages: tuple[str, ...]


METHODS: dict[str, Method] = {
    "zs3net": Method("zs3net", zs3net.train, zs3net.ZS3Predictor, zs3net.evaluate_checkpoint, zs3net.FINAL_STAGES),
    "zs_mmd": Method("zs_mmd", zs_mmd.train, zs3net.ZS3Predictor, zs3net.evaluate_checkpoint, (zs_mmd.STAGE,)),
    "zegformer": Method(
        "zegformer",
        zegformer.train,
        zegformer.ZegFormerPredictor.from_checkpoint,
        zegformer.evaluate_checkpoint,
        (zegformer.STAGE,),
    ),
}


def get_method(name: str) -> Method:
    """The :class:`Method` called ``name`` (``zs-mmd`` is accepted for ``zs_mmd``).

    Raises:
        ZeroSegError: an unknown name, listing the known ones.
    """
    method = METHODS.get(name.replace("-", "_"))
    if method is None:
        raise ZeroSegError(f"method '{name}' is unknown; available: {', '.join(METHODS)}")
    return method


def run_method(cfg: ExperimentConfig, *, progress: bool = True, allow_changed: bool = False):
    """Train ``cfg.method`` end to end (every stage, resuming after the last complete one; a run directory whose
    saved config differs is refused unless ``allow_changed``)."""
    return get_method(cfg.method).train(cfg, progress=progress, allow_changed=allow_changed)


def checkpoint_method(checkpoint: str | Path) -> Method:
    """The :class:`Method` whose final checkpoint ``checkpoint`` is (from its JSON metadata).

    Raises:
        ZeroSegError: an unknown method, or a stage that is not final (e.g. ``segmenter``), naming the file.
    """
    meta = load_checkpoint_meta(checkpoint)
    method = METHODS.get(str(meta.get("method")))
    if method is None:
        raise ZeroSegError(f"{checkpoint}: not a zeroseg model checkpoint (method {meta.get('method')!r})")
    if meta.get("stage") not in method.final_stages:
        finals = ", ".join(f"<run>/{s}" for m in METHODS.values() for s in m.final_stages)
        raise ZeroSegError(
            f"{checkpoint}: not a final checkpoint (method {meta.get('method')!r}, stage {meta.get('stage')!r}); "
            f"use {finals}"
        )
    return method


def load_predictor(checkpoint: str | Path, *, device: str = "cpu"):
    """The predictor of any final checkpoint: ``.predict(images) -> (labels, scores)``, ``.set_classes(names)``,
    ``.class_names`` and ``.meta``."""
    return checkpoint_method(checkpoint).predictor(checkpoint, device=device)


def evaluate_checkpoint(cfg: ExperimentConfig, checkpoint: str | Path, *, progress: bool = True) -> dict:
    """Evaluate a final checkpoint of any method on the validation set of ``cfg.data``.

    Under torchrun the validation images are sharded over the ranks and the confusion matrices summed, which
    gives exactly the single-process result. Returns a JSON-able dict.
    """
    return checkpoint_method(checkpoint).evaluate(cfg, checkpoint, progress=progress)
