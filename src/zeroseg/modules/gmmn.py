"""ZS3Net's generative moment matching network (valeoai/ZS3 ``zs3/modeling/gmmn.py``, GMMNnetwork).

The generator maps ``[class embedding ; noise]`` to a fake pixel feature in the DeepLab decoder space:
``Linear(E + Z, hidden) -> LeakyReLU(0.2) -> Dropout(0.5) -> Linear(hidden, F)``, with no output
activation (exactly as the official code, even though real features are post-ReLU), Xavier-uniform
weights and biases filled with 0.01. Official noise is ``torch.rand`` (uniform on [0, 1)) of size 300.
"""

from __future__ import annotations

import torch
from torch import nn

from zeroseg.errors import ZeroSegError

NOISE_KINDS: tuple[str, ...] = ("uniform", "gaussian")


def sample_noise(
    n: int,
    dim: int,
    *,
    kind: str = "uniform",
    like: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw generator noise.

    Args:
        n: number of rows.
        dim: noise size ``Z``.
        kind: ``"uniform"`` (U[0, 1), official) or ``"gaussian"`` (N(0, 1)).
        like: tensor whose device and dtype the noise takes.
        generator: optional ``torch.Generator`` for reproducible draws (must live on ``like``'s device).

    Returns:
        noise ``(n, dim)``.
    """
    if kind == "uniform":
        return torch.rand(n, dim, generator=generator, device=like.device, dtype=like.dtype)
    if kind == "gaussian":
        return torch.randn(n, dim, generator=generator, device=like.device, dtype=like.dtype)
    raise ZeroSegError(f"noise {kind!r}: unknown (choose from {', '.join(NOISE_KINDS)})")


def init_official_(module: nn.Module) -> None:
    """Official GMMN/GCN initialisation: Xavier-uniform weights, biases filled with 0.01."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.constant_(m.bias, 0.01)


class GMMNGenerator(nn.Module):
    """Feature generator conditioned on class embeddings.

    Args:
        embed_dim: size ``E`` of the class embeddings (official 300, word2vec).
        noise_dim: size ``Z`` of the noise (official 300).
        hidden_dim: hidden layer width (official 256).
        feature_dim: output size ``F`` (official 256, the DeepLab decoder features).
        dropout: dropout after the hidden activation (official 0.5; the official scripts never switch
            the generator to eval mode, so dropout is active when generating features for retraining).
        noise: ``"uniform"`` (official ``torch.rand``) or ``"gaussian"``.
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        noise_dim: int = 300,
        hidden_dim: int = 256,
        feature_dim: int = 256,
        dropout: float = 0.5,
        noise: str = "uniform",
    ) -> None:
        super().__init__()
        if noise not in NOISE_KINDS:
            raise ZeroSegError(f"noise {noise!r}: unknown (choose from {', '.join(NOISE_KINDS)})")
        for name, value in (
            ("embed_dim", embed_dim),
            ("hidden_dim", hidden_dim),
            ("feature_dim", feature_dim),
        ):
            if value < 1:
                raise ZeroSegError(f"{name} {value}: must be at least 1")
        if noise_dim < 0:
            raise ZeroSegError(f"noise_dim {noise_dim}: must be non-negative")
        self.embed_dim = embed_dim
        self.noise_dim = noise_dim
        self.feature_dim = feature_dim
        self.noise = noise
        self.model = nn.Sequential(
            nn.Linear(embed_dim + noise_dim, hidden_dim),
            nn.LeakyReLU(0.2),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, feature_dim),
        )
        init_official_(self.model)

    def forward(
        self,
        embeddings: torch.Tensor,
        *,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Generate one feature per embedding row.

        Args:
            embeddings: class embeddings ``(N, E)``, one row per feature to generate.
            noise: optional explicit noise ``(N, Z)``; drawn internally when ``None``.
            generator: optional ``torch.Generator`` for the internal noise draw.

        Returns:
            features ``(N, F)``.
        """
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embed_dim:
            raise ZeroSegError(f"embeddings: expected shape (N, {self.embed_dim}), got {tuple(embeddings.shape)}")
        if noise is None:
            noise = sample_noise(
                embeddings.shape[0], self.noise_dim, kind=self.noise, like=embeddings, generator=generator
            )
        elif noise.shape != (embeddings.shape[0], self.noise_dim):
            raise ZeroSegError(
                f"noise: expected shape ({embeddings.shape[0]}, {self.noise_dim}), got {tuple(noise.shape)}"
            )
        return self.model(torch.cat([embeddings, noise.to(embeddings)], dim=1))

    def generate(
        self,
        class_embeddings: torch.Tensor,
        n_per_class: int,
        *,
        class_ids: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Generate ``n_per_class`` features for every class (wrap in ``torch.no_grad()`` if only sampling).

        Args:
            class_embeddings: ``(C, E)``, one row per class.
            n_per_class: features per class ``n``.
            class_ids: optional ``(C,)`` label ids to emit instead of ``0..C-1``.
            generator: optional ``torch.Generator`` for the noise.

        Returns:
            ``features (C*n, F)`` grouped by class (class 0's ``n`` rows first) and ``labels (C*n,)``.
        """
        if class_embeddings.ndim != 2:
            raise ZeroSegError(f"class_embeddings: expected (C, E), got shape {tuple(class_embeddings.shape)}")
        if n_per_class < 1:
            raise ZeroSegError(f"n_per_class {n_per_class}: must be at least 1")
        num_classes = class_embeddings.shape[0]
        if class_ids is None:
            class_ids = torch.arange(num_classes, device=class_embeddings.device)
        elif class_ids.shape != (num_classes,):
            raise ZeroSegError(f"class_ids: expected shape ({num_classes},), got {tuple(class_ids.shape)}")
        rows = class_embeddings.repeat_interleave(n_per_class, dim=0)
        labels = class_ids.to(device=class_embeddings.device, dtype=torch.long).repeat_interleave(n_per_class)
        return self(rows, generator=generator), labels
