"""Confident predictions of unseen classes: ZS-MMD's pseudo-features and ZS5Net's pseudo-labels."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from zeroseg.data.zero_shot import IGNORE
from zeroseg.errors import ZeroSegError


def select_pseudo_features(
    features: torch.Tensor,
    probs: torch.Tensor,
    unseen_ids: torch.Tensor,
    threshold: float,
    *,
    weighting: str = "confidence",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixels predicted as an unseen class with confidence >= ``threshold`` (ZS-MMD).

    Args:
        features: (B, F, h, w) pixel features.
        probs: (B, C, h, w) class probabilities at the same resolution.
        unseen_ids: (K,) unseen class indices.
        threshold: minimum softmax maximum.
        weighting: "confidence" (weight = softmax maximum) or "uniform" (weight 1).

    Returns:
        x: (N, F) selected features; y: (N,) their predicted (unseen) classes; w: (N,) their weights.
    """
    if features.shape[0] != probs.shape[0] or features.shape[-2:] != probs.shape[-2:]:
        raise ZeroSegError(
            f"features {tuple(features.shape)} and probabilities {tuple(probs.shape)}: batch or size differ"
        )
    if weighting not in ("confidence", "uniform"):
        raise ZeroSegError(f"zs_mmd.weighting {weighting!r}: choose 'confidence' or 'uniform'")
    conf, pred = probs.max(1)
    keep = torch.isin(pred, unseen_ids.to(pred.device)) & (conf >= threshold)
    x = features.permute(0, 2, 3, 1)[keep]
    w = conf[keep] if weighting == "confidence" else torch.ones_like(conf[keep])
    return x, pred[keep], w


def pseudo_pools(
    x: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor,
    class_ids: Sequence[int],
    *,
    min_count: int,
    max_count: int,
    rng: torch.Generator,
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Selected pseudo-features grouped per class: a class with fewer than ``min_count`` is left out, one with
    more than ``max_count`` keeps a uniform random subset of that size.

    Args:
        x: (N, F) features; y: (N,) classes; w: (N,) weights (from :func:`select_pseudo_features`).
        class_ids: the classes to pool, in this order (the order of the random draws).

    Returns:
        ``{class_id: (x (n, F), w (n,))}``.
    """
    pools = {}
    for c in class_ids:
        idx = torch.nonzero(y == c).squeeze(1)
        if idx.numel() < min_count:
            continue
        if idx.numel() > max_count:
            idx = idx[torch.randperm(idx.numel(), generator=rng)[:max_count]]
        pools[c] = (x[idx], w[idx])
    return pools


def draw_pseudo(x: torch.Tensor, w: torch.Tensor, n: int, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` pseudo-features of one pool with their weights: without replacement when the pool has ``n``,
    with replacement otherwise.

    Args:
        x: (M, F) the pool's features; w: (M,) their weights.

    Returns:
        (n, F) features and (n,) weights.
    """
    if x.shape[0] >= n:
        sel = torch.randperm(x.shape[0], generator=rng)[:n].to(x.device)
    else:
        sel = torch.randint(x.shape[0], (n,), generator=rng).to(x.device)
    return x[sel], w[sel]


def top_percent_labels(
    pred: torch.Tensor, conf: torch.Tensor, base: torch.Tensor, unseen_ids: Sequence[int], top_percent: float
) -> torch.Tensor:
    """ZS5Net's pseudo-labels: per unseen class, the ``top_percent`` % most confident pixels predicted as it.

    The threshold of class ``c`` is the (100 - p)-th percentile (linear interpolation) of the confidences of
    the pixels predicted as ``c`` over the whole pool where ``base`` is ``IGNORE``; pixels at or above it
    become ``c``. Every other pixel keeps ``base``.

    Args:
        pred: (N, H, W) predicted classes; conf: (N, H, W) their confidences.
        base: (N, H, W) labels to start from (all ``IGNORE``, or the seen ground truth under ``official``).
        unseen_ids: the unseen classes.
        top_percent: p.

    Returns:
        (N, H, W) pseudo-labels.
    """
    pseudo = base.clone()
    for c in unseen_ids:
        sel = (pred == c) & (base == IGNORE)
        if sel.any():
            thr = torch.quantile(conf[sel].float(), 1.0 - top_percent / 100.0)
            pseudo[sel & (conf >= thr)] = c
    return pseudo
