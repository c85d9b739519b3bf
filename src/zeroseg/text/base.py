"""The ``TextEncoder`` base class, the class-name syntax every encoder shares, and similarity helpers.

Every encoder maps a list of C class names to a ``(C, D)`` float32 tensor whose rows are L2-normalised
(ZS3Net ships its word2vec class embeddings L2-normalised, ``norm_embed_arr_300.pkl``; ZegFormer and open_clip
normalise CLIP text embeddings), so a dot product between rows is a cosine similarity. One module per provider
(:mod:`~zeroseg.text.word_vectors`, :mod:`~zeroseg.text.sentence`, :mod:`~zeroseg.text.clip`,
:mod:`~zeroseg.text.random_vectors`) subclasses :class:`TextEncoder`; the spec factory ``get_encoder`` and
``class_embeddings`` are in :mod:`zeroseg.text` (imports go base -> providers -> package, never back).

Class-name syntax (shared by all encoders):

* Synonyms are separated by ``|``: ``"tvmonitor|television|monitor"``. Each synonym is embedded on its own
  and the class embedding is the L2-normalised mean of the L2-normalised synonym embeddings (ZegFormer
  averages synonyms the same way; it writes them as ``"a, b"``, but commas separate classes on our CLI).
* Inside a synonym, words are separated by spaces, ``-`` or ``_``: ``"potted_plant"``, ``"potted-plant"`` and
  ``"potted plant"`` are the same name. Word-vector encoders average the words' vectors; sentence and CLIP
  encoders see the words joined by single spaces.
* ``verbatim=True`` (:meth:`TextEncoder.embed`) keeps each synonym's characters as written (only leading and
  trailing blanks are stripped): ``"wall-concrete"`` reaches the prompt as ``wall-concrete``. Synonyms are then
  also split on ``", "``, the separator ZegFormer's ``zeroshot_classifier`` splits on
  (``transformer_zeroshot_predictor.py:129-134``).
"""

from __future__ import annotations

import abc
import re
from collections.abc import Sequence

import torch

from zeroseg.errors import ZeroSegError

SYNONYM_SEPARATOR = "|"
#: ZegFormer's own synonym separator inside one class name (``classname.split(', ')``), honoured by verbatim parsing.
OFFICIAL_SYNONYM_SEPARATOR = ", "

_WORD_SPLIT = re.compile(r"[\s_\-]+")
_NORM_EPS = 1e-12


def split_words(text: str) -> list[str]:
    """Splits a class name (or synonym) into words on whitespace, ``-`` and ``_``.

    Args:
        text: e.g. ``"potted_plant"``.

    Returns:
        The non-empty words, case preserved, e.g. ``["potted", "plant"]``.
    """
    return [w for w in _WORD_SPLIT.split(text) if w]


def split_synonyms(class_name: str) -> list[str]:
    """Splits ``"a|b c|d_e"`` into canonical synonyms ``["a", "b c", "d e"]`` (words joined by one space).

    Args:
        class_name: a class name, synonyms separated by ``|``.

    Returns:
        The non-empty synonyms; empty if the name holds no word at all.
    """
    synonyms = []
    for part in class_name.split(SYNONYM_SEPARATOR):
        words = split_words(part)
        if words:
            synonyms.append(" ".join(words))
    return synonyms


def split_synonyms_verbatim(class_name: str) -> list[str]:
    """Splits ``"a|b, c"`` into ``["a", "b", "c"]`` on ``|`` and ``", "``; each synonym otherwise kept as written.

    Args:
        class_name: a class name, e.g. ``"wall-concrete"`` (-> ``["wall-concrete"]``).

    Returns:
        The non-blank synonyms, stripped of leading/trailing whitespace only.
    """
    parts = [p for part in class_name.split(SYNONYM_SEPARATOR) for p in part.split(OFFICIAL_SYNONYM_SEPARATOR)]
    return [p.strip() for p in parts if p.strip()]


def parse_class_names(class_names: Sequence[str], *, verbatim: bool = False) -> list[list[str]]:
    """Validates class names and splits each into its canonical synonyms.

    Args:
        class_names: C class names.
        verbatim: keep each synonym as written (:func:`split_synonyms_verbatim`) instead of re-joining its words
            (:func:`split_synonyms`).

    Returns:
        C lists of synonyms (each list non-empty).

    Raises:
        ZeroSegError: for an empty list, a non-string name or a name without any word.
    """
    if isinstance(class_names, str):
        # A bare string would otherwise be iterated character by character.
        raise ZeroSegError(f"class names must be a list of strings, got the single string {class_names!r}")
    names = list(class_names)
    if not names:
        raise ZeroSegError("empty class list")
    parsed = []
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise ZeroSegError(f"class name #{i} is {type(name).__name__} {name!r}, expected a string")
        synonyms = split_synonyms_verbatim(name) if verbatim else split_synonyms(name)
        if not synonyms:
            raise ZeroSegError(f"class name #{i} ({name!r}) contains no word")
        parsed.append(synonyms)
    return parsed


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Divides each row of ``x: (N, D)`` by its L2 norm (rows of zeros stay zero)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(_NORM_EPS)


class TextEncoder(abc.ABC):
    """Turns class names into unit-norm embedding vectors.

    Attributes:
        name: the encoder's spec-like name, e.g. ``"glove-6b-50d"``.
        dim: the embedding dimension D.
    """

    name: str
    dim: int

    def embed(self, class_names: Sequence[str], *, verbatim: bool = False) -> torch.Tensor:
        """Embeds class names (synonyms ``|``-separated; words split on spaces, ``-`` and ``_``).

        Args:
            class_names: C class names, e.g. ``["cat", "potted plant", "tvmonitor|television"]``.
            verbatim: pass each synonym to the encoder exactly as written (see the module docstring).

        Returns:
            ``(C, D)`` float32 tensor on the CPU; each row has L2 norm 1.

        Raises:
            ZeroSegError: for an empty list, a malformed name, or a name the encoder cannot embed.
        """
        parsed = parse_class_names(class_names, verbatim=verbatim)
        emb = self._embed_parsed(parsed).detach().to(device="cpu", dtype=torch.float32)
        if emb.shape != (len(parsed), self.dim):
            raise RuntimeError(f"{self.name}: produced shape {tuple(emb.shape)}, expected ({len(parsed)}, {self.dim})")
        norms = emb.norm(dim=1)
        bad = [list(class_names)[i] for i in torch.nonzero(~(norms > _NORM_EPS)).flatten().tolist()]
        if bad:
            raise ZeroSegError(f"{self.name}: zero or non-finite embedding for class(es) {bad}")
        return (emb / norms[:, None]).contiguous()

    @abc.abstractmethod
    def _embed_parsed(self, synonyms: list[list[str]]) -> torch.Tensor:
        """Embeds C classes given as lists of canonical synonyms; returns ``(C, D)`` (normalised or not)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"


def mean_of_normalized(vectors: torch.Tensor, groups: Sequence[int]) -> torch.Tensor:
    """Averages L2-normalised rows group by group and L2-normalises each mean.

    Args:
        vectors: ``(N, D)`` stacked embeddings, groups stored consecutively.
        groups: C group sizes summing to N (e.g. templates x synonyms per class).

    Returns:
        ``(C, D)`` unit-norm group means.
    """
    parts = torch.split(l2_normalize(vectors), list(groups), dim=0)
    return l2_normalize(torch.stack([p.mean(dim=0) for p in parts]))


def cosine_similarity_matrix(emb: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine similarities between embedding rows.

    Args:
        emb: ``(C, D)`` embeddings (need not be normalised).

    Returns:
        ``(C, C)`` float32 matrix in [-1, 1] with ones on the diagonal (for non-zero rows).
    """
    if emb.ndim != 2:
        raise ZeroSegError(f"embeddings must be a (C, D) matrix, got shape {tuple(emb.shape)}")
    unit = l2_normalize(emb.detach().float().cpu())
    return (unit @ unit.T).clamp_(-1.0, 1.0)


def format_similarity(names: Sequence[str], matrix: torch.Tensor) -> str:
    """Renders a similarity matrix as an aligned text table with 2 decimals.

    Args:
        names: C row/column labels.
        matrix: ``(C, C)`` similarities.

    Returns:
        C + 1 lines: a header with the names, then one row per name; columns right-aligned.
    """
    names = [str(n) for n in names]
    if matrix.shape != (len(names), len(names)):
        raise ZeroSegError(f"similarity matrix shape {tuple(matrix.shape)} does not match {len(names)} names")
    cells = [[f"{v:.2f}" for v in row] for row in matrix.detach().cpu().tolist()]
    label_w = max(len(n) for n in names) if names else 0
    col_w = [max(len(n), *(len(r[j]) for r in cells)) for j, n in enumerate(names)]
    lines = [" ".join([" " * label_w] + [n.rjust(w) for n, w in zip(names, col_w, strict=True)]).rstrip()]
    for name, row in zip(names, cells, strict=True):
        lines.append(" ".join([name.ljust(label_w)] + [c.rjust(w) for c, w in zip(row, col_w, strict=True)]))
    return "\n".join(lines)
