"""``zeroseg data prepare``: from the publishers' downloads to the layouts the readers expect.

One module per dataset turns a raw tree into :class:`~zeroseg.data.prepare.runner.Plan` s;
:func:`~zeroseg.data.prepare.runner.run_plan` carries them out (idempotent, atomic, parallel, summarised).
Sources of every mapping and format: docs/datasets.md.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from zeroseg.data.prepare.ade20k import plan_ade20k_150
from zeroseg.data.prepare.ade20k_full import plan_ade20k_847
from zeroseg.data.prepare.coco_stuff import plan_coco_stuff
from zeroseg.data.prepare.context import plan_context
from zeroseg.data.prepare.runner import Plan, Summary, format_summary, run_plan
from zeroseg.data.prepare.seen import plan_seen
from zeroseg.data.prepare.voc import plan_voc
from zeroseg.errors import ZeroSegError

__all__ = ["PREPARERS", "Plan", "Summary", "format_summary", "plan", "prepare", "run_plan"]

PREPARERS: dict[str, Callable[..., list[Plan]]] = {
    "voc": plan_voc,
    "context": plan_context,
    "coco-stuff": plan_coco_stuff,
    "ade20k-150": plan_ade20k_150,
    "ade20k-847": plan_ade20k_847,
    "seen": plan_seen,
}
"""Dataset name -> ``(raw, out, **options) -> plans``; ``seen`` needs ``split=`` (and takes ``subset=``)."""


def plan(dataset: str, raw: str | Path, out: str | Path, **options: object) -> list[Plan]:
    """The plans of ``dataset`` (see :data:`PREPARERS`).

    Raises:
        ZeroSegError: an unknown dataset, a missing ``--raw`` folder, or an option the dataset lacks.
    """
    if dataset not in PREPARERS:
        raise ZeroSegError(f"unknown dataset '{dataset}' to prepare; choose one of {', '.join(PREPARERS)}")
    raw_p, out_p = Path(raw), Path(out)
    if not raw_p.is_dir():
        raise ZeroSegError(f"{raw_p}: raw data folder not found")
    if dataset == "seen" and not options.get("split"):
        raise ZeroSegError("prepare seen: give --split NAME (a split from 'zeroseg splits')")
    if dataset != "seen" and any(v is not None for v in options.values()):
        raise ZeroSegError(f"prepare {dataset}: --split/--subset only apply to 'seen'")
    kwargs = {k: v for k, v in options.items() if v is not None} if dataset == "seen" else {}
    return PREPARERS[dataset](raw_p, out_p, **kwargs)


def prepare(
    dataset: str,
    raw: str | Path,
    out: str | Path,
    *,
    workers: int = 1,
    skip_bad: bool = False,
    progress: bool = True,
    **options: object,
) -> list[Summary]:
    """Prepare ``dataset`` from ``raw`` into ``out``; one :class:`Summary` per label space written.

    Raises:
        ZeroSegError: see :func:`plan` and :func:`run_plan`.
    """
    return [
        run_plan(p, workers=workers, skip_bad=skip_bad, progress=progress) for p in plan(dataset, raw, out, **options)
    ]
