"""The shared runner of ``zeroseg data prepare``: tasks in, label PNGs and a summary out.

A dataset converter turns the publishers' files into a :class:`Plan`: one :class:`Task` per image (how to
compute its label map, where the label and the image go) plus the id lists to write. :func:`run_plan` then

* skips a task whose outputs exist and read back cleanly through the dataset's own reader (the one
  ``zeroseg data check`` uses), and redoes it otherwise -- a re-run is cheap and verifies everything;
* writes every label through :func:`zeroseg.files.atomic_write_png`, so a kill leaves no half-written PNG;
* runs tasks on a process pool when ``workers > 1``, with a tqdm bar;
* stops at the first bad input with a one-line :class:`ZeroSegError` naming the file, or, with
  ``skip_bad``, lists it in the summary, leaves its id out of the lists and carries on;
* writes the id lists last (only ids whose files are complete) and returns a :class:`Summary`
  (images, classes, per-class pixel counts, problems).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from zeroseg.data.io import _DECODE_ERRORS, IGNORE, IGNORE_WIDE, LabelReader, _short
from zeroseg.errors import ZeroSegError
from zeroseg.files import atomic_link, atomic_save_image, atomic_write_json, atomic_write_png, atomic_write_text

#: Exceptions a damaged input file raises from numpy/scipy/PIL decoders; each becomes a one-line error.
INPUT_ERRORS = (*_DECODE_ERRORS, KeyError, IndexError, TypeError, AttributeError, EOFError)


@dataclass(frozen=True)
class Converted:
    """What a task's ``convert`` computes.

    Attributes:
        label: (H, W) uint8 (or uint16 for a wide label space) ids as they go on disk.
        image: (H', W', 3) uint8 when the image must be rewritten (resized, saved as JPEG); None to link it.
    """

    label: np.ndarray
    image: np.ndarray | None = None


@dataclass(frozen=True)
class Task:
    """One image of a plan. Everything is picklable (``convert`` is a ``functools.partial`` of a module-level
    function) so it can run in a worker process.

    Attributes:
        key: the sample id written to the lists.
        source: the raw label file, named in error messages.
        convert: ``() -> Converted``; raises ZeroSegError naming a bad input.
        label_out: where the label PNG goes.
        image_src: the raw image; its size must equal the label's.
        image_out: where the image goes (a link to ``image_src``, or the rewritten image).
        links: further ``(src, dst)`` files to link unchanged (e.g. the VOC ``SegmentationClass`` PNG).
    """

    key: str
    source: Path
    convert: Callable[[], Converted]
    label_out: Path
    image_src: Path
    image_out: Path
    links: tuple[tuple[Path, Path], ...] = ()


@dataclass
class Plan:
    """One label space to prepare.

    Attributes:
        name: the dataset key its output is read with (``zeroseg data check --dataset <name>``).
        root: the output root to pass as ``--root``.
        class_names: the reader's classes (id order); pixel counts are keyed by them.
        read_label: the dataset reader's label function (used to verify every written file).
        ignore_index: the reader's ignore value (255, or 65535 for a wide label space).
        tasks: one per image.
        lists: id-list file -> ids (in order); written last, keeping only ids whose task succeeded.
        files: further small text files to write (path -> text), e.g. ``classes.txt``.
        check_splits: the split names to give ``zeroseg data check --split``.
    """

    name: str
    root: Path
    class_names: tuple[str, ...]
    read_label: LabelReader
    ignore_index: int
    tasks: list[Task]
    lists: dict[Path, list[str]] = field(default_factory=dict)
    files: dict[Path, str] = field(default_factory=dict)
    check_splits: tuple[str, ...] = ()


@dataclass
class Summary:
    """The outcome of :func:`run_plan` (``to_json`` is written beside the output as ``prepare-<name>.json``)."""

    name: str
    root: str
    num_images: int = 0
    written: int = 0
    verified: int = 0
    pixel_counts: dict[str, int] = field(default_factory=dict)
    ignore_pixels: int = 0
    problems: list[str] = field(default_factory=list)
    check_splits: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict of every field."""
        return {
            "dataset": self.name,
            "root": self.root,
            "num_images": self.num_images,
            "written": self.written,
            "verified": self.verified,
            "num_classes": len(self.pixel_counts),
            "pixel_counts": self.pixel_counts,
            "ignore_pixels": self.ignore_pixels,
            "num_problems": len(self.problems),
            "problems": self.problems,
        }


@dataclass(frozen=True)
class _Result:
    key: str
    hist: np.ndarray | None
    written: bool
    problem: str | None


def _image_size(path: Path) -> tuple[int, int]:
    if not path.is_file():
        raise ZeroSegError(f"{path}: image file not found")
    try:
        with Image.open(path) as img:
            return img.size
    except _DECODE_ERRORS as err:
        raise ZeroSegError(f"{path}: cannot read image ({_short(err)})") from None


def _histogram(task: Task, read_label: LabelReader, num_classes: int, ignore: int) -> np.ndarray:
    """Read a written label back through the dataset reader; check its size and ids; count pixels per id."""
    label = read_label(task.label_out)
    w, h = _image_size(task.image_out)
    if label.shape != (h, w):
        raise ZeroSegError(f"{task.label_out}: label size {label.shape[1]}x{label.shape[0]} differs from image {w}x{h}")
    hist = np.bincount(label.ravel(), minlength=ignore + 1)
    if hist[num_classes:ignore].any():
        raise ZeroSegError(f"{task.label_out}: label ids outside 0..{num_classes - 1} after conversion")
    return hist[: ignore + 1]


def _outputs_present(task: Task) -> bool:
    return task.label_out.is_file() and task.image_out.exists() and all(d.exists() for _, d in task.links)


def _run_task(task: Task, read_label: LabelReader, num_classes: int, ignore: int) -> _Result:
    if _outputs_present(task):
        try:
            return _Result(task.key, _histogram(task, read_label, num_classes, ignore), False, None)
        except ZeroSegError:
            pass  # an output that does not verify is made again below
    try:
        try:
            converted = task.convert()
        except ZeroSegError:
            raise
        except INPUT_ERRORS as err:
            raise ZeroSegError(f"{task.source}: cannot convert ({err.__class__.__name__}: {_short(err)})") from None
        label = converted.label
        if converted.image is not None:
            h, w = converted.image.shape[:2]
        else:
            w, h = _image_size(task.image_src)
        if label.shape != (h, w):
            raise ZeroSegError(
                f"{task.source}: label size {label.shape[1]}x{label.shape[0]} differs from image "
                f"{task.image_src.name} size {w}x{h}"
            )
        # Image before label: a label file is the "done" mark that a re-run checks first.
        if converted.image is not None:
            atomic_save_image(task.image_out, Image.fromarray(converted.image), "JPEG", quality=95)
        else:
            atomic_link(task.image_src, task.image_out)
        for src, dst in task.links:
            if not src.is_file():
                raise ZeroSegError(f"{src}: file not found")
            atomic_link(src, dst)
        atomic_write_png(task.label_out, label)
        return _Result(task.key, _histogram(task, read_label, num_classes, ignore), True, None)
    except ZeroSegError as err:
        return _Result(task.key, None, False, str(err))


def _run_chunk(tasks: Sequence[Task], read_label: LabelReader, num_classes: int, ignore: int) -> list[_Result]:
    return [_run_task(t, read_label, num_classes, ignore) for t in tasks]


def run_plan(plan: Plan, *, workers: int = 1, skip_bad: bool = False, progress: bool = True) -> Summary:
    """Run every task of ``plan`` (see the module docstring) and write its lists and summary JSON.

    Args:
        plan: what to prepare.
        workers: processes; 1 runs in this process.
        skip_bad: list bad inputs in the summary instead of stopping at the first.
        progress: show a tqdm bar.

    Raises:
        ZeroSegError: the first bad or missing input (one line naming it) unless ``skip_bad``.
    """
    if workers < 1:
        raise ZeroSegError(f"--workers must be at least 1, got {workers}")
    if plan.ignore_index not in (IGNORE, IGNORE_WIDE):
        raise ZeroSegError(f"plan {plan.name}: ignore index {plan.ignore_index} is neither {IGNORE} nor {IGNORE_WIDE}")
    num_classes, ignore = len(plan.class_names), plan.ignore_index
    counts = np.zeros(ignore + 1, dtype=np.int64)
    summary = Summary(plan.name, str(plan.root), num_images=len(plan.tasks), check_splits=plan.check_splits)
    ok: set[str] = set()
    bar = tqdm(total=len(plan.tasks), desc=f"prepare {plan.name}", unit="img", disable=not progress)

    def take(results: list[_Result]) -> None:
        for r in results:
            bar.update(1)
            if r.problem is not None:
                if not skip_bad:
                    raise ZeroSegError(r.problem)
                summary.problems.append(r.problem)
                continue
            ok.add(r.key)
            counts[:] += r.hist
            summary.written += int(r.written)
            summary.verified += int(not r.written)

    try:
        if workers == 1:
            for task in plan.tasks:
                take([_run_task(task, plan.read_label, num_classes, ignore)])
        else:
            # Chunks keep the per-future overhead small for 100k small tasks.
            size = max(1, min(64, len(plan.tasks) // (workers * 4) or 1))
            chunks = [plan.tasks[i : i + size] for i in range(0, len(plan.tasks), size)]
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = {pool.submit(_run_chunk, c, plan.read_label, num_classes, ignore) for c in chunks}
                try:
                    while futures:
                        done, futures = wait(futures, return_when=FIRST_EXCEPTION)
                        for fut in done:
                            take(fut.result())
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    raise
    finally:
        bar.close()

    for path, ids in plan.lists.items():
        atomic_write_text(path, "".join(f"{i}\n" for i in ids if i in ok))
    for path, text in plan.files.items():
        atomic_write_text(path, text)
    summary.pixel_counts = {name: int(counts[i]) for i, name in enumerate(plan.class_names)}
    summary.ignore_pixels = int(counts[ignore])
    atomic_write_json(Path(plan.root) / f"prepare-{plan.name}.json", summary.to_json())
    return summary


def format_summary(summary: Summary, max_classes: int = 30, max_problems: int = 20) -> str:
    """Human-readable summary: counts, the most frequent classes, classes without pixels, problems."""
    counts = summary.pixel_counts
    total = sum(counts.values())
    present = sum(1 for v in counts.values() if v)
    lines = [
        f"{summary.name}: {summary.num_images} images at {summary.root} "
        f"({summary.written} written, {summary.verified} already there and verified, {len(summary.problems)} bad)",
        f"classes present: {present}/{len(counts)}  labelled pixels: {total}  ignore pixels: {summary.ignore_pixels}",
    ]
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    width = max((len(n) for n, _ in ranked[:max_classes]), default=0)
    for name, n in ranked[:max_classes]:
        share = 100.0 * n / total if total else 0.0
        lines.append(f"  {name:<{width}}  {n:>12}  {share:6.2f}%")
    if len(ranked) > max_classes:
        lines.append(f"  ... {len(ranked) - max_classes} more classes (all counts in prepare-{summary.name}.json)")
    absent = [n for n, v in counts.items() if not v]
    if absent:
        shown = ", ".join(absent[:10]) + (f", ... ({len(absent)} in all)" if len(absent) > 10 else "")
        lines.append(f"classes with no pixels: {shown}")
    if summary.problems:
        lines.append("problems (skipped):")
        lines.extend(f"  {p}" for p in summary.problems[:max_problems])
        if len(summary.problems) > max_problems:
            lines.append(f"  ... and {len(summary.problems) - max_problems} more")
    for split in summary.check_splits:
        lines.append(f"check: zeroseg data check --dataset {summary.name} --root {summary.root} --split {split}")
    return "\n".join(lines)


def cpu_workers() -> int:
    """A default for ``--workers``: the CPUs this process may use."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
