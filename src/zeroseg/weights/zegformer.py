"""Import dingjiansw101/ZegFormer's released detectron2 ``model_final.pth`` as a zeroseg ``zegformer`` checkpoint.

Official format: detectron2's checkpointer, ``torch.save({"model": state_dict, ...})`` (``"optimizer"``,
``"scheduler"``, ``"iteration"`` too when not trimmed), with

* ``backbone.*``: detectron2's ResNet (``stem.conv1`` + ``stem.conv1.norm``, ``res{2..5}.{i}.conv{1,2,3}`` each with
  a ``.norm`` FrozenBatchNorm, ``shortcut`` + ``shortcut.norm``), ``STRIDE_IN_1X1: False`` as torchvision;
* ``sem_seg_head.pixel_decoder.*``: MaskFormer's ``BasePixelDecoder`` (``adapter_{1,2,3}`` lateral 1x1 convs of
  res2..res4, ``layer_{1,2,3}`` their 3x3 output convs, ``layer_4`` the 3x3 conv of res5, each with a GroupNorm
  ``.norm``, and ``mask_features``);
* ``sem_seg_head.predictor.*``: ``TransformerZeroshotPredictor`` (``transformer.decoder.layers.{i}`` with
  ``self_attn``/``multihead_attn``/``linear{1,2}``/``norm{1,2,3}``, ``transformer.decoder.norm``,
  ``query_embed``, ``input_proj``, ``projection_layer``, ``bg_feature``, ``logit_scale``, ``mask_embed``);
* ``criterion.empty_weight``: the loss's class weights (training only, dropped).

The class texts are not in the file (the official code encodes them with CLIP at start-up): ``--clip`` names the
CLIP ViT-B/16 weights whose text tower embeds the split's classes (``text.eval``: all classes, ``text.train``:
the seen ones), and whose image tower is the optional CLIP branch of the official gzss evaluation.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

from zeroseg.data.splits import load_split
from zeroseg.engine.checkpoint import prefixed, save_checkpoint
from zeroseg.errors import ZeroSegError
from zeroseg.modules.zegformer import ZegFormer
from zeroseg.weights.clip import clip_file
from zeroseg.weights.detectron2 import detectron2_resnet_key
from zeroseg.weights.readers import map_state, read_torch_file, sha256_file, tensor_dict

# BasePixelDecoder module -> zeroseg FPNPixelDecoder module.
_PIXEL = {
    "adapter_1": "lateral.res2.conv", "adapter_1.norm": "lateral.res2.norm",
    "adapter_2": "lateral.res3.conv", "adapter_2.norm": "lateral.res3.norm",
    "adapter_3": "lateral.res4.conv", "adapter_3.norm": "lateral.res4.norm",
    "layer_1": "output.res2.conv", "layer_1.norm": "output.res2.norm",
    "layer_2": "output.res3.conv", "layer_2.norm": "output.res3.norm",
    "layer_3": "output.res4.conv", "layer_3.norm": "output.res4.norm",
    "layer_4": "layer_res5.conv", "layer_4.norm": "layer_res5.norm",
    "mask_features": "mask_features",
}  # fmt: skip
_PREDICTOR = {
    "query_embed": "decoder.query_embed",
    "input_proj": "decoder.input_proj",
    "transformer.decoder.norm": "decoder.norm",
    "projection_layer": "head.projection",
}
_LAYER = {"self_attn": "self_attn", "multihead_attn": "cross_attn"}


def zegformer_key(key: str) -> str | None:
    """zeroseg ``ZegFormer`` key of an official ZegFormer (detectron2) key, ``None`` if it is not one."""
    if key.startswith("backbone."):
        name = detectron2_resnet_key(key[len("backbone.") :])
        return None if name is None else f"backbone.{name}"
    if key.startswith("sem_seg_head.pixel_decoder."):
        module, _, leaf = key[len("sem_seg_head.pixel_decoder.") :].rpartition(".")
        return f"pixel_decoder.{_PIXEL[module]}.{leaf}" if module in _PIXEL else None
    if not key.startswith("sem_seg_head.predictor."):
        return None
    rest = key[len("sem_seg_head.predictor.") :]
    if rest == "bg_feature":
        return "head.bg_embedding"
    if rest == "logit_scale":
        return "head.logit_scale"
    m = re.fullmatch(r"mask_embed\.layers\.(\d+)\.(weight|bias)", rest)
    if m:
        return f"head.mask_embed.layers.{m.group(1)}.{m.group(2)}"
    m = re.fullmatch(r"transformer\.decoder\.layers\.(\d+)\.(\w+)\.(.+)", rest)
    if m:
        i, module, leaf = m.groups()
        if module in _LAYER:
            return f"decoder.layers.{i}.{_LAYER[module]}.{leaf}"
        if re.fullmatch(r"linear[12]|norm[123]", module):
            return f"decoder.layers.{i}.{module}.{leaf}"
        return None
    module, _, leaf = rest.rpartition(".")
    return f"{_PREDICTOR[module]}.{leaf}" if module in _PREDICTOR else None


def _dropped(key: str) -> str | None:
    if key == "criterion.empty_weight":
        return "training loss class weights"
    if key.startswith("sem_seg_head.predictor.clip_model."):
        return "the predictor's own CLIP copy (the CLIP given with --clip is used)"
    return None


def import_zegformer(
    checkpoint: str | Path,
    *,
    clip: str | Path,
    split: str,
    out: str | Path,
    clip_model: str = "ViT-B-16-quickgelu",
    test_templates: str = "single",
    train_templates: str | None = None,
    clip_image: bool = True,
    gzero_calibrate: float = 0.1,
) -> Path:
    """Write ``<out>/zegformer`` (a zeroseg ZegFormer checkpoint) from an official ``model_final.pth``.

    Args:
        checkpoint: the released detectron2 file.
        clip: CLIP weights in any layout of :func:`zeroseg.weights.clip.convert_clip` (open_clip names, OpenAI's
            TorchScript ``ViT-B-16.pt``, Hugging Face ``openai/clip-vit-base-patch16`` file or folder).
        split: ``voc-spnet-15-5`` or ``coco-stuff-156-15`` (or another split with the model's seen classes).
        out: output directory.
        clip_model: open_clip model name or config ``.json`` of ``clip``.
        test_templates / train_templates: prompt-template sets of the evaluation and training texts (official
            VOC: ``single``/``single``; COCO-Stuff: ``single``/``imagenet_select``).
        clip_image: fuse the CLIP image branch at inference (the official ``_gzss_eval`` configs do).
        gzero_calibrate: seen-score calibration (official ``GZERO_CALIBRATE: 0.1``).

    Raises:
        ZeroSegError: unreadable files, keys or shapes that do not match the model.
    """
    from zeroseg.methods.zegformer import InferenceOptions, text_embeddings

    path = Path(checkpoint)
    raw = read_torch_file(path)
    source = tensor_dict(raw["model"] if isinstance(raw, dict) and "model" in raw else raw, str(path))
    proj = source.get("sem_seg_head.predictor.projection_layer.weight")
    if proj is None:
        raise ZeroSegError(f"{path}: no sem_seg_head.predictor.projection_layer.weight; not a ZegFormer checkpoint")
    layer3 = {int(k.split(".")[2]) for k in source if k.startswith("backbone.res4.")}
    depth = {23: "resnet101", 6: "resnet50"}.get(len(layer3))
    if depth is None:
        raise ZeroSegError(f"{path}: backbone res4 has {len(layer3)} blocks; expected ResNet-50 (6) or -101 (23)")
    prefix = "sem_seg_head.predictor.transformer.decoder.layers."
    layers = {int(k.split(".")[5]) for k in source if k.startswith(prefix)}
    scale = source.get("sem_seg_head.predictor.logit_scale")
    if scale is None:
        raise ZeroSegError(f"{path}: no sem_seg_head.predictor.logit_scale")
    # The official logit_scale is log(1/T), kept fixed (requires_grad=False); zeroseg stores T in the kwargs.
    temperature = math.exp(-float(scale.reshape(-1)[0]))
    kwargs: dict[str, Any] = {
        "text_dim": int(proj.shape[0]),
        "backbone": depth,
        "backbone_norm": "frozen",
        "hidden_dim": int(proj.shape[1]),
        "mask_dim": int(source["sem_seg_head.pixel_decoder.mask_features.weight"].shape[0]),
        "num_queries": int(source["sem_seg_head.predictor.query_embed.weight"].shape[0]),
        "dec_layers": len(layers),
        "nheads": 8,
        "dim_feedforward": int(source["sem_seg_head.predictor.transformer.decoder.layers.0.linear1.weight"].shape[0]),
        "dropout": 0.1,
        "temperature": temperature,
    }
    model = ZegFormer(**kwargs)
    target = model.state_dict()
    # (1,) official parameter -> () zeroseg buffer: same number.
    source = {k: (v.reshape(()) if k.endswith("predictor.logit_scale") else v) for k, v in source.items()}
    state, dropped = map_state(source, zegformer_key, target, where=str(path), drop=_dropped)
    model.load_state_dict(state)

    sp = load_split(split)
    names = tuple(sp.class_names)
    unseen = set(sp.unseen)
    seen_ids = [i for i, n in enumerate(names) if n not in unseen]
    unseen_ids = [i for i, n in enumerate(names) if n in unseen]
    clip_path = clip_file(clip)
    encoder = f"clip:{clip_model}:{clip_path}"
    text_eval = text_embeddings(encoder, names, test_templates)
    text_train = text_embeddings(encoder, [names[i] for i in seen_ids], train_templates or test_templates)
    if text_eval.shape[1] != kwargs["text_dim"]:
        raise ZeroSegError(
            f"{clip_path}: {text_eval.shape[1]}-d text embeddings, the model takes {kwargs['text_dim']}-d"
        )
    options = InferenceOptions(
        test_templates=test_templates, clip_image=encoder if clip_image else None, gzero_calibrate=gzero_calibrate
    )
    iteration = raw.get("iteration") if isinstance(raw, dict) else None
    files = [
        {"role": "model", "file": str(path), "name": path.name, "sha256": sha256_file(path),
         **({"iteration": iteration} if isinstance(iteration, int) else {})},
        {"role": "clip", "file": str(clip_path), "name": clip_path.name, "sha256": sha256_file(clip_path)},
    ]  # fmt: skip
    meta = {
        "method": "zegformer",
        "variant": "zegformer",
        "stage": "zegformer",
        "protocol": "inductive",
        "transductive": False,
        "split": sp.to_json(),
        "class_names": list(names),
        "seen_ids": seen_ids,
        "unseen_ids": unseen_ids,
        "encoder": encoder,
        "embed_dim": kwargs["text_dim"],
        "model": kwargs,
        "inference": dataclasses.asdict(options),
        "config": None,
        "imported": {"format": "dingjiansw101/ZegFormer (detectron2)", "files": files,
                     "dropped": sorted(set(dropped.values()))},
    }  # fmt: skip
    tensors = {**prefixed(state, "model."), "text.eval": text_eval, "text.train": text_train}
    return save_checkpoint(Path(out) / "zegformer", tensors, meta)
