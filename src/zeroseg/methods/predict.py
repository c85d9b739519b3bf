"""``zeroseg predict``: label image files with a trained checkpoint, for any list of class names."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from zeroseg.data.io import IMAGENET_MEAN, IMAGENET_STD
from zeroseg.errors import ZeroSegError
from zeroseg.visualize import save_label_png, save_overlay_with_legend


def vocabulary(names: Sequence[str]) -> list[str]:
    """A predictor's class list: names stripped, empty entries dropped.

    Raises:
        ZeroSegError: no name left, or a name given twice.
    """
    clean = [n.strip() for n in names if n.strip()]
    if not clean:
        raise ZeroSegError("empty class list")
    if len(set(clean)) != len(clean):
        raise ZeroSegError(f"duplicate class names in {clean}")
    return clean


def read_rgb(path: str | Path, size: int | None = None) -> np.ndarray:
    """Read an image file as (H,W,3) uint8, optionally resizing its shorter side to ``size``."""
    p = Path(path)
    if not p.is_file():
        raise ZeroSegError(f"{p}: image not found")
    try:
        with Image.open(p) as im:
            im = im.convert("RGB")
            if size is not None:
                scale = size / min(im.size)
                im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BILINEAR)
            return np.array(im)
    except (UnidentifiedImageError, OSError) as e:
        raise ZeroSegError(f"{p}: cannot read image ({e.__class__.__name__})") from None


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H,W,3) uint8 -> (1,3,H,W) ImageNet-normalised float."""
    x = (image.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(x.transpose(2, 0, 1).astype(np.float32))[None]


def predict_images(
    checkpoint: str | Path,
    images: Sequence[str | Path],
    out_dir: str | Path,
    *,
    classes: list[str] | None = None,
    size: int | None = None,
) -> list[Path]:
    """Write ``<stem>.png`` (label ids, palette PNG) and ``<stem>_overlay.png`` (with legend) per image.

    Returns:
        the written paths. All inputs are read and checked before anything is written.
    """
    from zeroseg.methods import load_predictor

    predictor = load_predictor(checkpoint)
    arrays = [read_rgb(p, size) for p in images]
    if classes is not None:
        predictor.set_classes(classes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path, image in zip(images, arrays, strict=True):
        labels, _ = predictor.predict(to_tensor(image))
        label = labels[0].numpy().astype(np.uint8)
        stem = Path(path).stem
        save_label_png(label, out / f"{stem}.png")
        save_overlay_with_legend(
            image,
            label,
            predictor.class_names,
            out / f"{stem}_overlay.png",
            title=f"{predictor.meta['method']} prediction",
        )
        written += [out / f"{stem}.png", out / f"{stem}_overlay.png"]
    return written
