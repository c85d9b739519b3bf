"""A generic folder layout for custom data and the embedded synthetic benchmark (dataset key ``"folder"``).

Expected tree::

    root/
        classes.txt                          one class name per line, line k = label id k
        images/<split>/<stem>.png|.jpg|.jpeg RGB images
        annotations/<split>/<stem>.png       single-channel PNGs with ids 0..C-1, 255 = ignore
        split.json                           optional zero-shot split (Split JSON, may carry "classes")

``<split>`` is any folder name (``train``, ``val``, ...). Labels hold raw ids, nothing is remapped.
The ``"synthetic"`` dataset key reads the same layout with ``SYNTHETIC_CLASSES`` (a ``classes.txt``, if
present, must list exactly those names).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zeroseg.data.classes import SYNTHETIC_CLASSES
from zeroseg.data.io import Sample, image_folder_pair, read_label_png
from zeroseg.data.splits import Split, load_split
from zeroseg.errors import ZeroSegError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _root(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise ZeroSegError(f"{root}: dataset root not found (folder layout)")
    return root


def read_classes(root: str | Path) -> tuple[str, ...]:
    """Class names from ``root/classes.txt`` (blank lines skipped, surrounding spaces stripped).

    Raises:
        ZeroSegError: missing/unreadable file, no names, duplicates or more than 255 classes.
    """
    path = _root(root) / "classes.txt"
    if not path.is_file():
        raise ZeroSegError(f"{path}: classes.txt not found (one class name per line)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ZeroSegError(f"{path}: cannot read ({err.__class__.__name__})") from None
    names = tuple(line.strip() for line in lines if line.strip())
    if not names:
        raise ZeroSegError(f"{path}: no class names")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ZeroSegError(f"{path}: class '{name}' listed twice")
        seen.add(name)
    if len(names) > 255:
        raise ZeroSegError(f"{path}: {len(names)} classes; at most 255 fit next to the ignore id 255")
    return names


def synthetic_classes(root: str | Path) -> tuple[str, ...]:
    """``SYNTHETIC_CLASSES``, after checking ``root/classes.txt`` agrees when it exists."""
    root = _root(root)
    if (root / "classes.txt").is_file():
        names = read_classes(root)
        if names != SYNTHETIC_CLASSES:
            raise ZeroSegError(
                f"{root / 'classes.txt'}: does not match the {len(SYNTHETIC_CLASSES)} synthetic benchmark classes"
            )
    return SYNTHETIC_CLASSES


def load_folder_split(root: str | Path, class_names: tuple[str, ...] | None = None) -> Split | None:
    """The zero-shot split stored in ``root/split.json``, or None when there is none.

    Args:
        root: dataset root.
        class_names: the dataset's classes; defaults to ``classes.txt``.
    """
    root = _root(root)
    path = root / "split.json"
    if not path.is_file():
        return None
    return load_split(path, class_names=class_names if class_names is not None else read_classes(root))


def list_samples(root: str | Path, split: str) -> list[Sample]:
    """List ``images/<split>/*`` with their ``annotations/<split>/<stem>.png``.

    Raises:
        ZeroSegError: missing root or split folders, no images, or two images sharing a stem.
    """
    root = _root(root)
    if not (root / "images" / split).is_dir():
        raise ZeroSegError(
            f"{root / 'images' / split}: folder not found (folder layout needs images/{split} and annotations/{split})"
        )
    ann_dir, images = image_folder_pair(root, split, IMAGE_SUFFIXES)
    stems: dict[str, Path] = {}
    for img in images:
        if img.stem in stems:
            raise ZeroSegError(f"{img}: same stem as {stems[img.stem].name}")
        stems[img.stem] = img
    return [Sample(img, ann_dir / f"{img.stem}.png") for img in images]


def read_label(path: str | Path) -> np.ndarray:
    """Raw id label (0..C-1, 255 = ignore). Returns (H, W) uint8."""
    return read_label_png(Path(path))
