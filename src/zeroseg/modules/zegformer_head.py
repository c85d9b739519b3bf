"""ZegFormer's zero-shot segment classification and mask prediction head, and semantic inference.

Follows ``dingjiansw101/ZegFormer`` ``mask_former/modeling/transformer/transformer_zeroshot_predictor.py``:
each decoder output is projected to the text-embedding space and L2-normalised; its logits are
``(1/T) * cos`` against frozen, L2-normalised class text embeddings (``T = 0.01``, not learned), plus the same
scaled dot product with a learnable, *un-normalised* no-object embedding appended as the last class.
A 3-layer MLP turns each query into a mask embedding whose dot product with the per-pixel mask features gives
the mask logits. Semantic inference follows ``mask_former/mask_former_model.py``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zeroseg.errors import ZeroSegError


class MLP(nn.Module):
    """Linear layers with ReLU in between (none after the last).

    Args:
        input_dim: input width.
        hidden_dim: width of the hidden layers.
        output_dim: output width.
        num_layers: number of Linear layers.
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (..., input_dim) -> (..., output_dim)``."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class ZeroShotSegmentHead(nn.Module):
    """Segment embeddings, class logits against text embeddings (+ no-object) and mask logits.

    Args:
        hidden_dim: query width (official 256).
        text_dim: text embedding width (512 for CLIP ViT-B/16; any provider's width works).
        mask_dim: width of the pixel decoder's mask features (official 256).
        temperature: ``T`` in ``logits = cos / T`` (official 0.01); fixed, not learned.
    """

    logit_scale: torch.Tensor

    def __init__(self, *, hidden_dim: int = 256, text_dim: int, mask_dim: int = 256, temperature: float = 0.01):
        super().__init__()
        if temperature <= 0:
            raise ZeroSegError(f"ZeroShotSegmentHead: temperature={temperature} must be positive")
        if text_dim < 1:
            raise ZeroSegError(f"ZeroShotSegmentHead: text_dim={text_dim} must be positive")
        self.text_dim = text_dim
        self.temperature = temperature
        self.projection = nn.Linear(hidden_dim, text_dim)
        # Official: nn.Parameter(torch.Tensor(1, D)) with kaiming_uniform_(a=sqrt(5)), i.e. U(+-1/sqrt(D)).
        self.bg_embedding = nn.Parameter(torch.empty(1, text_dim))
        nn.init.kaiming_uniform_(self.bg_embedding, a=math.sqrt(5))
        # Official: logit_scale = log(1/T) with requires_grad=False, used as exp(logit_scale).
        self.register_buffer("logit_scale", torch.tensor(math.log(1.0 / temperature)))
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def segment_embeddings(self, queries: torch.Tensor) -> torch.Tensor:
        """``queries: (..., hidden_dim)`` -> L2-normalised segment embeddings ``(..., text_dim)``."""
        x = self.projection(queries)
        return x / x.norm(dim=-1, keepdim=True)

    def class_logits(self, queries: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """Class logits of queries against a vocabulary.

        Args:
            queries: ``(..., Q, hidden_dim)``.
            text_embeddings: ``(C, text_dim)`` class embeddings (L2-normalised here; kept frozen).

        Returns:
            ``(..., Q, C + 1)``: ``cos / T`` for the C classes, then the no-object logit.
        """
        if text_embeddings.dim() != 2 or text_embeddings.shape[1] != self.text_dim:
            raise ZeroSegError(
                f"ZeroShotSegmentHead: text embeddings of shape {tuple(text_embeddings.shape)}, "
                f"expected (C, {self.text_dim})"
            )
        text = text_embeddings.detach().to(queries.dtype)
        text = text / text.norm(dim=-1, keepdim=True)
        seg = self.segment_embeddings(queries)
        scale = self.logit_scale.exp()
        cls = scale * seg @ text.T
        bg = scale * seg @ self.bg_embedding.to(seg.dtype).T
        return torch.cat((cls, bg), dim=-1)

    def forward(
        self, queries: torch.Tensor, mask_features: torch.Tensor, text_embeddings: torch.Tensor
    ) -> dict[str, Any]:
        """Predict classes and masks for every decoder layer.

        Args:
            queries: ``(L, B, Q, hidden_dim)`` decoder outputs (``(B, Q, hidden_dim)`` is taken as L = 1).
            mask_features: ``(B, mask_dim, H, W)`` per-pixel features from the pixel decoder.
            text_embeddings: ``(C, text_dim)``.

        Returns:
            ``{"pred_logits": (B, Q, C+1), "pred_masks": (B, Q, H, W), "aux_outputs": [...]}`` where
            ``aux_outputs`` holds the same two keys for layers ``0 .. L-2``.
        """
        if queries.dim() == 3:
            queries = queries[None]
        logits = self.class_logits(queries, text_embeddings)
        masks = torch.einsum("lbqc,bchw->lbqhw", self.mask_embed(queries), mask_features)
        return {
            "pred_logits": logits[-1],
            "pred_masks": masks[-1],
            "aux_outputs": [{"pred_logits": c, "pred_masks": m} for c, m in zip(logits[:-1], masks[:-1], strict=True)],
        }


def semantic_inference(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """Per-class scores: ``sum_q softmax(class_logits)[q, c] * sigmoid(mask_logits)[q]``, no-object dropped.

    Args:
        class_logits: ``(B, Q, C+1)``, last column no-object.
        mask_logits: ``(B, Q, H, W)``.

    Returns:
        ``(B, C, H, W)`` scores (argmax over C gives the semantic map).
    """
    if class_logits.shape[:2] != mask_logits.shape[:2]:
        raise ZeroSegError(
            f"semantic_inference: class logits {tuple(class_logits.shape)} and mask logits "
            f"{tuple(mask_logits.shape)} disagree on (B, Q)"
        )
    probs = class_logits.softmax(-1)[..., :-1]
    return torch.einsum("bqc,bqhw->bchw", probs, mask_logits.sigmoid())
