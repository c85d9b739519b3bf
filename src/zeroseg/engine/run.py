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
import fcntl
import json
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from zeroseg.config import save_config, to_dict
from zeroseg.engine.checkpoint import checkpoint_exists, save_checkpoint
from zeroseg.engine.distributed import barrier, init_distributed, is_main
from zeroseg.errors import ZeroSegError
from zeroseg.files import atomic_write_json

#: Config keys that may differ when a run is resumed: they do not change what is computed.
RESUMABLE_CHANGES = ("device",)


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
    (``cuda:<local rank>`` under torchrun).

    Raises:
        ZeroSegError: ``device`` names a CUDA (or MPS) device this machine does not have.
    """
    if cfg.device.startswith("cuda"):
        index = int(cfg.device.split(":")[1]) if ":" in cfg.device else 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise ZeroSegError(f"device {cfg.device!r}: no such CUDA device here; set device=cpu")
    if cfg.device == "mps" and not torch.backends.mps.is_available():
        raise ZeroSegError("device 'mps': not available here; set device=cpu")
    return dataclasses.replace(cfg, device=init_distributed(cfg.device))


def prepare_data(data_cfg: Any, *, progress: bool, train: bool = True) -> Any:
    """The :class:`~zeroseg.data.zero_shot.ZeroShotData` of ``data_cfg``; rank 0 builds it first (the synthetic
    benchmark is written on first use) while the other ranks wait, then they read what it wrote.

    Args:
        train: also build the training sets (scanning their labels for the ``drop`` policy); evaluation needs
            only the validation set.
    """
    from zeroseg.data.zero_shot import build_zero_shot_data

    if not is_main():
        barrier()
    data = build_zero_shot_data(data_cfg, progress=progress and is_main(), train=train)
    if is_main():
        barrier()
    return data


@dataclass
class RunResult:
    """What a method's ``train`` returns: the metrics after each evaluated stage and the final checkpoint."""

    stages: dict[str, dict]
    checkpoint: Path
    wall_s: float


def rng_state() -> dict[str, torch.Tensor]:
    """The global random states (torch CPU and CUDA, numpy, python) as tensors, for a stage checkpoint: a run
    resumed after that stage continues with exactly the random numbers the uninterrupted run drew."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state = {
        "rng.torch": torch.get_rng_state(),
        "rng.numpy": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "rng.numpy_tail": torch.tensor([pos, has_gauss], dtype=torch.int64),
        "rng.numpy_gauss": torch.tensor([gauss], dtype=torch.float64),
        "rng.python": torch.tensor(py_state, dtype=torch.int64),
        "rng.python_gauss": torch.tensor([py_gauss is not None, py_gauss or 0.0], dtype=torch.float64),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return state


def set_rng_state(tensors: dict[str, torch.Tensor]) -> bool:
    """Restore what :func:`rng_state` stored (True), or do nothing for a checkpoint without it (False)."""
    if "rng.torch" not in tensors:
        return False
    torch.set_rng_state(tensors["rng.torch"])
    pos, has_gauss = tensors["rng.numpy_tail"].tolist()
    keys = tensors["rng.numpy"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, pos, has_gauss, float(tensors["rng.numpy_gauss"][0])))
    has_py_gauss, py_gauss = tensors["rng.python_gauss"].tolist()
    random.setstate((3, tuple(tensors["rng.python"].tolist()), py_gauss if has_py_gauss else None))
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    return True


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
    _lock: IO[str] | None = None

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the run directory (see :func:`start_run`)."""
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

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
            save_checkpoint(self.dir / stage, {**tensors, **rng_state()}, {**meta, "metrics": metrics})
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


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix[:-1]: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def config_changes(saved: dict, current: dict) -> list[str]:
    """The dotted keys whose values differ between two config mappings (keys of :data:`RESUMABLE_CHANGES` aside)."""
    a, b = _flat(saved), _flat(current)
    keys = (set(a) | set(b)) - set(RESUMABLE_CHANGES)
    return sorted(k for k in keys if a.get(k, "<unset>") != b.get(k, "<unset>"))


def _check_saved_config(cfg: Any, path: Path, allow_changed: bool) -> None:
    if not path.is_file():
        return
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        raise ZeroSegError(
            f"{path}: unreadable saved config ({e.__class__.__name__}); delete it to start over"
        ) from None
    changed = config_changes(saved if isinstance(saved, dict) else {}, to_dict(cfg))
    if changed and not allow_changed:
        shown = ", ".join(changed[:6]) + (f" (+{len(changed) - 6} more)" if len(changed) > 6 else "")
        raise ZeroSegError(
            f"{path.parent}: this run was started with another config (differs in {shown}); use another name=..., "
            "or --allow-changed-config to continue it with the new values"
        )
    if changed:
        log(f"[run] continuing {path.parent} with changed config keys: {', '.join(changed)}")


def _lock_dir(run_dir: Path) -> IO[str]:
    path = run_dir / ".lock"
    f = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held open for the run's lifetime)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        owner = f.read().strip() or "?"
        f.close()
        raise ZeroSegError(
            f"{run_dir}: run directory in use by another zeroseg process (pid {owner}); "
            "wait for it or use another name="
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def start_run(cfg: Any, *, progress: bool = True, allow_changed: bool = False) -> Run:
    """Start (or resume) the run of ``cfg``.

    Joins torchrun; on rank 0 locks ``<run>`` against a second process (released by :meth:`Run.close` or when the
    process ends, even when killed), refuses to resume a run whose saved ``config.yaml`` differs from ``cfg``
    (naming the keys; ``allow_changed`` continues anyway) and saves ``cfg``; seeds everything with ``cfg.seed``;
    reads the metrics of the stages already complete.

    Raises:
        ZeroSegError: the directory is locked or cannot be written, or the config changed.
    """
    run_dir = cfg.run_dir
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ZeroSegError(f"{run_dir}: cannot create the run directory ({e.strerror or e})") from None
    local = join(cfg)
    lock = None
    if is_main():
        try:
            lock = _lock_dir(run_dir)
        except OSError as e:
            raise ZeroSegError(f"{run_dir}: cannot write the run directory ({e.strerror or e})") from None
        try:
            _check_saved_config(cfg, run_dir / "config.yaml", allow_changed)
            save_config(cfg, run_dir / "config.yaml")
        except BaseException:
            lock.close()
            raise
    barrier()
    seed_everything(local.seed)
    run = Run(cfg=local, dir=run_dir, progress=progress and is_main(), _lock=lock)
    run.results = read_metrics(run.metrics_path)
    return run


__all__ = [
    "RESUMABLE_CHANGES",
    "Run",
    "RunResult",
    "config_changes",
    "join",
    "log",
    "prepare_data",
    "read_metrics",
    "rng_state",
    "seed_everything",
    "set_rng_state",
    "start_run",
]
