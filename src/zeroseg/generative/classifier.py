"""Retraining the final 1x1 classifier on real seen + generated unseen pixel features.

The two protocols differ only in the batches they build: :func:`strict_batch` (no unseen pixel of any
training image is used; generated unseen features under a uniform class prior) and :func:`official_batch`
(valeoai/ZS3: an image with unseen pixels has all its labelled features replaced by generated ones).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from zeroseg.data.zero_shot import IGNORE
from zeroseg.engine.distributed import is_main
from zeroseg.generative.features import sample_pixels


def _log(msg: str) -> None:
    if is_main():
        tqdm.write(msg)


def class_weights(num_classes: int, unseen_ids: Sequence[int], unseen_weight: float) -> torch.Tensor:
    """(C,) cross-entropy class weights: 1 for every class, ``unseen_weight`` for the unseen ones."""
    weight = torch.ones(num_classes)
    weight[torch.tensor(unseen_ids, dtype=torch.long)] = unseen_weight
    return weight


@torch.no_grad()
def strict_batch(
    feats: torch.Tensor,
    labels: torch.Tensor,
    gen: nn.Module,
    emb: torch.Tensor,
    seen: torch.Tensor,
    unseen: torch.Tensor,
    per_class: int,
    rng: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The strict protocol's classifier batch: sampled real seen features + generated unseen features.

    Each unseen class gets as many generated features as the mean count of a seen class sampled in this
    batch (a uniform class prior), at least one.

    Args:
        feats: (B, F, h, w) features of seen-only images; labels: (B, h, w) at feature resolution.
        gen: generator, (N, E) -> (N, F).
        emb: (C, E) class embeddings on the features' device.
        seen: (S,) seen ids; unseen: (U,) unseen ids.
        per_class: real pixels per (image, seen class), see :func:`~zeroseg.generative.features.sample_pixels`.
        rng: random source of the real samples.

    Returns:
        x: (N, F), y: (N,) -- real rows first, then the unseen rows class by class; ``None`` when the batch
        has no seen pixel.
    """
    x, y = sample_pixels(feats, labels, seen, per_class, rng)
    if y.numel() == 0:
        return None
    n_unseen = max(1, round(y.numel() / max(1, torch.unique(y).numel())))
    yu = unseen.repeat_interleave(n_unseen).to(feats.device)
    xu = gen(emb[yu]) if yu.numel() else x.new_zeros(0, x.shape[1])
    return torch.cat([x, xu]), torch.cat([y, yu])


@torch.no_grad()
def official_batch(
    feats: torch.Tensor, labels: torch.Tensor, gen: nn.Module, emb: torch.Tensor, unseen: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The official protocol's classifier batch (valeoai/ZS3): every pixel of every image, where an image
    with any unseen pixel gets generated features at *every* labelled pixel (conditioned on its ground-truth
    class) and the others keep their real features. ``IGNORE`` pixels keep their real features (the loss
    ignores them).

    Args:
        feats: (B, F, h, w) features; labels: (B, h, w) full ground truth at feature resolution.
        gen: generator, (N, E) -> (N, F).
        emb: (C, E) class embeddings on the features' device.
        unseen: (U,) unseen ids.

    Returns:
        x: (B*h*w, F), y: (B*h*w,) in (image, row, column) order.
    """
    x = feats.permute(0, 2, 3, 1).clone()
    has_unseen = torch.isin(labels, unseen.to(labels.device)).flatten(1).any(1)
    for b in torch.nonzero(has_unseen).flatten().tolist():
        valid = labels[b] != IGNORE
        x[b][valid] = gen(emb[labels[b][valid]])
    return x.reshape(-1, x.shape[-1]), labels.reshape(-1)


@torch.no_grad()
def refit_samples(
    names: Sequence[str],
    bank_names: Sequence[str],
    seen_names: Sequence[str],
    bank_x: torch.Tensor,
    bank_y: torch.Tensor,
    gen: nn.Module,
    emb: torch.Tensor,
    samples_per_class: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training samples for refitting the classifier to the class list ``names``.

    A name seen in training takes the stored real features of that class; any other name gets
    ``samples_per_class`` generated features conditioned on its embedding.

    Args:
        names: the new class list (K names).
        bank_names: the class list the bank's labels index (the checkpoint's classes).
        seen_names: the checkpoint's seen classes.
        bank_x: (M, F) stored real features; bank_y: (M,) their ids into ``bank_names``.
        gen: generator, (N, E) -> (N, F).
        emb: (K, E) embeddings of ``names``, on the device the samples should be on.
        samples_per_class: generated features per new name.

    Returns:
        x: (N, F), y: (N,) ids into ``names``, class by class.
    """
    xs, ys = [], []
    for k, name in enumerate(names):
        if name in seen_names:
            x = bank_x[bank_y == bank_names.index(name)].to(emb.device)
        else:
            x = gen(emb[k : k + 1].expand(samples_per_class, -1))
        xs.append(x)
        ys.append(torch.full((x.shape[0],), k, dtype=torch.long, device=emb.device))
    return torch.cat(xs), torch.cat(ys)


def classifier_optimizer(classifier: nn.Module, lr: float) -> torch.optim.SGD:
    """The retraining optimiser: SGD, momentum 0.9, weight decay 5e-4 (:data:`WEIGHT_DECAY`)."""
    return torch.optim.SGD(classifier.parameters(), lr=lr, momentum=0.9, weight_decay=WEIGHT_DECAY)


def classifier_criterion(class_weight: torch.Tensor | None) -> nn.CrossEntropyLoss:
    """Class-weighted cross-entropy ignoring ``IGNORE`` labels."""
    return nn.CrossEntropyLoss(weight=class_weight, ignore_index=IGNORE)


def _logits(classifier: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return classifier(x[:, :, None, None])[:, :, 0, 0]


def classifier_step(
    classifier: nn.Module,
    opt: torch.optim.Optimizer,
    criterion: nn.Module,
    batch: tuple[torch.Tensor, ...],
    *,
    aux_weight: float = 0.0,
) -> float:
    """One optimiser step of a 1x1 conv used as a linear classifier on pixel features.

    Args:
        classifier: (F -> C) 1x1 conv.
        opt: its optimiser; criterion: the loss (:func:`classifier_criterion`).
        batch: ``(x (N, F), y (N,))``, or ``(x, y, x_aux (M, F), y_aux (M,))`` whose auxiliary samples
            (graph-node features, ZS3Net-GC) add ``aux_weight * criterion(aux)``, as the official code adds
            ``GCN_weight * loss_GCN``.
        aux_weight: weight of the auxiliary term.

    Returns:
        the loss before the step.
    """
    x, y = batch[0], batch[1]
    loss = criterion(_logits(classifier, x), y)
    if len(batch) == 4 and batch[3].numel() and aux_weight:
        loss = loss + aux_weight * criterion(_logits(classifier, batch[2]), batch[3])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def fit_linear_classifier(
    classifier: nn.Conv2d,
    batches: Callable[[], Iterable[Any]],
    *,
    epochs: int,
    lr: float,
    class_weight: torch.Tensor | None,
    desc: str,
    progress: bool,
    aux_weight: float = 0.0,
) -> list[float]:
    """Train a 1x1 conv as a linear classifier on pixel features from ``batches()`` (see :func:`classifier_step`).

    Args:
        classifier: the 1x1 conv.
        batches: called once per epoch; yields the batches of :func:`classifier_step`.
        epochs: passes over ``batches()``; lr: SGD learning rate.
        class_weight: (C,) cross-entropy weights (:func:`class_weights`) or ``None``.
        desc: label of the progress bar and log lines; progress: show the bar.
        aux_weight: weight of the auxiliary (graph-node) term.

    Returns:
        the mean loss of each epoch.
    """
    opt = classifier_optimizer(classifier, lr)
    criterion = classifier_criterion(class_weight)
    history = []
    for epoch in range(epochs):
        total, n = 0.0, 0
        for batch in tqdm(batches(), desc=f"{desc} {epoch + 1}/{epochs}", leave=False, disable=not progress):
            total += classifier_step(classifier, opt, criterion, batch, aux_weight=aux_weight)
            n += 1
        history.append(total / max(n, 1))
        _log(f"[{desc}] epoch {epoch + 1}/{epochs} loss {history[-1]:.4f}")
    return history


#: Weight decay of the refit's SGD (:func:`classifier_optimizer`), the L2 term of :func:`linear_objective`.
WEIGHT_DECAY = 5e-4


def linear_objective(
    weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor, weight_decay: float
) -> torch.Tensor:
    """The objective that :func:`fit_linear_classifier`'s SGD minimises, on the whole sample set at once:
    mean softmax cross-entropy of ``x @ weight.T + bias`` plus ``weight_decay / 2 * (|weight|^2 + |bias|^2)``
    (torch's ``weight_decay`` adds ``weight_decay * p`` to every parameter's gradient, the bias included: the
    gradient of that L2 term).

    Args:
        weight: (C, F); bias: (C,); x: (N, F) features; y: (N,) labels in ``0..C-1``.

    Returns:
        the scalar objective.
    """
    ce = F.cross_entropy(torch.addmm(bias, x, weight.T), y)
    return ce + 0.5 * weight_decay * (weight.square().sum() + bias.square().sum())


@dataclass(frozen=True)
class LinearSolve:
    """How :func:`solve_linear_classifier` ended.

    Attributes:
        objective: :func:`linear_objective` at the solution.
        grad_norm: the Euclidean norm of its gradient there (0 at the exact optimum).
        iterations: L-BFGS iterations taken; evaluations: objective + gradient evaluations.
    """

    objective: float
    grad_norm: float
    iterations: int
    evaluations: int


def solve_linear_classifier(
    classifier: nn.Conv2d,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    weight_decay: float = WEIGHT_DECAY,
    max_iter: int = 2000,
    tolerance_grad: float = 1e-6,
    dtype: torch.dtype = torch.float64,
) -> LinearSolve:
    """Fit a 1x1 conv as a linear classifier on pixel features by minimising :func:`linear_objective` over the
    whole sample set with L-BFGS (strong-Wolfe line search) until the largest gradient entry is below
    ``tolerance_grad``; the result is written into ``classifier`` (its dtype kept).

    Why this is the classifier that :func:`fit_linear_classifier`'s SGD run (minibatches of a fresh random
    permutation, momentum, ``weight_decay`` on weight and bias) approaches: each minibatch gradient of the mean
    cross-entropy plus the decay term is, over the permutation, an unbiased estimate of the gradient of
    :func:`linear_objective` on all samples (every sample is equally likely to fall in every batch), so SGD with
    or without momentum is stochastic gradient descent on that one objective. The objective is strictly convex
    in (weight, bias): the cross-entropy of an affine map is convex and the L2 term with ``weight_decay > 0`` is
    strongly convex, so it has exactly one minimiser and no other stationary point. SGD at a constant rate
    drifts towards it and then jitters around it (a noise ball of size O(lr)) -- after 60 epochs from the
    U[0, 1) initialisation it may still be on its way -- while this solve lands on it, independent of the
    starting point, up to ``tolerance_grad``.

    Args:
        classifier: (F -> C) 1x1 conv; its current weights are the starting point only.
        x: (N, F) features; y: (N,) labels in ``0..C-1`` (no ignore label).
        weight_decay: the L2 coefficient (SGD's ``weight_decay``).
        max_iter: most L-BFGS iterations; tolerance_grad: stop when ``max |gradient| <= tolerance_grad``.
        dtype: the precision of the solve (float64: the gradient test is meaningful far below float32's noise).

    Returns:
        a :class:`LinearSolve`.
    """
    c, f = classifier.weight.shape[:2]
    xd = x.detach().to(dtype)
    yd = y.detach().to(xd.device)
    weight = classifier.weight.detach().reshape(c, f).to(dtype).clone().requires_grad_(True)
    bias = classifier.bias.detach().to(dtype).clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        max_eval=2 * max_iter,
        tolerance_grad=tolerance_grad,
        tolerance_change=1e-14,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=False)
        loss = linear_objective(weight, bias, xd, yd, weight_decay)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
        loss = closure()
    grad_norm = torch.cat([weight.grad.flatten(), bias.grad]).norm().item()
    state = opt.state[opt._params[0]]
    with torch.no_grad():
        classifier.weight.copy_(weight.reshape(classifier.weight.shape))
        classifier.bias.copy_(bias)
    return LinearSolve(loss.item(), grad_norm, int(state.get("n_iter", 0)), int(state.get("func_evals", 0)))


@torch.no_grad()
def full_batch_sgd(
    classifier: nn.Conv2d,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = WEIGHT_DECAY,
) -> float:
    """``steps`` steps of torch's SGD (``momentum``, no dampening, ``weight_decay`` on weight and bias) on
    :func:`linear_objective` with the gradient of the *whole* sample set, written out by hand (no autograd, no
    conv: one matrix product each way per step), from ``classifier``'s current weights; written back into it.

    This is the expected path of :func:`fit_linear_classifier`'s minibatch run with the same rate, momentum,
    initialisation and number of steps: each minibatch gradient is an unbiased estimate of the full-batch one, so
    the minibatch run is this path plus zero-mean noise (to first order in the noise). Unlike
    :func:`solve_linear_classifier` it stops where the SGD run stops, which is not the optimum when that run has
    not converged -- e.g. the refit's 60 epochs from the U[0, 1) initialisation.

    Args:
        classifier: (F -> C) 1x1 conv, the starting point.
        x: (N, F) features; y: (N,) labels in ``0..C-1``.
        steps: optimiser steps; lr, momentum, weight_decay: as :func:`classifier_optimizer`.

    Returns:
        :func:`linear_objective` after the last step.
    """
    c, f = classifier.weight.shape[:2]
    xd = x.to(classifier.weight.dtype)
    onehot = F.one_hot(y.to(xd.device), c).to(xd.dtype)
    w = classifier.weight.reshape(c, f).clone()
    b = classifier.bias.clone()
    buf_w, buf_b = torch.zeros_like(w), torch.zeros_like(b)
    n = xd.shape[0]
    for _ in range(steps):
        r = (torch.addmm(b, xd, w.T).softmax(1) - onehot) / n  # d(mean CE)/d(logits)
        g_w = torch.addmm(w, r.T, xd, beta=weight_decay)
        g_b = r.sum(0).add_(b, alpha=weight_decay)
        buf_w.mul_(momentum).add_(g_w)  # from zeros: the first step's buffer is its gradient, as in torch's SGD
        buf_b.mul_(momentum).add_(g_b)
        w.sub_(buf_w, alpha=lr)
        b.sub_(buf_b, alpha=lr)
    classifier.weight.copy_(w.reshape(classifier.weight.shape))
    classifier.bias.copy_(b)
    return linear_objective(w, b, xd, y.to(xd.device), weight_decay).item()


#: ``make_fake(class id, real features (m, F) of that class in the image, image has unseen pixels)`` -> (m, F)
#: generated features, or None when the image's real features will be used (no unseen pixel).
FakeMaker = Callable[[int, torch.Tensor, bool], "torch.Tensor | None"]


def official_feature_maps(
    feats: torch.Tensor, labels: torch.Tensor, unseen: torch.Tensor, make_fake: FakeMaker
) -> torch.Tensor:
    """The official classifier input (train_pascal_GMMN.py, ``real_seen_features=True``): an image without
    unseen pixels keeps its real feature map; an image with unseen pixels gets, class by class, the generated
    features of :data:`FakeMaker` at the pixels of each labelled class, and *zeros* at its ``IGNORE`` pixels
    (the official fake map starts as ``torch.zeros`` and only labelled classes are written).

    ``make_fake`` is called for every labelled class of every image, in order, so an online generator can take
    its step there (see :func:`zeroseg.methods.zs3net.train_classifier`).

    Args:
        feats: (B, F, h, w) real features; labels: (B, h, w) full ground truth at feature resolution.
        unseen: (U,) unseen ids.

    Returns:
        (B, F, h, w) feature maps.
    """
    out = feats.clone()
    for b in range(feats.shape[0]):
        flat_y = labels[b].flatten()
        has_unseen = bool(torch.isin(flat_y, unseen.to(flat_y.device)).any())
        real = feats[b].flatten(1).T
        fake = torch.zeros_like(real)
        for c in torch.unique(flat_y).tolist():
            if c == IGNORE:
                continue
            where = flat_y == c
            made = make_fake(c, real[where], has_unseen)
            if made is not None:
                fake[where] = made
        if has_unseen:
            out[b] = fake.T.reshape(feats.shape[1:])
    return out


def official_classifier_loss(
    classifier: nn.Module, maps: torch.Tensor, labels: torch.Tensor, class_weight: torch.Tensor | None
) -> torch.Tensor:
    """The official retraining loss: logits of ``maps`` bilinearly upsampled (align_corners=True) to the
    labels' size, class-weighted cross-entropy over the valid pixels, divided by the batch size
    (``SegmentationLosses(batch_average=True)``, utils/loss.py).

    Args:
        classifier: (F -> C) 1x1 conv.
        maps: (B, F, h, w) features; labels: (B, H, W) full-resolution labels.
        class_weight: (C,) cross-entropy weights or None.

    Returns:
        the scalar loss.
    """
    logits = F.interpolate(classifier(maps), size=labels.shape[-2:], mode="bilinear", align_corners=True)
    return classifier_criterion(class_weight)(logits, labels) / maps.shape[0]


def official_classifier_optimizer(classifier: nn.Module, lr: float) -> torch.optim.SGD:
    """The official retraining optimiser: the classifier sits in DeepLab's 10x learning-rate group
    (``get_10x_lr_params``), so SGD at ``10 * lr``, momentum 0.9, weight decay 5e-4 (set the decayed rate
    before each iteration with :func:`official_poly_lr`)."""
    return torch.optim.SGD(classifier.parameters(), lr=10.0 * lr, momentum=0.9, weight_decay=5e-4)


def official_poly_lr(opt: torch.optim.Optimizer, lr: float, it: int, total_iters: int) -> float:
    """Set the 10x group's rate of iteration ``it`` (``T = epoch * iters_per_epoch + i``), as utils/lr_scheduler.py
    does before every iteration: ``10 * lr * (1 - T / total_iters) ** 0.9``.

    Returns:
        the rate set.
    """
    rate = 10.0 * lr * max(0.0, 1.0 - it / max(1, total_iters)) ** 0.9
    for group in opt.param_groups:
        group["lr"] = rate
    return rate
