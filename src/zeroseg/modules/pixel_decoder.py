"""FPN pixel decoder of MaskFormer / ZegFormer (``BasePixelDecoder``) and a torchvision ResNet wrapper.

Follows ``dingjiansw101/ZegFormer`` ``mask_former/modeling/heads/pixel_decoder.py`` with the ZegFormer config
(``CONVS_DIM 256``, ``MASK_DIM 256``, ``NORM "GN"`` = GroupNorm with 32 groups): a top-down FPN over
res5 -> res2 with nearest upsampling, ending in a 3x3 conv that gives the per-pixel mask features at 1/4
of the input resolution.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet

from zeroseg.errors import ZeroSegError

FEATURE_NAMES: tuple[str, ...] = ("res2", "res3", "res4", "res5")


def _c2_xavier_fill(conv: nn.Conv2d) -> None:
    # detectron2's c2_xavier_fill, used by the official code for every conv of the pixel decoder.
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class ConvNormAct(nn.Module):
    """Conv2d (bias only without norm) -> optional GroupNorm -> optional ReLU, like detectron2's ``Conv2d``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: 1 or 3 (padding keeps the size).
        norm_groups: GroupNorm groups, or 0 for no norm (then the conv has a bias).
        relu: apply ReLU at the end.
    """

    def __init__(self, in_channels: int, out_channels: int, *, kernel_size: int, norm_groups: int, relu: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=norm_groups == 0)
        _c2_xavier_fill(self.conv)
        self.norm = nn.GroupNorm(norm_groups, out_channels) if norm_groups else nn.Identity()
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (B, in_channels, H, W) -> (B, out_channels, H, W)``."""
        y = self.norm(self.conv(x))
        return F.relu(y) if self.relu else y


class FPNPixelDecoder(nn.Module):
    """Top-down FPN producing mask features at stride 4.

    Args:
        in_channels: channels of each input feature, keyed by ``res2`` .. ``res5`` (stride 4 .. 32).
        conv_dim: FPN channels (official 256).
        mask_dim: channels of the mask features (official 256).
        norm_groups: GroupNorm groups (official 32); 0 disables normalisation.
    """

    def __init__(
        self,
        *,
        in_channels: Mapping[str, int],
        conv_dim: int = 256,
        mask_dim: int = 256,
        norm_groups: int = 32,
    ) -> None:
        super().__init__()
        missing = [name for name in FEATURE_NAMES if name not in in_channels]
        if missing:
            raise ZeroSegError(f"FPNPixelDecoder: in_channels lacks {missing} (needs {list(FEATURE_NAMES)})")
        if norm_groups and conv_dim % norm_groups:
            raise ZeroSegError(f"FPNPixelDecoder: conv_dim={conv_dim} not divisible by norm_groups={norm_groups}")
        self.conv_dim = conv_dim
        self.mask_dim = mask_dim
        # res5 has no lateral conv: its 3x3 output conv reads the backbone feature directly.
        self.layer_res5 = ConvNormAct(in_channels["res5"], conv_dim, kernel_size=3, norm_groups=norm_groups, relu=True)
        self.lateral = nn.ModuleDict()
        self.output = nn.ModuleDict()
        for name in ("res4", "res3", "res2"):
            self.lateral[name] = ConvNormAct(
                in_channels[name], conv_dim, kernel_size=1, norm_groups=norm_groups, relu=False
            )
            self.output[name] = ConvNormAct(conv_dim, conv_dim, kernel_size=3, norm_groups=norm_groups, relu=True)
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 3, padding=1)
        _c2_xavier_fill(self.mask_features)

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Decode.

        Args:
            features: ``res2: (B, C2, H/4, W/4)`` .. ``res5: (B, C5, H/32, W/32)``.

        Returns:
            Mask features ``(B, mask_dim, H/4, W/4)``.
        """
        y = self.layer_res5(features["res5"])
        for name in ("res4", "res3", "res2"):
            lateral = self.lateral[name](features[name])
            # Nearest upsampling, following the FPN implementation (as the official code says).
            y = self.output[name](lateral + F.interpolate(y, size=lateral.shape[-2:], mode="nearest"))
        return self.mask_features(y)


class ResNetFeatures(nn.Module):
    """A torchvision ResNet trunk returning the ``res2`` .. ``res5`` feature dict (strides 4, 8, 16, 32).

    Parameter names are torchvision's, so an ImageNet state dict (minus ``fc.*``) loads directly.

    Args:
        net: a torchvision ``ResNet`` (its ``avgpool``/``fc`` are not used).
    """

    def __init__(self, net: resnet.ResNet) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = 4 if isinstance(net.layer1[0], resnet.Bottleneck) else 1
        self.channels: dict[str, int] = {
            name: width * expansion for name, width in zip(FEATURE_NAMES, (64, 128, 256, 512), strict=True)
        }

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x: (B, 3, H, W)`` -> ``{"res2": (B, C2, H/4, W/4), ..., "res5": (B, C5, H/32, W/32)}``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        res2 = self.layer1(x)
        res3 = self.layer2(res2)
        res4 = self.layer3(res3)
        res5 = self.layer4(res4)
        return {"res2": res2, "res3": res3, "res4": res4, "res5": res5}
