"""The control encoders: ``random:<dim>[:<seed>]`` (one deterministic random unit vector per class name),
``unseen-random:<seed>:<unseen names>:<base spec>`` (real embeddings, isotropic random ones for the unseen names
only) and ``unseen-matched:<seed>:<unseen names>:<seen names>:<base spec>`` (the same, with the unseen rows drawn
from the Gaussian of the seen embeddings' mean and covariance: the control the demos report)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from zeroseg.data.classes import natural_name, official_prompt_name
from zeroseg.errors import ZeroSegError
from zeroseg.text.base import SYNONYM_SEPARATOR, TextEncoder, split_synonyms


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


def _name_key(name: str) -> tuple[str, ...]:
    """The spelling-independent key of a class name: its lower-cased canonical synonyms (dataset spelling too)."""
    return tuple(s.lower() for s in split_synonyms(natural_name(name)))


class UnseenRandomEncoder(TextEncoder):
    """The sharper control: a real encoder whose *unseen* class names get random vectors, every other name its
    real embedding (``unseen-random:<seed>:<unseen names>:<base spec>``).

    Seen classes keep the embeddings the real run trains on, so the seen pipeline is the real one and the gap
    between the real run and this control is transfer through the unseen names alone. An unseen row is the
    deterministic random direction of :class:`RandomEncoder` (same seed, the base's dimension; so the unseen
    vectors equal those of the all-random control ``random:<dim>:<seed>``) scaled to the norm of the real row it
    replaces: same dimension, same norm (every encoder returns unit rows, so the norm is 1).

    Which names are unseen is data, given by whoever builds the spec (the split: :func:`unseen_random_spec`);
    a name matches whatever its spelling (``"pottedplant"`` = ``"potted plant"`` = ``"Potted_Plant"``).
    """

    def __init__(self, base: TextEncoder, unseen: Sequence[str], seed: int = 0) -> None:
        names = [n for n in unseen if isinstance(n, str) and split_synonyms(n)]
        if not names or len(names) != len(list(unseen)):
            raise ZeroSegError(f"unseen-random encoder: needs a non-empty list of unseen class names, got {unseen!r}")
        self.base = base
        self.unseen = tuple(names)
        self.random = RandomEncoder(base.dim, seed)
        self.dim = base.dim
        self.seed = seed
        self.name = f"unseen-random:{seed}:{','.join(self.unseen)}:{base.name}"
        self._keys = {_name_key(n) for n in self.unseen}

    def is_unseen(self, name: str) -> bool:
        """Whether ``name`` (any spelling) is one of the unseen names that get a random vector."""
        return _name_key(name) in self._keys

    def embed(self, class_names: Sequence[str], *, verbatim: bool = False) -> torch.Tensor:
        """The base encoder's ``(C, D)`` unit rows, with the rows of unseen names replaced (see the class doc)."""
        emb = self.base.embed(class_names, verbatim=verbatim).clone()
        for i, name in enumerate(class_names):
            if self.is_unseen(name):
                # keyed by the lower-cased canonical name: every spelling of a name gets one vector
                direction = self._direction(SYNONYM_SEPARATOR.join(_name_key(name)), verbatim).float()
                emb[i] = direction / direction.norm() * emb[i].norm()
        return emb

    def _direction(self, canonical_name: str, verbatim: bool) -> torch.Tensor:
        """The unnormalised random vector of one unseen name (float64): isotropic here."""
        return self.random._vector(canonical_name)

    def _embed_parsed(self, synonyms: list[list[str]]) -> torch.Tensor:
        # embed() is overridden (it must see the names before parsing); kept for the abstract interface.
        return self.embed([SYNONYM_SEPARATOR.join(s) for s in synonyms])


class MatchedUnseenEncoder(UnseenRandomEncoder):
    """The distribution-matched sharper control (``unseen-matched:<seed>:<unseen names>:<seen names>:<base>``):
    like :class:`UnseenRandomEncoder`, but an unseen row is drawn from the Gaussian with the mean and the
    (unbiased) covariance of the *seen* names' real embeddings, then scaled to the norm of the row it replaces.

    Why: real class embeddings share a large common component (GloVe rows of the embedded benchmark's names have
    pairwise cosines around 0.6) and the unseen names' rows lie in the span of the seen ones (GloVe phrases are
    means of word vectors that seen phrases also contain), while an isotropic random unit vector is nearly
    orthogonal to all of them. A method scoring by cosine (ZegFormer) can then single out the odd vector on every
    pixel: the control collapses and measures nothing. A row drawn here has the seen rows' common component,
    spread and span, so it looks like a real class embedding to the model, and still carries nothing of the unseen
    class's name: it depends only on the seed, the name's hash and the seen names' rows.

    With ``X`` the ``(n, D)`` seen rows, ``m`` their mean and ``g(name)`` the ``n``-dimensional standard-normal
    vector of :class:`RandomEncoder` (same seed), the row of an unseen name is ``m + g @ (X - m) / sqrt(n - 1)``:
    an exact draw from ``N(m, cov(X))`` (the covariance has rank ``n - 1``; no factorisation is needed).
    """

    def __init__(self, base: TextEncoder, unseen: Sequence[str], seen: Sequence[str], seed: int = 0) -> None:
        super().__init__(base, unseen, seed)
        names = [n for n in seen if isinstance(n, str) and split_synonyms(n)]
        if len(names) < 2 or len(names) != len(list(seen)):
            raise ZeroSegError(f"unseen-matched encoder: needs at least two seen class names, got {seen!r}")
        overlap = [n for n in names if self.is_unseen(n)]
        if overlap:
            raise ZeroSegError(f"unseen-matched encoder: {overlap[0]!r} is listed both as seen and as unseen")
        self.seen = tuple(names)
        self.coefficients = RandomEncoder(len(names), seed)
        self.name = f"unseen-matched:{seed}:{','.join(self.unseen)}:{','.join(self.seen)}:{base.name}"
        self._moments: dict[bool, tuple[torch.Tensor, torch.Tensor]] = {}

    def moments(self, verbatim: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, spread)`` in float64: the seen names' base rows' mean ``(D,)`` and their deviations from it
        over ``sqrt(n - 1)``, ``(n, D)`` (so that ``spread.T @ spread`` is their unbiased covariance)."""
        if verbatim not in self._moments:
            # the seen names spelled as class_embeddings spells them for this base (dataset spellings allowed)
            spell = official_prompt_name if verbatim else natural_name
            rows = self.base.embed([spell(n) for n in self.seen], verbatim=verbatim).double()
            mean = rows.mean(0)
            self._moments[verbatim] = mean, (rows - mean) / (len(rows) - 1) ** 0.5
        return self._moments[verbatim]

    def _direction(self, canonical_name: str, verbatim: bool) -> torch.Tensor:
        mean, spread = self.moments(verbatim)
        return mean + self.coefficients._vector(canonical_name) @ spread


def unseen_matched_spec(base_spec: str, unseen: Sequence[str], seen: Sequence[str], seed: int = 0) -> str:
    """The encoder spec of the distribution-matched control :class:`MatchedUnseenEncoder`:
    ``"unseen-matched:<seed>:<unseen>,...:<seen>,...:<base_spec>"`` (names as in :func:`unseen_random_spec`)."""
    unseen_field = _names_field("unseen-matched", unseen, "the split has no unseen class", 1)
    seen_field = _names_field("unseen-matched", seen, "the split needs at least two seen classes", 2)
    return f"unseen-matched:{seed}:{unseen_field}:{seen_field}:{base_spec}"


def _names_field(kind: str, names: Sequence[str], too_few: str, minimum: int) -> str:
    """``names`` joined by ``,`` for a control spec, after checking there are ``minimum`` of them and that none
    holds a separator of the spec (``,`` or ``:``)."""
    names = list(names)
    if len(names) < minimum:
        raise ZeroSegError(f"{kind} spec: {too_few}")
    bad = [n for n in names if "," in n or ":" in n]
    if bad:
        raise ZeroSegError(f"{kind} spec: class name {bad[0]!r} contains ',' or ':'")
    return ",".join(names)


def unseen_random_spec(base_spec: str, unseen: Sequence[str], seed: int = 0) -> str:
    """The encoder spec of the sharper control: ``base_spec`` with the ``unseen`` names random.

    Args:
        base_spec: the real run's encoder spec, e.g. ``"glove-6b-50d"``.
        unseen: the split's unseen class names (dataset spelling is fine), e.g. ``Split.unseen``.
        seed: the random vectors' seed.

    Returns:
        ``"unseen-random:<seed>:<name>,<name>,...:<base_spec>"``.

    Raises:
        ZeroSegError: no unseen name, or a name holding ``,`` or ``:`` (the spec's separators).
    """
    names = _names_field("unseen-random", unseen, "the split has no unseen class", 1)
    return f"unseen-random:{seed}:{names}:{base_spec}"
