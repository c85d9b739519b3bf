"""Hungarian matching between predicted segments and ground-truth masks (MaskFormer / ZegFormer).

Follows ``facebookresearch/MaskFormer`` ``mask_former/modeling/matcher.py``, which ZegFormer uses unchanged:
the cost of assigning query ``q`` to target ``t`` is
``cost_class * (-p_q[label_t]) + cost_mask * focal(q, t) + cost_dice * dice(q, t)``, where ``p_q`` is the
softmax over all ``K + 1`` classes (no-object included) and the mask costs are computed after the target
masks are nearest-downsampled to the prediction resolution.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from zeroseg.errors import ZeroSegError


def batch_dice_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise dice loss between every prediction and every target.

    Args:
        inputs: mask logits ``(N, P)`` (P pixels or points).
        targets: binary masks ``(M, P)`` as floats.

    Returns:
        ``(N, M)`` with ``1 - (2 <sigmoid(x), t> + 1) / (sum sigmoid(x) + sum t + 1)``.
    """
    prob = inputs.sigmoid()
    numerator = 2 * prob @ targets.T
    denominator = prob.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def batch_sigmoid_focal_cost(
    inputs: torch.Tensor, targets: torch.Tensor, *, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Pairwise sigmoid focal loss, averaged over pixels.

    Args:
        inputs: mask logits ``(N, P)``.
        targets: binary masks ``(M, P)`` as floats.
        alpha: positive-class weight (negative pixels get ``1 - alpha``); < 0 disables weighting.
        gamma: focusing exponent.

    Returns:
        ``(N, M)``: the mean over the ``P`` pixels of the focal loss of prediction n against target m.
    """
    num_pixels = inputs.shape[1]
    prob = inputs.sigmoid()
    # The focal loss is linear in the target, so the (N, M) matrix is two matrix products.
    focal_pos = (1 - prob) ** gamma * F.binary_cross_entropy_with_logits(
        inputs, torch.ones_like(inputs), reduction="none"
    )
    focal_neg = prob**gamma * F.binary_cross_entropy_with_logits(inputs, torch.zeros_like(inputs), reduction="none")
    if alpha >= 0:
        focal_pos = focal_pos * alpha
        focal_neg = focal_neg * (1 - alpha)
    return (focal_pos @ targets.T + focal_neg @ (1 - targets).T) / num_pixels


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to ground-truth segments, solved per image with scipy.

    Args:
        cost_class: weight of the class cost ``-p[label]`` (official: 1).
        cost_mask: weight of the focal mask cost (official: ``MASK_WEIGHT`` = 20).
        cost_dice: weight of the dice mask cost (official: ``DICE_WEIGHT`` = 1).
        num_points: if given, compare masks on this many uniformly random points (shared by all queries
            and targets of an image) instead of all pixels; ``None`` (default) is the official behaviour.
    """

    def __init__(
        self,
        *,
        cost_class: float = 1.0,
        cost_mask: float = 20.0,
        cost_dice: float = 1.0,
        num_points: int | None = None,
    ) -> None:
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ZeroSegError("HungarianMatcher: cost_class, cost_mask and cost_dice cannot all be 0")
        if num_points is not None and num_points <= 0:
            raise ZeroSegError(f"HungarianMatcher: num_points={num_points} must be positive or None")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def cost_matrix(
        self, pred_logits: torch.Tensor, pred_masks: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor
    ) -> torch.Tensor:
        """The matching cost of one image.

        Args:
            pred_logits: ``(Q, K+1)`` class logits, the last column being no-object.
            pred_masks: ``(Q, h, w)`` mask logits.
            labels: ``(N,)`` int64 class ids in ``0..K-1``.
            masks: ``(N, H, W)`` binary target masks (any size; resized to ``(h, w)`` by nearest).

        Returns:
            ``(Q, N)`` float cost matrix.
        """
        prob = pred_logits.softmax(-1)
        cost_class = -prob[:, labels]
        tgt = masks.to(pred_masks.dtype)
        if tgt.shape[-2:] != pred_masks.shape[-2:]:
            tgt = F.interpolate(tgt[:, None], size=pred_masks.shape[-2:], mode="nearest")[:, 0]
        out = pred_masks.flatten(1)
        tgt = tgt.flatten(1)
        if self.num_points is not None:
            idx = torch.randint(out.shape[1], (self.num_points,), device=out.device)
            out, tgt = out[:, idx], tgt[:, idx]
        cost_mask = batch_sigmoid_focal_cost(out, tgt)
        cost_dice = batch_dice_cost(out, tgt)
        return self.cost_mask * cost_mask + self.cost_class * cost_class + self.cost_dice * cost_dice

    @torch.no_grad()
    def forward(
        self, outputs: Mapping[str, torch.Tensor], targets: Sequence[Mapping[str, torch.Tensor]]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Match a batch.

        Args:
            outputs: ``{"pred_logits": (B, Q, K+1), "pred_masks": (B, Q, h, w)}``.
            targets: ``B`` dicts ``{"labels": (N_b,), "masks": (N_b, H, W)}``.

        Returns:
            ``B`` pairs ``(query_idx, target_idx)``, int64 tensors of length ``min(Q, N_b)`` on the CPU;
            query ``query_idx[i]`` is assigned to target ``target_idx[i]``.
        """
        pred_logits = outputs["pred_logits"]
        pred_masks = outputs["pred_masks"]
        if len(targets) != pred_logits.shape[0]:
            raise ZeroSegError(
                f"HungarianMatcher: {len(targets)} targets for a batch of {pred_logits.shape[0]} predictions"
            )
        indices = []
        for b, target in enumerate(targets):
            labels = target["labels"].long()
            masks = target["masks"]
            if labels.numel() != masks.shape[0]:
                raise ZeroSegError(
                    f"HungarianMatcher: target {b} has {labels.numel()} labels but {masks.shape[0]} masks"
                )
            if labels.numel() == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            cost = self.cost_matrix(pred_logits[b], pred_masks[b], labels, masks)
            rows, cols = linear_sum_assignment(cost.float().cpu().numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices
