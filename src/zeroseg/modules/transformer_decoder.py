"""DETR-style transformer decoder of MaskFormer / ZegFormer over the res5 feature.

Follows ``dingjiansw101/ZegFormer`` ``mask_former/modeling/transformer/transformer.py`` and
``transformer_zeroshot_predictor.py`` with the ZegFormer config: no encoder layers, 6 post-norm decoder
layers, 8 heads, FFN 2048, dropout 0.1, 100 learned queries, sine positional encoding (normalised, scale
2*pi) added to the memory keys, zero-initialised targets, a shared final LayerNorm applied to every layer's
output (these stacked outputs feed the deep supervision).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from zeroseg.errors import ZeroSegError


def sine_position_encoding(
    batch: int,
    height: int,
    width: int,
    num_pos_feats: int,
    *,
    temperature: float = 10000.0,
    device: torch.device | None = None,
) -> torch.Tensor:
    """DETR/MaskFormer ``PositionEmbeddingSine(num_pos_feats, normalize=True)`` without a padding mask.

    Args:
        batch: ``B``.
        height: ``h``.
        width: ``w``.
        num_pos_feats: features per axis (``hidden_dim // 2``).
        temperature: frequency base.
        device: output device.

    Returns:
        ``(B, 2 * num_pos_feats, h, w)``: y-encoding channels first, then x; within each, sin at even
        and cos at odd frequency indices.
    """
    eps = 1e-6
    scale = 2 * math.pi
    y_embed = torch.arange(1, height + 1, dtype=torch.float32, device=device)[:, None].expand(height, width)
    x_embed = torch.arange(1, width + 1, dtype=torch.float32, device=device)[None, :].expand(height, width)
    y_embed = y_embed / (height + eps) * scale
    x_embed = x_embed / (width + eps) * scale
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="trunc") / num_pos_feats)
    pos_x = x_embed[..., None] / dim_t
    pos_y = y_embed[..., None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=-1).flatten(2)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=-1).flatten(2)
    pos = torch.cat((pos_y, pos_x), dim=-1).permute(2, 0, 1)
    return pos[None].expand(batch, -1, -1, -1)


class DecoderLayer(nn.Module):
    """Self-attention, cross-attention to the image, FFN; post-norm (official) or pre-norm.

    Args:
        d_model: hidden size.
        nhead: attention heads.
        dim_feedforward: FFN width.
        dropout: dropout rate.
        pre_norm: LayerNorm before each block instead of after (official ZegFormer: False).
    """

    def __init__(self, *, d_model: int, nhead: int, dim_feedforward: int, dropout: float, pre_norm: bool):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(x))))

    def forward(
        self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor, query_pos: torch.Tensor
    ) -> torch.Tensor:
        """One layer.

        Args:
            tgt: ``(B, Q, D)`` query features.
            memory: ``(B, HW, D)`` image tokens.
            pos: ``(B, HW, D)`` positional encoding of the image tokens (added to keys only).
            query_pos: ``(B, Q, D)`` learned query embeddings (added to queries and self-attention keys).

        Returns:
            ``(B, Q, D)``.
        """
        key_mem = memory + pos
        if self.pre_norm:
            t = self.norm1(tgt)
            q = t + query_pos
            tgt = tgt + self.dropout1(self.self_attn(q, q, t, need_weights=False)[0])
            t = self.norm2(tgt)
            tgt = tgt + self.dropout2(self.cross_attn(t + query_pos, key_mem, memory, need_weights=False)[0])
            return tgt + self.dropout3(self._ffn(self.norm3(tgt)))
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, q, tgt, need_weights=False)[0]))
        attn = self.cross_attn(tgt + query_pos, key_mem, memory, need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(attn))
        return self.norm3(tgt + self.dropout3(self._ffn(tgt)))


class QueryTransformerDecoder(nn.Module):
    """Learned queries attending to a (projected) backbone feature map, returning every layer's output.

    Args:
        in_channels: channels of the input feature (res5: 2048 for ResNet-50/101).
        hidden_dim: model width (official 256).
        num_queries: learned queries (official 100).
        num_layers: decoder layers (official 6).
        num_heads: attention heads (official 8).
        dim_feedforward: FFN width (official 2048).
        dropout: dropout (official 0.1).
        pre_norm: pre-LayerNorm layers (official False).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        hidden_dim: int = 256,
        num_queries: int = 100,
        num_layers: int = 6,
        num_heads: int = 8,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        pre_norm: bool = False,
    ) -> None:
        super().__init__()
        if hidden_dim % num_heads or hidden_dim % 2:
            raise ZeroSegError(
                f"QueryTransformerDecoder: hidden_dim={hidden_dim} must be even and divisible by num_heads={num_heads}"
            )
        if num_layers < 1 or num_queries < 1:
            raise ZeroSegError(
                f"QueryTransformerDecoder: num_layers={num_layers} and num_queries={num_queries} must be >= 1"
            )
        self.hidden_dim = hidden_dim
        self.num_queries = num_queries
        self.layers = nn.ModuleList(
            DecoderLayer(
                d_model=hidden_dim,
                nhead=num_heads,
                dim_feedforward=dim_feedforward,
                dropout=dropout,
                pre_norm=pre_norm,
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_dim)
        # Official: xavier_uniform_ on every matrix of the transformer (before the query/proj are made).
        for p in self.layers.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        if in_channels != hidden_dim:
            self.input_proj: nn.Module = nn.Conv2d(in_channels, hidden_dim, 1)
            nn.init.kaiming_uniform_(self.input_proj.weight, a=1)
            nn.init.zeros_(self.input_proj.bias)
        else:
            self.input_proj = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Decode queries.

        Args:
            x: ``(B, in_channels, h, w)`` feature map (res5).

        Returns:
            ``(L, B, Q, hidden_dim)``: the output of every layer after the shared final LayerNorm;
            ``[-1]`` is the final output, ``[:-1]`` feed the auxiliary losses.
        """
        b, _, h, w = x.shape
        pos = sine_position_encoding(b, h, w, self.hidden_dim // 2, device=x.device).to(x.dtype)
        memory = self.input_proj(x).flatten(2).transpose(1, 2)
        pos = pos.flatten(2).transpose(1, 2)
        query_pos = self.query_embed.weight[None].expand(b, -1, -1)
        tgt = torch.zeros_like(query_pos)
        outputs = []
        for layer in self.layers:
            tgt = layer(tgt, memory, pos, query_pos)
            outputs.append(self.norm(tgt))
        return torch.stack(outputs)
