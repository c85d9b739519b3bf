"""Evaluate a folder of predicted label maps against a folder of ground-truth label maps.

Both folders hold one PNG per image, matched by file stem (``2007_000033.png`` <-> ``2007_000033.png``).
Pixel values are raw class ids, read by :func:`zeroseg.data.io.read_label_png` (the one label decoder): palette
(``P``) PNGs as their indices, never as colours, grayscale (``L``) PNGs as their values, 16/32-bit PNGs as their
values when those are ids 0..255. Ground-truth pixels equal to ``ignore_index`` (255) are skipped. Every
problem with the user's files is a one-line :class:`~zeroseg.errors.ZeroSegError` naming the file.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zeroseg.data.io import read_label_png
from zeroseg.errors import ZeroSegError
from zeroseg.metrics import ConfusionMatrix, LabelRangeError

__all__ = ["evaluate_label_folders", "format_metrics_table"]

_MAX_LISTED = 5

GtReader = Callable[[Path], "np.ndarray | torch.Tensor"]


def _pngs_by_stem(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise ZeroSegError(f"{what} {folder}: not a directory")
    files = {p.stem: p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".png"}
    if not files:
        raise ZeroSegError(f"{what} {folder}: no .png files")
    return files


def _as_long_tensor(arr: np.ndarray | torch.Tensor, path: Path, what: str) -> torch.Tensor:
    if isinstance(arr, torch.Tensor):
        integer = not (arr.is_floating_point() or arr.is_complex() or arr.dtype == torch.bool)
    else:
        arr = np.asarray(arr)
        integer = np.issubdtype(arr.dtype, np.integer)
    if not integer:
        raise ZeroSegError(f"{path}: {what} must hold integer class ids, got dtype {arr.dtype}")
    # astype also normalises big-endian 16-bit PNG data, which torch.from_numpy rejects.
    t = arr.to(torch.int64) if isinstance(arr, torch.Tensor) else torch.from_numpy(arr.astype(np.int64))
    # Readers may return (1, H, W); squeezing everything would wrongly flatten a 1-pixel-high image.
    while t.ndim > 2 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 2:
        raise ZeroSegError(f"{path}: {what} must be a 2-D (H, W) label map, got shape {tuple(t.shape)}")
    return t


def evaluate_label_folders(
    pred_dir: str | Path,
    gt_dir: str | Path,
    class_names: Sequence[str],
    seen_ids: Sequence[int] | None,
    unseen_ids: Sequence[int] | None,
    *,
    gt_reader: GtReader | None = None,
    ignore_index: int = 255,
) -> dict[str, Any]:
    """Compute segmentation metrics of predicted PNGs against ground-truth PNGs, matched by stem.

    Every ground-truth PNG needs a prediction; extra predictions are ignored.

    Args:
        pred_dir: folder of predicted label PNGs (P or L mode, values = class ids).
        gt_dir: folder of ground-truth label PNGs.
        class_names: one name per class id; its length C fixes the valid range ``0..C-1``.
        seen_ids: seen class ids (for seen mIoU and hIoU), or ``None``.
        unseen_ids: unseen class ids, or ``None``.
        gt_reader: optional ``path -> (H, W) ids`` function for ground truth needing a dataset-specific
            mapping (e.g. a dataset reader's ``read_label``); defaults to reading raw PNG values.
        ignore_index: ground-truth id to skip.

    Returns:
        ``{"num_images": int, "metrics": SegMetrics.to_dict(class_names)}`` (values in percent).

    Raises:
        ZeroSegError: missing/empty folders, ground truth without a prediction, size mismatch, unreadable
            file, or an id outside ``0..C-1`` in a prediction or ground truth.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    num_classes = len(class_names)
    if num_classes == 0:
        raise ZeroSegError("class_names is empty")
    gts = _pngs_by_stem(gt_dir, "ground-truth folder")
    preds = _pngs_by_stem(pred_dir, "prediction folder")
    missing = sorted(set(gts) - set(preds))
    if missing:
        shown = ", ".join(missing[:_MAX_LISTED]) + (", ..." if len(missing) > _MAX_LISTED else "")
        raise ZeroSegError(f"{len(missing)} of {len(gts)} ground-truth files have no prediction in {pred_dir}: {shown}")

    read_gt = gt_reader or read_label_png
    cm = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    for stem in sorted(gts):
        gt_path, pred_path = gts[stem], preds[stem]
        try:
            gt_raw = read_gt(gt_path)
        except ZeroSegError:
            raise
        except (OSError, ValueError) as exc:
            raise ZeroSegError(f"{gt_path}: cannot read ground truth ({exc})") from exc
        gt = _as_long_tensor(gt_raw, gt_path, "ground truth")
        pred = _as_long_tensor(read_label_png(pred_path), pred_path, "prediction")
        if pred.shape != gt.shape:
            raise ZeroSegError(
                f"{pred_path}: prediction is {pred.shape[0]}x{pred.shape[1]} (HxW) but ground truth "
                f"{gt_path.name} is {gt.shape[0]}x{gt.shape[1]}"
            )
        try:
            cm.update(pred, gt)
        except LabelRangeError as exc:
            culprit = pred_path if exc.which == "prediction" else gt_path
            noun = "label id" if len(exc.bad_ids) == 1 else "label ids"
            ids = ", ".join(str(i) for i in exc.bad_ids)
            raise ZeroSegError(
                f"{culprit}: {noun} {ids} outside 0..{num_classes - 1} ({num_classes} classes, {ignore_index} = ignore)"
            ) from exc
    metrics = cm.compute(seen_ids, unseen_ids)
    return {"num_images": len(gts), "metrics": metrics.to_dict(class_names)}


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.2f}"


def format_metrics_table(metrics_dict: dict[str, Any], title: str | None = None) -> str:
    """Render :meth:`SegMetrics.to_dict` output (or the ``"metrics"`` entry of :func:`evaluate_label_folders`,
    or that whole result) as a plain-text table.

    Per-class rows show id, name, split (``seen`` / ``unseen``, unseen rows marked ``*``), IoU and accuracy
    in percent, ``n/a`` where undefined; then mIoU all/seen/unseen, hIoU, pixel accuracy, mean accuracy and
    fwIoU.

    Args:
        metrics_dict: the dict to render.
        title: optional first line.

    Returns:
        The table, lines joined by ``\\n`` (no trailing newline).
    """
    num_images = metrics_dict.get("num_images")
    m = metrics_dict["metrics"] if "metrics" in metrics_dict else metrics_dict
    rows = m.get("per_class", [])
    name_w = max([len("class")] + [len(str(r["name"])) for r in rows])
    lines: list[str] = []
    if title:
        lines.append(title)
    header = f"{'id':>4}  {'class':<{name_w}}  {'split':<7} {'IoU':>7} {'Acc':>7}"
    rule = "-" * len(header)
    lines += [header, rule]
    for r in rows:
        split = r.get("split") or "-"
        mark = "*" if split == "unseen" else " "
        lines.append(
            f"{r['id']:>4}{mark} {str(r['name']):<{name_w}}  {split:<7} {_fmt(r.get('iou')):>7} {_fmt(r.get('acc')):>7}"
        )
    lines.append(rule)
    summary = [
        ("mIoU (all)", m.get("miou")),
        ("mIoU (seen)", m.get("seen_miou")),
        ("mIoU (unseen)", m.get("unseen_miou")),
        ("hIoU", m.get("hiou")),
        ("pixel acc", m.get("pixel_acc")),
        ("mean acc", m.get("mean_acc")),
        ("fwIoU", m.get("fwiou")),
    ]
    for label, value in summary:
        lines.append(f"{label:<14}{_fmt(value):>8}")
    footer = []
    if num_images is not None:
        footer.append(f"{num_images} images")
    if m.get("num_pixels") is not None:
        footer.append(f"{m['num_pixels']} pixels")
    if footer:
        lines.append(", ".join(footer) + "; * = unseen class")
    return "\n".join(lines)
