"""Feature backbones for DeepLabV3+: torchvision ResNets (dilated) and a tiny CNN for tests/benchmarks.

Every backbone maps an image batch ``x: (B, 3, H, W)`` to ``(low_level, high_level)`` where
``low_level: (B, low_channels, H/4, W/4)`` feeds the DeepLabV3+ decoder and
``high_level: (B, high_channels, H/output_stride, W/output_stride)`` feeds ASPP.

The ResNets follow the official ZS3Net backbone (valeoai/ZS3, ``zs3/modeling/backbone/resnet.py``):
the stride of the last stage(s) is replaced by dilation, and the Bottleneck ResNets use the
"multi-grid" unit (1, 2, 4) in ``layer4``. Parameter names are exactly torchvision's, so an ImageNet
state dict saved from torchvision loads as is (its ``fc.*`` classifier entries are dropped).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet

from zeroseg.errors import ZeroSegError

BACKBONE_NAMES: tuple[str, ...] = ("tiny", "resnet18", "resnet50", "resnet101", "efficientnet_lite0")

# Official ZS3 (resnet.py, ``blocks = [1, 2, 4]``): dilation multipliers of the three layer4 blocks.
_MULTI_GRID: tuple[int, ...] = (1, 2, 4)


class Backbone(nn.Module):
    """Base class: ``forward(x) -> (low_level, high_level)`` plus channel/stride attributes.

    Attributes:
        low_channels: channels of the stride-4 feature map.
        high_channels: channels of the stride-``output_stride`` feature map.
        output_stride: total stride of ``high_level`` (8 or 16).
    """

    low_channels: int
    high_channels: int
    output_stride: int


class ResNetBackbone(Backbone):
    """A torchvision ResNet trunk (no avgpool/fc) with dilated last stage(s).

    Args:
        net: a torchvision ``ResNet`` built with ``weights=None``.
        output_stride: 16 (layer4 dilated) or 8 (layer3 and layer4 dilated).
    """

    def __init__(self, net: resnet.ResNet, *, output_stride: int) -> None:
        super().__init__()
        # Same attribute names as torchvision so state-dict keys match ("layer1.0.conv1.weight", ...).
        self.conv1 = net.conv1
        self.bn1 = net.bn1
        self.relu = net.relu
        self.maxpool = net.maxpool
        self.layer1 = net.layer1
        self.layer2 = net.layer2
        self.layer3 = net.layer3
        self.layer4 = net.layer4
        bottleneck = isinstance(self.layer1[0], resnet.Bottleneck)
        grid = _MULTI_GRID if bottleneck else (1,) * len(self.layer4)
        if output_stride == 16:
            _dilate_stage(self.layer4, [2 * g for g in grid])
        else:
            _dilate_stage(self.layer3, [2] * len(self.layer3))
            _dilate_stage(self.layer4, [4 * g for g in grid])
        self.low_channels = 256 if bottleneck else 64
        self.high_channels = 2048 if bottleneck else 512
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the trunk.

        Args:
            x: images ``(B, 3, H, W)``.

        Returns:
            ``low_level (B, low_channels, H/4, W/4)`` (output of layer1, as in the official code) and
            ``high_level (B, high_channels, H/os, W/os)``.
        """
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        x = self.layer4(self.layer3(self.layer2(low)))
        return low, x


def _dilate_stage(stage: nn.Sequential, dilations: Sequence[int]) -> None:
    """Turn a strided ResNet stage into a stride-1 dilated one, in place.

    Every 3x3 conv of block ``i`` gets dilation/padding ``dilations[i]``; the strided conv and the
    1x1 downsample shortcut get stride 1. Weights keep their shapes, so pretrained weights still fit.
    """
    for block, d in zip(stage, dilations, strict=True):
        for module in block.modules():
            if isinstance(module, nn.Conv2d):
                if module.stride != (1, 1):
                    module.stride = (1, 1)
                if module.kernel_size == (3, 3):
                    module.dilation = (d, d)
                    module.padding = (d, d)


class TinyBackbone(Backbone):
    """A four-conv CNN (~12k parameters) with the same interface as the ResNets; for tests/CPU runs.

    Args:
        output_stride: 16, or 8 (the last conv then keeps stride 1 and is dilated by 2).
    """

    def __init__(self, *, output_stride: int = 16) -> None:
        super().__init__()

        def unit(cin: int, cout: int, stride: int, dilation: int = 1) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        self.stem = nn.Sequential(unit(3, 8, 2), unit(8, 16, 2))
        self.stage3 = unit(16, 24, 2)
        self.stage4 = unit(24, 32, 2) if output_stride == 16 else unit(24, 32, 1, dilation=2)
        self.low_channels = 16
        self.high_channels = 32
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the CNN.

        Args:
            x: images ``(B, 3, H, W)``.

        Returns:
            ``low_level (B, 16, H/4, W/4)`` and ``high_level (B, 32, H/os, W/os)``.
        """
        low = self.stem(x)
        return low, self.stage4(self.stage3(low))


def build_backbone(name: str, *, output_stride: int = 16, pretrained: str | Path | None = None) -> Backbone:
    """Build a backbone, optionally loading local pretrained weights (never downloads).

    Args:
        name: one of ``"tiny"``, ``"resnet18"``, ``"resnet50"``, ``"resnet101"``, ``"efficientnet_lite0"``.
        output_stride: 16 or 8.
        pretrained: path to a torchvision-format state dict (``.pth``/``.pt``/``.pth.tar`` read with
            ``torch.load(weights_only=True)``, or ``.safetensors``), or a detectron2/Caffe2 ImageNet ``.pkl``
            (``R-101.pkl``, read with a restricted array unpickler and renamed to torchvision's names); for
            ``efficientnet_lite0`` the released ``efficientnet-lite0-57934424.pth``. A ``{"state_dict": ...}`` wrapper
            and a ``module.`` key prefix (both used by the official ZS3 ImageNet checkpoint) are
            accepted; torchvision's ``fc.*`` classifier entries are ignored.

    Returns:
        The backbone; ``forward(x: (B,3,H,W)) -> (low (B,C_low,H/4,W/4), high (B,C_high,H/os,W/os))``.

    Raises:
        ZeroSegError: unknown name, bad output stride, or a missing/corrupt/mismatched weights file.
    """
    if output_stride not in (8, 16):
        raise ZeroSegError(f"output_stride {output_stride!r}: must be 8 or 16")
    if name == "tiny":
        model: Backbone = TinyBackbone(output_stride=output_stride)
    elif name in ("resnet18", "resnet50", "resnet101"):
        factory = {"resnet18": resnet.resnet18, "resnet50": resnet.resnet50, "resnet101": resnet.resnet101}
        model = ResNetBackbone(factory[name](weights=None), output_stride=output_stride)
    elif name == "efficientnet_lite0":
        from zeroseg.weights.efficientnet import EfficientNetLiteBackbone

        # Its own reader: the released file has the EfficientNet-PyTorch names, mapped key by key.
        return EfficientNetLiteBackbone(output_stride=output_stride, pretrained=pretrained)
    else:
        raise ZeroSegError(f"backbone {name!r}: unknown (choose from {', '.join(BACKBONE_NAMES)})")
    if pretrained is not None:
        load_backbone_weights(model, pretrained)
    return model


def _read_state_dict(path: Path) -> Mapping[str, object]:
    if not path.is_file():
        raise ZeroSegError(f"{path}: pretrained weights file not found")
    try:
        if path.suffix == ".pkl":
            from zeroseg.weights.detectron2 import read_detectron2_resnet

            return read_detectron2_resnet(path)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path), device="cpu")
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except ZeroSegError:
        raise
    except Exception as exc:  # any reader failure means an unreadable file for the user
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ZeroSegError(f"{path}: cannot read weights ({reason})") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ZeroSegError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    return obj


def load_backbone_weights(model: nn.Module, path: str | Path) -> None:
    """Load a state dict file into ``model`` strictly (all keys, all shapes), in place.

    Args:
        model: the backbone.
        path: weights file (see :func:`build_backbone`).

    Raises:
        ZeroSegError: the file is missing, unreadable, or its keys/shapes do not match the model.
    """
    path = Path(path)
    raw = _read_state_dict(path)
    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ZeroSegError(f"{path}: entry {key!r} is not a tensor")
        key = key.removeprefix("module.")
        if key.startswith("fc."):
            continue
        state[key] = value
    expected = model.state_dict()
    # Old torchvision checkpoints lack BN counters; BatchNorm fills them in itself.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise ZeroSegError(f"{path}: keys do not match the backbone: {'; '.join(parts)}")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise ZeroSegError(
                f"{path}: {key} has shape {tuple(value.shape)}, backbone expects {tuple(expected[key].shape)}"
            )
    model.load_state_dict(state, strict=False)
