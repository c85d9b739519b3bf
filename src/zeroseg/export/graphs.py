"""The computations that go into an exported graph: a predictor's whole inference, image in, scores and labels out.

Each graph takes ImageNet-normalised images ``(B, 3, H, W)`` (:func:`zeroseg.methods.predict.to_tensor`) and
returns ``(scores (B, C, H, W) float, labels (B, H, W) int64)`` with ``labels = scores.argmax(1)``:

* :class:`ZS3Graph` -- DeepLabV3+ with the classifier the predictor holds (refit for the vocabulary by
  ``ZS3Predictor.set_classes``); ``scores`` are its logits upsampled to the input size (before the softmax:
  the softmax does not change the argmax, and logits are what the parity tests compare).
* :class:`ZegFormerGraph` -- :meth:`ZegFormerPredictor.scores` with traceable padding and resizing around the same
  core (:func:`~zeroseg.methods.zegformer.padded_scores`): test-time resize, zero padding to a
  multiple of 32, the segment network with the vocabulary's text embeddings as a constant, semantic inference
  (optionally fused with the CLIP image branch), crop, resize back, seen-class calibration; ``scores`` are the
  calibrated semantic scores.

The modules are written so that tracing keeps them exact for every input size of a ``--dynamic`` export: the
padding is computed from the traced shape with tensor ops (Python's ``max`` in
:func:`~zeroseg.modules.zegformer.pad_to_multiple` would be frozen at the example's branch), and the antialiased
test-time resize, which ONNX's TorchScript exporter cannot express, is baked as two resize matrices for a fixed
input size (so a checkpoint with ``test_min_size`` needs ``--size``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zeroseg.errors import ZeroSegError
from zeroseg.methods.zegformer import padded_scores, seen_calibration
from zeroseg.modules.zegformer import SIZE_DIVISIBILITY


def pad_traceable(images: torch.Tensor, multiple: int = SIZE_DIVISIBILITY) -> torch.Tensor:
    """:func:`~zeroseg.modules.zegformer.pad_to_multiple` (bottom/right zeros up to a multiple of ``multiple``, at
    least ``2 * multiple``) with the pad amounts computed as tensors, so that a traced graph pads every input size
    correctly."""
    hw = torch._shape_as_tensor(images)[2:]
    pad = torch.maximum(torch.remainder(-hw, multiple), 2 * multiple - hw)
    return F.pad(images, [0, pad[1], 0, pad[0]])


def resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """``(n_out, n_in)``: the matrix of torch's antialiased bilinear resize along one axis (``align_corners=False``).

    The antialiased resize is separable, so ``F.interpolate(x, (h2, w2), antialias=True) == Rh @ x @ Rw.T``; each
    matrix is read off by resizing an identity (the other axis keeps its size, which is the identity map).
    """
    eye = torch.eye(n_in, dtype=torch.float64)[None, None]
    r = F.interpolate(eye, size=(n_out, n_in), mode="bilinear", align_corners=False, antialias=True)
    return r[0, 0].float()


class ZS3Graph(nn.Module):
    """ZS3Net inference: ``images (B, 3, H, W) -> (logits (B, C, H, W), labels (B, H, W))``.

    Args:
        model: the predictor's DeepLabV3+ (its classifier already fit for the vocabulary).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(images)
        return logits, logits.argmax(1)


class ZegFormerGraph(nn.Module):
    """ZegFormer inference as :meth:`ZegFormerPredictor.scores` + argmax, with the vocabulary baked in.

    Args:
        predictor: a ``ZegFormerPredictor`` set to the vocabulary (its ``text``, ``seen_ids``, ``options`` and,
            when it has one, its CLIP image branch are captured).
        input_size: ``(H, W)`` of a fixed-size export; None for any size (then the predictor must not resize
            for the network: ``test_min_size`` None).

    Raises:
        ZeroSegError: a test-time resize without a fixed input size, or a CLIP branch whose mode or skip rules
            select a data-dependent number of crops.
    """

    calibration: torch.Tensor
    text: torch.Tensor

    def __init__(self, predictor: Any, input_size: tuple[int, int] | None) -> None:
        super().__init__()
        o = predictor.options
        self.model = predictor.model
        self.register_buffer("text", predictor.text.detach().clone())
        # Officially only the seen classes lose gzero_calibrate; a vector makes that one subtraction in the graph.
        calibration = seen_calibration(len(predictor.class_names), predictor.seen_ids, o.gzero_calibrate)
        self.register_buffer("calibration", calibration)
        self.network_size: tuple[int, int] | None = None
        if o.test_min_size is not None:
            if input_size is None:
                raise ZeroSegError(
                    f"this checkpoint resizes images for the network (test_min_size {o.test_min_size}, antialiased), "
                    "which the ONNX export bakes for one input size: export with --size H W, not --dynamic"
                )
            size = tuple(predictor.network_size(*input_size))
            if size != tuple(input_size):
                self.network_size = size  # type: ignore[assignment]
                self.register_buffer("resize_h", resize_matrix(input_size[0], size[0]))
                self.register_buffer("resize_w", resize_matrix(input_size[1], size[1]))
        self.clip = predictor.clip
        self.seen_ids = list(predictor.seen_ids)
        self.unseen_ids = list(predictor.unseen_ids)
        self.options = o  # padded_scores reads the ensembling options
        if self.clip is not None:
            c = self.clip
            if getattr(c, "mode", None) == "pool" or c.skip_empty or c.skip_no_object is not None:
                raise ZeroSegError(
                    "the CLIP image branch exports only without skip rules and not in 'pool' mode (the official "
                    "per-image crops); set zegformer.skip_empty false, skip_no_object null and clip_mode per_image"
                )
            self.register_buffer("clip_text", predictor.clip_text.detach().clone())

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = images.shape[-2:]
        if self.network_size is not None:
            images = torch.einsum("nh,bchw,mw->bcnm", self.resize_h, images, self.resize_w)
        resized = images.shape[-2:]
        sem = padded_scores(self, images, pad_traceable)
        sem = sem[..., : resized[0], : resized[1]]
        if self.network_size is not None:
            sem = F.interpolate(sem, size=(h, w), mode="bilinear", align_corners=False)
        sem = sem - self.calibration[None, :, None, None]
        return sem, sem.argmax(1)
