"""ZegFormer's CLIP image branch, its fusion with the segment branch, and fast paths.

At test time ZegFormer (Ding et al., CVPR 2022; official code ``dingjiansw101/ZegFormer``,
``mask_former/mask_former_model.py``) classifies every query's segment a second time with CLIP's image tower and
fuses the two class distributions. This module reproduces that computation:

1. Images go to CLIP normalised with OpenAI CLIP's mean/std on 0..255 RGB (:data:`CLIP_MEAN_255`,
   :data:`CLIP_STD_255`); :func:`to_clip_input` and :func:`imagenet_to_clip` convert.
2. Mask logits ``(B, Q, H, W)`` at image size become binary masks ``sigmoid > 0.5``; :func:`mask_boxes` turns
   them into boxes with the official cumulative-sum rule (quirks kept: ``x2``/``y2`` are the index of the last
   mask column/row, not one past it; a box of zero area -- empty mask, single pixel, one-pixel-thin line --
   becomes the full image).
3. :func:`segment_crops` cuts one CLIP input per query. ``"cropmask"`` (official default):
   ``roi_align(image * mask, box, S, aligned=True)``; ``"crop"``: ``roi_align(image, box, S, aligned=True)``;
   ``"mask"``: the image resized to ``S x S`` times the mask logits resized to ``S x S`` then ``sigmoid > 0.5``.
4. :class:`ClipImageBranch` encodes the crops, L2-normalises them and scores them against the CLIP branch's own
   text embeddings: ``logit_scale.exp() * f @ text^T``; the segment branch's raw no-object logit is appended as
   the last column.
5. :func:`fuse_scores` (official "ENSEMBLING"): ``p_seg`` / ``p_clip`` are the softmaxes over ``C+1`` with the
   no-object column dropped; the CLIP probabilities of the seen classes are replaced by their per-query mean;
   seen classes get ``p_seg**lam * p_clip**(1-lam)``, unseen ``p_seg**(1-lam) * p_clip**lam`` (``lam = 2/3``).
   ``all_classes=True`` is "ENSEMBLING_ALL_CLS": ``p_seg**(1-lam) * p_clip**lam`` everywhere.
6. :func:`fused_semantic_inference`: ``scores[c] = sum_q fused[q, c] * sigmoid(mask[q])`` (no second softmax),
   then ``gzero_calibrate`` is subtracted from the seen classes.

Modes of :class:`ClipImageBranch` (all give the same numbers up to float rounding, except ``"pool"``):

* ``"sequential"``: one crop per ``encode_image`` call (naive baseline).
* ``"per_image"``: the Q crops of one image in one call (what the official code does).
* ``"batched"``: the crops of all images of the batch together, in chunks of at most ``max_batch``.
* ``"pool"``: an approximation, not the official computation. Each full image is resized to CLIP's input size
  and encoded ONCE; the ViT's dense patch tokens (after ``ln_post``, times ``proj``, i.e. in the joint
  image-text space) are averaged under each mask and L2-normalised. Mask weights: the fraction of each patch's
  pixels inside the binary mask (``sigmoid > 0.5``; adaptive average pooling of the binary mask to the patch
  grid). This matches the binary masks the crop styles use, and a mask smaller than a patch still gets weight.
  A query whose weights sum to 0 (an empty mask) gets the global image embedding. ``style`` is ignored. Note
  that CLIP's last-layer patch tokens are known to localise poorly, so expect lower accuracy than the crop
  modes; the point of this mode is speed (one image-tower pass per image instead of Q).

Fast path (every mode): with ``skip_empty`` queries with an empty binary mask, and with ``skip_no_object=t``
queries whose segment-branch no-object probability exceeds ``t``, are not encoded. They are reported as
``encoded == False``; their rows of the returned CLIP logits are a copy of the segment logits, and
:func:`fuse_scores` gives them the segment branch's probabilities ``p_seg`` unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from zeroseg.data.io import IMAGENET_MEAN, IMAGENET_STD
from zeroseg.errors import ZeroSegError

CLIP_MEAN_255 = (122.7709383, 116.7460125, 104.09373615)
CLIP_STD_255 = (68.5005327, 66.6321579, 70.3231630)

STYLES = ("cropmask", "crop", "mask")
MODES = ("sequential", "per_image", "batched", "pool")

__all__ = [
    "CLIP_MEAN_255",
    "CLIP_STD_255",
    "MODES",
    "STYLES",
    "ClipImageBranch",
    "fuse_scores",
    "fused_semantic_inference",
    "imagenet_to_clip",
    "mask_boxes",
    "segment_crops",
    "to_clip_input",
]


def _channel_stats(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)


def _check_images(images: torch.Tensor, name: str) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ZeroSegError(f"{name}: images must be (B, 3, H, W), got {tuple(images.shape)}")


def to_clip_input(images_0_255: torch.Tensor) -> torch.Tensor:
    """CLIP-normalises RGB images in 0..255.

    Args:
        images_0_255: ``(B, 3, H, W)`` RGB, 0..255 (any dtype; computed in float32 unless floating already).

    Returns:
        ``(images - CLIP_MEAN_255) / CLIP_STD_255``.
    """
    _check_images(images_0_255, "to_clip_input")
    x = images_0_255 if images_0_255.is_floating_point() else images_0_255.float()
    return (x - _channel_stats(CLIP_MEAN_255, x)) / _channel_stats(CLIP_STD_255, x)


def imagenet_to_clip(x: torch.Tensor) -> torch.Tensor:
    """Converts ImageNet-normalised images (torchvision convention, 0..1 RGB) to CLIP normalisation.

    Args:
        x: ``(B, 3, H, W)`` float, ``(rgb01 - imagenet_mean) / imagenet_std``.

    Returns:
        The same images CLIP-normalised: ``x_rgb = (x * std + mean) * 255``, then :func:`to_clip_input`.
    """
    _check_images(x, "imagenet_to_clip")
    rgb = (x * _channel_stats(IMAGENET_STD, x) + _channel_stats(IMAGENET_MEAN, x)) * 255.0
    return to_clip_input(rgb)


def mask_boxes(binary: torch.Tensor) -> torch.Tensor:
    """Boxes of binary masks with the official ZegFormer rule (quirks included).

    Per mask: column sums, their cumulative sum ``cx``; ``x2 = argmax(cx)`` (first column reaching the total);
    zeros of ``cx`` set to inf, ``x1 = argmin(cx)`` (first non-empty column); rows likewise. Where
    ``(x2 - x1) * (y2 - y1) == 0`` the box is the full image ``(0, 0, W, H)``.

    Args:
        binary: ``(N, H, W)`` bool (or 0/1) masks.

    Returns:
        ``(N, 4)`` float32 boxes ``(x1, y1, x2, y2)`` in pixels.
    """
    if binary.ndim != 3:
        raise ZeroSegError(f"mask_boxes: masks must be (N, H, W), got {tuple(binary.shape)}")
    _, h, w = binary.shape
    m = binary.to(torch.float32)

    def first_last(sums: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cum = sums.cumsum(dim=1)
        last = cum.argmax(dim=1)
        first = cum.masked_fill(cum == 0, float("inf")).argmin(dim=1)
        return first, last

    xmin, xmax = first_last(m.sum(dim=1))  # sum over rows -> one value per column
    ymin, ymax = first_last(m.sum(dim=2))  # sum over columns -> one value per row
    boxes = torch.stack([xmin, ymin, xmax, ymax], dim=1).to(torch.float32)
    area = (ymax - ymin) * (xmax - xmin)
    full = torch.tensor([0.0, 0.0, float(w), float(h)], device=boxes.device)
    return torch.where((area == 0)[:, None], full, boxes)


def _size2(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


class _Cropper:
    """Cuts CLIP inputs for selected (image, query) pairs; caches what all pairs share."""

    def __init__(
        self,
        images: torch.Tensor,
        mask_logits: torch.Tensor,
        style: str,
        size: tuple[int, int],
        binary: torch.Tensor | None = None,
    ) -> None:
        self.images = images
        self.mask_logits = mask_logits
        self.style = style
        self.size = size
        self._binary = binary
        self._resized: torch.Tensor | None = None

    def binary(self, bidx: torch.Tensor, qidx: torch.Tensor) -> torch.Tensor:
        if self._binary is not None:
            return self._binary[bidx, qidx]
        return self.mask_logits[bidx, qidx].sigmoid() > 0.5

    def __call__(self, bidx: torch.Tensor, qidx: torch.Tensor) -> torch.Tensor:
        """Returns ``(N, 3, S, S)`` crops for pairs ``(bidx[i], qidx[i])``."""
        if self.style == "mask":
            if self._resized is None:
                self._resized = F.interpolate(self.images, size=self.size, mode="bilinear", align_corners=False)
            logits = F.interpolate(
                self.mask_logits[bidx, qidx][:, None], size=self.size, mode="bilinear", align_corners=False
            )
            return self._resized[bidx] * (logits.sigmoid() > 0.5).to(self.images.dtype)
        binary = self.binary(bidx, qidx)
        boxes = mask_boxes(binary).to(self.images.dtype)
        if self.style == "crop":
            rois = torch.cat([bidx[:, None].to(boxes), boxes], dim=1)
            return roi_align(self.images, rois, output_size=self.size, spatial_scale=1.0, aligned=True)
        masked = self.images[bidx] * binary[:, None].to(self.images.dtype)
        rois = torch.cat([torch.arange(len(bidx), device=boxes.device, dtype=boxes.dtype)[:, None], boxes], dim=1)
        return roi_align(masked, rois, output_size=self.size, spatial_scale=1.0, aligned=True)


def _check_style(style: str) -> None:
    if style not in STYLES:
        raise ZeroSegError(f"CLIP branch: unknown style {style!r}; choose one of {', '.join(STYLES)}")


def _check_masks(clip_images: torch.Tensor, mask_logits: torch.Tensor, name: str) -> None:
    _check_images(clip_images, name)
    if mask_logits.ndim != 4:
        raise ZeroSegError(f"{name}: mask logits must be (B, Q, H, W), got {tuple(mask_logits.shape)}")
    if mask_logits.shape[0] != clip_images.shape[0] or mask_logits.shape[2:] != clip_images.shape[2:]:
        raise ZeroSegError(
            f"{name}: mask logits {tuple(mask_logits.shape)} do not match images {tuple(clip_images.shape)} "
            "(upsample the masks to the image size first)"
        )


def segment_crops(
    clip_images: torch.Tensor, mask_logits: torch.Tensor, style: str = "cropmask", size: int | Sequence[int] = 224
) -> torch.Tensor:
    """CLIP inputs for every query of every image.

    Args:
        clip_images: ``(B, 3, H, W)`` CLIP-normalised images.
        mask_logits: ``(B, Q, H, W)`` mask logits at image size.
        style: ``"cropmask"`` (official default), ``"crop"`` or ``"mask"`` (see the module docstring).
        size: CLIP input size (int or ``(h, w)``).

    Returns:
        ``(B, Q, 3, h, w)`` crops.
    """
    _check_style(style)
    _check_masks(clip_images, mask_logits, "segment_crops")
    b, q = mask_logits.shape[:2]
    hw = _size2(size)
    grid = torch.arange(b * q, device=mask_logits.device)
    crops = _Cropper(clip_images, mask_logits, style, hw)(grid // q, grid % q)
    return crops.view(b, q, 3, *hw)


def _dense_vit_tokens(visual: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Global embedding and projected patch tokens of an open_clip VisionTransformer.

    Returns:
        ``(global (B, D), tokens (B, gh*gw, D))``; tokens are taken after ``ln_post`` and multiplied by
        ``proj``, i.e. in the same space as the global embedding.
    """
    prev = visual.output_tokens
    visual.output_tokens = True
    try:
        pooled, tokens = visual(images)
    finally:
        visual.output_tokens = prev
    if getattr(visual, "final_ln_after_pool", False):
        tokens = visual.ln_post(tokens)
    if visual.proj is not None:
        tokens = tokens @ visual.proj
    return pooled, tokens


class ClipImageBranch(nn.Module):
    """Classifies each query's segment with CLIP's image tower (ZegFormer's test-time CLIP branch).

    Attributes:
        model: the open_clip model (only ``visual``/``encode_image`` and ``logit_scale`` are used).
        style / mode / max_batch / skip_empty / skip_no_object: see :meth:`__init__`.
        input_size: CLIP's input size ``(h, w)`` read from ``model.visual.image_size``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        style: str = "cropmask",
        mode: str = "per_image",
        max_batch: int = 128,
        skip_empty: bool = False,
        skip_no_object: float | None = None,
    ) -> None:
        """Wraps a loaded CLIP model.

        Args:
            model: open_clip ``CLIP``-like model with ``encode_image``, ``visual`` and ``logit_scale``.
            style: ``"cropmask"`` (official default), ``"crop"`` or ``"mask"``; ignored by ``mode="pool"``.
            mode: ``"sequential"``, ``"per_image"`` (official), ``"batched"`` or ``"pool"``.
            max_batch: most crops (or, in pool mode, images) per ``encode_image`` call in ``batched``/``pool``
                mode, and per crop-building step in every mode (bounds memory).
            skip_empty: do not encode queries whose binary mask is empty.
            skip_no_object: do not encode queries whose segment no-object probability exceeds this (None: never).

        Raises:
            ZeroSegError: for an unknown style or mode, a bad ``max_batch``/``skip_no_object``, or (pool mode) a
                model whose image tower is not an open_clip VisionTransformer with patch tokens.
        """
        super().__init__()
        _check_style(style)
        if mode not in MODES:
            raise ZeroSegError(f"CLIP branch: unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ZeroSegError(f"CLIP branch: max_batch {max_batch!r} must be a positive integer")
        if skip_no_object is not None and not 0.0 <= float(skip_no_object) <= 1.0:
            raise ZeroSegError(f"CLIP branch: skip_no_object {skip_no_object!r} must be a probability in [0, 1]")
        visual = getattr(model, "visual", None)
        if visual is None or not hasattr(model, "encode_image") or not hasattr(model, "logit_scale"):
            raise ZeroSegError("CLIP branch: model needs encode_image, visual and logit_scale (an open_clip CLIP)")
        image_size = getattr(visual, "image_size", None)
        if image_size is None:
            raise ZeroSegError("CLIP branch: cannot read the input size (model.visual.image_size)")
        if mode == "pool":
            plain_vit = all(hasattr(visual, a) for a in ("output_tokens", "ln_post", "proj", "grid_size"))
            if not plain_vit or getattr(visual, "attn_pool", None) is not None or visual.pool_type == "none":
                raise ZeroSegError(
                    f"CLIP branch: mode 'pool' needs an open_clip VisionTransformer image tower with patch tokens, "
                    f"got {type(visual).__name__}"
                )
        self.model = model
        self.style = style
        self.mode = mode
        self.max_batch = max_batch
        self.skip_empty = bool(skip_empty)
        self.skip_no_object = None if skip_no_object is None else float(skip_no_object)
        self.input_size = _size2(image_size)

    @classmethod
    def from_spec(cls, spec: str, *, device: str = "cpu", **kwargs: Any) -> ClipImageBranch:
        """Loads ``clip:<model>:<checkpoint>`` safely (see :mod:`zeroseg.text.clip`) and wraps it.

        Args:
            spec: ``clip:<open_clip model name or config json>:<local checkpoint>``.
            device: torch device string.
            **kwargs: the keyword arguments of :meth:`__init__`.

        Raises:
            ZeroSegError: for a bad spec, config or checkpoint, or bad branch options.
        """
        from zeroseg.text.clip import load_clip_model, parse_clip_spec

        parsed = parse_clip_spec(spec)
        model, _, _ = load_clip_model(parsed.model, parsed.checkpoint, device=device)
        return cls(model, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.visual.parameters()).dtype

    def select_queries(
        self, mask_logits: torch.Tensor, segment_logits: torch.Tensor, binary: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Which queries the branch encodes (all, unless a skip rule applies).

        Args:
            mask_logits: ``(B, Q, H, W)``.
            segment_logits: ``(B, Q, C+1)``, last column no-object.
            binary: ``mask_logits.sigmoid() > 0.5`` if already computed.

        Returns:
            ``(B, Q)`` bool.
        """
        keep = torch.ones(mask_logits.shape[:2], dtype=torch.bool, device=mask_logits.device)
        if self.skip_empty:
            if binary is None:
                binary = mask_logits.sigmoid() > 0.5
            keep &= binary.flatten(2).any(dim=2)
        if self.skip_no_object is not None:
            keep &= segment_logits.softmax(dim=-1)[..., -1].to(keep.device) <= self.skip_no_object
        return keep

    def _encode(self, crops: torch.Tensor) -> torch.Tensor:
        f = self.model.encode_image(crops.to(self.device, self.dtype)).float()
        return f / f.norm(dim=-1, keepdim=True)

    def _crop_features(self, cropper: _Cropper, pairs: torch.Tensor) -> torch.Tensor:
        """Normalised features ``(N, D)`` of the crops of ``pairs`` (``(N, 2)`` rows of (image, query))."""
        bidx, qidx = pairs[:, 0], pairs[:, 1]
        n = len(pairs)
        if self.mode == "sequential":
            return torch.cat([self._encode(cropper(bidx[i : i + 1], qidx[i : i + 1])) for i in range(n)])
        if self.mode == "batched":
            return torch.cat(
                [
                    self._encode(cropper(bidx[s : s + self.max_batch], qidx[s : s + self.max_batch]))
                    for s in range(0, n, self.max_batch)
                ]
            )
        # per_image: the crops of one image in one encode_image call (the official code).
        out = []
        for b in bidx.unique(sorted=True).tolist():
            sel = (bidx == b).nonzero().squeeze(1)
            crops = torch.cat(
                [
                    cropper(bidx[sel[s : s + self.max_batch]], qidx[sel[s : s + self.max_batch]])
                    for s in range(0, len(sel), self.max_batch)
                ]
            )
            out.append(self._encode(crops))
        return torch.cat(out)

    def _pool_features(
        self, clip_images: torch.Tensor, binary: torch.Tensor, encoded: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask-pooled dense features for the images with at least one encoded query.

        Returns:
            ``(image_ids (B',), features (B', Q, D))``.
        """
        visual = self.model.visual
        ids = encoded.any(dim=1).nonzero().squeeze(1)
        feats = []
        for s in range(0, len(ids), self.max_batch):
            chunk = ids[s : s + self.max_batch]
            x = F.interpolate(clip_images[chunk], size=self.input_size, mode="bilinear", align_corners=False)
            pooled, tokens = _dense_vit_tokens(visual, x.to(self.device, self.dtype))
            gh, gw = visual.grid_size
            weights = F.adaptive_avg_pool2d(binary[chunk].to(tokens.dtype), (gh, gw)).flatten(2).to(tokens.device)
            total = weights.sum(dim=2, keepdim=True)
            masked = torch.einsum("bqg,bgd->bqd", weights, tokens) / total.clamp_min(1e-12)
            f = torch.where(total > 0, masked, pooled[:, None, :].expand_as(masked)).float()
            feats.append(f / f.norm(dim=-1, keepdim=True))
        return ids, torch.cat(feats) if feats else torch.empty(0)

    @torch.no_grad()
    def classify(
        self,
        clip_images: torch.Tensor,
        mask_logits: torch.Tensor,
        segment_logits: torch.Tensor,
        text_clip: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP class logits per query, with the segment branch's no-object logit appended.

        Args:
            clip_images: ``(B, 3, H, W)`` CLIP-normalised images (:func:`to_clip_input`).
            mask_logits: ``(B, Q, H, W)`` mask logits upsampled to the image size.
            segment_logits: ``(B, Q, C+1)`` segment-branch class logits, last column no-object.
            text_clip: ``(C, D)`` CLIP text embeddings of the classes for this branch.

        Returns:
            ``(clip_logits (B, Q, C+1), encoded (B, Q) bool)`` on the device of ``segment_logits``. Rows of
            queries that were not encoded (skip rules) are a copy of ``segment_logits``.
        """
        _check_masks(clip_images, mask_logits, "CLIP branch")
        b, q = mask_logits.shape[:2]
        if segment_logits.ndim != 3 or segment_logits.shape[:2] != (b, q):
            raise ZeroSegError(
                f"CLIP branch: segment logits {tuple(segment_logits.shape)} do not match mask logits "
                f"{tuple(mask_logits.shape)} on (B, Q)"
            )
        if text_clip.ndim != 2 or segment_logits.shape[2] != text_clip.shape[0] + 1:
            raise ZeroSegError(
                f"CLIP branch: text embeddings {tuple(text_clip.shape)} must be (C, D) with C+1 = "
                f"{segment_logits.shape[2]} (segment logits include the no-object column)"
            )
        need_binary = self.skip_empty or self.mode == "pool" or self.style != "mask"
        binary = mask_logits.sigmoid() > 0.5 if need_binary else None
        encoded = self.select_queries(mask_logits, segment_logits, binary)
        dim = text_clip.shape[1]
        feats = torch.zeros(b, q, dim, device=self.device)
        if self.mode == "pool":
            ids, pooled = self._pool_features(clip_images, binary, encoded)
            if len(ids):
                feats[ids.to(self.device)] = pooled
        else:
            pairs = encoded.nonzero()
            if len(pairs):
                cropper = _Cropper(clip_images, mask_logits, self.style, self.input_size, binary)
                f = self._crop_features(cropper, pairs)
                if f.shape[1] != dim:
                    raise ZeroSegError(
                        f"CLIP branch: image embeddings have {f.shape[1]} dims but text embeddings {dim}"
                    )
                feats[pairs[:, 0].to(self.device), pairs[:, 1].to(self.device)] = f
        text = F.normalize(text_clip.to(self.device, torch.float32), dim=-1)
        logits = self.model.logit_scale.exp().float() * feats @ text.t()
        logits = logits.to(segment_logits.device, segment_logits.dtype)
        out = torch.cat([logits, segment_logits[..., -1:]], dim=-1)
        out = torch.where(encoded.to(out.device)[..., None], out, segment_logits)
        return out, encoded.to(out.device)

    def forward(
        self,
        clip_images: torch.Tensor,
        mask_logits: torch.Tensor,
        segment_logits: torch.Tensor,
        text_clip: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Same as :meth:`classify`."""
        return self.classify(clip_images, mask_logits, segment_logits, text_clip)


def _class_ids(ids: Sequence[int] | torch.Tensor, num_classes: int, name: str) -> torch.Tensor:
    t = torch.as_tensor(ids, dtype=torch.long).flatten()
    if len(t) and (t.min() < 0 or t.max() >= num_classes):
        raise ZeroSegError(f"{name}: class ids must lie in [0, {num_classes}), got {t.tolist()}")
    return t


def fuse_scores(
    segment_logits: torch.Tensor,
    clip_logits: torch.Tensor,
    encoded: torch.Tensor | None,
    seen_ids: Sequence[int] | torch.Tensor,
    unseen_ids: Sequence[int] | torch.Tensor,
    *,
    lam: float = 2.0 / 3.0,
    all_classes: bool = False,
) -> torch.Tensor:
    """ZegFormer's geometric fusion of segment and CLIP class probabilities.

    Args:
        segment_logits: ``(B, Q, C+1)``, last column no-object.
        clip_logits: ``(B, Q, C+1)`` from :meth:`ClipImageBranch.classify`.
        encoded: ``(B, Q)`` bool; queries with False get ``p_seg`` unchanged (None: all encoded).
        seen_ids / unseen_ids: disjoint class ids covering ``0..C-1``.
        lam: the fusion weight (official 2/3).
        all_classes: "ENSEMBLING_ALL_CLS" -- ``p_seg**(1-lam) * p_clip**lam`` on every class, ignoring the
            seen/unseen split (the ids are still validated).

    Returns:
        ``(B, Q, C)`` fused probabilities.
    """
    if segment_logits.ndim != 3 or clip_logits.shape != segment_logits.shape:
        raise ZeroSegError(
            f"fuse_scores: segment logits {tuple(segment_logits.shape)} and CLIP logits "
            f"{tuple(clip_logits.shape)} must both be (B, Q, C+1)"
        )
    c = segment_logits.shape[2] - 1
    seen = _class_ids(seen_ids, c, "fuse_scores: seen_ids")
    unseen = _class_ids(unseen_ids, c, "fuse_scores: unseen_ids")
    ids = torch.cat([seen, unseen])
    if len(ids) != c or ids.unique().numel() != c:
        raise ZeroSegError(f"fuse_scores: seen_ids and unseen_ids must split the {c} classes into disjoint sets")
    p_seg = segment_logits.softmax(dim=-1)[..., :c]
    p_clip = clip_logits.softmax(dim=-1)[..., :c]
    if all_classes:
        fused = p_seg ** (1.0 - lam) * p_clip**lam
    else:
        # Both rules on every column, then a per-class choice: the same numbers as writing the seen and the unseen
        # columns in place, in a form ONNX export can trace (zeroseg export; index_put into empty_like has none).
        seen = seen.to(p_seg.device)
        fused = p_seg ** (1.0 - lam) * p_clip**lam
        if len(seen):
            is_seen = torch.zeros(c, dtype=torch.bool, device=p_seg.device)
            is_seen[seen] = True
            clip_seen = p_clip[..., seen].mean(dim=-1, keepdim=True)
            fused = torch.where(is_seen, p_seg**lam * clip_seen ** (1.0 - lam), fused)
    if encoded is not None:
        if encoded.shape != segment_logits.shape[:2]:
            raise ZeroSegError(
                f"fuse_scores: encoded {tuple(encoded.shape)} must be (B, Q) = {tuple(segment_logits.shape[:2])}"
            )
        fused = torch.where(encoded.to(fused.device, torch.bool)[..., None], fused, p_seg)
    return fused


def fused_semantic_inference(
    fused: torch.Tensor,
    mask_logits: torch.Tensor,
    seen_ids: Sequence[int] | torch.Tensor,
    gzero_calibrate: float = 0.0,
) -> torch.Tensor:
    """Per-class scores from fused probabilities, with ZegFormer's seen-class calibration.

    Args:
        fused: ``(B, Q, C)`` probabilities from :func:`fuse_scores` (no softmax is applied again).
        mask_logits: ``(B, Q, H, W)``.
        seen_ids: seen class ids.
        gzero_calibrate: subtracted from the seen classes' scores when > 0 (official 0.1).

    Returns:
        ``(B, C, H, W)`` scores; argmax over C gives the semantic map.
    """
    if fused.ndim != 3 or mask_logits.ndim != 4 or fused.shape[:2] != mask_logits.shape[:2]:
        raise ZeroSegError(
            f"fused_semantic_inference: fused {tuple(fused.shape)} and mask logits {tuple(mask_logits.shape)} "
            "must be (B, Q, C) and (B, Q, H, W)"
        )
    scores = torch.einsum("bqc,bqhw->bchw", fused, mask_logits.sigmoid())
    if gzero_calibrate > 0:
        seen = _class_ids(seen_ids, fused.shape[2], "fused_semantic_inference: seen_ids").to(scores.device)
        scores[:, seen] -= gzero_calibrate
    return scores
