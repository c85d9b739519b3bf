"""``zeroseg data check``: verify a dataset tree file by file and count pixels per class."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zeroseg.data.io import load_image
from zeroseg.data.readers import get_reader
from zeroseg.errors import ZeroSegError

MAX_PROBLEMS = 1000
"""Problems kept in the report; the total count is always exact."""


def check_dataset(
    dataset: str, root: str | Path, split: str, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Decode every image/label pair of a split and report what is wrong.

    A missing root, folder or list file raises :class:`ZeroSegError` (nothing can be checked); per-file
    problems (missing or undecodable image/label, size mismatch, label id out of range) are collected,
    one line each, naming the file.

    Args:
        dataset: dataset key (see :func:`zeroseg.data.readers.build_dataset`).
        root: dataset root.
        split: data split.
        class_names: override the class list (must have the same length as the reader's).

    Returns:
        JSON-able dict with ``dataset``, ``root``, ``split``, ``num_classes``, ``num_images``, ``num_ok``,
        ``pixel_counts`` (class name -> labelled pixel count, dataset order), ``ignore_pixels``,
        ``num_problems`` and ``problems`` (first :data:`MAX_PROBLEMS` lines).
    """
    reader = get_reader(dataset)
    root = Path(root)
    names = tuple(reader.class_names(root))
    if class_names is not None:
        if len(class_names) != len(names):
            raise ZeroSegError(f"{root}: {len(class_names)} class names given, dataset '{dataset}' has {len(names)}")
        names = tuple(class_names)
    samples = reader.list_samples(root, split)
    num_classes = len(names)
    # 8-bit datasets ignore 255; the wide ones (16-bit labels) 65535, so the histogram spans their width.
    ignore = reader.ignore_index
    counts = np.zeros(ignore + 1, dtype=np.int64)
    problems: list[str] = []
    num_problems = 0
    num_ok = 0

    def report(line: str) -> None:
        nonlocal num_problems
        num_problems += 1
        if len(problems) < MAX_PROBLEMS:
            problems.append(line)

    for sample in samples:
        ok = True
        image = label = None
        try:
            image = load_image(sample.image_path)
        except ZeroSegError as err:
            report(str(err))
            ok = False
        try:
            label = reader.read_label(sample.label_path)
        except ZeroSegError as err:
            report(str(err))
            ok = False
        if label is not None:
            if image is not None and label.shape != image.shape[:2]:
                report(
                    f"{sample.label_path}: label size {label.shape[1]}x{label.shape[0]} differs from image "
                    f"size {image.shape[1]}x{image.shape[0]}"
                )
                ok = False
            hist = np.bincount(label.ravel(), minlength=ignore + 1)[: ignore + 1]
            bad_ids = [i for i in np.flatnonzero(hist) if i >= num_classes and i != ignore]
            if bad_ids:
                shown = ", ".join(str(int(i)) for i in bad_ids[:5])
                report(f"{sample.label_path}: label id(s) {shown} outside 0..{num_classes - 1} ({dataset})")
                ok = False
            counts += hist
        num_ok += int(ok)

    return {
        "dataset": dataset,
        "root": str(root),
        "split": split,
        "num_classes": num_classes,
        "num_images": len(samples),
        "num_ok": num_ok,
        "pixel_counts": {name: int(counts[i]) for i, name in enumerate(names)},
        "ignore_pixels": int(counts[ignore]),
        "num_problems": num_problems,
        "problems": problems,
    }


def format_check_report(report: dict[str, Any], max_problems: int = 20) -> str:
    """Human-readable summary of :func:`check_dataset` output.

    Args:
        report: the dict returned by :func:`check_dataset`.
        max_problems: problem lines to print before summarising the rest.
    """
    lines = [
        f"dataset {report['dataset']} split {report['split']} at {report['root']}",
        f"images: {report['num_images']}  ok: {report['num_ok']}  problems: {report['num_problems']}",
    ]
    counts: dict[str, int] = report["pixel_counts"]
    total = sum(counts.values())
    present = sum(1 for v in counts.values() if v > 0)
    lines.append(
        f"classes present: {present}/{report['num_classes']}  labelled pixels: {total}  "
        f"ignore pixels: {report['ignore_pixels']}"
    )
    width = max((len(n) for n in counts), default=0)
    for name, n in counts.items():
        share = 100.0 * n / total if total else 0.0
        lines.append(f"  {name:<{width}}  {n:>12}  {share:6.2f}%")
    absent = [name for name, n in counts.items() if n == 0]
    if absent:
        lines.append(f"classes with no pixels: {', '.join(absent)}")
    problems = report["problems"]
    if problems:
        lines.append("problems:")
        lines.extend(f"  {p}" for p in problems[:max_problems])
        rest = report["num_problems"] - min(len(problems), max_problems)
        if rest > 0:
            lines.append(f"  ... and {rest} more")
    return "\n".join(lines)
