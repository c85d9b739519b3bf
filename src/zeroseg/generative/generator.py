"""One Adam step of the feature generator: ZS3Net's seen-class MMD, and ZS-MMD's step that adds the
confidence-weighted MMD against pseudo-features of an unseen class."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from zeroseg.modules.mmd import mmd_loss, weighted_mmd_loss


def _step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def generator_step(
    gen: nn.Module, opt: torch.optim.Optimizer, emb_c: torch.Tensor, real: torch.Tensor, *, sigmas: Sequence[float]
) -> float:
    """One step on the MMD between generated and real features of one class (ZS3Net's stage 2).

    Args:
        gen: generator, (N, E) embeddings -> (N, F) features (its noise drawn inside).
        opt: the generator's optimiser.
        emb_c: (E,) the class's embedding.
        real: (n, F) real features of the class; as many are generated.
        sigmas: MMD kernel bandwidths.

    Returns:
        the loss before the step.
    """
    return _step(opt, mmd_loss(gen(emb_c.expand(real.shape[0], -1)), real, sigmas=sigmas))


def official_generator_step(
    gen: nn.Module,
    opt: torch.optim.Optimizer,
    emb_c: torch.Tensor,
    real: torch.Tensor,
    idx: torch.Tensor,
    *,
    sigmas: Sequence[float],
) -> tuple[float, torch.Tensor]:
    """One step as valeoai/ZS3 takes it: one fake per real pixel, then the MMD between ``fake[idx]`` and
    ``real[idx]`` -- the same index draw (with replacement) on both sides.

    Args:
        gen: generator, (N, E) -> (N, F).
        opt: its optimiser.
        emb_c: (E,) the class's embedding.
        real: (m, F) every real feature of the class in the image.
        idx: (n,) positions into ``real`` (and into the fakes).
        sigmas: MMD kernel bandwidths.

    Returns:
        the loss before the step, and the (m, F) fakes generated before it (detached; the official code
        places them in the classifier's batch).
    """
    fake = gen(emb_c.expand(real.shape[0], -1))
    value = _step(opt, mmd_loss(fake[idx], real[idx], sigmas=sigmas))
    return value, fake.detach()


def zs_mmd_loss(
    gen: nn.Module,
    emb_c: torch.Tensor,
    real: torch.Tensor,
    emb_u: torch.Tensor,
    pseudo: torch.Tensor,
    pseudo_w: torch.Tensor,
    *,
    sigmas: Sequence[float],
    pseudo_weight: float,
) -> torch.Tensor:
    """``MMD(gen(seen), real) + pseudo_weight * weighted MMD(gen(unseen), pseudo; weights pseudo_w)``.

    The seen class's features are generated first, then the unseen class's (the order of the noise draws).

    Args:
        gen: generator, (N, E) -> (N, F).
        emb_c: (E,) embedding of the seen class; real: (n, F) its real features.
        emb_u: (E,) embedding of the unseen class; pseudo: (m, F) its pseudo-features; pseudo_w: (m,) their
            confidence weights (normalised inside the weighted MMD).
        sigmas: MMD kernel bandwidths.
        pseudo_weight: weight of the ZS-MMD term.

    Returns:
        the scalar loss.
    """
    seen = mmd_loss(gen(emb_c.expand(real.shape[0], -1)), real, sigmas=sigmas)
    zs = weighted_mmd_loss(gen(emb_u.expand(pseudo.shape[0], -1)), pseudo, y_weights=pseudo_w, sigmas=sigmas)
    return seen + pseudo_weight * zs


def zs_mmd_step(
    gen: nn.Module,
    opt: torch.optim.Optimizer,
    emb_c: torch.Tensor,
    real: torch.Tensor,
    emb_u: torch.Tensor,
    pseudo: torch.Tensor,
    pseudo_w: torch.Tensor,
    *,
    sigmas: Sequence[float],
    pseudo_weight: float,
) -> float:
    """One step on :func:`zs_mmd_loss` (ZS-MMD's generator retraining); returns the loss before the step."""
    return _step(
        opt, zs_mmd_loss(gen, emb_c, real, emb_u, pseudo, pseudo_w, sigmas=sigmas, pseudo_weight=pseudo_weight)
    )
