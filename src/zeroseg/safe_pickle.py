"""The one restricted unpickler: numpy arrays and scalars in plain containers, nothing that can run code.

Some formats of the field are pickles of data (detectron2 ``.pkl`` ImageNet weights, ZS3's embedding ``.pkl``,
ADE20K-full's ``index_ade20k.pkl``). They are read here and nowhere else: every global a pickle names must be one
of numpy's array/scalar/dtype rebuilders, ``collections.OrderedDict`` (read as a dict) or ``_codecs.encode``
(how protocol-2 pickles spell byte strings); anything else is refused before it is imported.

:func:`loads_torchscript` reads the module tree of a TorchScript archive (``<root>/data.pkl``, e.g. OpenAI's
released CLIP ``.pt``) with the same unpickler and a few more admitted names: a ``__torch__.*`` class becomes an
inert :class:`TorchScriptObject` (a class name and an attribute dict; the archive's ``code/`` is never read),
``torch._utils._rebuild_tensor_v2`` and the ``torch.<Type>Storage`` names become tensors built here from raw
storage bytes. Nothing from torch is imported by name from the pickle.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

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


class TorchScriptObject:
    """One object of a TorchScript module tree, as data: the scripted class's name and its attribute dict.

    Each ``__torch__.*`` class a pickle names becomes a subclass of this one that records the name; it has no
    behaviour, so unpickling one runs nothing but this ``__setstate__``.

    Attributes:
        type_name: the TorchScript class, e.g. ``"__torch__.torch.nn.modules.linear.Linear"``.
        attributes: attribute name -> value (submodules, tensors, ints, bools, ``None``, ...).
    """

    type_name = ""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            # A class with its own __getstate__ (packed params, custom classes) is not a plain module.
            raise pickle.UnpicklingError(f"{self.type_name} has a custom state ({type(state).__name__})")
        self.attributes = dict(state)


#: ``torch.<Name>Storage`` (how TorchScript's pickler names a storage's element type) -> torch dtype name.
STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool",
}  # fmt: skip


class _StorageType:
    """The value of a ``torch.<Name>Storage`` global: just its dtype name."""

    def __init__(self, dtype: str) -> None:
        self.dtype = dtype


def _rebuild_tensor(
    storage: torch.Tensor,
    offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    hooks: Any = None,
    metadata: Any = None,
) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2``'s arguments -> a tensor that owns its memory (views are copied)."""
    import torch

    if not isinstance(storage, torch.Tensor) or storage.ndim != 1:
        raise pickle.UnpicklingError("a tensor whose storage is not a storage reference")
    if hooks or metadata:
        raise pickle.UnpicklingError("a tensor with backward hooks or metadata")
    if not all(isinstance(v, int) for v in (offset, *size, *stride)):
        raise pickle.UnpicklingError("a tensor with a non-integer size, stride or offset")
    # The last element addressed must lie inside the storage (as_strided does not check).
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) if all(size) else offset - 1
    if offset < 0 or last >= storage.numel() or any(s < 0 for s in stride):
        raise pickle.UnpicklingError("a tensor that reaches outside its storage")
    return torch.as_strided(storage, tuple(size), tuple(stride), offset).clone()


class _ArrayUnpickler(pickle.Unpickler):
    """Admits numpy arrays and scalars, dicts, lists, tuples, numbers and strings; refuses every other global.

    With ``read_storage`` (a TorchScript ``data.pkl``) it also admits ``__torch__.*`` classes as
    :class:`TorchScriptObject` records, the storage-type names and the tensor rebuilder, and resolves each
    ``("storage", type, key, location, numel)`` persistent id by reading the storage's bytes through
    ``read_storage(key)``.
    """

    def __init__(self, file: io.BytesIO, *, encoding: str, read_storage: Callable[[str], bytes] | None = None) -> None:
        super().__init__(file, encoding=encoding)
        self._read_storage = read_storage
        self._records: dict[str, type] = {}
        self._storages: dict[str, Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return _allowed_global(module, name)
        if self._read_storage is not None:
            if module == "__torch__" or module.startswith("__torch__."):
                qualified = f"{module}.{name}"
                if qualified not in self._records:
                    self._records[qualified] = type(name, (TorchScriptObject,), {"type_name": qualified})
                return self._records[qualified]
            if module == "torch._utils" and name == "_rebuild_tensor_v2":
                return _rebuild_tensor
            if module == "torch" and name in STORAGE_DTYPES:
                return _StorageType(STORAGE_DTYPES[name])
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")

    def persistent_load(self, pid: Any) -> Any:
        if self._read_storage is None:
            raise pickle.UnpicklingError("persistent references are not allowed")
        import torch

        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"persistent reference {str(pid)[:80]} is not a storage")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or not isinstance(numel, int):
            raise pickle.UnpicklingError(f"malformed storage reference {str(pid)[:80]}")
        if key not in self._storages:
            dtype = getattr(torch, storage_type.dtype)
            data = self._read_storage(key)
            itemsize = torch.empty((), dtype=dtype).element_size()
            if len(data) != numel * itemsize:
                raise pickle.UnpicklingError(f"storage {key}: {len(data)} bytes, expected {numel} x {itemsize}")
            flat = torch.frombuffer(bytearray(data), dtype=dtype) if numel else torch.empty(0, dtype=dtype)
            self._storages[key] = flat
        return self._storages[key]


def loads(data: bytes, *, encoding: str = "latin1") -> Any:
    """Unpickle ``data`` with the restricted unpickler.

    Python-2 pickles (Caffe2 era) need ``encoding="latin1"``, the documented way to read their byte strings as
    numpy buffers; it changes nothing for Python-3 pickles.

    Raises:
        pickle.UnpicklingError: a global outside :data:`ALLOWED_GLOBALS`, or a persistent reference.
    """
    return _ArrayUnpickler(io.BytesIO(data), encoding=encoding).load()


def loads_torchscript(data: bytes, read_storage: Callable[[str], bytes]) -> Any:
    """Unpickle a TorchScript archive's ``data.pkl`` into :class:`TorchScriptObject` records and tensors.

    Args:
        data: the bytes of ``<root>/data.pkl``.
        read_storage: storage key -> the raw little-endian bytes of ``<root>/data/<key>``.

    Returns:
        The root record (the saved module), its attributes holding submodule records, CPU tensors and plain values.

    Raises:
        pickle.UnpicklingError: a global that is none of the above (``os.system``, ``torch.load``, ...), a
            persistent reference that is not a storage, or a tensor that does not fit its storage.
    """
    return _ArrayUnpickler(io.BytesIO(data), encoding="utf-8", read_storage=read_storage).load()
