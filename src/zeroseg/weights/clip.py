"""CLIP weights in the three layouts they are released in, read without running code, as open_clip state dicts.

* open_clip names (``visual.conv1.weight``, ``transformer.resblocks.0.attn.in_proj_weight``, ...): a
  ``.safetensors`` file or a weights-only ``torch.save`` file (a state dict, or open_clip's training checkpoint
  ``{"state_dict": ...}``; a DistributedDataParallel ``module.`` prefix is stripped). Returned as they are.
* OpenAI's released ``ViT-B-16.pt`` etc.: a TorchScript archive of the traced ``clip/model.py`` CLIP. Its module
  tree is read by :func:`zeroseg.weights.readers.read_torchscript` (never ``torch.jit.load``). OpenAI's attribute
  names are open_clip's (open_clip's ``CLIP`` keeps ``model.py``'s ``visual``/``transformer``/``token_embedding``/
  ``ln_final``/``text_projection``/``logit_scale`` tree), so the tensors keep their dotted paths. Dropped by rule,
  as open_clip's ``build_model_from_openai_state_dict`` does: the top-level ``input_resolution``,
  ``context_length`` and ``vocab_size`` (model settings, 0-d tensors in OpenAI's file) and every ``attn_mask``
  (the causal mask, a plain tensor attribute of ``ResidualAttentionBlock``; open_clip rebuilds it). The tensors
  keep the file's dtypes (OpenAI's files are float16 except the LayerNorms and embeddings).
* Hugging Face ``transformers`` ``CLIPModel`` (``openai/clip-vit-base-patch16``: ``model.safetensors`` or
  ``pytorch_model.bin``, or the folder holding one): renamed key by key (:func:`hf_clip_key`), with
  ``q_proj``/``k_proj``/``v_proj`` concatenated in that order into ``in_proj_weight``/``in_proj_bias`` (the row
  blocks of ``nn.MultiheadAttention``), ``visual_projection``/``text_projection`` (``nn.Linear``, ``(E, D)``)
  transposed to open_clip's ``(D, E)`` matrices and the ``position_ids`` buffers dropped. Every key is accounted
  for by :func:`~zeroseg.weights.readers.map_state`. Only ViT towers with a plain text transformer map; the
  attention head count is not in the weights and is the open_clip model config's business.

OpenAI's CLIP models (both files) were trained with QuickGELU: build them as ``ViT-B-16-quickgelu`` (or a config
with ``"quick_gelu": true``); the weights alone do not say which activation they expect.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from zeroseg.errors import ZeroSegError
from zeroseg.weights.readers import (
    is_torchscript_archive,
    map_state,
    read_safetensors,
    read_torch_file,
    read_torchscript,
    tensor_dict,
)

#: Top-level settings OpenAI's traced CLIP stores as 0-d tensors; open_clip's importer pops them too.
OPENAI_SETTINGS = ("input_resolution", "context_length", "vocab_size")

#: File names looked for when a Hugging Face model folder is given, preferred first.
HF_FILES = ("model.safetensors", "pytorch_model.bin")

# One transformer layer: Hugging Face module -> open_clip module (``:q``/``:k``/``:v`` mark the thirds of
# ``in_proj``, put together by :func:`_assemble`).
_HF_LAYER = {
    "self_attn.q_proj": "attn.in_proj:q",
    "self_attn.k_proj": "attn.in_proj:k",
    "self_attn.v_proj": "attn.in_proj:v",
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_HF_FIXED = {
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "visual_projection.weight": "visual.proj",
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "text_projection.weight": "text_projection",
    "logit_scale": "logit_scale",
}
_HF_TOWERS = {"vision_model": "visual.transformer", "text_model": "transformer"}
#: open_clip keys whose Hugging Face tensor is the transpose (``nn.Linear`` weight vs. a ``x @ proj`` matrix).
_TRANSPOSED = ("visual.proj", "text_projection")


def hf_clip_key(key: str) -> str | None:
    """open_clip name of a Hugging Face ``CLIPModel`` key (``None``: not a weight of the model).

    ``q_proj``/``k_proj``/``v_proj`` map to ``<layer>.attn.in_proj_{weight,bias}:{q,k,v}``, the thirds that
    :func:`_assemble` concatenates.
    """
    if key in _HF_FIXED:
        return _HF_FIXED[key]
    m = re.fullmatch(r"(vision_model|text_model)\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
    if m is None or m.group(3) not in _HF_LAYER:
        return None
    tower, i, module, leaf = m.groups()
    target = _HF_LAYER[module]
    if ":" in target:
        name, part = target.split(":")
        return f"{_HF_TOWERS[tower]}.resblocks.{i}.{name}_{leaf}:{part}"
    return f"{_HF_TOWERS[tower]}.resblocks.{i}.{target}.{leaf}"


def _hf_dropped(key: str) -> str | None:
    if key.endswith("embeddings.position_ids"):
        return "position index buffer (0..N-1), not a weight"
    return None


def _layers(source: dict[str, torch.Tensor], tower: str) -> int:
    ids = [int(m.group(1)) for k in source if (m := re.match(rf"{tower}\.encoder\.layers\.(\d+)\.", k))]
    return max(ids) + 1 if ids else 0


def _hf_target(source: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """The keys and shapes a consistent Hugging Face CLIP file must fill (meta tensors), before assembly.

    The sizes come from one tensor each (widths, vocabulary, positions, MLP width, embedding size, patch
    kernel), the layer counts from the highest layer index; every other tensor must then fit them.
    """
    anchors = {
        "vision_model.embeddings.patch_embedding.weight": 4,
        "vision_model.embeddings.position_embedding.weight": 2,
        "vision_model.encoder.layers.0.mlp.fc1.weight": 2,
        "visual_projection.weight": 2,
        "text_model.embeddings.token_embedding.weight": 2,
        "text_model.embeddings.position_embedding.weight": 2,
        "text_model.encoder.layers.0.mlp.fc1.weight": 2,
    }
    absent = [k for k, ndim in anchors.items() if k not in source or source[k].ndim != ndim]
    if absent:
        raise ZeroSegError(f"{where}: not a Hugging Face CLIP ViT file, missing or malformed: {', '.join(absent)}")
    dv, channels, ph, pw = source["vision_model.embeddings.patch_embedding.weight"].shape
    positions = source["vision_model.embeddings.position_embedding.weight"].shape[0]
    fv = source["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0]
    embed = source["visual_projection.weight"].shape[0]
    vocab, dt = source["text_model.embeddings.token_embedding.weight"].shape
    context = source["text_model.embeddings.position_embedding.weight"].shape[0]
    ft = source["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]
    shapes: dict[str, tuple[int, ...]] = {
        "visual.conv1.weight": (dv, channels, ph, pw),
        "visual.class_embedding": (dv,),
        "visual.positional_embedding": (positions, dv),
        "visual.ln_pre.weight": (dv,), "visual.ln_pre.bias": (dv,),
        "visual.ln_post.weight": (dv,), "visual.ln_post.bias": (dv,),
        "visual.proj": (embed, dv),  # still the nn.Linear layout; transposed by _assemble
        "token_embedding.weight": (vocab, dt),
        "positional_embedding": (context, dt),
        "ln_final.weight": (dt,), "ln_final.bias": (dt,),
        "text_projection": (embed, dt),
        "logit_scale": (),
    }  # fmt: skip
    for prefix, width, mlp, layers in (
        ("visual.transformer", dv, fv, _layers(source, "vision_model")),
        ("transformer", dt, ft, _layers(source, "text_model")),
    ):
        for i in range(layers):
            block = f"{prefix}.resblocks.{i}"
            for part in "qkv":
                shapes[f"{block}.attn.in_proj_weight:{part}"] = (width, width)
                shapes[f"{block}.attn.in_proj_bias:{part}"] = (width,)
            for module, (rows, cols) in (
                ("attn.out_proj", (width, width)), ("mlp.c_fc", (mlp, width)), ("mlp.c_proj", (width, mlp))
            ):  # fmt: skip
                shapes[f"{block}.{module}.weight"] = (rows, cols)
                shapes[f"{block}.{module}.bias"] = (rows,)
            for norm in ("ln_1", "ln_2"):
                shapes[f"{block}.{norm}.weight"] = (width,)
                shapes[f"{block}.{norm}.bias"] = (width,)
    # Keep each tensor's own dtype (map_state casts to the target's).
    dtypes = {hf_clip_key(k): v.dtype for k, v in source.items()}
    fallback = source["vision_model.embeddings.patch_embedding.weight"].dtype
    return {k: torch.empty(s, dtype=dtypes.get(k, fallback), device="meta") for k, s in shapes.items()}


def _assemble(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Concatenate the q/k/v thirds into ``in_proj_*`` and transpose the two projections."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name, _, part = key.partition(":")
        if part == "q":
            # nn.MultiheadAttention splits in_proj's rows as [query; key; value].
            out[name] = torch.cat([state[f"{name}:q"], state[f"{name}:k"], state[f"{name}:v"]], dim=0)
        elif not part:
            out[name] = value.t().contiguous() if name in _TRANSPOSED else value
    return out


def hf_to_open_clip(source: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """open_clip state dict of a Hugging Face ``CLIPModel`` state dict.

    Args:
        source: ``CLIPModel.state_dict()`` names (``vision_model.*``, ``text_model.*``, ``visual_projection``,
            ``text_projection``, ``logit_scale``).
        where: the file named in errors.

    Returns:
        open_clip ``CLIP`` names; ``in_proj_weight`` ``(3D, D)`` = ``[q; k; v]``, ``visual.proj`` ``(D_v, E)``,
        ``text_projection`` ``(D_t, E)``.

    Raises:
        ZeroSegError: one line listing unknown keys, missing keys or shapes that do not fit.
    """
    target = _hf_target(source, where)
    state, _ = map_state(source, hf_clip_key, target, where=where, drop=_hf_dropped)
    return _assemble(state)


def _openai_dropped(key: str) -> str | None:
    if key in OPENAI_SETTINGS:
        return "model setting, not a weight"
    if key == "attn_mask" or key.endswith(".attn_mask"):
        return "causal attention mask, rebuilt by open_clip"
    return None


def openai_to_open_clip(tree: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """open_clip state dict of the tensors of OpenAI's TorchScript CLIP (see the module docstring).

    Raises:
        ZeroSegError: the archive is not a CLIP module tree (no ``visual.*`` or ``token_embedding.weight``).
    """
    state = {k: v for k, v in tree.items() if _openai_dropped(k) is None}
    if "token_embedding.weight" not in state or not any(k.startswith("visual.") for k in state):
        raise ZeroSegError(f"{where}: TorchScript archive is not an OpenAI CLIP model (no visual / token_embedding)")
    return state


def _is_hf(state: dict[str, Any]) -> bool:
    return any(k.startswith(("vision_model.", "text_model.")) for k in state)


def clip_file(path: str | Path) -> Path:
    """The weights file of ``path``: the path itself, or a Hugging Face folder's ``model.safetensors`` /
    ``pytorch_model.bin`` (the file whose sha256 a checkpoint records).

    Raises:
        ZeroSegError: missing file, or a folder with neither file.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        for name in HF_FILES:
            if (path / name).is_file():
                return path / name
        raise ZeroSegError(f"{path}: folder holds none of {', '.join(HF_FILES)}")
    if not path.is_file():
        raise ZeroSegError(f"{path}: CLIP checkpoint not found")
    return path


def read_clip(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """:func:`convert_clip`, also saying which layout the file had.

    Returns:
        ``(state, layout)``, layout one of ``"open_clip"``, ``"openai-torchscript"``, ``"huggingface"``.
    """
    p = clip_file(path)
    where = str(p)
    if p.suffix.lower() == ".safetensors":
        raw: Any = read_safetensors(p)
    elif is_torchscript_archive(p):
        return openai_to_open_clip(read_torchscript(p), where), "openai-torchscript"
    else:
        raw = read_torch_file(p)
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict) or not raw:
        raise ZeroSegError(f"{where}: checkpoint does not contain a state dict of tensors")
    state = tensor_dict(raw, where)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    if _is_hf(state):
        return hf_to_open_clip(state, where), "huggingface"
    return state, "open_clip"


def convert_clip(path: str | Path) -> dict[str, torch.Tensor]:
    """CLIP weights in open_clip names from any of the three released layouts (module docstring).

    Args:
        path: ``.safetensors``, weights-only ``torch.save`` file, OpenAI TorchScript ``.pt``, or a Hugging Face
            model folder / its ``model.safetensors`` / ``pytorch_model.bin``.

    Returns:
        ``{open_clip name: tensor}`` on the CPU, in the file's dtypes.

    Raises:
        ZeroSegError: one line naming the file: missing, unreadable, code in a pickle, unknown or missing keys.
    """
    return read_clip(path)[0]


def write_clip_safetensors(path: str | Path, out: str | Path) -> tuple[Path, str, int]:
    """Convert CLIP weights (:func:`read_clip`) into an open_clip-named ``.safetensors`` file, written atomically.

    Returns:
        ``(out, layout read, number of tensors)``.

    Raises:
        ZeroSegError: a bad input (see :func:`convert_clip`) or an ``out`` that does not end in ``.safetensors``.
    """
    from safetensors.torch import save

    from zeroseg.files import atomic_write_bytes

    target = Path(out).expanduser()
    if target.suffix.lower() != ".safetensors" or target.is_dir():
        raise ZeroSegError(f"{target}: --out must name a .safetensors file")
    state, layout = read_clip(path)
    # safetensors refuses tensors that share memory (tied or viewed weights of a torch.save file): copy each.
    data = save({k: v.detach().clone().contiguous() for k, v in state.items()}, metadata={"converted_from": layout})
    return atomic_write_bytes(target, data), layout, len(state)
