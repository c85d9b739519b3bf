"""ADE20K-full (847 classes) from the ADE20K_2021_17_01 release, as MaskFormer prepares it.

Input (``--raw``: the unpacked ``ADE20K_2021_17_01`` folder, or its parent)::

    ADE20K_2021_17_01/index_ade20k.pkl                           the release index (see :func:`load_index`)
    ADE20K_2021_17_01/images/ADE/{training,validation}/<scene>/<name>.jpg, <name>_seg.png

For every image of the index (``index["folder"][i]``, ``index["filename"][i]``; validation when the second
``_`` field of the file name is ``val``) this follows facebookresearch/MaskFormer
``datasets/prepare_ade20k_full_sem_seg.py``: class mask = ``R // 10 * 256 + G`` of ``<name>_seg.png``, the
847 classes' mask values (``ADE847_RAW_IDS``) -> train ids 0..846, everything else -> 65535; an image whose
shorter side exceeds 512 is resized to shorter side 512 (longer side ``round(long / short * 512)``), the label
with OpenCV's ``INTER_NEAREST`` rule (source pixel ``floor(dst * src_size / dst_size)``, reproduced here
exactly in numpy) and the image bilinearly (PIL, saved as JPEG quality 95; MaskFormer uses OpenCV, so resized
pixels may differ by rounding -- labels do not). Unlike MaskFormer (validation only) both splits are written.

Output (``--out``, dataset ``ade20k-847``): ``ADE20K_2021_17_01/images_detectron2/<split>/<name>.jpg`` and
``annotations_detectron2/<split>/<name>.png`` (16-bit PNG instead of MaskFormer's ``.tif``; same values).
"""

from __future__ import annotations

import pickle
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from zeroseg import safe_pickle
from zeroseg.data import ade20k_full as reader
from zeroseg.data.classes import ADE847_CLASSES, ADE847_RAW_IDS
from zeroseg.data.io import _DECODE_ERRORS, IGNORE_WIDE, _short, load_image
from zeroseg.data.prepare.runner import Converted, Plan, Task
from zeroseg.errors import ZeroSegError

RELEASE = "ADE20K_2021_17_01"
MAX_SIZE = 512
# Largest class-mask value: R // 10 <= 25 for uint8 R.
_MASK_RANGE = (255 // 10) * 256 + 256


def load_index(path: Path) -> dict[str, Any]:
    """Read ``index_ade20k.pkl`` with a restricted unpickler (never plain ``pickle.load``).

    The release index is a pickled dict of lists and numpy arrays (``filename``, ``folder``, ``objectnames``,
    ``objectPresence``, ...); only ``filename`` and ``folder`` (equal-length lists of strings) are used.

    Raises:
        ZeroSegError: missing or unreadable file, a pickle naming any other global, or a malformed index.
    """
    if not path.is_file():
        raise ZeroSegError(f"{path}: ADE20K index not found")
    try:
        index = safe_pickle.loads(path.read_bytes())
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError) as err:
        raise ZeroSegError(f"{path}: not a usable ADE20K index ({_short(err)})") from None
    if not isinstance(index, dict) or "filename" not in index or "folder" not in index:
        raise ZeroSegError(f"{path}: ADE20K index without 'filename'/'folder' entries")
    names, folders = list(index["filename"]), list(index["folder"])
    if len(names) != len(folders) or not all(isinstance(x, str) for x in names + folders):
        raise ZeroSegError(f"{path}: ADE20K index 'filename'/'folder' are not equal-length lists of strings")
    return index


def class_lut() -> np.ndarray:
    """Class-mask value -> ADE-847 train id. Returns (6656,) uint16, 65535 where no class."""
    lut = np.full(_MASK_RANGE, IGNORE_WIDE, dtype=np.uint16)
    lut[np.asarray(ADE847_RAW_IDS)] = np.arange(len(ADE847_RAW_IDS), dtype=np.uint16)
    return lut


def resized_shape(h: int, w: int, max_size: int = MAX_SIZE) -> tuple[int, int] | None:
    """MaskFormer's target (h, w): shorter side ``max_size`` when it is larger, else None (no resize)."""
    if w >= h > max_size:
        return max_size, round(w / float(h) * max_size)
    if h >= w > max_size:
        return round(h / float(w) * max_size), max_size
    return None


def resize_nearest(label: np.ndarray, h_new: int, w_new: int) -> np.ndarray:
    """OpenCV ``INTER_NEAREST``: output (y, x) takes input (floor(y * H / h_new), floor(x * W / w_new))."""
    h, w = label.shape
    ys = np.minimum((np.arange(h_new) * (h / h_new)).astype(np.int64), h - 1)
    xs = np.minimum((np.arange(w_new) * (w / w_new)).astype(np.int64), w - 1)
    return label[ys[:, None], xs[None, :]]


def convert_ade_full(seg_path: Path, image_path: Path, max_size: int = MAX_SIZE) -> Converted:
    """One image of the release -> its 847-class label (uint16) and, when resized, the resized image."""
    if not seg_path.is_file():
        raise ZeroSegError(f"{seg_path}: segmentation file not found")
    try:
        with Image.open(seg_path) as img:
            seg = np.asarray(img.convert("RGB")) if img.mode in ("RGB", "RGBA") else None
    except _DECODE_ERRORS as err:
        raise ZeroSegError(f"{seg_path}: cannot read image ({_short(err)})") from None
    if seg is None:
        raise ZeroSegError(f"{seg_path}: an ADE20K _seg.png must be RGB (class = R // 10 * 256 + G)")
    mask = (seg[..., 0].astype(np.int64) // 10) * 256 + seg[..., 1].astype(np.int64)
    label = class_lut()[mask]
    h, w = label.shape
    shape = resized_shape(h, w, max_size)
    if shape is None:
        return Converted(label)
    image = load_image(image_path)
    if image.shape[:2] != (h, w):
        raise ZeroSegError(f"{seg_path}: size {w}x{h} differs from image {image_path.name}")
    h_new, w_new = shape
    resized = np.asarray(Image.fromarray(image).resize((w_new, h_new), Image.Resampling.BILINEAR))
    return Converted(resize_nearest(label, h_new, w_new), resized)


def _image_path(release: Path, folder: str, filename: str) -> Path:
    # Index folders start with the release name ("ADE20K_2021_17_01/images/ADE/..."), relative to its parent.
    parts = Path(folder).parts
    rel = Path(*parts[1:]) if parts and parts[0] == release.name else Path(folder)
    return release / rel / filename


def plan_ade20k_847(raw: Path, out: Path, max_size: int = MAX_SIZE) -> list[Plan]:
    """The ADE20K-847 plan (both splits).

    Raises:
        ZeroSegError: no ``index_ade20k.pkl`` under ``raw`` or an unusable one.
    """
    release = next((d for d in (raw, raw / RELEASE) if (d / "index_ade20k.pkl").is_file()), None)
    if release is None:
        raise ZeroSegError(f"{raw}: no index_ade20k.pkl here or in {RELEASE}/ (unpack the ADE20K_2021_17_01 release)")
    index = load_index(release / "index_ade20k.pkl")
    dst = out / RELEASE
    tasks = []
    for folder, filename in zip(index["folder"], index["filename"], strict=True):
        fields = filename.split("_")
        split = "validation" if len(fields) > 1 and fields[1] == "val" else "training"
        image = _image_path(release, folder, filename)
        seg = image.with_name(image.stem + "_seg.png")
        stem = Path(filename).stem
        tasks.append(
            Task(
                key=stem,
                source=seg,
                convert=partial(convert_ade_full, seg, image, max_size),
                label_out=dst / reader.ANNOTATIONS / split / f"{stem}.png",
                image_src=image,
                image_out=dst / reader.IMAGES / split / f"{stem}.jpg",
            )
        )
    return [
        Plan(
            name="ade20k-847",
            root=out,
            class_names=ADE847_CLASSES,
            read_label=reader.read_label,
            ignore_index=IGNORE_WIDE,
            tasks=tasks,
            check_splits=("train", "val"),
        )
    ]
