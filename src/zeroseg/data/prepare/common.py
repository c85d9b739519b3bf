"""Input readers shared by the converters: MATLAB label files, raw id PNGs, value checks."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from zeroseg.data.io import read_label_png
from zeroseg.errors import ZeroSegError


def load_mat_field(path: Path, *keys: str) -> np.ndarray:
    """The 2-D integer array at ``mat[keys[0]][keys[1]]...`` of a MATLAB file (SBD ``GTcls.Segmentation``,
    PASCAL-Context ``LabelMap``).

    Raises:
        ZeroSegError: missing or undecodable file, a missing field, or a field that is not a 2-D integer map.
    """
    import scipy.io

    if not path.is_file():
        raise ZeroSegError(f"{path}: file not found")
    try:
        value = scipy.io.loadmat(str(path))
    except (
        scipy.io.matlab.MatReadError,
        ValueError,
        TypeError,
        OSError,
        KeyError,
        IndexError,
        NotImplementedError,
        EOFError,
    ) as err:
        raise ZeroSegError(f"{path}: cannot read MATLAB file ({err.__class__.__name__})") from None
    # loadmat keeps MATLAB's 2-D shapes: a struct is a (1, 1) record array whose field is a (1, 1) object array.
    for depth, key in enumerate(keys):
        if depth == 0:
            found = isinstance(value, dict) and key in value
        else:
            names = getattr(getattr(value, "dtype", None), "names", None) or ()
            found = key in names and value.size == 1
        if not found:
            raise ZeroSegError(f"{path}: no field {'.'.join(keys)} in this MATLAB file")
        value = value[key] if depth == 0 else value[key].flat[0]
    arr = np.asarray(value)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer) and not np.issubdtype(arr.dtype, np.floating):
        raise ZeroSegError(f"{path}: {'.'.join(keys)} is not a 2-D label map (shape {arr.shape}, {arr.dtype})")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ZeroSegError(f"{path}: {'.'.join(keys)} holds non-integer values")
    return arr.astype(np.int64)


def check_values(arr: np.ndarray, valid: Iterable[int] | range, path: Path, what: str) -> None:
    """Raise unless every value of ``arr`` is in ``valid`` -- a corrupt input is never written as a label.

    Raises:
        ZeroSegError: naming the file and the first unexpected values.
    """
    values = np.unique(arr)
    allowed = np.fromiter(valid, dtype=np.int64)
    bad = values[~np.isin(values, allowed)]
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:5])
        raise ZeroSegError(f"{path}: unexpected value(s) {shown} in {what}")


def raw_label(path: Path) -> np.ndarray:
    """A raw id PNG as stored (8-bit palette/grayscale). Returns (H, W) uint8."""
    return read_label_png(path)


def read_list(path: Path) -> list[str]:
    """An id list file (one id per line), e.g. VOC ``ImageSets/Segmentation/train.txt``."""
    from zeroseg.data.io import read_id_list

    return read_id_list(path)


def first_dir(root: Path, candidates: Iterable[str], required: Iterable[str], what: str) -> Path:
    """The first of ``root / c`` holding every ``required`` entry (file or folder).

    Raises:
        ZeroSegError: none does, naming ``root`` and what was looked for.
    """
    req = tuple(required)
    cands = tuple(candidates)
    for c in cands:
        base = root / c if c else root
        if all((base / r).exists() for r in req):
            return base
    raise ZeroSegError(
        f"{root}: no {what} here ({', '.join(req)} not found under any of: {', '.join(c or '.' for c in cands)})"
    )
