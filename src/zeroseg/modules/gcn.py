"""Graph-context generation for ZS3Net on Pascal-Context (valeoai/ZS3 ``train_context_GMMN_GCNcontext.py``,
``zs3/modeling/gmmn.py`` GMMNnetwork_GCN, and the pygcn ``GraphConvolution`` layer it imports).

A segmentation map becomes a graph whose nodes are connected same-label segments and whose edges join
touching segments; a two-layer GCN turns ``[class embedding ; noise]`` node inputs into one feature per
segment, so that generated features depend on the spatial context (the neighbouring classes).

Differences from the official graph builder, all selectable: the official DFS uses 8-connectivity,
keeps ignore-label (255) pixels as nodes, and feeds the raw 0/1 adjacency without self loops or
normalisation to the GCN. The defaults here (4-connectivity, ignore pixels dropped, ``A + I`` row
normalised as in the reference pygcn pipeline) follow this project's spec; ``connectivity=8,
self_loops=False, normalization="none"`` reproduces the official adjacency for maps without ignore pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from zeroseg.errors import ZeroSegError
from zeroseg.modules.gmmn import NOISE_KINDS, sample_noise

NORMALIZATIONS: tuple[str, ...] = ("row", "sym", "none")


@dataclass(frozen=True)
class SegmentGraph:
    """Segment adjacency graph of one label map.

    Attributes:
        node_labels: class id of each node ``(K,)`` int64; nodes are ordered by their first pixel in
            raster order (the official DFS numbering).
        node_masks: pixel membership ``(K, h, w)`` bool; masks are disjoint.
        adjacency: ``(K, K)`` float32 graph operator (with self loops / normalisation as requested).
    """

    node_labels: torch.Tensor
    node_masks: torch.Tensor
    adjacency: torch.Tensor

    @property
    def num_nodes(self) -> int:
        """Number of nodes ``K``."""
        return int(self.node_labels.shape[0])


def build_segment_graph(
    label_map: torch.Tensor,
    *,
    ignore_index: int | None = 255,
    connectivity: int = 4,
    self_loops: bool = True,
    normalization: str = "row",
) -> SegmentGraph:
    """Build the segment graph of a label map at feature resolution.

    Args:
        label_map: integer labels ``(h, w)`` (e.g. the ground truth nearest-resized to 1/4 resolution).
        ignore_index: label whose pixels belong to no node (and so connect nothing); ``None`` keeps all.
        connectivity: 4 or 8; used both to split a class into connected segments and to decide which
            segments touch (official: 8).
        self_loops: add the identity to the 0/1 adjacency (official: no).
        normalization: ``"row"`` = ``D^-1 A`` (pygcn reference), ``"sym"`` = ``D^-1/2 A D^-1/2``,
            ``"none"`` = raw (official ZS3).

    Returns:
        A :class:`SegmentGraph` with ``K`` nodes (``K = 0`` if every pixel is ignored).
    """
    if label_map.ndim != 2:
        raise ZeroSegError(f"label_map: expected a 2-D (h, w) tensor, got shape {tuple(label_map.shape)}")
    if label_map.dtype.is_floating_point or label_map.dtype.is_complex or label_map.dtype == torch.bool:
        raise ZeroSegError(f"label_map: expected an integer tensor, got {label_map.dtype}")
    if connectivity not in (4, 8):
        raise ZeroSegError(f"connectivity {connectivity}: must be 4 or 8")
    if normalization not in NORMALIZATIONS:
        raise ZeroSegError(f"normalization {normalization!r}: unknown (choose from {', '.join(NORMALIZATIONS)})")
    labels = label_map.detach().cpu().numpy().astype(np.int64)
    h, w = labels.shape
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)

    # Component id per pixel (-1 = ignored), ids unique across classes.
    comp = np.full((h, w), -1, dtype=np.int64)
    offset = 0
    for value in np.unique(labels):
        if ignore_index is not None and value == ignore_index:
            continue
        lab, n = ndimage.label(labels == value, structure=structure)
        mask = lab > 0
        comp[mask] = lab[mask] - 1 + offset
        offset += n

    # Renumber components by first pixel in raster order, as the official DFS does.
    flat = comp.ravel()
    valid = np.flatnonzero(flat >= 0)
    ids, first = np.unique(flat[valid], return_index=True)
    order = ids[np.argsort(first)]
    remap = np.empty(offset, dtype=np.int64)
    remap[order] = np.arange(order.size)
    node_map = np.full(flat.shape, -1, dtype=np.int64)
    node_map[valid] = remap[flat[valid]]
    node_map = node_map.reshape(h, w)
    k = int(order.size)

    node_labels = np.empty(k, dtype=np.int64)
    node_labels[node_map[node_map >= 0]] = labels[node_map >= 0]

    adj = np.zeros((k, k), dtype=np.float32)
    shifts = [(0, 1), (1, 0)] + ([(1, 1), (1, -1)] if connectivity == 8 else [])
    for dy, dx in shifts:
        # Pixel (y, x) paired with its neighbour (y + dy, x + dx), over all valid positions.
        x0, x1 = max(0, -dx), w - max(0, dx)
        a = node_map[: h - dy, x0:x1]
        b = node_map[dy:, x0 + dx : x1 + dx]
        touching = (a >= 0) & (b >= 0) & (a != b)
        adj[a[touching], b[touching]] = 1.0
        adj[b[touching], a[touching]] = 1.0

    adjacency = normalize_adjacency(torch.from_numpy(adj), self_loops=self_loops, normalization=normalization)
    masks = torch.from_numpy(node_map)[None] == torch.arange(k)[:, None, None]
    return SegmentGraph(node_labels=torch.from_numpy(node_labels), node_masks=masks, adjacency=adjacency)


def normalize_adjacency(adj: torch.Tensor, *, self_loops: bool = True, normalization: str = "row") -> torch.Tensor:
    """Turn a 0/1 adjacency into a GCN propagation operator.

    Args:
        adj: symmetric adjacency ``(K, K)``.
        self_loops: add the identity first.
        normalization: ``"row"`` (``D^-1 A``), ``"sym"`` (``D^-1/2 A D^-1/2``) or ``"none"``.

    Returns:
        ``(K, K)`` float tensor; rows/columns of isolated nodes without self loops stay zero.
    """
    if normalization not in NORMALIZATIONS:
        raise ZeroSegError(f"normalization {normalization!r}: unknown (choose from {', '.join(NORMALIZATIONS)})")
    a = adj.to(torch.float32).clone()
    if self_loops:
        a = a + torch.eye(a.shape[0], dtype=a.dtype)
    if normalization == "none":
        return a
    deg = a.sum(1)
    if normalization == "row":
        inv = torch.where(deg > 0, 1.0 / deg.clamp_min(1e-12), torch.zeros_like(deg))
        return inv[:, None] * a
    inv_sqrt = torch.where(deg > 0, deg.clamp_min(1e-12).rsqrt(), torch.zeros_like(deg))
    return inv_sqrt[:, None] * a * inv_sqrt[None, :]


class GraphConvolution(nn.Module):
    """Kipf & Welling graph convolution as in pygcn: ``out = A @ (x @ W) + b``.

    Args:
        in_features: input size.
        out_features: output size.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        # Official GMMNnetwork_GCN overrides pygcn's init: Xavier-uniform weight, bias 0.01.
        bound = math.sqrt(6.0 / (in_features + out_features))
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.constant_(self.bias, 0.01)

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        """Propagate.

        Args:
            x: node inputs ``(K, in_features)``.
            adjacency: dense or sparse operator ``(K, K)``.

        Returns:
            ``(K, out_features)``.
        """
        support = x @ self.weight
        out = torch.sparse.mm(adjacency, support) if adjacency.is_sparse else adjacency.to(support) @ support
        return out + self.bias


class GCNGenerator(nn.Module):
    """Two-layer GCN feature generator (official GMMNnetwork_GCN).

    ``[embedding ; noise] -> GraphConv(E+Z, hidden) -> LeakyReLU(0.2) -> Dropout(0.5)
    -> GraphConv(hidden, F)``, no output activation.

    Args:
        embed_dim: class embedding size ``E``.
        noise_dim: noise size ``Z`` (official 300, uniform [0, 1)).
        hidden_dim: hidden width (official 256).
        feature_dim: output size ``F`` (official 256).
        dropout: dropout between the layers (official 0.5).
        noise: ``"uniform"`` (official) or ``"gaussian"``.
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
        self.embed_dim = embed_dim
        self.noise_dim = noise_dim
        self.feature_dim = feature_dim
        self.noise = noise
        self.gc1 = GraphConvolution(embed_dim + noise_dim, hidden_dim)
        self.act = nn.LeakyReLU(0.2)
        self.dropout = nn.Dropout(dropout)
        self.gc2 = GraphConvolution(hidden_dim, feature_dim)

    def forward(
        self,
        node_embeddings: torch.Tensor,
        adjacency: torch.Tensor,
        *,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Generate one feature per node.

        Args:
            node_embeddings: embedding of each node's class ``(K, E)``.
            adjacency: graph operator ``(K, K)`` (e.g. ``SegmentGraph.adjacency``).
            noise: optional noise ``(K, Z)``; drawn internally when ``None``.
            generator: optional ``torch.Generator`` for the internal draw.

        Returns:
            node features ``(K, F)``.
        """
        k = node_embeddings.shape[0]
        if node_embeddings.ndim != 2 or node_embeddings.shape[1] != self.embed_dim:
            raise ZeroSegError(
                f"node_embeddings: expected shape (K, {self.embed_dim}), got {tuple(node_embeddings.shape)}"
            )
        if adjacency.shape != (k, k):
            raise ZeroSegError(f"adjacency: expected shape ({k}, {k}), got {tuple(adjacency.shape)}")
        if noise is None:
            noise = sample_noise(k, self.noise_dim, kind=self.noise, like=node_embeddings, generator=generator)
        elif noise.shape != (k, self.noise_dim):
            raise ZeroSegError(f"noise: expected shape ({k}, {self.noise_dim}), got {tuple(noise.shape)}")
        x = torch.cat([node_embeddings, noise.to(node_embeddings)], dim=1)
        x = self.dropout(self.act(self.gc1(x, adjacency)))
        return self.gc2(x, adjacency)


def scatter_node_features(node_feats: torch.Tensor, node_masks: torch.Tensor) -> torch.Tensor:
    """Paint each node's feature into its segment (differentiable).

    Args:
        node_feats: ``(K, F)``.
        node_masks: disjoint boolean masks ``(K, h, w)``.

    Returns:
        feature map ``(F, h, w)``; pixels in no node (ignored) are 0.
    """
    if node_feats.ndim != 2 or node_masks.ndim != 3 or node_feats.shape[0] != node_masks.shape[0]:
        raise ZeroSegError(
            f"node_feats {tuple(node_feats.shape)} and node_masks {tuple(node_masks.shape)}: "
            "expected (K, F) and (K, h, w) with the same K"
        )
    return torch.einsum("kf,khw->fhw", node_feats, node_masks.to(node_feats.dtype))


def pool_node_features(feature_map: torch.Tensor, node_masks: torch.Tensor, *, reduce: str = "mean") -> torch.Tensor:
    """Real per-node features, the GCN's MMD targets.

    Args:
        feature_map: real features ``(F, h, w)``.
        node_masks: ``(K, h, w)`` bool.
        reduce: ``"mean"`` over the segment, or ``"first"``: the feature at the node's first pixel in
            raster order (what the official script effectively uses; its ``GCN_avg_feat`` averaging
            re-reads that same pixel).

    Returns:
        ``(K, F)``.
    """
    if feature_map.ndim != 3 or node_masks.ndim != 3 or feature_map.shape[1:] != node_masks.shape[1:]:
        raise ZeroSegError(
            f"feature_map {tuple(feature_map.shape)} and node_masks {tuple(node_masks.shape)}: "
            "expected (F, h, w) and (K, h, w) with the same h, w"
        )
    m = node_masks.to(feature_map.dtype)
    if reduce == "mean":
        counts = m.flatten(1).sum(1).clamp_min(1.0)
        return torch.einsum("fhw,khw->kf", feature_map, m) / counts[:, None]
    if reduce == "first":
        first = node_masks.flatten(1).to(torch.uint8).argmax(1)
        return feature_map.flatten(1)[:, first].t()
    raise ZeroSegError(f"reduce {reduce!r}: unknown (choose 'mean' or 'first')")
