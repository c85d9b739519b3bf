"""Visual output: colour label maps, overlays with a legend, comparison panels and the demo report."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from PIL import Image  # noqa: E402

from zeroseg.data.classes import palette  # noqa: E402
from zeroseg.data.io import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402


def denormalize(image_chw: np.ndarray) -> np.ndarray:
    """(3,H,W) ImageNet-normalised float -> (H,W,3) uint8."""
    img = image_chw.transpose(1, 2, 0) * np.asarray(IMAGENET_STD) + np.asarray(IMAGENET_MEAN)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def colorize(label: np.ndarray, colours: np.ndarray | None = None) -> np.ndarray:
    """(H,W) ids -> (H,W,3) uint8 colours; 255 (ignore) is black."""
    colours = palette(256) if colours is None else colours
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(colours)] = colours[:256]
    lut[255] = 0
    return lut[label.astype(np.uint8)]


def overlay(image: np.ndarray, label: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Blend a colour label map over an (H,W,3) uint8 image."""
    return (image * (1 - alpha) + colorize(label) * alpha).round().astype(np.uint8)


def save_overlay_with_legend(
    image: np.ndarray,
    label: np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    *,
    title: str | None = None,
) -> None:
    """Save image | overlay side by side with a legend of the classes present."""
    colours = palette(256)
    present = [int(c) for c in np.unique(label) if c != 255 and c < len(class_names)]
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.4))
    axes[0].imshow(image)
    axes[0].set_title("image")
    axes[1].imshow(overlay(image, label))
    axes[1].set_title(title or "prediction")
    for ax in axes:
        ax.axis("off")
    handles = [Patch(color=colours[c] / 255.0, label=class_names[c]) for c in present]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    _save_figure(fig, path)


def save_panel(
    rows: Sequence[tuple[np.ndarray, Sequence[np.ndarray]]],
    column_titles: Sequence[str],
    class_names: Sequence[str],
    path: str | Path,
) -> None:
    """A grid: each row is an image followed by label maps (ground truth, predictions of several models)."""
    colours = palette(256)
    ncols = 1 + len(rows[0][1])
    fig, axes = plt.subplots(len(rows), ncols, figsize=(2.2 * ncols, 2.2 * len(rows) + 0.9), squeeze=False)
    present: set[int] = set()
    for r, (image, labels) in enumerate(rows):
        axes[r][0].imshow(image)
        for c, lab in enumerate(labels, start=1):
            axes[r][c].imshow(colorize(lab))
            present.update(int(v) for v in np.unique(lab) if v != 255)
        for c in range(ncols):
            axes[r][c].axis("off")
            if r == 0:
                axes[r][c].set_title(column_titles[c], fontsize=8)
    handles = [Patch(color=colours[c] / 255.0, label=class_names[c]) for c in sorted(present) if c < len(class_names)]
    fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    _save_figure(fig, path)


def _save_figure(fig: plt.Figure, path: str | Path, **savefig: Any) -> None:
    """Write a figure as PNG atomically and close it (``savefig`` options go to ``Figure.savefig``)."""
    import io

    from zeroseg.files import atomic_save_image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, **savefig)
    plt.close(fig)
    buf.seek(0)
    with Image.open(buf) as img:
        atomic_save_image(path, img, "PNG")


def save_label_png(label: np.ndarray, path: str | Path) -> None:
    """Save (H,W) ids atomically: a palette PNG (raw ids are the pixel values; the palette is for viewing), or
    a 16-bit grayscale PNG when an id exceeds 255 (vocabularies of more than 256 classes)."""
    from zeroseg.files import atomic_save_image, atomic_write_png

    if label.size and int(label.max()) > 255:
        atomic_write_png(path, label.astype(np.uint16))
        return
    img = Image.fromarray(label.astype(np.uint8), mode="P")
    img.putpalette(palette(256).astype(np.uint8).reshape(-1).tolist())
    atomic_save_image(path, img, "PNG")


SEEN_COLOUR = "#3b75af"
UNSEEN_COLOUR = "#d9822b"


def save_iou_bars(
    models: Sequence[tuple[str, Sequence[dict]]],
    path: str | Path,
    *,
    errors: Sequence[Sequence[float]] | None = None,
) -> None:
    """Per-class IoU bars, one panel per model; seen classes in blue, unseen in orange.

    Args:
        models: ``(title, per_class)`` where ``per_class`` is the ``metrics["per_class"]`` list of
            ``{"name", "split", "iou"}`` (percent; ``None`` = class absent from the validation set).
        path: the PNG to write.
        errors: per model, one std per class (over seeds) drawn as error bars; ``None`` for none.
    """
    n = len(models)
    names = [c["name"] for c in models[0][1]]
    fig, axes = plt.subplots(n, 1, figsize=(max(6.0, 0.55 * len(names) + 1.5), 1.9 * n + 1.0), squeeze=False)
    for k, (title, per_class) in enumerate(models):
        ax = axes[k][0]
        ious = [c["iou"] if c["iou"] is not None else 0.0 for c in per_class]
        colours = [UNSEEN_COLOUR if c["split"] == "unseen" else SEEN_COLOUR for c in per_class]
        yerr = errors[k] if errors is not None else None
        ax.bar(range(len(ious)), ious, color=colours, yerr=yerr, capsize=2)
        ax.set_ylim(0, 100)
        ax.set_ylabel("IoU %", fontsize=8)
        ax.set_title(title, fontsize=9, loc="left")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names if k == n - 1 else [""] * len(names), rotation=45, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    handles = [Patch(color=SEEN_COLOUR, label="seen class"), Patch(color=UNSEEN_COLOUR, label="unseen class")]
    fig.legend(handles=handles, loc="upper right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    _save_figure(fig, path)


def row_normalize(confusion: np.ndarray) -> np.ndarray:
    """``(C, C)`` counts (rows = ground truth) -> each row divided by its sum; rows without pixels stay 0."""
    confusion = np.asarray(confusion, dtype=np.float64)
    sums = confusion.sum(axis=1, keepdims=True)
    return np.divide(confusion, sums, out=np.zeros_like(confusion), where=sums > 0)


def save_confusions(
    models: Sequence[tuple[str, np.ndarray]],
    class_names: Sequence[str],
    unseen_ids: Sequence[int],
    path: str | Path,
) -> None:
    """Row-normalised confusion matrices side by side (rows: ground truth, columns: prediction); unseen class
    names are written in orange.

    Args:
        models: ``(title, (C, C) counts)``.
        class_names: C names.
        unseen_ids: indices of the unseen classes.
        path: the PNG to write.
    """
    n, c = len(models), len(class_names)
    size = max(3.2, 0.32 * c + 1.2)
    fig, axes = plt.subplots(1, n, figsize=(size * n + 0.8, size + 0.9), squeeze=False)
    unseen = set(int(i) for i in unseen_ids)
    image = None
    for k, (title, counts) in enumerate(models):
        ax = axes[0][k]
        image = ax.imshow(row_normalize(counts), vmin=0, vmax=1, cmap="viridis")
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(c))
        ax.set_yticks(range(c))
        ax.set_xticklabels(class_names, rotation=90, fontsize=6)
        ax.set_yticklabels(class_names if k == 0 else [""] * c, fontsize=6)
        for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
            for i, label in enumerate(labels):
                if i in unseen:
                    label.set_color(UNSEEN_COLOUR)
        ax.set_xlabel("predicted", fontsize=7)
        if k == 0:
            ax.set_ylabel("ground truth", fontsize=7)
    if image is not None:
        fig.colorbar(image, ax=[a for row in axes for a in row], fraction=0.02, pad=0.02, label="share of row")
    _save_figure(fig, path, bbox_inches="tight")


def save_learning_curves(curves: dict[str, dict[str, Sequence[float]]], path: str | Path) -> None:
    """One panel per training stage (``segmenter``, ``generator``, ...), one line per run.

    Args:
        curves: ``{run title: {stage: per-epoch (or per-window) losses}}``.
        path: the PNG to write.
    """
    stages = list(dict.fromkeys(s for per_run in curves.values() for s, v in per_run.items() if v))
    if not stages:
        return
    cols = min(3, len(stages))
    rows = (len(stages) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for k, stage in enumerate(stages):
        ax = axes[k // cols][k % cols]
        for title, per_run in curves.items():
            values = per_run.get(stage) or []
            if values:
                ax.plot(range(1, len(values) + 1), values, marker="o", markersize=2.5, label=title)
        ax.set_title(stage, fontsize=9)
        ax.set_xlabel("epoch" if stage != "zegformer" else "logged window", fontsize=7)
        ax.set_ylabel("loss", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    for k in range(len(stages), rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.tight_layout()
    _save_figure(fig, path)
