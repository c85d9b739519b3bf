"""Paired image/label transforms for segmentation.

Every transform is a callable ``t(image, label, generator=None) -> (image, label)`` with
``image: (3, H, W)`` float and ``label: (H, W)`` int64 (255 = ignore). Randomness comes only from the
``torch.Generator`` passed in (or torch's global RNG when it is None), so a seeded generator reproduces
the exact same crop/scale/flip. :class:`~zeroseg.data.io.SegmentationDataset` applies the transform
to the [0, 1] image and normalises afterwards, so the factories below do not include :class:`Normalize`;
use it only when composing a pipeline for a dataset built with ``normalize=False``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from zeroseg.data.io import IGNORE, IMAGENET_MEAN, IMAGENET_STD
from zeroseg.errors import ZeroSegError

Pair = tuple[torch.Tensor, torch.Tensor]
PairTransform = Callable[..., Pair]


def _pair_size(size: int | Sequence[int], what: str) -> tuple[int, int]:
    if isinstance(size, int):
        h = w = size
    else:
        if len(size) != 2:
            raise ZeroSegError(f"{what}: size must be an int or (height, width), got {size!r}")
        h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise ZeroSegError(f"{what}: size must be positive, got {size!r}")
    return h, w


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(high_inclusive: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(0, high_inclusive + 1, (1,), generator=generator))


def resize_pair(image: torch.Tensor, label: torch.Tensor, size: tuple[int, int], resize_label: bool = True) -> Pair:
    """Resize image bilinearly and label by nearest neighbour.

    Args:
        image: (3, H, W) float.
        label: (H, W) int64.
        size: target (height, width).
        resize_label: also resize the label (otherwise it is returned unchanged).

    Returns:
        image (3, h, w), label (h, w) (or the input label).
    """
    if tuple(image.shape[-2:]) != size:
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    if resize_label and tuple(label.shape[-2:]) != size:
        # Label ids <= 255 are exact in float32, so the round trip through float is lossless.
        label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return image, label


def shortest_edge_size(h: int, w: int, short_edge: int, max_size: int | None = None) -> tuple[int, int]:
    """Output ``(height, width)`` of detectron2's ``ResizeShortestEdge.get_output_shape``.

    The shorter side becomes ``short_edge`` (the longer one scales alike); if the longer side then exceeds
    ``max_size``, both are scaled down so that it equals ``max_size``; each side is rounded half up.

    Args:
        h, w: input size.
        short_edge: target length of the shorter side (``INPUT.MIN_SIZE_TEST``).
        max_size: the longest side allowed (``INPUT.MAX_SIZE_TEST``); None: no limit.
    """
    size = float(short_edge)
    scale = size / min(h, w)
    newh, neww = (size, scale * w) if h < w else (scale * h, size)
    if max_size is not None and max(newh, neww) > max_size:
        shrink = max_size / max(newh, neww)
        newh, neww = newh * shrink, neww * shrink
    return int(newh + 0.5), int(neww + 0.5)


class Compose:
    """Apply paired transforms in order, threading the same generator through."""

    def __init__(self, transforms: Sequence[PairTransform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, label: torch.Tensor, generator: torch.Generator | None = None) -> Pair:
        for t in self.transforms:
            image, label = t(image, label, generator)
        return image, label

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class RandomScale:
    """Rescale by a factor drawn uniformly from ``scale_range``.

    Args:
        scale_range: (low, high) factor range, e.g. (0.5, 2.0).
        base_size: when set, the factor scales this shorter-side length (ZS3Net's ``RandomScaleCrop``);
            otherwise it scales the image's own size (mmseg ``ratio_range``).
    """

    def __init__(self, scale_range: tuple[float, float] = (0.5, 2.0), base_size: int | None = None) -> None:
        low, high = float(scale_range[0]), float(scale_range[1])
        if not 0 < low <= high:
            raise ZeroSegError(f"RandomScale: scale_range must satisfy 0 < low <= high, got {scale_range}")
        self.scale_range = (low, high)
        self.base_size = base_size

    def __call__(self, image: torch.Tensor, label: torch.Tensor, generator: torch.Generator | None = None) -> Pair:
        h, w = image.shape[-2:]
        s = _uniform(*self.scale_range, generator)
        if self.base_size is not None:
            s = s * self.base_size / min(h, w)
        size = (max(1, round(h * s)), max(1, round(w * s)))
        return resize_pair(image, label, size)

    def __repr__(self) -> str:
        return f"RandomScale(scale_range={self.scale_range}, base_size={self.base_size})"


class RandomCrop:
    """Pad (bottom/right) to at least ``crop_size`` then cut a random window of that size.

    Args:
        crop_size: int or (height, width).
        image_pad: fill value for padded image pixels (0 = black in [0, 1] space).
        label_pad: fill value for padded label pixels (255 = ignore).
        pad: False cuts a window of at most ``crop_size`` and never pads (detectron2's ``RandomCrop`` of type
            ``"absolute"``: ``min(crop, size)`` per side), leaving the padding to :class:`PadTo` after the flip.
    """

    def __init__(
        self, crop_size: int | Sequence[int], image_pad: float = 0.0, label_pad: int = IGNORE, pad: bool = True
    ) -> None:
        self.crop_size = _pair_size(crop_size, "RandomCrop")
        self.image_pad = float(image_pad)
        self.label_pad = int(label_pad)
        self.pad = bool(pad)

    def __call__(self, image: torch.Tensor, label: torch.Tensor, generator: torch.Generator | None = None) -> Pair:
        ch, cw = self.crop_size
        h, w = image.shape[-2:]
        if self.pad:
            image, label = pad_pair(image, label, (ch, cw), self.image_pad, self.label_pad)
            h, w = image.shape[-2:]
        ch, cw = min(ch, h), min(cw, w)
        top = _randint(h - ch, generator)
        left = _randint(w - cw, generator)
        return image[:, top : top + ch, left : left + cw], label[top : top + ch, left : left + cw]

    def __repr__(self) -> str:
        return f"RandomCrop(crop_size={self.crop_size}, pad={self.pad})"


def pad_pair(
    image: torch.Tensor, label: torch.Tensor, size: tuple[int, int], image_pad: float, label_pad: int = IGNORE
) -> Pair:
    """Pad image ``(3, H, W)`` and label ``(H, W)`` at the bottom/right to at least ``size`` (h, w)."""
    h, w = image.shape[-2:]
    pad_h, pad_w = max(size[0] - h, 0), max(size[1] - w, 0)
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h), value=image_pad)
        label = F.pad(label, (0, pad_w, 0, pad_h), value=label_pad)
    return image, label


class PadTo:
    """Pad (bottom/right) to at least ``size``: MaskFormer's semantic mapper pads every training image to
    ``SIZE_DIVISIBILITY`` after all augmentations (``mask_former_semantic_dataset_mapper.py:135-147``).

    Args:
        size: int or (height, width).
        image_pad: fill value for padded image pixels, in the image's own space ([0, 1]: 128 / 255 is the
            mapper's raw grey 128).
        label_pad: fill value for padded label pixels (the ignore label 255, as the mapper's ``ignore_label``).
    """

    def __init__(self, size: int | Sequence[int], image_pad: float = 0.0, label_pad: int = IGNORE) -> None:
        self.size = _pair_size(size, "PadTo")
        self.image_pad = float(image_pad)
        self.label_pad = int(label_pad)

    def __call__(self, image: torch.Tensor, label: torch.Tensor, generator: torch.Generator | None = None) -> Pair:
        return pad_pair(image, label, self.size, self.image_pad, self.label_pad)

    def __repr__(self) -> str:
        return f"PadTo(size={self.size}, image_pad={self.image_pad})"


class RandomHorizontalFlip:
    """Mirror image and label left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ZeroSegError(f"RandomHorizontalFlip: p must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, image: torch.Tensor, label: torch.Tensor, generator: torch.Generator | None = None) -> Pair:
        if float(torch.rand((), generator=generator)) < self.p:
            return image.flip(-1), label.flip(-1)
        return image, label

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Resize:
    """Deterministic resize for evaluation.

    Args:
        size: int = target length of the shorter side (aspect kept); (height, width) = exact size.
        resize_label: also resize the label (nearest); False keeps the full-resolution label.
        rounding: with an int ``size``, how the longer side is rounded: "round" to nearest, or "floor" as the
            official ``FixScale`` (``int(long * size / short)``; the shorter side is exactly ``size``).
    """

    def __init__(self, size: int | Sequence[int], resize_label: bool = True, rounding: str = "round") -> None:
        self.size = size if isinstance(size, int) else _pair_size(size, "Resize")
        if isinstance(self.size, int) and self.size <= 0:
            raise ZeroSegError(f"Resize: size must be positive, got {size}")
        if rounding not in ("round", "floor"):
            raise ZeroSegError(f"Resize: rounding {rounding!r}: choose 'round' or 'floor'")
        self.resize_label = resize_label
        self.rounding = rounding

    def target(self, h: int, w: int) -> tuple[int, int]:
        """Output (height, width) for an (h, w) input."""
        if isinstance(self.size, int):
            if self.rounding == "floor":
                return _fix_scale(h, w, self.size)
            s = self.size / min(h, w)
            return max(1, round(h * s)), max(1, round(w * s))
        return self.size

    def __call__(self, image: torch.Tensor, label: torch.Tensor, generator: torch.Generator | None = None) -> Pair:
        h, w = image.shape[-2:]
        return resize_pair(image, label, self.target(h, w), self.resize_label)

    def __repr__(self) -> str:
        return f"Resize(size={self.size}, resize_label={self.resize_label})"


def _fix_scale(h: int, w: int, short: int) -> tuple[int, int]:
    """(height, width) with the shorter side ``short`` and the longer one floored, as valeoai/ZS3 computes it
    (``FixScale``, ``RandomScaleCrop``: ``int(1.0 * long * short / short_in)``; a square goes to short x short)."""
    if h > w:
        return max(1, int(1.0 * h * short / w)), short
    return short, max(1, int(1.0 * w * short / h))


class OfficialScaleCrop:
    """valeoai/ZS3's ``RandomScaleCrop``: shorter side drawn uniformly from the integers
    ``[int(base_size * 0.5), int(base_size * 2.0)]`` (both ends included), longer side floored; when that side
    is below ``crop_size``, pad bottom/right (image 0, label 255) to ``crop_size``; then a random
    ``crop_size`` square window.

    Args:
        base_size: the official ``--base-size`` (312 for training).
        crop_size: the official ``--crop-size`` (312).
    """

    def __init__(self, base_size: int, crop_size: int) -> None:
        if base_size <= 0 or crop_size <= 0:
            raise ZeroSegError(f"OfficialScaleCrop: sizes must be positive, got {base_size}, {crop_size}")
        self.base_size, self.crop_size = int(base_size), int(crop_size)

    def __call__(self, image: torch.Tensor, label: torch.Tensor, generator: torch.Generator | None = None) -> Pair:
        low, high = int(self.base_size * 0.5), int(self.base_size * 2.0)
        short = low + _randint(high - low, generator)
        h, w = image.shape[-2:]
        image, label = resize_pair(image, label, _fix_scale(h, w, short))
        c = self.crop_size
        if short < c:  # the official code pads only when the drawn side is short, each side only if below c
            h, w = image.shape[-2:]
            pad_h, pad_w = max(c - h, 0), max(c - w, 0)
            image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
            label = F.pad(label, (0, pad_w, 0, pad_h), value=IGNORE)
        h, w = image.shape[-2:]
        left = _randint(w - c, generator)  # x1 is drawn before y1, as in the official code
        top = _randint(h - c, generator)
        return image[:, top : top + c, left : left + c], label[top : top + c, left : left + c]

    def __repr__(self) -> str:
        return f"OfficialScaleCrop(base_size={self.base_size}, crop_size={self.crop_size})"


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a (3, H, W) image with standard deviation ``sigma`` (pixels), edge pixels
    replicated, kernel cut at ``ceil(3 * sigma)``; ``sigma`` small enough for a 1-tap kernel returns the input.
    """
    radius = math.ceil(3.0 * sigma)
    if sigma <= 0 or radius < 1:
        return image
    x = torch.arange(-radius, radius + 1, dtype=image.dtype)
    k = torch.exp(-(x**2) / (2.0 * sigma**2))
    k = k / k.sum()
    c = image.shape[0]
    out = F.pad(image[None], (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return out[0]


class RandomGaussianBlur:
    """valeoai/ZS3's ``RandomGaussianBlur``: with probability ``p`` blur the image with radius (standard
    deviation) drawn from U[0, 1); the label passes through. PIL's ``GaussianBlur`` approximates the Gaussian
    with box filters; this is the exact separable Gaussian of the same standard deviation."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: torch.Tensor, label: torch.Tensor, generator: torch.Generator | None = None) -> Pair:
        if float(torch.rand((), generator=generator)) < self.p:
            image = gaussian_blur(image, float(torch.rand((), generator=generator)))
        return image, label

    def __repr__(self) -> str:
        return f"RandomGaussianBlur(p={self.p})"


class Normalize:
    """Per-channel ``(image - mean) / std``; the label passes through."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, image: torch.Tensor, label: torch.Tensor, generator: torch.Generator | None = None) -> Pair:
        return (image - self.mean) / self.std, label


def train_transform(
    crop_size: int | Sequence[int] = 512,
    scale_range: tuple[float, float] = (0.5, 2.0),
    *,
    base_size: int | None = None,
    flip_p: float = 0.5,
    pad_value: float = 0.0,
    pad_last: bool = False,
) -> Compose:
    """Training augmentation: random scale, random crop with padding (image ``pad_value``, label 255), h-flip.

    Args:
        crop_size: output size, int or (height, width).
        scale_range: random scale factor range.
        base_size: see :class:`RandomScale`.
        flip_p: horizontal flip probability.
        pad_value: raw RGB value 0..255 of padded image pixels (the image is in [0, 1], so ``pad_value / 255``
            is written); 0 = black, 128 = MaskFormer/ZegFormer's grey.
        pad_last: crop without padding, flip, then pad at the bottom/right (MaskFormer's semantic mapper);
            False pads inside the crop, before the flip (the padding may then end up on the left).
    """
    fill = float(pad_value) / 255.0
    if pad_last:
        return Compose(
            [
                RandomScale(scale_range, base_size),
                RandomCrop(crop_size, pad=False),
                RandomHorizontalFlip(flip_p),
                PadTo(crop_size, image_pad=fill),
            ]
        )
    return Compose(
        [RandomScale(scale_range, base_size), RandomCrop(crop_size, image_pad=fill), RandomHorizontalFlip(flip_p)]
    )


def official_train_transform(crop_size: int = 312, base_size: int | None = None) -> Compose:
    """valeoai/ZS3's training augmentation (``transform_tr``, in its order): h-flip, :class:`OfficialScaleCrop`,
    :class:`RandomGaussianBlur`.

    Args:
        crop_size: square crop side (official 312).
        base_size: the scale base (official 312); None: ``crop_size``.
    """
    return Compose(
        [RandomHorizontalFlip(0.5), OfficialScaleCrop(base_size or crop_size, crop_size), RandomGaussianBlur(0.5)]
    )


def eval_transform(
    size: int | Sequence[int] | None = None, *, resize_label: bool = True, rounding: str = "round"
) -> Compose:
    """Evaluation transform: identity when ``size`` is None, else a deterministic :class:`Resize`."""
    return Compose([] if size is None else [Resize(size, resize_label, rounding)])
