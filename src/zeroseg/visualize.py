"""Visual output: colour label maps, overlays with a legend, comparison panels and the demo report."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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


def _save_figure(fig: plt.Figure, path: str | Path) -> None:
    """Write a figure as PNG atomically and close it."""
    import io

    from zeroseg.files import atomic_save_image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
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
