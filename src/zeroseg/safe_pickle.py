"""The one restricted unpickler: numpy arrays and scalars in plain containers, nothing that can run code.

Some formats of the field are pickles of data (detectron2 ``.pkl`` ImageNet weights, ZS3's embedding ``.pkl``,
ADE20K-full's ``index_ade20k.pkl``). They are read here and nowhere else: every global a pickle names must be one
of numpy's array/scalar/dtype rebuilders, ``collections.OrderedDict`` (read as a dict) or ``_codecs.encode``
(how protocol-2 pickles spell byte strings); anything else is refused before it is imported.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),
    }
)


def _allowed_global(module: str, name: str) -> Any:
    if module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        core = getattr(np, "_core", None) or np.core
        return getattr(core.multiarray, name)
    if module == "collections":
        return dict
    if module == "_codecs":
        import codecs

        return codecs.encode
    return getattr(np, name)


class _ArrayUnpickler(pickle.Unpickler):
    """Admits numpy arrays and scalars, dicts, lists, tuples, numbers and strings; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return _allowed_global(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent references are not allowed")


def loads(data: bytes, *, encoding: str = "latin1") -> Any:
    """Unpickle ``data`` with the restricted unpickler.

    Python-2 pickles (Caffe2 era) need ``encoding="latin1"``, the documented way to read their byte strings as
    numpy buffers; it changes nothing for Python-3 pickles.

    Raises:
        pickle.UnpicklingError: a global outside :data:`ALLOWED_GLOBALS`, or a persistent reference.
    """
    return _ArrayUnpickler(io.BytesIO(data), encoding=encoding).load()
