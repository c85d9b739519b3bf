"""The random control encoder (``random:<dim>[:<seed>]``): one deterministic unit vector per class name."""

from __future__ import annotations

import hashlib

import torch

from zeroseg.errors import ZeroSegError
from zeroseg.text.base import SYNONYM_SEPARATOR, TextEncoder


class RandomEncoder(TextEncoder):
    """Deterministic random unit vectors, one per class NAME: the control that carries no semantics.

    The vector of a class depends only on its canonical name (synonyms joined by ``|``, words by one
    space), the dimension and the seed, via SHA-256, so it is identical across runs, processes and machines,
    independent of the other classes in the list, and different for different seeds.
    """

    def __init__(self, dim: int, seed: int = 0) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ZeroSegError(f"random encoder: dimension {dim!r} must be a positive integer")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ZeroSegError(f"random encoder: seed {seed!r} must be an integer")
        self.dim = dim
        self.seed = seed
        self.name = f"random:{dim}:{seed}"

    def _vector(self, canonical_name: str) -> torch.Tensor:
        digest = hashlib.sha256(f"{self.seed}\x00{canonical_name}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
        return torch.randn(self.dim, generator=gen, dtype=torch.float64)

    def _embed_parsed(self, synonyms: list[list[str]]) -> torch.Tensor:
        return torch.stack([self._vector(SYNONYM_SEPARATOR.join(s)) for s in synonyms])


def random_encoder(dim: int, seed: int = 0) -> RandomEncoder:
    """Returns the random control encoder, same as ``get_encoder(f"random:{dim}:{seed}")``."""
    return RandomEncoder(dim, seed)
