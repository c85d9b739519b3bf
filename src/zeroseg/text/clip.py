"""CLIP text encoders (open_clip) from LOCAL checkpoints, with prompt-template ensembling.

Spec: ``clip:<model>:<checkpoint>``

* ``<model>`` is an open_clip built-in model name (``ViT-B-16``, ``RN50``, ...; see
  ``open_clip.list_models()``) or the path of a model-config ``.json`` -- either open_clip's own layout
  (``{"embed_dim": ..., "vision_cfg": {...}, "text_cfg": {...}}``) or an ``open_clip_config.json`` with a
  ``"model_cfg"`` key. The model part must not contain ``:``; everything after the second ``:`` is the
  checkpoint path.
* ``<checkpoint>`` is a local CLIP weights file in any layout :func:`zeroseg.weights.clip.convert_clip` reads:
  open_clip names (``.safetensors``, or a weights-only ``torch.save`` state dict / open_clip training checkpoint
  ``{"state_dict": ..., "epoch": ...}``; a ``module.`` prefix is stripped), OpenAI's released TorchScript ``.pt``
  (e.g. ``ViT-B-16.pt``; build it as ``ViT-B-16-quickgelu``, OpenAI's models use QuickGELU), or a Hugging Face
  ``transformers`` CLIP (``model.safetensors`` / ``pytorch_model.bin`` or the folder holding it).

Safety: the checkpoint is never unpickled with arbitrary code. safetensors files are read with
``safetensors.torch.load_file``; ``torch.save`` files with ``torch.load(weights_only=True)``, which refuses pickled
objects that are not tensors or plain containers; TorchScript archives are never ``torch.jit.load``-ed: their
module tree is read by the project's restricted unpickler (:mod:`zeroseg.safe_pickle`). The weights are then put
into a freshly built model with ``load_state_dict(strict=True)``; nothing is downloaded (built-in configs ship with
open_clip, pretrained tower weights are switched off, Hugging Face text towers and tokenizers are refused).

Embedding: for a class with synonyms S and templates T, the |T| x |S| texts are encoded, each L2-normalised,
averaged and the mean L2-normalised (ZegFormer's ``zeroshot_classifier``; open_clip's
``build_zero_shot_classifier`` does the same for one synonym).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zeroseg.errors import ZeroSegError
from zeroseg.text.base import TextEncoder, mean_of_normalized
from zeroseg.text.prompts import fill_template, get_templates
from zeroseg.weights.clip import convert_clip

DEFAULT_TEMPLATES = "imagenet_select"


@dataclass(frozen=True)
class ClipSpec:
    """A parsed ``clip:<model>:<checkpoint>`` spec.

    Attributes:
        model: open_clip model name or path to a model-config json.
        checkpoint: path to the local weights file.
    """

    model: str
    checkpoint: str


def parse_clip_spec(spec: str) -> ClipSpec:
    """Parses ``"clip:<model>:<checkpoint>"``.

    Raises:
        ZeroSegError: if the prefix, the model or the checkpoint part is missing.
    """
    prefix, sep, rest = spec.partition(":")
    model, sep2, checkpoint = rest.partition(":")
    if prefix != "clip" or not sep or not sep2 or not model.strip() or not checkpoint.strip():
        raise ZeroSegError(f"bad CLIP encoder spec {spec!r}; expected clip:<model name or config .json>:<checkpoint>")
    return ClipSpec(model=model.strip(), checkpoint=checkpoint.strip())


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:200] if text else type(e).__name__


def _import_open_clip() -> Any:
    try:
        import open_clip
    except ImportError:
        raise ZeroSegError("CLIP encoders need open_clip; run `pip install open-clip-torch`") from None
    return open_clip


def resolve_model_config(model: str) -> dict[str, Any]:
    """Returns an open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``, ...).

    Args:
        model: built-in open_clip model name, or path of a config ``.json``.

    Raises:
        ZeroSegError: for an unknown name, an unreadable json or a config without the required keys.
    """
    path = Path(model).expanduser()
    if model.lower().endswith(".json") or path.is_file():
        try:
            with open(path, encoding="utf-8") as f:
                cfg = json.load(f)
        except (OSError, ValueError) as e:
            raise ZeroSegError(f"{path}: cannot read CLIP model config ({_one_line(e)})") from None
        if isinstance(cfg, dict) and isinstance(cfg.get("model_cfg"), dict):
            cfg = cfg["model_cfg"]
        source = str(path)
    else:
        open_clip = _import_open_clip()
        cfg = open_clip.get_model_config(model.replace("/", "-"))
        if cfg is None:
            raise ZeroSegError(
                f"unknown open_clip model {model!r}; use a name from open_clip.list_models() or a config json"
            )
        source = f"open_clip model {model!r}"
    if not isinstance(cfg, dict) or not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ZeroSegError(f"{source}: model config needs the keys embed_dim, vision_cfg and text_cfg")
    cfg = copy.deepcopy(cfg)
    text_cfg = cfg["text_cfg"]
    if text_cfg.get("hf_model_name") or text_cfg.get("hf_tokenizer_name"):
        raise ZeroSegError(f"{source}: Hugging Face text towers/tokenizers are not supported (need the hub)")
    if "multimodal_cfg" in cfg:
        raise ZeroSegError(f"{source}: CoCa models are not supported; use a CLIP model config")
    if "timm_model_name" in cfg["vision_cfg"]:
        # Only the text tower is used; never fetch ImageNet weights for the vision tower.
        cfg["vision_cfg"]["timm_model_pretrained"] = False
    return cfg


def _adapt_state_dict(state_dict: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Applies open_clip's own key/shape fix-ups for older checkpoint layouts."""
    from open_clip.model import convert_to_custom_text_state_dict

    sd = dict(state_dict)
    if "positional_embedding" in sd and not hasattr(model, "positional_embedding"):
        sd = convert_to_custom_text_state_dict(sd)
    for key in ("logit_scale", "logit_bias"):
        target = getattr(model, key, None)
        if key in sd and isinstance(target, torch.Tensor) and sd[key].ndim != target.ndim:
            sd[key] = sd[key].reshape(target.shape)
    if "logit_bias" not in sd and getattr(model, "logit_bias", None) is not None and "logit_scale" in sd:
        sd["logit_bias"] = torch.zeros_like(sd["logit_scale"])
    sd.pop("text.transformer.embeddings.position_ids", None)
    return sd


def load_clip_model(
    model: str, checkpoint: str | os.PathLike[str], device: str = "cpu"
) -> tuple[torch.nn.Module, Any, int]:
    """Builds an open_clip model from a config and loads local weights safely.

    Args:
        model: built-in open_clip model name or model-config json path.
        checkpoint: local weights file in any layout of :func:`zeroseg.weights.clip.convert_clip`.
        device: torch device string.

    Returns:
        ``(model, tokenizer, embed_dim)``; the model is in eval mode, float32.

    Raises:
        ZeroSegError: if the config or checkpoint is bad or the weights do not fit the model.
    """
    open_clip = _import_open_clip()
    cfg = resolve_model_config(model)
    custom_text = bool(cfg.pop("custom_text", False))
    model_class = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    try:
        net = model_class(**cfg)
    except Exception as e:  # bad config values surface as TypeError/ValueError/AssertionError from open_clip
        raise ZeroSegError(f"{model}: cannot build CLIP model from config ({_one_line(e)})") from None
    state_dict = _adapt_state_dict(convert_clip(checkpoint), net)
    try:
        net.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise ZeroSegError(f"{checkpoint}: weights do not fit CLIP model {model} ({_one_line(e)})") from None
    net = net.to(device=device, dtype=torch.float32).eval()
    text_cfg = cfg["text_cfg"]
    tokenizer = open_clip.SimpleTokenizer(
        context_length=int(text_cfg.get("context_length", 77)), **(text_cfg.get("tokenizer_kwargs") or {})
    )
    return net, tokenizer, int(cfg["embed_dim"])


class ClipTextEncoder(TextEncoder):
    """CLIP text-tower class embeddings averaged over prompt templates and synonyms.

    Attributes:
        templates: the prompt templates, each with one ``{}``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        dim: int,
        templates: str | Sequence[str] = DEFAULT_TEMPLATES,
        name: str = "clip",
        device: str = "cpu",
        batch_size: int = 256,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ZeroSegError(f"CLIP encoder: batch_size {batch_size!r} must be a positive integer")
        self.model = model
        self.tokenizer = tokenizer
        self.dim = dim
        self.templates = get_templates(templates)
        self.name = name
        self.device = device
        self.batch_size = batch_size

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Encodes raw prompts with the text tower.

        Args:
            texts: N prompt strings.

        Returns:
            ``(N, D)`` float32 L2-normalised text embeddings on the CPU.
        """
        outs = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                tokens = self.tokenizer(list(texts[start : start + self.batch_size])).to(self.device)
                outs.append(self.model.encode_text(tokens, normalize=True).float().cpu())
        return torch.cat(outs)

    def _embed_parsed(self, synonyms: list[list[str]]) -> torch.Tensor:
        texts = [fill_template(t, s) for group in synonyms for t in self.templates for s in group]
        vecs = self.encode_texts(texts)
        return mean_of_normalized(vecs, [len(self.templates) * len(g) for g in synonyms])


def load_clip_encoder(
    model: str,
    checkpoint: str | os.PathLike[str],
    templates: str | Sequence[str] = DEFAULT_TEMPLATES,
    device: str = "cpu",
    batch_size: int = 256,
) -> ClipTextEncoder:
    """Encoder for ``clip:<model>:<checkpoint>``.

    Args:
        model: built-in open_clip model name or model-config json path.
        checkpoint: local weights file.
        templates: template-set name (``"single"``, ``"imagenet_select"`` (default),
            ``"imagenet_select_clip"``, ``"imagenet"``, ``"none"``) or a list of templates.
        device: torch device string.
        batch_size: prompts per text-tower forward pass.

    Returns:
        The encoder, named ``"clip:<model>:<checkpoint>"``.
    """
    resolved = get_templates(templates)  # fail on bad templates before the (slow) model load
    net, tokenizer, dim = load_clip_model(model, checkpoint, device=device)
    return ClipTextEncoder(
        net,
        tokenizer,
        dim,
        templates=resolved,
        name=f"clip:{model}:{checkpoint}",
        device=device,
        batch_size=batch_size,
    )
