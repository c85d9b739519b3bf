"""A bounded on-disk cache of small tensor sets (safetensors files), and content hashes of large files.

What it is for: results that are slow to compute and small to keep, such as the classifier that
:meth:`zeroseg.methods.zs3net.ZS3Predictor.set_classes` refits for a new vocabulary. Each entry is one
``<key>.safetensors`` file whose name is the SHA-256 of everything the result depends on (:func:`cache_key`), written
atomically (:func:`zeroseg.files.atomic_write_bytes`). The key is stored again inside the file; a read checks it,
the exact tensor names, shapes and dtypes the caller expects and that every value is finite, and anything else -- a
truncated, foreign, renamed or edited file -- is treated as a miss (the caller recomputes and overwrites it), never
trusted. The directory is bounded by a number of entries and a number of bytes; the least recently used entries
(file modification time, refreshed on every hit) go first.

Where: ``$ZEROSEG_CACHE/<name>`` when that variable is set, else ``~/.cache/zeroseg/<name>`` (:func:`cache_dir`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from zeroseg.files import atomic_write_bytes, atomic_write_json

#: The environment variable naming zeroseg's cache root (default ``~/.cache/zeroseg``).
CACHE_ENV = "ZEROSEG_CACHE"
_META_KEY = "zeroseg-cache"
_DIGESTS = "digests.json"
_MAX_DIGESTS = 256
# In-process memo of file digests: (resolved path, size, mtime_ns, inode) -> sha256 hex.
_DIGEST_MEMO: dict[tuple[str, int, int, int], str] = {}


def cache_dir(name: str) -> Path:
    """``$ZEROSEG_CACHE/<name>``, or ``~/.cache/zeroseg/<name>`` when the variable is unset or empty."""
    root = os.environ.get(CACHE_ENV)
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "zeroseg") / name


def cache_key(parts: Mapping[str, Any]) -> str:
    """The SHA-256 (hex) of ``parts`` as canonical JSON (sorted keys, no spaces): equal parts, equal key."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read_digests(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def file_digest(path: str | Path, memo_dir: str | Path | None = None) -> str:
    """SHA-256 (hex) of a file's bytes, remembered by (resolved path, size, mtime, inode) so that an unchanged file
    is hashed once: in this process, and across processes in ``memo_dir/digests.json`` when ``memo_dir`` is given
    (a corrupt or stale record there is ignored and rewritten; at most 256 files are remembered). The inode
    catches a file replaced within one tick of the file system's clock by one of the same size, as an atomic
    rewrite (:func:`zeroseg.engine.checkpoint.save_checkpoint`) does.

    Raises:
        OSError: the file cannot be read.
    """
    p = Path(path).resolve()
    st = p.stat()
    memo_key = (str(p), st.st_size, st.st_mtime_ns, st.st_ino)
    if memo_key in _DIGEST_MEMO:
        return _DIGEST_MEMO[memo_key]
    record = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}
    store = Path(memo_dir) / _DIGESTS if memo_dir is not None else None
    digests = _read_digests(store) if store is not None else {}
    known = digests.get(str(p))
    if isinstance(known, dict) and {k: known.get(k) for k in record} == record and _is_hex64(known.get("sha256")):
        digest = known["sha256"]
    else:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
        if store is not None:
            digests.pop(str(p), None)
            digests[str(p)] = {**record, "sha256": digest}  # insertion order = age: the oldest are dropped
            try:
                atomic_write_json(store, dict(list(digests.items())[-_MAX_DIGESTS:]))
            except OSError:
                pass  # a read-only cache only costs a re-hash next time
    _DIGEST_MEMO[memo_key] = digest
    return digest


def _is_hex64(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


class TensorCache:
    """A directory of ``<key>.safetensors`` entries, bounded by count and bytes, least recently used out first.

    Args:
        directory: where the entries live (created on the first write).
        max_entries: most entries kept; max_bytes: most bytes kept over all entries.
    """

    def __init__(self, directory: str | Path, *, max_entries: int = 64, max_bytes: int = 256 << 20) -> None:
        self.directory = Path(directory)
        self.max_entries, self.max_bytes = max_entries, max_bytes

    def path(self, key: str) -> Path:
        """The file of entry ``key``."""
        return self.directory / f"{key}.safetensors"

    def entries(self) -> list[Path]:
        """The entry files, least recently used first (temporary files of unfinished writes are not entries)."""
        if not self.directory.is_dir():
            return []
        files = []
        for p in self.directory.glob("*.safetensors"):
            try:
                files.append((p.stat().st_mtime_ns, p.name, p))
            except OSError:  # removed by another process meanwhile
                continue
        return [p for *_, p in sorted(files)]

    def get(
        self, key: str, expect: Mapping[str, tuple[tuple[int, ...], torch.dtype]]
    ) -> dict[str, torch.Tensor] | None:
        """The tensors of entry ``key``, or ``None`` when it is absent or is not exactly what was stored under
        that key: the key inside the file must match, the tensors must be exactly ``expect``'s names with its
        shapes and dtypes, and finite. A hit counts as a use for the LRU order.

        Args:
            expect: ``{name: (shape, dtype)}`` of every tensor of the entry.
        """
        p = self.path(key)
        try:
            data = p.read_bytes()
            tensors = load(data)
            meta = json.loads(_header_metadata(data).get(_META_KEY, "null"))
        except (OSError, SafetensorError, ValueError, UnicodeDecodeError):
            return None
        if not isinstance(meta, dict) or meta.get("key") != key or set(tensors) != set(expect):
            return None
        for name, (shape, dtype) in expect.items():
            t = tensors[name]
            if tuple(t.shape) != tuple(shape) or t.dtype != dtype or not bool(torch.isfinite(t).all()):
                return None
        try:
            os.utime(p)
        except OSError:
            pass
        return tensors

    def put(self, key: str, tensors: Mapping[str, torch.Tensor], info: Mapping[str, Any] | None = None) -> Path:
        """Write entry ``key`` atomically (replacing any file of that name), then evict the least recently used
        entries until the cache is within its bounds.

        Args:
            info: JSON-able description stored beside the key (what the entry was computed from).

        Raises:
            OSError: the directory cannot be written.
        """
        flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        header = {_META_KEY: json.dumps({"key": key, "info": dict(info or {})}, sort_keys=True, default=str)}
        path = atomic_write_bytes(self.path(key), save(flat, metadata=header))
        self.prune()
        return path

    def prune(self) -> None:
        """Remove the least recently used entries until at most ``max_entries`` remain and they take at most
        ``max_bytes``."""
        sized = []
        for p in self.entries():
            try:
                sized.append((p, p.stat().st_size))
            except OSError:
                continue
        total = sum(size for _, size in sized)
        count = len(sized)
        for p, size in sized:
            if count <= self.max_entries and total <= self.max_bytes:
                break
            p.unlink(missing_ok=True)
            count, total = count - 1, total - size


def _header_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's bytes (its JSON header, 8-byte little-endian length first)."""
    n = int.from_bytes(data[:8], "little")
    if len(data) < 8 or n > len(data) - 8:
        raise ValueError("truncated safetensors header")
    header = json.loads(data[8 : 8 + n].decode("utf-8"))
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}
