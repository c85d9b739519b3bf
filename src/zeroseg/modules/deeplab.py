"""DeepLabV3+ as used by ZS3Net (valeoai/ZS3 ``zs3/modeling/{deeplab,aspp,decoder}.py``).

The network is split where ZS3Net needs it: :meth:`DeepLabV3Plus.extract_features` returns the 256-d
decoder features at 1/4 resolution (the space in which the GMMN generates fake features) and
:meth:`DeepLabV3Plus.classify` is the final 1x1 conv that ZS3Net retrains on real + generated features.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zeroseg.errors import ZeroSegError
from zeroseg.modules.backbones import build_backbone


def _conv_bn_relu(cin: int, cout: int, kernel: int, dilation: int = 1) -> nn.Sequential:
    pad = 0 if kernel == 1 else dilation
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1 + three dilated 3x3 + image pooling, then a 1x1 projection.

    Args:
        in_channels: channels of the backbone's high-level map.
        channels: output channels of every branch and of the projection (256 officially).
        output_stride: 16 -> rates (6, 12, 18); 8 -> rates (12, 24, 36).
        dropout: dropout after the projection (0.5 officially).
    """

    def __init__(self, *, in_channels: int, channels: int = 256, output_stride: int = 16, dropout: float = 0.5):
        super().__init__()
        rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        self.branches = nn.ModuleList(
            [_conv_bn_relu(in_channels, channels, 1)] + [_conv_bn_relu(in_channels, channels, 3, r) for r in rates]
        )
        # The official image-pooling branch has BN (global_avg_pool_bn=True in every training script).
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), _conv_bn_relu(in_channels, channels, 1))
        self.project = nn.Sequential(_conv_bn_relu(5 * channels, channels, 1), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply ASPP.

        Args:
            x: high-level features ``(B, in_channels, h, w)``.

        Returns:
            ``(B, channels, h, w)``.
        """
        outs = [branch(x) for branch in self.branches]
        pooled = F.interpolate(self.image_pool(x), size=x.shape[-2:], mode="bilinear", align_corners=True)
        return self.project(torch.cat([*outs, pooled], dim=1))


class Decoder(nn.Module):
    """DeepLabV3+ decoder up to (not including) the classifier.

    Low-level features are projected to 48 channels (1x1 conv, BN, ReLU), concatenated with the
    upsampled ASPP output, then refined by two 3x3 conv/BN/ReLU layers followed by dropout 0.5 and
    0.1 respectively (official ``last_conv``).

    Args:
        low_channels: channels of the backbone's low-level map.
        aspp_channels: channels of the ASPP output.
        feature_dim: output channels (256 officially).
    """

    def __init__(self, *, low_channels: int, aspp_channels: int = 256, feature_dim: int = 256):
        super().__init__()
        self.low_proj = _conv_bn_relu(low_channels, 48, 1)
        self.refine = nn.Sequential(
            _conv_bn_relu(48 + aspp_channels, feature_dim, 3),
            nn.Dropout(0.5),
            _conv_bn_relu(feature_dim, feature_dim, 3),
            nn.Dropout(0.1),
        )

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        """Fuse ASPP output with low-level features.

        Args:
            high: ASPP output ``(B, aspp_channels, h, w)``.
            low: low-level features ``(B, low_channels, H/4, W/4)``.

        Returns:
            features ``(B, feature_dim, H/4, W/4)`` (non-negative up to dropout scaling: post-ReLU).
        """
        low = self.low_proj(low)
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=True)
        return self.refine(torch.cat([high, low], dim=1))


def _init_head(module: nn.Module) -> None:
    # Official aspp.py/decoder.py: kaiming_normal_ convs, BN weight 1 / bias 0.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ segmentation network with a separable feature extractor and 1x1 classifier.

    Args:
        num_classes: number of output classes ``C``.
        backbone: ``"tiny"``, ``"resnet18"``, ``"resnet50"`` or ``"resnet101"`` (official: ResNet-101).
        output_stride: 16 or 8 (ASPP rates double at 8).
        pretrained_backbone: optional local weights file for the backbone (see ``build_backbone``).
        feature_dim: decoder feature channels (256 officially; the GMMN's output size).
        aspp_channels: ASPP branch/projection channels (256 officially).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        backbone: str = "resnet101",
        output_stride: int = 16,
        pretrained_backbone: str | Path | None = None,
        feature_dim: int = 256,
        aspp_channels: int = 256,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ZeroSegError(f"num_classes {num_classes}: must be at least 1")
        self.backbone = build_backbone(backbone, output_stride=output_stride, pretrained=pretrained_backbone)
        self.aspp = ASPP(in_channels=self.backbone.high_channels, channels=aspp_channels, output_stride=output_stride)
        self.decoder = Decoder(
            low_channels=self.backbone.low_channels, aspp_channels=aspp_channels, feature_dim=feature_dim
        )
        _init_head(self.aspp)
        _init_head(self.decoder)
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.classifier = nn.Conv2d(feature_dim, num_classes, kernel_size=1)
        _init_head(self.classifier)

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        """Compute the decoder features on which the classifier (and ZS3Net's GMMN) operate.

        Args:
            x: images ``(B, 3, H, W)``.

        Returns:
            features ``(B, feature_dim, H/4, W/4)``.
        """
        low, high = self.backbone(x)
        return self.decoder(self.aspp(high), low)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Apply the final 1x1 conv.

        Args:
            features: ``(B, feature_dim, h, w)``; real or generated features.

        Returns:
            logits ``(B, C, h, w)`` at the features' resolution.
        """
        return self.classifier(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment images.

        Args:
            x: images ``(B, 3, H, W)``.

        Returns:
            logits ``(B, C, H, W)``, bilinearly upsampled (align_corners=True, as official).
        """
        logits = self.classify(self.extract_features(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=True)

    def parameter_groups(self, lr: float, head_lr_mult: float = 10.0) -> list[dict[str, Any]]:
        """SGD parameter groups: backbone at ``lr``, ASPP + decoder + classifier at ``lr * head_lr_mult``.

        Mirrors the official ``get_1x_lr_params`` / ``get_10x_lr_params`` split. Frozen parameters
        (``requires_grad=False``) are left out. Each group carries a ``"name"`` key.

        Args:
            lr: base learning rate (official 0.007).
            head_lr_mult: multiplier for the head (official 10).

        Returns:
            ``[{"name": "backbone", "params": [...], "lr": lr},
            {"name": "head", "params": [...], "lr": lr * head_lr_mult}]``.
        """
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        head = [
            p for module in (self.aspp, self.decoder, self.classifier) for p in module.parameters() if p.requires_grad
        ]
        return [
            {"name": "backbone", "params": backbone, "lr": lr},
            {"name": "head", "params": head, "lr": lr * head_lr_mult},
        ]

    def reset_classifier(self, num_classes: int | None = None, *, init: str = "official") -> None:
        """Replace the final 1x1 conv with a freshly initialised one (ZS3Net's ``random_last_layer``).

        Args:
            num_classes: new number of classes; ``None`` keeps the current one.
            init: ``"official"``: weight and bias drawn from U[0, 1) (``torch.rand``, as the official
                GMMN/GCN retraining scripts do); ``"kaiming"``: kaiming-normal weight and PyTorch's default
                bias (the initialisation used at construction).
        """
        if num_classes is None:
            num_classes = self.num_classes
        if num_classes < 1:
            raise ZeroSegError(f"num_classes {num_classes}: must be at least 1")
        if init not in ("official", "kaiming"):
            raise ZeroSegError(f"classifier init {init!r}: unknown (choose 'official' or 'kaiming')")
        old = self.classifier.weight
        conv = nn.Conv2d(self.feature_dim, num_classes, kernel_size=1).to(device=old.device, dtype=old.dtype)
        with torch.no_grad():
            if init == "official":
                conv.weight.uniform_(0.0, 1.0)
                conv.bias.uniform_(0.0, 1.0)
            else:
                nn.init.kaiming_normal_(conv.weight)
        self.classifier = conv
        self.num_classes = num_classes
