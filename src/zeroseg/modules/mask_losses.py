"""Set-prediction losses of MaskFormer / ZegFormer: cross-entropy with a down-weighted no-object class,
sigmoid focal mask loss and dice loss, applied to the last decoder layer and every auxiliary layer.

Follows ``dingjiansw101/ZegFormer`` ``mask_former/modeling/criterion.py`` and the loss weights of
``mask_former/mask_former_model.py`` (see ``docs/zegformer_official.md``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from zeroseg.errors import ZeroSegError
from zeroseg.modules.matcher import HungarianMatcher


def dice_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Dice loss summed over masks and divided by ``num_masks``.

    Args:
        inputs: mask logits ``(N, P)`` (or ``(N, H, W)``; flattened from dim 1).
        targets: binary masks of the same shape as floats.
        num_masks: normaliser (total number of target masks in the batch, at least 1).

    Returns:
        Scalar ``sum_n [1 - (2 sum p t + 1) / (sum p + sum t + 1)] / num_masks``.
    """
    prob = inputs.sigmoid().flatten(1)
    targets = targets.flatten(1)
    numerator = 2 * (prob * targets).sum(-1)
    denominator = prob.sum(-1) + targets.sum(-1)
    loss = 1 - (numerator + 1) / (denominator + 1)
    return loss.sum() / num_masks


def sigmoid_focal_loss(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    num_masks: float,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> torch.Tensor:
    """RetinaNet focal loss, averaged over pixels, summed over masks, divided by ``num_masks``.

    Args:
        inputs: mask logits ``(N, P)`` (or ``(N, H, W)``; flattened from dim 1).
        targets: binary masks of the same shape as floats.
        num_masks: normaliser (total number of target masks in the batch, at least 1).
        alpha: positive weight (negatives get ``1 - alpha``); < 0 disables it.
        gamma: focusing exponent.

    Returns:
        Scalar loss.
    """
    inputs = inputs.flatten(1)
    targets = targets.flatten(1)
    prob = inputs.sigmoid()
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean(1).sum() / num_masks


def default_weight_dict(
    *,
    ce_weight: float = 1.0,
    mask_weight: float = 20.0,
    dice_weight: float = 1.0,
    dec_layers: int = 6,
    deep_supervision: bool = True,
) -> dict[str, float]:
    """The official loss weights, with ``_0 .. _{dec_layers-2}`` copies for the auxiliary layers.

    Args:
        ce_weight: weight of ``loss_ce`` (official 1).
        mask_weight: weight of the focal ``loss_mask`` (official ``MASK_WEIGHT`` = 20).
        dice_weight: weight of ``loss_dice`` (official ``DICE_WEIGHT`` = 1).
        dec_layers: number of decoder layers (official 6).
        deep_supervision: add the auxiliary-layer entries.

    Returns:
        Mapping from loss name to weight.
    """
    base = {"loss_ce": ce_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
    weights = dict(base)
    if deep_supervision:
        for i in range(dec_layers - 1):
            weights.update({f"{k}_{i}": v for k, v in base.items()})
    return weights


class SetCriterion(nn.Module):
    """Matching-based loss over the final output and (deep supervision) every auxiliary output.

    Args:
        num_classes: number of real classes ``K`` (the no-object class is index ``K``).
        matcher: the Hungarian matcher (re-run for every auxiliary layer, as in the official code).
        eos_coef: cross-entropy weight of the no-object class (official 0.1).
        weight_dict: loss name -> weight, e.g. :func:`default_weight_dict`; used by :meth:`weighted`.
        deep_supervision: also compute ``loss_*_i`` for ``outputs["aux_outputs"][i]``.
    """

    empty_weight: torch.Tensor

    def __init__(
        self,
        *,
        num_classes: int,
        matcher: HungarianMatcher,
        eos_coef: float = 0.1,
        weight_dict: Mapping[str, float],
        deep_supervision: bool = True,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ZeroSegError(f"SetCriterion: num_classes={num_classes} must be at least 1")
        self.num_classes = num_classes
        self.matcher = matcher
        self.eos_coef = eos_coef
        self.weight_dict = dict(weight_dict)
        self.deep_supervision = deep_supervision
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    def _check_targets(self, outputs: Mapping[str, Any], targets: Sequence[Mapping[str, torch.Tensor]]) -> None:
        logits = outputs["pred_logits"]
        if logits.shape[-1] != self.num_classes + 1:
            raise ZeroSegError(
                f"SetCriterion: pred_logits has {logits.shape[-1]} classes, expected {self.num_classes} + 1 (no-object)"
            )
        for b, t in enumerate(targets):
            labels = t["labels"]
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                raise ZeroSegError(
                    f"SetCriterion: target {b} has label ids {labels.tolist()} outside 0..{self.num_classes - 1}"
                )

    def loss_labels(
        self,
        outputs: Mapping[str, torch.Tensor],
        targets: Sequence[Mapping[str, torch.Tensor]],
        indices: Sequence[tuple[torch.Tensor, torch.Tensor]],
    ) -> dict[str, torch.Tensor]:
        """Weighted cross-entropy; unmatched queries are trained towards no-object.

        Args:
            outputs: ``pred_logits: (B, Q, K+1)``.
            targets: ``B`` dicts with ``labels: (N_b,)``.
            indices: matcher output.

        Returns:
            ``{"loss_ce": scalar}``.
        """
        logits = outputs["pred_logits"]
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        for b, ((src, tgt), t) in enumerate(zip(indices, targets, strict=True)):
            target_classes[b, src.to(logits.device)] = t["labels"].long().to(logits.device)[tgt.to(logits.device)]
        weight = self.empty_weight.to(logits.dtype)
        return {"loss_ce": F.cross_entropy(logits.transpose(1, 2), target_classes, weight)}

    def loss_masks(
        self,
        outputs: Mapping[str, torch.Tensor],
        targets: Sequence[Mapping[str, torch.Tensor]],
        indices: Sequence[tuple[torch.Tensor, torch.Tensor]],
        num_masks: float,
    ) -> dict[str, torch.Tensor]:
        """Focal and dice losses of matched masks, predictions bilinearly upsampled to the target size.

        Args:
            outputs: ``pred_masks: (B, Q, h, w)`` logits.
            targets: ``B`` dicts with ``masks: (N_b, H_b, W_b)`` (zero-padded to the largest size).
            indices: matcher output.
            num_masks: normaliser.

        Returns:
            ``{"loss_mask": scalar, "loss_dice": scalar}``.
        """
        pred = outputs["pred_masks"]
        height = max(t["masks"].shape[-2] for t in targets)
        width = max(t["masks"].shape[-1] for t in targets)
        src_list, tgt_list = [], []
        for b, ((src, tgt), t) in enumerate(zip(indices, targets, strict=True)):
            if src.numel() == 0:
                continue
            src_list.append(pred[b, src.to(pred.device)])
            m = t["masks"][tgt.to(t["masks"].device)].to(pred)
            tgt_list.append(F.pad(m, (0, width - m.shape[-1], 0, height - m.shape[-2])))
        if not src_list:
            # Keep the graph connected so that backward() works on images without any segment.
            zero = pred.sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero}
        src_masks = torch.cat(src_list)
        tgt_masks = torch.cat(tgt_list)
        src_masks = F.interpolate(src_masks[:, None], size=(height, width), mode="bilinear", align_corners=False)
        src_masks = src_masks[:, 0].flatten(1)
        tgt_masks = tgt_masks.flatten(1)
        return {
            "loss_mask": sigmoid_focal_loss(src_masks, tgt_masks, num_masks),
            "loss_dice": dice_loss(src_masks, tgt_masks, num_masks),
        }

    def normalisers(self, targets: Sequence[Mapping[str, torch.Tensor]], num_queries: int) -> dict[str, float]:
        """What the losses of these targets are averaged over, before any forward pass.

        ``"ce"``: the class-weight sum of the cross-entropy's ``B * Q`` entries (each image's matched queries,
        ``min(N_b, Q)``, weigh 1, the rest the no-object weight). ``"masks"``: the number of target masks (the
        focal and dice losses' divisor, before the clamp to at least 1).

        Args:
            targets: ``B`` dicts with ``labels: (N_b,)``.
            num_queries: ``Q``.
        """
        counts = [int(t["labels"].numel()) for t in targets]
        matched = sum(min(n, num_queries) for n in counts)
        return {"ce": matched + self.eos_coef * (len(counts) * num_queries - matched), "masks": float(sum(counts))}

    def forward(
        self,
        outputs: Mapping[str, Any],
        targets: Sequence[Mapping[str, torch.Tensor]],
        *,
        reduce_over_ranks: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Compute the unweighted losses.

        Args:
            outputs: ``{"pred_logits": (B, Q, K+1), "pred_masks": (B, Q, h, w), "aux_outputs": [...]}``,
                ``aux_outputs`` (optional) being a list of dicts with the same two keys.
            targets: ``B`` dicts ``{"labels": (N_b,), "masks": (N_b, H, W)}``.
            reduce_over_ranks: average the number of target masks over the ranks under torch.distributed, as
                the official criterion does. The engine's :func:`~zeroseg.engine.train.train_step` turns it off: it
                normalises every term over the whole global batch itself (:meth:`normalisers`).

        Returns:
            ``loss_ce``, ``loss_mask``, ``loss_dice`` and, with deep supervision, ``loss_ce_i``,
            ``loss_mask_i``, ``loss_dice_i`` for every auxiliary output ``i``. The cross-entropy terms are means over
            the class weights (``normalisers()["ce"]``), the mask terms sums over masks divided by the number of
            target masks (clamped to at least 1).
        """
        self._check_targets(outputs, targets)
        # Official: number of target masks in the batch, averaged over the ranks under torch.distributed (so
        # that every rank normalises by the same number), clamped to at least 1.
        num_masks = float(sum(int(t["labels"].numel()) for t in targets))
        if reduce_over_ranks and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            total = torch.tensor([num_masks], dtype=torch.float64)
            if dist.get_backend() == "nccl":
                total = total.cuda()
            dist.all_reduce(total)
            num_masks = float(total.item()) / dist.get_world_size()
        num_masks = max(num_masks, 1.0)
        main = {"pred_logits": outputs["pred_logits"], "pred_masks": outputs["pred_masks"]}
        indices = self.matcher(main, targets)
        losses = self.loss_labels(main, targets, indices)
        losses.update(self.loss_masks(main, targets, indices, num_masks))
        if self.deep_supervision:
            for i, aux in enumerate(outputs.get("aux_outputs", [])):
                aux_indices = self.matcher(aux, targets)
                layer = self.loss_labels(aux, targets, aux_indices)
                layer.update(self.loss_masks(aux, targets, aux_indices, num_masks))
                losses.update({f"{k}_{i}": v for k, v in layer.items()})
        return losses

    @staticmethod
    def group(name: str) -> str:
        """The :meth:`normalisers` group of loss term ``name``: ``"ce"`` or ``"masks"``."""
        return "ce" if name.startswith("loss_ce") else "masks"

    def weighted(self, losses: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Multiply each loss by its weight and drop the ones without a weight (as the official model does).

        Args:
            losses: output of :meth:`forward`.

        Returns:
            The weighted losses; their sum is the training objective.
        """
        return {k: v * self.weight_dict[k] for k, v in losses.items() if k in self.weight_dict}
