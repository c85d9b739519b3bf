"""The one evaluator of every method (reset / process / evaluate) and the one inference-on-dataset loop.

Every method's validation (after a stage, after training, ``zeroseg eval``) goes through
:func:`evaluate_predictor`: the validation images sharded over the ranks without padding, one confusion matrix
per rank, summed -- exactly the single-process result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from tqdm import tqdm

from zeroseg.data.io import IGNORE, IGNORE_WIDE
from zeroseg.engine.loaders import make_loader
from zeroseg.metrics import ConfusionMatrix, compute_metrics

#: ``images (B,3,H,W) on the device -> labels (B,H,W)`` (indices of the evaluated classes).
PredictFn = Callable[[torch.Tensor], torch.Tensor]


class SemSegEvaluator:
    """Streaming seen/unseen segmentation metrics over a fixed class list.

    Args:
        class_names: the evaluated classes (``C``); labels are their indices, ``ignore_index`` is skipped.
        seen_ids / unseen_ids: indices into ``class_names`` for seen/unseen mIoU and hIoU.
    """

    def __init__(
        self, class_names: Sequence[str], seen_ids: Sequence[int], unseen_ids: Sequence[int], *, ignore_index: int = 255
    ) -> None:
        self.class_names = tuple(class_names)
        self.seen_ids, self.unseen_ids = list(seen_ids), list(unseen_ids)
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        """Forget everything processed so far."""
        self.cm = ConfusionMatrix(len(self.class_names), ignore_index=self.ignore_index)

    def process(self, predictions: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: ``predictions`` and ``labels`` (B, H, W) class indices (labels 255 = ignore)."""
        self.cm.update(predictions.cpu(), labels.cpu())

    def evaluate(self) -> dict[str, Any]:
        """Metrics (percent) over everything processed by every rank (confusion matrices all-reduced)."""
        self.cm.all_reduce()
        return metrics_dict(self.cm.mat, self)


def metrics_dict(cm_mat: torch.Tensor, data_like: Any) -> dict:
    """Metrics (percent) of a confusion matrix over ``data_like.class_names``, split by its seen/unseen ids."""
    m = compute_metrics(cm_mat, seen_ids=list(data_like.seen_ids), unseen_ids=list(data_like.unseen_ids))
    return m.to_dict(list(data_like.class_names))


@torch.inference_mode()
def inference_on_dataset(
    predict: PredictFn,
    loader: Iterable,
    evaluator: SemSegEvaluator,
    *,
    device: torch.device | str,
    desc: str = "eval",
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``predict`` over ``(images, labels, ...)`` batches and return ``evaluator``'s metrics."""
    evaluator.reset()
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
        evaluator.process(predict(batch[0].to(device)), batch[1])
    return evaluator.evaluate()


def evaluate_predictor(
    predict: PredictFn,
    data: Any,
    data_cfg: Any,
    *,
    device: torch.device | str,
    progress: bool = True,
) -> dict[str, Any]:
    """Metrics of ``predict`` on ``data.val`` (a :class:`~zeroseg.data.zero_shot.ZeroShotData`), sharded over the ranks.

    Args:
        predict: images on ``device`` -> labels (B, H, W) in ``data.class_names``' indices.
        data: has ``val``, ``class_names``, ``seen_ids``, ``unseen_ids``.
        data_cfg: a :class:`~zeroseg.config.DataConfig` (``eval_batch_size``, ``num_workers``).
    """
    loader = make_loader(
        data.val, data_cfg.eval_batch_size, shuffle=False, workers=data_cfg.num_workers, seed=0, shard=True
    )
    # Label spaces of more than 255 dataset classes (PC-459, ADE-847) are 16-bit with ignore 65535.
    wide = len(data.split.dataset_class_names) > IGNORE
    ignore = IGNORE_WIDE if wide else IGNORE
    evaluator = SemSegEvaluator(data.class_names, data.seen_ids, data.unseen_ids, ignore_index=ignore)
    return inference_on_dataset(predict, loader, evaluator, device=device, progress=progress)
