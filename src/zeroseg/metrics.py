"""Semantic-segmentation metrics from a streaming confusion matrix.

Tensors in, numbers out: nothing here prints or touches files.

The confusion matrix ``mat`` is ``(C, C)`` int64 with **rows = ground truth, columns = prediction**, filled
with one ``torch.bincount`` per update (the torchvision segmentation-references recipe). Pixels whose
ground truth equals ``ignore_index`` are skipped; any other id outside ``0..C-1`` is an error, never
silently dropped.

NaN convention (the one used by mmsegmentation, torchmetrics and the SPNet/CaGNet evaluation code):

* ``IoU_c = TP_c / (TP_c + FP_c + FN_c)`` is **undefined** (``None`` in ``per_class_iou``, NaN internally)
  when class ``c`` appears in neither the ground truth nor the prediction. Undefined classes are left out
  of every mean (mIoU, seen mIoU, unseen mIoU). A class that is predicted but absent from the ground truth
  has IoU 0 and does count.
* ``Acc_c = TP_c / GT_c`` (per-class recall) is undefined when the class has no ground-truth pixels; mean
  accuracy averages the defined ones.
* fwIoU weights each IoU by the class's share of ground-truth pixels, so classes without ground truth weigh 0.

Sources checked: mmsegmentation ``mmseg/evaluation/metrics/iou_metric.py`` (IoU = intersect / union with NaN
for an empty union, summary = ``np.nanmean``); torchmetrics ``_jaccard_index_reduce`` (``average="macro"``
gives weight 0 to classes with an empty row and column); bcmi/CaGNet ``tools.py::scores_gzsl`` (nanmean IoU
over seen and unseen ids, harmonic mean ``2 / (1/S + 1/U)`` replaced by 0 when NaN). valeoai/ZS3
``zs3/utils/metrics.py::Evaluator.Mean_Intersection_over_Union`` differs: it computes
``np.nanmean(np.nan_to_num(iou))``, i.e. absent classes count as IoU 0. The two only disagree when a class is
absent from both the ground truth and the prediction of the whole evaluation set; pass
``absent_as_zero=True`` to :func:`compute_metrics` to reproduce the ZS3 numbers in that case.

hIoU is the harmonic mean of seen and unseen mIoU, ``2 * S * U / (S + U)``, defined as 0 when both are 0
(SPNet, Xian et al. CVPR 2019; ZS3Net, Bucher et al. NeurIPS 2019).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from zeroseg.errors import ZeroSegError

__all__ = [
    "ConfusionMatrix",
    "LabelRangeError",
    "SegMetrics",
    "compute_metrics",
    "harmonic_mean",
]

_MAX_LISTED_IDS = 5


class LabelRangeError(ValueError):
    """A class id outside ``0..num_classes-1`` (and not the ignore index) reached :class:`ConfusionMatrix`.

    Attributes:
        which: ``"target"`` or ``"prediction"``.
        bad_ids: the offending ids, sorted, at most five of them.
        num_classes: the valid range is ``0..num_classes-1``.
        ignore_index: the id that is skipped in the target.
    """

    def __init__(self, which: str, bad_ids: list[int], num_classes: int, ignore_index: int) -> None:
        self.which = which
        self.bad_ids = bad_ids
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        noun = "label id" if len(bad_ids) == 1 else "label ids"
        ids = ", ".join(str(i) for i in bad_ids)
        super().__init__(
            f"{which} {noun} {ids} outside 0..{num_classes - 1} ({num_classes} classes, {ignore_index} = ignore)"
        )


def _bad_ids(values: torch.Tensor, num_classes: int) -> list[int]:
    bad = values[(values < 0) | (values >= num_classes)]
    return [int(v) for v in torch.unique(bad)[:_MAX_LISTED_IDS].tolist()]


class ConfusionMatrix:
    """Streaming ``(C, C)`` confusion matrix; rows = ground truth, columns = prediction.

    Args:
        num_classes: number of classes ``C``; valid ids are ``0..C-1``.
        ignore_index: ground-truth id whose pixels are skipped (255 for VOC-style labels). It may lie inside
            ``0..C-1`` (e.g. 0 for a "reduce zero label" protocol); those pixels are then skipped too.
        device: where ``mat`` lives; inputs are moved there. Use a CUDA device when all-reducing over NCCL.

    Example:
        >>> cm = ConfusionMatrix(3)
        >>> cm.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]))
        >>> cm.mat.tolist()
        [[1, 0, 0], [0, 1, 1], [0, 0, 0]]
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str | None = None) -> None:
        if int(num_classes) < 1:
            raise ZeroSegError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.mat = torch.zeros(
            (self.num_classes, self.num_classes), dtype=torch.int64, device=torch.device(device or "cpu")
        )

    @property
    def device(self) -> torch.device:
        """The device of ``mat``."""
        return self.mat.device

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch of label maps.

        Args:
            pred: predicted class ids, integer tensor of shape (N, H, W) or (H, W) (any shape works, as long
                as it equals ``target``'s).
            target: ground-truth ids, same shape; pixels equal to ``ignore_index`` are skipped.

        Raises:
            ValueError: shapes differ or a tensor is not integer-typed.
            LabelRangeError: a target id (other than the ignore index) or a prediction id at a counted pixel
                lies outside ``0..C-1``. Predictions at ignored pixels are not checked, since writers commonly
                put 255 there. Nothing is added when it raises.
        """
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
        for name, t in (("prediction", pred), ("target", target)):
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise ValueError(f"{name} must hold integer class ids, got dtype {t.dtype}")
        n = self.num_classes
        # int64 before multiplying: uint8 inputs would overflow in n * target.
        t = target.reshape(-1).to(device=self.device, dtype=torch.int64)
        p = pred.reshape(-1).to(device=self.device, dtype=torch.int64)
        if t.numel() == 0:
            return
        valid = t != self.ignore_index
        # Ignored pixels go to an extra "dump" bin instead of being compacted out with boolean indexing,
        # which costs more than everything else here together. Range checks are one aminmax per tensor;
        # the masked re-check of the prediction only runs when something is out of range.
        tmin, tmax = torch.aminmax(torch.where(valid, t, 0))
        if int(tmin) < 0 or int(tmax) >= n:
            raise LabelRangeError("target", _bad_ids(t[valid], n), n, self.ignore_index)
        pmin, pmax = torch.aminmax(p)
        if int(pmin) < 0 or int(pmax) >= n:
            pmin, pmax = torch.aminmax(torch.where(valid, p, 0))
            if int(pmin) < 0 or int(pmax) >= n:
                raise LabelRangeError("prediction", _bad_ids(p[valid], n), n, self.ignore_index)
        idx = torch.where(valid, t * n + p, n * n)
        self.mat += torch.bincount(idx, minlength=n * n + 1)[: n * n].reshape(n, n)

    def reset(self) -> None:
        """Zero the matrix."""
        self.mat.zero_()

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts into this one (e.g. from a worker) and return ``self``."""
        if other.num_classes != self.num_classes:
            raise ValueError(
                f"cannot merge a {other.num_classes}-class confusion matrix into a {self.num_classes}-class one"
            )
        self.mat += other.mat.to(self.device)
        return self

    def all_reduce(self) -> None:
        """Sum ``mat`` over all ``torch.distributed`` ranks; a no-op when no process group is initialised.

        Every rank must call it (it is a collective). With NCCL, ``mat`` must be on the rank's CUDA device.
        """
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.mat, op=torch.distributed.ReduceOp.SUM)

    def compute(
        self,
        seen_ids: Sequence[int] | None = None,
        unseen_ids: Sequence[int] | None = None,
        *,
        absent_as_zero: bool = False,
    ) -> SegMetrics:
        """Shorthand for :func:`compute_metrics` on this matrix."""
        return compute_metrics(self.mat, seen_ids, unseen_ids, absent_as_zero=absent_as_zero)


def harmonic_mean(seen: float, unseen: float) -> float:
    """hIoU-style harmonic mean ``2 * S * U / (S + U)``: 0 when both are 0, NaN when either is NaN."""
    if math.isnan(seen) or math.isnan(unseen):
        return math.nan
    if seen + unseen == 0:
        return 0.0
    return 2.0 * seen * unseen / (seen + unseen)


def _none_if_nan(x: float) -> float | None:
    return None if math.isnan(x) else x


def _percent(x: float | None, ndigits: int = 2) -> float | None:
    return None if x is None or math.isnan(x) else round(100.0 * x, ndigits)


@dataclass
class SegMetrics:
    """Metrics of one confusion matrix. All values are fractions in ``[0, 1]``; NaN means undefined.

    Attributes:
        per_class_iou: length C; ``None`` for classes absent from both ground truth and prediction.
        per_class_acc: length C; per-class recall, ``None`` for classes without ground-truth pixels.
        miou: mean of the defined IoUs (NaN if none is defined).
        seen_miou: mean of the defined IoUs over ``seen_ids`` (NaN if no seen ids or none defined).
        unseen_miou: same over ``unseen_ids``.
        hiou: ``2 * S * U / (S + U)`` of seen and unseen mIoU; 0 when both are 0, NaN when either is NaN.
        pixel_acc: correctly labelled pixels / counted pixels.
        mean_acc: mean of the defined per-class accuracies.
        fwiou: sum over classes of (class's share of ground-truth pixels) * IoU.
        num_pixels: counted (non-ignored) pixels.
        seen_ids: the seen class ids used (sorted).
        unseen_ids: the unseen class ids used (sorted).
    """

    per_class_iou: list[float | None]
    per_class_acc: list[float | None]
    miou: float
    seen_miou: float
    unseen_miou: float
    hiou: float
    pixel_acc: float
    mean_acc: float
    fwiou: float
    num_pixels: int
    seen_ids: tuple[int, ...] = field(default_factory=tuple)
    unseen_ids: tuple[int, ...] = field(default_factory=tuple)

    @property
    def num_classes(self) -> int:
        """Number of classes C."""
        return len(self.per_class_iou)

    def to_dict(self, class_names: Sequence[str] | None = None, ndigits: int = 2) -> dict[str, Any]:
        """JSON-ready summary in percent, rounded to ``ndigits`` decimals; undefined values become ``None``.

        Args:
            class_names: one name per class id (length C); ``None`` names them ``class_<id>``.
            ndigits: decimals kept after converting to percent.

        Returns:
            ``{"miou", "seen_miou", "unseen_miou", "hiou", "pixel_acc", "mean_acc", "fwiou", "num_pixels",
            "num_classes", "per_class": [{"id", "name", "split", "iou", "acc"}, ...]}`` where ``split`` is
            ``"seen"``, ``"unseen"`` or ``None`` (class in neither list).
        """
        if class_names is None:
            class_names = [f"class_{i}" for i in range(self.num_classes)]
        if len(class_names) != self.num_classes:
            raise ZeroSegError(f"got {len(class_names)} class names for a {self.num_classes}-class confusion matrix")
        seen, unseen = set(self.seen_ids), set(self.unseen_ids)
        per_class = []
        for i, name in enumerate(class_names):
            split = "seen" if i in seen else "unseen" if i in unseen else None
            per_class.append(
                {
                    "id": i,
                    "name": str(name),
                    "split": split,
                    "iou": _percent(self.per_class_iou[i], ndigits),
                    "acc": _percent(self.per_class_acc[i], ndigits),
                }
            )
        return {
            "miou": _percent(self.miou, ndigits),
            "seen_miou": _percent(self.seen_miou, ndigits),
            "unseen_miou": _percent(self.unseen_miou, ndigits),
            "hiou": _percent(self.hiou, ndigits),
            "pixel_acc": _percent(self.pixel_acc, ndigits),
            "mean_acc": _percent(self.mean_acc, ndigits),
            "fwiou": _percent(self.fwiou, ndigits),
            "num_pixels": self.num_pixels,
            "num_classes": self.num_classes,
            "per_class": per_class,
        }


def _check_ids(ids: Sequence[int] | None, num_classes: int, what: str) -> tuple[int, ...]:
    if ids is None:
        return ()
    out = tuple(sorted({int(i) for i in ids}))
    bad = [i for i in out if not 0 <= i < num_classes]
    if bad:
        shown = bad[:_MAX_LISTED_IDS]
        raise ZeroSegError(f"{what} {shown} outside 0..{num_classes - 1} ({num_classes} classes)")
    return out


def _nanmean(values: torch.Tensor) -> float:
    defined = values[~torch.isnan(values)]
    return float(defined.mean()) if defined.numel() else math.nan


def compute_metrics(
    mat: torch.Tensor,
    seen_ids: Sequence[int] | None = None,
    unseen_ids: Sequence[int] | None = None,
    *,
    absent_as_zero: bool = False,
) -> SegMetrics:
    """All metrics from a confusion matrix (see the module docstring for the NaN convention).

    Args:
        mat: (C, C) counts, rows = ground truth, columns = prediction.
        seen_ids: class ids of the seen split; ``None`` leaves seen mIoU (and hIoU) undefined.
        unseen_ids: class ids of the unseen split; must not overlap ``seen_ids``.
        absent_as_zero: count classes absent from both ground truth and prediction as IoU 0 in the means
            instead of leaving them out (valeoai/ZS3's ``nanmean(nan_to_num(iou))``). ``per_class_iou``
            still reports them as ``None``.

    Returns:
        A :class:`SegMetrics`.
    """
    if mat.ndim != 2 or mat.shape[0] != mat.shape[1]:
        raise ValueError(f"confusion matrix must be square (C, C), got shape {tuple(mat.shape)}")
    num_classes = int(mat.shape[0])
    seen = _check_ids(seen_ids, num_classes, "seen ids")
    unseen = _check_ids(unseen_ids, num_classes, "unseen ids")
    overlap = sorted(set(seen) & set(unseen))
    if overlap:
        raise ZeroSegError(f"class ids {overlap[:_MAX_LISTED_IDS]} are both seen and unseen")

    # float64 keeps counts exact up to 2**53 pixels.
    h = mat.detach().to("cpu", torch.float64)
    tp = torch.diagonal(h)
    gt = h.sum(dim=1)
    pred = h.sum(dim=0)
    union = gt + pred - tp
    total = float(h.sum())
    nan = torch.tensor(math.nan, dtype=torch.float64)
    iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
    acc = torch.where(gt > 0, tp / gt.clamp(min=1), nan)
    iou_for_means = torch.nan_to_num(iou, nan=0.0) if absent_as_zero else iou

    def subset_mean(ids: tuple[int, ...]) -> float:
        return _nanmean(iou_for_means[list(ids)]) if ids else math.nan

    seen_miou = subset_mean(seen)
    unseen_miou = subset_mean(unseen)
    if total > 0:
        pixel_acc = float(tp.sum()) / total
        fwiou = float((gt / total * torch.nan_to_num(iou, nan=0.0)).sum())
    else:
        pixel_acc = fwiou = math.nan
    return SegMetrics(
        per_class_iou=[_none_if_nan(float(v)) for v in iou],
        per_class_acc=[_none_if_nan(float(v)) for v in acc],
        miou=_nanmean(iou_for_means),
        seen_miou=seen_miou,
        unseen_miou=unseen_miou,
        hiou=harmonic_mean(seen_miou, unseen_miou),
        pixel_acc=pixel_acc,
        mean_acc=_nanmean(acc),
        fwiou=fwiou,
        num_pixels=int(mat.sum()),
        seen_ids=seen,
        unseen_ids=unseen,
    )
