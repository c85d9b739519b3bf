"""Reading released weight files without executing any code from them, and the strict key-mapping step.

Three readers, one per format a released checkpoint comes in:

* ``torch.save`` files (``.pth``, ``.pth.tar``, ``.pt``): ``torch.load(weights_only=True)``, which admits only
  tensors and plain containers; anything else is a one-line error naming the file.
* ``.safetensors``: tensors only, by construction.
* detectron2 / Caffe2 ``.pkl`` (``R-101.pkl``): a restricted unpickler that admits numpy arrays, dicts, lists,
  tuples, numbers and strings and nothing else (no class, no function outside numpy's array rebuilders).
* TorchScript archives (``torch.jit.save``; OpenAI's CLIP ``.pt``): the same unpickler reads the module tree of
  ``data.pkl`` as inert records and tensors (:func:`read_torchscript`); the archive is never ``torch.jit.load``-ed.

:func:`map_state` is the one place where a source state dict becomes a zeroseg one: every source key is either
mapped, or dropped by a named rule; every target key must be filled; every shape must match. Anything else is a
single-line :class:`~zeroseg.errors.ZeroSegError` that lists the offending keys.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zeroseg import safe_pickle
from zeroseg.errors import ZeroSegError

#: How many keys an error message lists before "... and N more".
_LIST = 6


def sha256_file(path: str | Path, *, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] if text else type(exc).__name__


def read_torch_file(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; a file that needs arbitrary unpickling is refused.

    Raises:
        ZeroSegError: missing file, or a file that is not weights-only (the message names the file).
    """
    p = Path(path)
    if not p.is_file():
        raise ZeroSegError(f"{p}: file not found")
    try:
        return torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # any failure is an unreadable file for the user
        raise ZeroSegError(f"{p}: not a weights-only torch file, refused ({_reason(e)})") from None


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a ``.safetensors`` file, on CPU."""
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise ZeroSegError(f"{p}: file not found")
    try:
        return load_file(str(p), device="cpu")
    except Exception as e:
        raise ZeroSegError(f"{p}: cannot read safetensors ({_reason(e)})") from None


def read_array_pickle(path: str | Path) -> Any:
    """Unpickle a file of numpy arrays in plain containers (detectron2 ``.pkl``, ZS3's embedding ``.pkl``).

    Python-2 pickles (Caffe2 era) are read with ``encoding="latin1"``, the documented way to read their byte
    strings as numpy buffers.

    Raises:
        ZeroSegError: missing file, or a pickle that needs anything beyond arrays, dicts, lists, numbers and
            strings (naming the refused global).
    """
    p = Path(path)
    if not p.is_file():
        raise ZeroSegError(f"{p}: file not found")
    try:
        return safe_pickle.loads(p.read_bytes())
    except pickle.UnpicklingError as e:
        raise ZeroSegError(f"{p}: refused, the pickle holds more than arrays and plain containers ({e})") from None
    except Exception as e:
        raise ZeroSegError(f"{p}: cannot read pickle ({_reason(e)})") from None


def _torchscript_root(names: list[str]) -> str | None:
    """The archive folder of a TorchScript zip (``<root>/data.pkl`` beside ``<root>/constants.pkl`` or
    ``<root>/code/``), ``None`` for any other zip (a ``torch.save`` file has ``data.pkl`` only)."""
    for name in names:
        root, sep, rest = name.partition("/")
        if sep and rest == "data.pkl" and (f"{root}/constants.pkl" in names or any(
            n.startswith(f"{root}/code/") for n in names
        )):  # fmt: skip
            return root
    return None


def is_torchscript_archive(path: str | Path) -> bool:
    """Whether ``path`` is a ``torch.jit.save`` archive (read by :func:`read_torchscript`, never by torch.load)."""
    try:
        with zipfile.ZipFile(path) as z:
            return _torchscript_root(z.namelist()) is not None
    except (OSError, zipfile.BadZipFile):
        return False


def _tensor_leaves(obj: safe_pickle.TorchScriptObject, prefix: str, out: dict[str, torch.Tensor], where: str) -> None:
    for name, value in obj.attributes.items():
        key = f"{prefix}{name}"
        if isinstance(value, safe_pickle.TorchScriptObject):
            _tensor_leaves(value, f"{key}.", out, where)
        elif isinstance(value, torch.Tensor):
            out[key] = value
        elif isinstance(value, (list, tuple, dict)) and _holds_tensor(value):
            raise ZeroSegError(f"{where}: TorchScript attribute {key} is a {type(value).__name__} of tensors")


def _holds_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor | safe_pickle.TorchScriptObject):
        return True
    if isinstance(value, dict):
        return any(_holds_tensor(v) for v in value.values())
    return isinstance(value, list | tuple) and any(_holds_tensor(v) for v in value)


def read_torchscript(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a TorchScript archive's module tree by dotted attribute path, without running its code.

    ``<root>/data.pkl`` is read with :func:`zeroseg.safe_pickle.loads_torchscript` (``__torch__.*`` classes as
    inert records, tensors from the ``<root>/data/<key>`` storages); ``code/`` and ``constants.pkl`` are not read.
    Every tensor attribute is returned (parameters, buffers and plain tensor attributes alike, e.g.
    ``visual.conv1.weight``, ``transformer.resblocks.0.attn_mask``); attributes that are not tensors (``training``,
    ints such as ``input_resolution`` in a scripted module, ``None``) are settings, not weights, and are left out.

    Raises:
        ZeroSegError: missing file, not a TorchScript archive, a big-endian archive, or a ``data.pkl`` that names
            any global beyond the admitted ones (the message names the file and the refused global).
    """
    p = Path(path)
    if not p.is_file():
        raise ZeroSegError(f"{p}: file not found")
    try:
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
            root = _torchscript_root(names)
            if root is None:
                raise ZeroSegError(f"{p}: not a TorchScript archive (no <root>/data.pkl with code/)")
            if f"{root}/byteorder" in names and z.read(f"{root}/byteorder").strip() != b"little":
                raise ZeroSegError(f"{p}: big-endian TorchScript archive, not supported")
            tree = safe_pickle.loads_torchscript(z.read(f"{root}/data.pkl"), lambda key: z.read(f"{root}/data/{key}"))
    except ZeroSegError:
        raise
    except pickle.UnpicklingError as e:
        raise ZeroSegError(
            f"{p}: refused, the TorchScript data.pkl holds more than modules and tensors ({e})"
        ) from None
    except Exception as e:
        raise ZeroSegError(f"{p}: cannot read TorchScript archive ({_reason(e)})") from None
    if not isinstance(tree, safe_pickle.TorchScriptObject):
        raise ZeroSegError(f"{p}: TorchScript data.pkl holds a {type(tree).__name__}, not a module")
    out: dict[str, torch.Tensor] = {}
    _tensor_leaves(tree, "", out, str(p))
    return out


def read_weights(path: str | Path) -> Any:
    """Read any supported weights file by its suffix: ``.safetensors``, ``.pkl``, else a torch file."""
    p = Path(path)
    if p.suffix == ".safetensors":
        return read_safetensors(p)
    if p.suffix == ".pkl":
        return read_array_pickle(p)
    return read_torch_file(p)


def tensor_dict(obj: Any, where: str) -> dict[str, torch.Tensor]:
    """``{name: tensor}`` from a mapping of tensors or numpy arrays (numpy copied into torch).

    Raises:
        ZeroSegError: ``obj`` is not a mapping, or one of its values is neither a tensor nor an array.
    """
    if not isinstance(obj, Mapping):
        raise ZeroSegError(f"{where}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    out: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            out[str(k)] = v
        elif isinstance(v, np.ndarray):
            out[str(k)] = torch.from_numpy(np.ascontiguousarray(v))
        else:
            raise ZeroSegError(f"{where}: entry {k!r} is a {type(v).__name__}, not a tensor")
    return out


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LIST])
    return shown + (f" ... and {len(keys) - _LIST} more" if len(keys) > _LIST else "")


#: A rename rule: source key -> target key, ``None`` when the rule does not apply to that key.
Rule = Callable[[str], "str | None"]


def map_state(
    source: Mapping[str, torch.Tensor],
    rename: Rule,
    target: Mapping[str, torch.Tensor],
    *,
    where: str,
    drop: Rule | None = None,
    fill: Mapping[str, torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Map a source state dict onto a target model's, accounting for every key.

    Args:
        source: the released state dict.
        rename: source key -> target key (``None``: the key is not the model's; it must then be dropped).
        target: the zeroseg model's ``state_dict()`` (names and shapes only are used).
        where: the file named in errors.
        drop: source key -> the reason it is deliberately not used (``None``: not dropped); e.g. an optimiser
            buffer or the training loss's class weight.
        fill: values for target keys that the source format does not have (e.g. BatchNorm's
            ``num_batches_tracked`` in files saved before it existed).

    Returns:
        ``(state, dropped)``: the target state dict (every target key, shapes checked; dtypes cast to the
        target's) and ``{dropped source key: reason}``.

    Raises:
        ZeroSegError: one line listing unused source keys, missing target keys, duplicate mappings or the first
            shape mismatches.
    """
    state: dict[str, torch.Tensor] = {}
    dropped: dict[str, str] = {}
    unused: list[str] = []
    twice: list[str] = []
    for key, value in source.items():
        name = rename(key)
        if name is None or name not in target:
            reason = drop(key) if drop is not None else None
            if reason is None:
                unused.append(key if name is None else f"{key} (-> {name})")
            else:
                dropped[key] = reason
            continue
        if name in state:
            twice.append(name)
        state[name] = value
    for name, value in (fill or {}).items():
        if name in target and name not in state:
            state[name] = value
    missing = [k for k in target if k not in state]
    problems = []
    if unused:
        problems.append(f"{len(unused)} unused key(s): {_listing(unused)}")
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listing(missing)}")
    if twice:
        problems.append(f"{len(twice)} key(s) mapped twice: {_listing(twice)}")
    if problems:
        raise ZeroSegError(f"{where}: keys do not match the model: {'; '.join(problems)}")
    bad = [
        f"{k} {tuple(v.shape)} (model {tuple(target[k].shape)})"
        for k, v in state.items()
        if tuple(v.shape) != tuple(target[k].shape)
    ]
    if bad:
        raise ZeroSegError(f"{where}: {len(bad)} shape mismatch(es): {_listing(bad)}")
    return {k: state[k].to(target[k].dtype) for k in target}, dropped
