"""detectron2 / Caffe2 ResNet names -> torchvision names, and reading detectron2's ImageNet ``.pkl`` trunks.

detectron2's ResNet: ``stem.conv1`` (+ ``stem.conv1.norm``), ``res{2..5}.{i}.conv{1,2,3}`` (+ ``.norm``),
``res{2..5}.{i}.shortcut`` (+ ``.norm``). Its ImageNet files (``R-50.pkl``, ``R-101.pkl``) are pickles of numpy arrays,
``{"model": {name: array}, "__author__": ..., "matching_heuristics": ...}``; MSRA's ``R-101.pkl`` keeps Caffe2's names
(``conv1_w``, ``res_conv1_bn_{s,b}``, ``res2_0_branch2a_w``, ``res2_0_branch2a_bn_{s,b}``, ``res2_0_branch1_w``,
``fc1000_{w,b}``), whose BatchNorms are already folded into a scale and a bias (no running statistics).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from zeroseg.errors import ZeroSegError
from zeroseg.weights.readers import read_array_pickle, tensor_dict

_C2_LEAF = {"w": "weight", "b": "bias", "s": "weight", "rm": "running_mean", "riv": "running_var"}
_C2_CONV = {"branch2a": "conv1", "branch2b": "conv2", "branch2c": "conv3", "branch1": "shortcut"}


def c2_key(key: str) -> str | None:
    """detectron2 name of a Caffe2 ResNet key (``res2_0_branch2a_bn_s`` -> ``res2.0.conv1.norm.weight``);
    ``None`` for names that are not trunk parameters (``fc1000_w``)."""
    m = re.fullmatch(r"conv1_w", key)
    if m:
        return "stem.conv1.weight"
    m = re.fullmatch(r"res_conv1_bn_(s|b|rm|riv)", key)
    if m:
        return f"stem.conv1.norm.{_C2_LEAF[m.group(1)]}"
    m = re.fullmatch(r"res(\d)_(\d+)_(branch2a|branch2b|branch2c|branch1)(_bn)?_(w|b|s|rm|riv)", key)
    if m is None:
        return None
    stage, block, branch, bn, leaf = m.groups()
    return f"res{stage}.{block}.{_C2_CONV[branch]}{'.norm' if bn else ''}.{_C2_LEAF[leaf]}"


def detectron2_resnet_key(key: str) -> str | None:
    """torchvision name of a detectron2 ResNet key (``res2.0.conv1.norm.weight`` -> ``layer1.0.bn1.weight``)."""
    m = re.fullmatch(r"stem\.conv1\.(weight)|stem\.conv1\.norm\.(\w+)", key)
    if m:
        return "conv1.weight" if m.group(1) else f"bn1.{m.group(2)}"
    m = re.fullmatch(r"res([2-5])\.(\d+)\.(conv[123]|shortcut)(\.norm)?\.(\w+)", key)
    if m is None:
        return None
    stage, block, conv, norm, leaf = m.groups()
    layer = f"layer{int(stage) - 1}.{block}"
    if conv == "shortcut":
        return f"{layer}.downsample.{1 if norm else 0}.{leaf}"
    return f"{layer}.{'bn' + conv[-1] if norm else conv}.{leaf}"


def read_detectron2_resnet(path: str | Path, *, eps: float = 1e-5) -> dict[str, torch.Tensor]:
    """A detectron2/Caffe2 ImageNet ResNet ``.pkl`` as a torchvision-named state dict (classifier dropped).

    Folded Caffe2 BatchNorms get ``running_mean = 0`` and ``running_var = 1 - eps``, so that BatchNorm's
    ``weight * (x - mean) / sqrt(var + eps) + bias`` is exactly Caffe2's ``scale * x + bias``.

    Raises:
        ZeroSegError: a pickle with more than arrays and containers, or a key that is not a ResNet parameter.
    """
    p = Path(path)
    obj = read_array_pickle(p)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    raw = tensor_dict(obj, str(p))
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in raw.items():
        if re.fullmatch(r"fc1000_[wb]|linear\.(weight|bias)|fc\.(weight|bias)", key):
            continue  # the ImageNet classifier, not part of a segmentation trunk
        d2 = key if "." in key else c2_key(key)
        name = None if d2 is None else detectron2_resnet_key(d2)
        if name is None:
            unknown.append(key)
            continue
        out[name] = value
    if unknown:
        raise ZeroSegError(f"{p}: {len(unknown)} key(s) are not detectron2 ResNet parameters: {', '.join(unknown[:6])}")
    norms = [k for k in out if k.endswith(".weight") and (k.startswith("bn") or ".bn" in k or ".downsample.1" in k)]
    for name in norms:
        stem = name[: -len(".weight")]
        if f"{stem}.running_mean" not in out:
            out[f"{stem}.running_mean"] = torch.zeros_like(out[name])
            out[f"{stem}.running_var"] = torch.full_like(out[name], 1.0 - eps)
    return out
