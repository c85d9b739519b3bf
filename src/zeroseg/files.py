"""Atomic file writes: every file the project writes appears whole or not at all.

Each writer fills a temporary file beside the target (``.<name>.<pid>.tmp``, a name no reader globs for),
flushes it to disk and renames it into place, so a kill at any moment leaves the old file, the new one, or
a stray temporary file -- never a truncated target.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image


def _tmp_path(p: Path) -> Path:
    return p.with_name(f".{p.name}.{os.getpid()}.tmp")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, flushed and renamed into place.

    A kill or a full disk at any moment leaves either the previous file or the new one, never a truncated one.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(p)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """:func:`atomic_write_text` of ``data`` as indented JSON with a final newline."""
    return atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def atomic_save_image(path: str | Path, image: Image.Image, format: str, **params: Any) -> Path:
    """Save a PIL image atomically (``format`` e.g. ``"PNG"``, ``"JPEG"``; ``params`` go to ``Image.save``)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(p)
    try:
        with open(tmp, "wb") as f:
            image.save(f, format=format, **params)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p


def atomic_write_png(path: str | Path, label: np.ndarray) -> Path:
    """Write a label map as a single-channel PNG: uint8 -> 8-bit grayscale, uint16 -> 16-bit grayscale.

    Args:
        label: (H, W) uint8 or uint16 class ids, stored losslessly as they are.
    """
    import numpy as np
    from PIL import Image

    if label.ndim != 2 or label.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"atomic_write_png: need a (H, W) uint8/uint16 array, got {label.dtype} {label.shape}")
    return atomic_save_image(path, Image.fromarray(np.ascontiguousarray(label)), "PNG")


def atomic_link(src: str | Path, dst: str | Path) -> Path:
    """Make ``dst`` the same file as ``src`` without copying: a hard link, or an absolute symbolic link where
    hard links are impossible (another file system). ``dst`` is replaced atomically; ``src == dst`` is a no-op.
    """
    s, d = Path(src), Path(dst)
    d.parent.mkdir(parents=True, exist_ok=True)
    if d.exists() and os.path.samefile(s, d):
        return d
    tmp = _tmp_path(d)
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(s, tmp)
        except OSError:
            os.symlink(s.resolve(), tmp)
        os.replace(tmp, d)
    finally:
        tmp.unlink(missing_ok=True)
    return d
