"""The ZegFormer network: ResNet trunk -> FPN pixel decoder + query decoder -> zero-shot segment head.

Assembles the blocks of ``dingjiansw101/ZegFormer`` (see ``docs/zegformer_official.md``): a torchvision ResNet
returns ``res2 .. res5``; the FPN pixel decoder turns them into per-pixel mask features at stride 4; the
transformer decoder attends from learned queries to ``res5``; each query becomes a segment embedding that is
classified by cosine similarity against *any* list of class text embeddings (plus a learned no-object
embedding) and a mask embedding whose dot product with the mask features gives its mask.

The text embeddings are a forward argument, so the same weights segment the seen classes in training and any
vocabulary at test time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.ops.misc import FrozenBatchNorm2d

from zeroseg.errors import ZeroSegError
from zeroseg.modules.backbones import load_backbone_weights
from zeroseg.modules.pixel_decoder import FPNPixelDecoder, ResNetFeatures
from zeroseg.modules.transformer_decoder import QueryTransformerDecoder
from zeroseg.modules.zegformer_head import ZeroShotSegmentHead

TRUNKS = {"resnet18": resnet.resnet18, "resnet50": resnet.resnet50, "resnet101": resnet.resnet101}
#: Images are padded to a multiple of this before the network (the official ``SIZE_DIVISIBILITY: 32``).
SIZE_DIVISIBILITY = 32


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` by a ``FrozenBatchNorm2d`` holding its current statistics and affine.

    detectron2's ResNet (which the official code trains) uses frozen BatchNorm by default (``RESNETS.NORM:
    FrozenBN``): with ImageNet weights the statistics stay those of ImageNet.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


def build_trunk(name: str, *, norm: str = "frozen", pretrained: str | Path | None = None) -> ResNetFeatures:
    """A torchvision ResNet trunk returning ``res2 .. res5``.

    Args:
        name: ``resnet18``, ``resnet50`` or ``resnet101``.
        norm: ``"frozen"`` (official: FrozenBatchNorm, meant for ImageNet weights) or ``"bn"`` (trainable
            BatchNorm, for training from scratch).
        pretrained: local torchvision ImageNet state dict (``.pth``/``.safetensors``); never downloaded.
    """
    if name not in TRUNKS:
        raise ZeroSegError(f"ZegFormer backbone {name!r}: unknown (choose from {', '.join(TRUNKS)})")
    if norm not in ("frozen", "bn"):
        raise ZeroSegError(f"ZegFormer backbone_norm {norm!r}: choose 'frozen' or 'bn'")
    trunk = ResNetFeatures(TRUNKS[name](weights=None))
    if pretrained is not None:
        load_backbone_weights(trunk, pretrained)
    if norm == "frozen":
        freeze_batchnorm(trunk)
    return trunk


class ZegFormer(nn.Module):
    """ZegFormer's segment branch.

    Args:
        text_dim: width of the class text embeddings (512 for CLIP ViT-B/16, 50 for GloVe 6B-50d, ...).
        backbone / backbone_norm / pretrained: see :func:`build_trunk`.
        hidden_dim, mask_dim, num_queries, dec_layers, nheads, dim_feedforward, dropout: decoder sizes
            (official 256, 256, 100, 6, 8, 2048, 0.1).
        temperature: ``T`` of the cosine logits (official 0.01).
    """

    def __init__(
        self,
        *,
        text_dim: int,
        backbone: str = "resnet101",
        backbone_norm: str = "frozen",
        pretrained: str | Path | None = None,
        hidden_dim: int = 256,
        mask_dim: int = 256,
        num_queries: int = 100,
        dec_layers: int = 6,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        temperature: float = 0.01,
    ) -> None:
        super().__init__()
        self.backbone = build_trunk(backbone, norm=backbone_norm, pretrained=pretrained)
        channels = self.backbone.channels
        self.pixel_decoder = FPNPixelDecoder(in_channels=channels, conv_dim=hidden_dim, mask_dim=mask_dim)
        self.decoder = QueryTransformerDecoder(
            in_channels=channels["res5"],
            hidden_dim=hidden_dim,
            num_queries=num_queries,
            num_layers=dec_layers,
            num_heads=nheads,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
        )
        self.head = ZeroShotSegmentHead(
            hidden_dim=hidden_dim, text_dim=text_dim, mask_dim=mask_dim, temperature=temperature
        )

    def forward(self, images: torch.Tensor, text_embeddings: torch.Tensor) -> dict[str, Any]:
        """Class logits and mask logits of every query.

        Args:
            images: ``(B, 3, H, W)`` ImageNet-normalised, H and W multiples of 32 (see :func:`pad_to_multiple`).
            text_embeddings: ``(C, text_dim)`` class embeddings of the vocabulary to classify against.

        Returns:
            ``{"pred_logits": (B, Q, C+1), "pred_masks": (B, Q, H/4, W/4), "aux_outputs": [...]}`` (the last
            class is no-object; ``aux_outputs`` holds the same for decoder layers ``0 .. L-2``).
        """
        features = self.backbone(images)
        mask_features = self.pixel_decoder(features)
        queries = self.decoder(features["res5"])
        return self.head(queries, mask_features, text_embeddings)

    def parameter_groups(self, lr: float, weight_decay: float, backbone_lr_mult: float) -> list[dict[str, Any]]:
        """AdamW parameter groups as the official ``build_optimizer`` makes them.

        Backbone parameters get ``lr * backbone_lr_mult``; parameters of normalisation layers (GroupNorm,
        LayerNorm, BatchNorm) and of ``nn.Embedding`` (the learned queries) get no weight decay
        (detectron2's ``WEIGHT_DECAY_NORM = WEIGHT_DECAY_EMBED = 0``); everything else ``weight_decay``.
        """
        norm_types = (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)
        groups: dict[tuple[float, float], list[nn.Parameter]] = {}
        seen: set[int] = set()
        for module_name, module in self.named_modules():
            for param in module.parameters(recurse=False):
                if not param.requires_grad or id(param) in seen:
                    continue
                seen.add(id(param))
                group_lr = lr * backbone_lr_mult if module_name.startswith("backbone") else lr
                decay = 0.0 if isinstance(module, norm_types + (nn.Embedding,)) else weight_decay
                groups.setdefault((group_lr, decay), []).append(param)
        return [{"params": ps, "lr": g_lr, "weight_decay": wd} for (g_lr, wd), ps in groups.items()]


def pad_to_multiple(images: torch.Tensor, multiple: int = SIZE_DIVISIBILITY) -> torch.Tensor:
    """Zero-pad ``(B, C, H, W)`` at the bottom/right to multiples of ``multiple`` (detectron2's ``ImageList``).

    Sides are padded to at least ``2 * multiple`` so that ``res5`` has at least 2 x 2 positions (GroupNorm
    cannot normalise a single value, e.g. one 32 px image).
    """
    h, w = images.shape[-2:]
    ph = max((-h) % multiple, 2 * multiple - h)
    pw = max((-w) % multiple, 2 * multiple - w)
    if ph == 0 and pw == 0:
        return images
    return nn.functional.pad(images, (0, pw, 0, ph))
