"""Maximum mean discrepancy losses, as ZS3Net trains its GMMN (valeoai/ZS3 ``zs3/utils/loss.py``, GMMNLoss).

Kernel (official form): a sum of Gaussian kernels over the bandwidth list ``sigmas``,

    k(a, b) = sum_s exp(-||a - b||^2 / (2 * s)),

i.e. each ``s`` acts as a *variance* (the official code computes ``exp((a.b - |a|^2/2 - |b|^2/2) / s)``),
not a standard deviation. The loss is the square root of the biased (V-statistic, diagonal included)
squared MMD summed over bandwidths:

    loss = sqrt( mean_ij k(x_i, x_j) + mean_ij k(y_i, y_j) - 2 mean_ij k(x_i, y_j) ).

The official code builds the +1/N, -1/M weight vector in the wrong order when the two sets differ in
size (harmless there: it always compares 128 vs 128 samples); here the weights are matched to their
set, which equals the official value whenever the sizes are equal. The squared MMD is clamped at a tiny
positive value before the square root so that the gradient stays finite when ``x == y``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from zeroseg.errors import ZeroSegError

DEFAULT_SIGMAS: tuple[float, ...] = (2.0, 5.0, 10.0, 20.0, 40.0, 80.0)
_EPS = 1e-12


def _check_points(name: str, t: torch.Tensor) -> None:
    if t.ndim != 2 or t.shape[0] == 0:
        raise ZeroSegError(f"{name}: expected a non-empty (N, D) tensor, got shape {tuple(t.shape)}")


def _normalised_weights(name: str, w: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
    if w is None:
        return torch.full((n,), 1.0 / n, dtype=like.dtype, device=like.device)
    if w.shape != (n,):
        raise ZeroSegError(f"{name}: expected shape ({n},), got {tuple(w.shape)}")
    w = w.to(dtype=like.dtype, device=like.device)
    if bool((w < 0).any()) or not bool(torch.isfinite(w).all()):
        raise ZeroSegError(f"{name}: weights must be finite and non-negative")
    total = w.sum()
    if float(total.detach()) <= 0.0:
        raise ZeroSegError(f"{name}: weights sum to zero")
    return w / total


def _multi_kernel(a: torch.Tensor, b: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    """Sum of Gaussian kernels ``(Na, Nb)`` with the official ``exp(-d^2 / (2 s))`` form."""
    sq = (a * a).sum(1, keepdim=True) + (b * b).sum(1).unsqueeze(0) - 2.0 * a @ b.t()
    sq = sq.clamp_min(0.0)  # the expansion can dip below 0 by rounding
    return torch.stack([torch.exp(sq / (-2.0 * float(s))) for s in sigmas]).sum(0)


def weighted_mmd_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    x_weights: torch.Tensor | None = None,
    y_weights: torch.Tensor | None = None,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
) -> torch.Tensor:
    """Weighted empirical MMD between two point sets (multi-bandwidth Gaussian kernel, square-rooted).

    With weights ``w`` (over ``x``) and ``v`` (over ``y``), each normalised to sum to 1:
    ``loss = sqrt(w^T Kxx w + v^T Kyy v - 2 w^T Kxy v)``. Unit (or ``None``) weights give :func:`mmd_loss`.

    Args:
        x: samples ``(N, D)`` (e.g. generated features).
        y: samples ``(M, D)`` (e.g. real features).
        x_weights: non-negative weights ``(N,)`` or ``None`` for uniform.
        y_weights: non-negative weights ``(M,)`` or ``None`` for uniform.
        sigmas: kernel bandwidths (variances), official ``(2, 5, 10, 20, 40, 80)``.

    Returns:
        Scalar loss (0-dim tensor), differentiable w.r.t. ``x``, ``y`` and the weights.
    """
    _check_points("x", x)
    _check_points("y", y)
    if x.shape[1] != y.shape[1]:
        raise ZeroSegError(f"x and y: feature sizes differ ({x.shape[1]} vs {y.shape[1]})")
    if len(sigmas) == 0 or any(float(s) <= 0 for s in sigmas):
        raise ZeroSegError(f"sigmas {tuple(sigmas)}: need at least one positive bandwidth")
    w = _normalised_weights("x_weights", x_weights, x.shape[0], x)
    v = _normalised_weights("y_weights", y_weights, y.shape[0], x)
    y = y.to(dtype=x.dtype)
    mmd2 = (
        w @ _multi_kernel(x, x, sigmas) @ w
        + v @ _multi_kernel(y, y, sigmas) @ v
        - 2.0 * (w @ _multi_kernel(x, y, sigmas) @ v)
    )
    return mmd2.clamp_min(_EPS).sqrt()


def mmd_loss(x: torch.Tensor, y: torch.Tensor, *, sigmas: Sequence[float] = DEFAULT_SIGMAS) -> torch.Tensor:
    """ZS3Net's GMMN loss: square-rooted biased MMD with a sum of Gaussian kernels.

    Args:
        x: samples ``(N, D)`` (official: 128 generated features of one class).
        y: samples ``(M, D)`` (official: the 128 real features at the same pixel indices).
        sigmas: kernel bandwidths (variances), official ``(2, 5, 10, 20, 40, 80)``.

    Returns:
        Scalar loss (0-dim tensor).
    """
    return weighted_mmd_loss(x, y, sigmas=sigmas)
