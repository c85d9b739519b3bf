"""The run context every method trains and evaluates in: ranks and device, the saved config, seeding, data
prepared on rank 0 first, ``metrics.json``, stage checkpoints with skip/resume, and rank-0 logging.

A method's ``train(cfg)`` reads::

    run = start_run(cfg, progress=progress)      # joins torchrun, saves config.yaml, seeds, reads metrics.json
    data = run.data()                            # rank 0 prepares (e.g. writes the synthetic benchmark) first
    for stage in run.todo(stages):               # the stages after the last complete checkpoint
        ...
        run.finish_stage(stage, tensors, meta, metrics)   # rank 0 writes <run>/<stage> and metrics.json
    return run.result(final)
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from zeroseg.engine.checkpoint import checkpoint_exists, save_checkpoint
from zeroseg.engine.distributed import barrier, init_distributed, is_main, world_size
from zeroseg.errors import ZeroSegError
from zeroseg.files import atomic_write_json


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; returns a torch.Generator seeded the same way for explicit use."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def log(msg: str) -> None:
    """Print ``msg`` on rank 0 only, without breaking progress bars."""
    if is_main():
        tqdm.write(msg)


def join(cfg: Any) -> Any:
    """Join torchrun's process group (a no-op in a single process); ``cfg`` with this rank's device
    (``cuda:<local rank>`` under torchrun)."""
    return dataclasses.replace(cfg, device=init_distributed(cfg.device))


def prepare_data(data_cfg: Any, *, progress: bool) -> Any:
    """The :class:`~zeroseg.data.zero_shot.ZeroShotData` of ``data_cfg``; rank 0 builds it first (the synthetic
    benchmark is written on first use) while the other ranks wait, then they read what it wrote."""
    from zeroseg.data.zero_shot import build_zero_shot_data

    if not is_main():
        barrier()
    data = build_zero_shot_data(data_cfg, progress=progress and is_main())
    if is_main():
        barrier()
    return data


@dataclass
class RunResult:
    """What a method's ``train`` returns: the metrics after each evaluated stage and the final checkpoint."""

    stages: dict[str, dict]
    checkpoint: Path
    wall_s: float


def read_metrics(path: Path) -> dict[str, dict]:
    """The ``metrics.json`` of a run ({} when absent).

    Raises:
        ZeroSegError: a corrupt file, naming it and how to recover.
    """
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise ZeroSegError(f"{path}: unreadable metrics ({e.__class__.__name__}); delete it to re-evaluate") from None
    if not isinstance(data, dict):
        raise ZeroSegError(f"{path}: metrics must be a JSON object; delete it to re-evaluate")
    return data


@dataclass
class Run:
    """One training run on this rank (see the module docstring).

    Attributes:
        cfg: the experiment with this rank's device.
        dir: ``<out_dir>/<name>``.
        progress: show progress bars (rank 0 only).
        results: stage -> metrics, as in ``metrics.json``.
    """

    cfg: Any
    dir: Path
    progress: bool
    results: dict[str, dict] = field(default_factory=dict)
    t0: float = field(default_factory=time.perf_counter)

    @property
    def device(self) -> torch.device:
        return torch.device(self.cfg.device)

    @property
    def metrics_path(self) -> Path:
        return self.dir / "metrics.json"

    def data(self) -> Any:
        """The run's :class:`~zeroseg.data.zero_shot.ZeroShotData` (:func:`prepare_data`)."""
        return prepare_data(self.cfg.data, progress=self.progress)

    def done(self, stage: str) -> bool:
        """True when ``<run>/<stage>`` is a complete checkpoint."""
        return checkpoint_exists(self.dir / stage)

    def todo(self, stages: Sequence[str]) -> tuple[str | None, list[str]]:
        """``(last complete stage or None, the stages after it)``: a re-run resumes after the last complete one."""
        done = [s for s in stages if self.done(s)]
        last = done[-1] if done else None
        return last, list(stages[stages.index(last) + 1 :] if last else stages)

    def finish_stage(
        self, stage: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any], metrics: dict[str, Any]
    ) -> Path:
        """Record ``metrics`` for ``stage``; rank 0 writes ``<run>/<stage>`` (with ``metrics`` in its metadata)
        and ``metrics.json``, all ranks wait for it. Returns the checkpoint's ``.safetensors`` path."""
        self.results[stage] = metrics
        if is_main():
            save_checkpoint(self.dir / stage, tensors, {**meta, "metrics": metrics})
            atomic_write_json(self.metrics_path, self.results)
        barrier()
        if "hiou" in metrics:
            log(
                f"[{stage}] seen mIoU {metrics['seen_miou']:.1f}  unseen mIoU {metrics['unseen_miou']:.1f}  "
                f"hIoU {metrics['hiou']:.1f}"
            )
        return (self.dir / stage).with_suffix(".safetensors")

    def result(self, final: str | Path) -> RunResult:
        """The :class:`RunResult` whose final checkpoint is ``<run>/<final>`` (a stage name) or a path."""
        path = self.dir / final if isinstance(final, str) else Path(final)
        return RunResult(
            stages=self.results, checkpoint=path.with_suffix(".safetensors"), wall_s=time.perf_counter() - self.t0
        )


def start_run(cfg: Any, *, progress: bool = True, save: bool = True) -> Run:
    """Start (or resume) the run of ``cfg``: join torchrun, write ``config.yaml`` on rank 0, seed everything with
    ``cfg.seed``, and read the metrics of stages already complete.

    Args:
        cfg: an :class:`~zeroseg.config.ExperimentConfig`.
        progress: progress bars (rank 0 only).
        save: write the resolved config to ``<run>/config.yaml``.
    """
    from zeroseg.config import save_config

    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    local = join(cfg)
    if save and is_main():
        save_config(cfg, run_dir / "config.yaml")
    seed_everything(local.seed)
    run = Run(cfg=local, dir=run_dir, progress=progress and is_main())
    run.results = read_metrics(run.metrics_path)
    return run


__all__ = [
    "Run",
    "RunResult",
    "join",
    "log",
    "prepare_data",
    "read_metrics",
    "seed_everything",
    "start_run",
    "world_size",
]
