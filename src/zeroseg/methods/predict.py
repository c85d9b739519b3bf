"""``zeroseg predict``: label image files with a trained checkpoint, for any list of class names."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from zeroseg.data.io import IMAGENET_MEAN, IMAGENET_STD, load_image
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


#: Inference beyond this many pixels runs on a downscaled copy (peak memory grows ~400 B per pixel).
MAX_PIXELS = 2048 * 2048


def read_rgb(path: str | Path, size: int | None = None) -> np.ndarray:
    """Read an image file as (H,W,3) uint8 (:func:`zeroseg.data.io.load_image`), optionally resizing its shorter
    side to ``size``.

    Raises:
        ZeroSegError: a missing or undecodable file, or ``size < 1``.
    """
    if size is not None and size < 1:
        raise ZeroSegError(f"--size {size}: must be a positive number of pixels")
    image = load_image(path)
    if size is None:
        return image
    h, w = image.shape[:2]
    scale = size / min(h, w)
    im = Image.fromarray(image).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    return np.asarray(im)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H,W,3) uint8 -> (1,3,H,W) ImageNet-normalised float."""
    x = (image.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(x.transpose(2, 0, 1).astype(np.float32))[None]


def predict_labels(predictor: Any, image: np.ndarray, *, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, str | None]:
    """Labels ``(H, W)`` of one image at its own size, with memory bounded by ``max_pixels``.

    A larger image is labelled on a copy downscaled to at most ``max_pixels`` and the labels are resized back
    (nearest neighbour) to the image's size. A predictor with a fixed ``input_size`` ``(H, W)`` (a fixed-size ONNX
    export, :class:`zeroseg.export.OnnxPredictor`) labels a copy resized to that size, the labels resized back alike.

    Returns:
        ``(labels, note)``: ``note`` says when the image was resized (None otherwise).
    """
    h, w = image.shape[:2]
    note = None
    work = image
    fixed = getattr(predictor, "input_size", None)
    if fixed is not None and (h, w) != tuple(fixed):
        work = np.asarray(Image.fromarray(image).resize((fixed[1], fixed[0]), Image.BILINEAR))
        note = f"{w}x{h} pixels: labelled at {fixed[1]}x{fixed[0]} (the export's fixed input size), labels resized back"
    elif h * w > max_pixels:
        scale = (max_pixels / (h * w)) ** 0.5
        size = (max(1, int(w * scale)), max(1, int(h * scale)))
        work = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
        note = f"{w}x{h} pixels: labelled at {size[0]}x{size[1]} (over {max_pixels} pixels), labels resized back"
    labels, _ = predictor.predict(to_tensor(work))
    label = labels[0].numpy()
    if note is not None:
        label = np.asarray(Image.fromarray(label.astype(np.int32)).resize((w, h), Image.NEAREST))
    return label.astype(np.int64), note


def predict_images(
    checkpoint: str | Path | None,
    images: Sequence[str | Path],
    out_dir: str | Path,
    *,
    classes: list[str] | None = None,
    size: int | None = None,
    max_pixels: int = MAX_PIXELS,
    onnx: str | Path | None = None,
) -> list[Path]:
    """Write ``<stem>.png`` (label ids, palette PNG) and ``<stem>_overlay.png`` (with legend) per image, at each
    image's own size (or its shorter side resized to ``size``), with the torch predictor of ``checkpoint`` or, when
    ``onnx`` is given instead, the exported model run by onnxruntime (its vocabulary is baked in: ``classes``, if
    given, must be that vocabulary).

    Returns:
        the written paths. All inputs are read and checked before anything is written.

    Raises:
        ZeroSegError: an unreadable image, two inputs with the same file stem (their outputs would overwrite each
            other), ``size < 1``, or an output folder that cannot be written.
    """
    from zeroseg.methods import load_predictor

    stems = [Path(p).stem for p in images]
    clash = sorted({s for s in stems if stems.count(s) > 1})
    if clash:
        same = [str(p) for p in images if Path(p).stem == clash[0]]
        raise ZeroSegError(f"{' and '.join(same)}: same file stem '{clash[0]}', their outputs would overwrite")
    if (checkpoint is None) == (onnx is None):
        raise ZeroSegError("give either a checkpoint or an ONNX file")
    if onnx is not None:
        from zeroseg.export import OnnxPredictor

        predictor = OnnxPredictor(onnx)
    else:
        predictor = load_predictor(checkpoint)
    arrays = [read_rgb(p, size) for p in images]
    if classes is not None and onnx is not None:
        if tuple(vocabulary(classes)) != predictor.class_names:
            raise ZeroSegError(f"{onnx}: the vocabulary is baked in at export; re-export it for other --classes")
    elif classes is not None:
        predictor.set_classes(classes)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ZeroSegError(f"{out}: --out is a file, not a folder")
    written = []
    for path, image, stem in zip(images, arrays, stems, strict=True):
        label, note = predict_labels(predictor, image, max_pixels=max_pixels)
        if note:
            print(f"{path}: {note}", file=sys.stderr)
        save_label_png(label, out / f"{stem}.png")
        save_overlay_with_legend(
            image,
            label,
            predictor.class_names,
            out / f"{stem}_overlay.png",
            title=f"{predictor.meta.get('variant', predictor.meta['method'])} prediction",
        )
        written += [out / f"{stem}.png", out / f"{stem}_overlay.png"]
    return written
