"""Frozen-segmenter pixel features: the real samples the generator and the classifier learn from."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from zeroseg.config import ExperimentConfig
from zeroseg.data.zero_shot import ZeroShotData
from zeroseg.engine.loaders import make_loader
from zeroseg.errors import ZeroSegError
from zeroseg.modules.deeplab import DeepLabV3Plus

#: Real features stored per seen class with a final checkpoint (for refitting to a new class list).
BANK_PER_CLASS = 256


def labels_at(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour downsampling of (B,H,W) label maps to the feature resolution (B,h,w)."""
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def sample_pixels(
    features: torch.Tensor,
    labels: torch.Tensor,
    class_ids: torch.Tensor,
    per_class: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample up to ``per_class`` pixels of each listed class from each image.

    Args:
        features: (B, F, h, w) feature maps.
        labels: (B, h, w) labels at feature resolution.
        class_ids: (K,) classes to sample.
        per_class: pixels per (image, class) pair; all of them when fewer are present.
        generator: random source of the subsets.

    Returns:
        feats: (N, F) sampled features; ys: (N,) their labels.
    """
    feats, ys = [], []
    flat_f = features.permute(0, 2, 3, 1).reshape(features.shape[0], -1, features.shape[1])
    flat_y = labels.reshape(labels.shape[0], -1)
    for b in range(features.shape[0]):
        present = torch.unique(flat_y[b])
        for c in present[torch.isin(present, class_ids)]:
            idx = torch.nonzero(flat_y[b] == c).squeeze(1)
            if idx.numel() > per_class:
                idx = idx[torch.randperm(idx.numel(), generator=generator)[:per_class]]
            feats.append(flat_f[b, idx])
            ys.append(flat_y[b, idx])
    if not feats:
        return features.new_zeros(0, features.shape[1]), labels.new_zeros(0)
    return torch.cat(feats), torch.cat(ys)


FEATURE_MODES = ("eval", "train")


@torch.no_grad()
def frozen_features(model: DeepLabV3Plus, images: torch.Tensor, *, mode: str = "eval") -> torch.Tensor:
    """(B, 256, h, w) features of ``images`` from the segmenter, without gradients.

    Args:
        mode: "eval" -- BatchNorm uses its running statistics, dropout off. "train" -- as valeoai/ZS3 takes
            them (``model.train()`` then ``forward_before_class_prediction`` under ``no_grad``): BatchNorm
            normalises with the batch's statistics and *updates* its running statistics, dropout is on.
    """
    if mode not in FEATURE_MODES:
        raise ZeroSegError(f"classifier.features {mode!r}: choose 'eval' or 'train'")
    model.train(mode == "train")
    return model.extract_features(images)


def feature_batches(
    model: DeepLabV3Plus,
    loader: DataLoader,
    device: torch.device,
    *,
    desc: str = "",
    progress: bool = False,
    mode: str = "eval",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Frozen-segmenter features of each batch with its labels at feature resolution.

    Args:
        mode: see :func:`frozen_features`.

    Yields:
        feats: (B, 256, h, w); labels: (B, h, w) nearest-downsampled.
    """
    for images, labels, _ in tqdm(loader, desc=desc, leave=False, disable=not progress):
        feats = frozen_features(model, images.to(device), mode=mode)
        yield feats, labels_at(labels.to(device), feats.shape[-2:])


def seen_pixel_sets(
    feats: torch.Tensor, ys: torch.Tensor, seen: set[int], n: int, rng: torch.Generator
) -> Iterator[tuple[int, torch.Tensor]]:
    """The generator's real targets, as valeoai/ZS3 draws them: for each image and each seen class present in
    it, ``n`` pixel features drawn with replacement (one Adam step is taken per such set).

    Args:
        feats: (B, F, h, w) features; ys: (B, h, w) labels at feature resolution.
        seen: seen class ids.
        n: pixels per set.
        rng: random source of the draws.

    Yields:
        (class id, real features (n, F)).
    """
    for b in range(feats.shape[0]):
        flat_f = feats[b].flatten(1).T
        flat_y = ys[b].flatten()
        for c in torch.unique(flat_y).tolist():
            if c not in seen:
                continue
            where = torch.nonzero(flat_y == c).squeeze(1)
            yield c, flat_f[where[torch.randint(where.numel(), (n,), generator=rng).to(where.device)]]


def official_pixel_sets(
    feats: torch.Tensor, ys: torch.Tensor, seen: set[int], unseen: set[int], n: int, rng: torch.Generator
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """The generator's real targets as valeoai/ZS3 builds them (train_pascal_GMMN.py): for each image with no
    unseen pixel and each seen class in it, *all* the class's pixel features and one index draw ``idx`` of
    ``n`` positions with replacement; the step compares ``fake[idx]`` with ``real[idx]`` for one fake per real
    pixel (:func:`~zeroseg.generative.generator.official_generator_step`).

    Args:
        feats: (B, F, h, w) features; ys: (B, h, w) labels at feature resolution (full ground truth).
        seen / unseen: class ids; an image holding any unseen id gives no set.
        n: size of the index draw (``--batch_size_generator``, 128).
        rng: random source of the draws.

    Yields:
        (class id, real features (m, F) of every pixel of the class, idx (n,) into them).
    """
    for b in range(feats.shape[0]):
        flat_f = feats[b].flatten(1).T
        flat_y = ys[b].flatten()
        present = torch.unique(flat_y).tolist()
        if any(c in unseen for c in present):
            continue
        for c in present:
            if c not in seen:
                continue
            real = flat_f[flat_y == c]
            yield c, real, torch.randint(real.shape[0], (n,), generator=rng).to(real.device)


@torch.no_grad()
def feature_bank(
    model: DeepLabV3Plus, data: ZeroShotData, cfg: ExperimentConfig, per_class: int = BANK_PER_CLASS
) -> tuple[torch.Tensor, torch.Tensor]:
    """A few real features per seen class, stored with the model so new class lists can be fit later.

    Returns:
        x: (N, F) features, ``per_class`` (or all there are) of each seen class in turn; y: (N,) their classes.
    """
    rng = torch.Generator().manual_seed(cfg.seed + 2)
    loader = make_loader(
        data.train_plain, cfg.data.eval_batch_size, shuffle=False, workers=cfg.data.num_workers, seed=0
    )
    seen = torch.tensor(data.seen_ids)
    feats, ys = [], []
    counts = torch.zeros(len(data.class_names), dtype=torch.long)
    for f, y_small in feature_batches(model, loader, torch.device(cfg.device)):
        x, y = sample_pixels(f, y_small, seen, 8, rng)
        feats.append(x.cpu())
        ys.append(y.cpu())
        counts += torch.bincount(y.cpu(), minlength=len(counts))
        if all(counts[c] >= per_class for c in data.seen_ids):
            break
    x, y = torch.cat(feats), torch.cat(ys)
    keep = torch.cat([torch.nonzero(y == c).squeeze(1)[:per_class] for c in data.seen_ids])
    return x[keep], y[keep]
