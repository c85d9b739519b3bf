"""Tests for zeroseg.modules: backbones, DeepLabV3+, MMD, GMMN and the graph-context GCN."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from zeroseg.errors import ZeroSegError
from zeroseg.modules.backbones import build_backbone
from zeroseg.modules.deeplab import DeepLabV3Plus
from zeroseg.modules.gcn import (
    GCNGenerator,
    GraphConvolution,
    build_segment_graph,
    pool_node_features,
    scatter_node_features,
)
from zeroseg.modules.gmmn import GMMNGenerator
from zeroseg.modules.mmd import mmd_loss, weighted_mmd_loss


@pytest.fixture(autouse=True)
def _single_thread():
    # The tensors here are tiny; intra-op threads only add overhead, and when the (2-core) machine is
    # busy, their spin-waiting made the many small optimiser steps ~100x slower.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --------------------------------------------------------------------------- backbones / DeepLab


@pytest.mark.parametrize("backbone", ["tiny", "resnet18"])
def test_deeplab_shapes(backbone: str) -> None:
    torch.manual_seed(0)
    model = DeepLabV3Plus(num_classes=5, backbone=backbone).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.extract_features(x)
        logits_small = model.classify(feats)
        logits = model(x)
    assert feats.shape == (2, 256, 16, 16)
    assert logits_small.shape == (2, 5, 16, 16)
    assert logits.shape == (2, 5, 64, 64)
    # Decoder features end with BN + ReLU (+ dropout): non-negative, as the GMMN's real targets.
    assert float(feats.min()) >= 0.0


@pytest.mark.parametrize("output_stride", [16, 8])
def test_backbone_strides(output_stride: int) -> None:
    for name in ("tiny", "resnet18"):
        bb = build_backbone(name, output_stride=output_stride).eval()
        with torch.no_grad():
            low, high = bb(torch.randn(1, 3, 64, 64))
        assert low.shape == (1, bb.low_channels, 16, 16)
        assert high.shape == (1, bb.high_channels, 64 // output_stride, 64 // output_stride)


def test_resnet_multigrid_dilation_matches_official() -> None:
    # Official OS16: layer4 stride 1, multi-grid (1, 2, 4) x dilation 2 -> 2, 4, 8.
    bb = build_backbone("resnet50", output_stride=16)
    assert [blk.conv2.dilation for blk in bb.layer4] == [(2, 2), (4, 4), (8, 8)]
    assert bb.layer4[0].conv2.stride == (1, 1) and bb.layer4[0].downsample[0].stride == (1, 1)
    assert bb.layer3[0].conv2.stride == (2, 2)
    bb8 = build_backbone("resnet50", output_stride=8)
    assert {blk.conv2.dilation for blk in bb8.layer3} == {(2, 2)}
    assert [blk.conv2.dilation for blk in bb8.layer4] == [(4, 4), (8, 8), (16, 16)]


def test_aspp_rates_double_at_os8() -> None:
    rates16 = [b[0].dilation for b in DeepLabV3Plus(num_classes=2, backbone="tiny").aspp.branches]
    rates8 = [b[0].dilation for b in DeepLabV3Plus(num_classes=2, backbone="tiny", output_stride=8).aspp.branches]
    assert rates16 == [(1, 1), (6, 6), (12, 12), (18, 18)]
    assert rates8 == [(1, 1), (12, 12), (24, 24), (36, 36)]


def test_parameter_groups_cover_all_params_once() -> None:
    model = DeepLabV3Plus(num_classes=3, backbone="tiny")
    groups = model.parameter_groups(0.007)
    assert [g["name"] for g in groups] == ["backbone", "head"]
    assert groups[0]["lr"] == pytest.approx(0.007) and groups[1]["lr"] == pytest.approx(0.07)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.backbone.parameters()}
    assert id(model.classifier.weight) in {id(p) for p in groups[1]["params"]}
    torch.optim.SGD(groups, lr=0.007, momentum=0.9, weight_decay=5e-4)  # accepted as is


def test_reset_classifier() -> None:
    torch.manual_seed(0)
    model = DeepLabV3Plus(num_classes=3, backbone="tiny", feature_dim=32, aspp_channels=32)
    model.reset_classifier(7)
    w = model.classifier.weight
    assert w.shape == (7, 32, 1, 1) and model.num_classes == 7
    # Official random_last_layer: torch.rand, i.e. U[0, 1).
    assert float(w.detach().min()) >= 0.0 and float(w.detach().max()) < 1.0
    assert any(p is w for p in model.parameter_groups(0.01)[1]["params"])
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 7, 32, 32)


def _assert_same_params(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("backbone", ["tiny", "resnet18"])
def test_pretrained_backbone_round_trip_pth(tmp_path, backbone: str) -> None:
    torch.manual_seed(1)
    src = build_backbone(backbone)
    state = {f"module.{k}": v for k, v in src.state_dict().items()}  # official checkpoint style
    state["fc.weight"] = torch.zeros(10, 4)  # torchvision classifier entries are ignored
    path = tmp_path / "bb.pth"
    torch.save({"state_dict": state, "epoch": 3}, path)
    torch.manual_seed(2)
    model = DeepLabV3Plus(num_classes=4, backbone=backbone, pretrained_backbone=path)
    _assert_same_params(src, model.backbone)


def test_pretrained_backbone_round_trip_safetensors(tmp_path) -> None:
    torch.manual_seed(1)
    src = build_backbone("tiny")
    path = tmp_path / "bb.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    torch.manual_seed(2)
    loaded = build_backbone("tiny", pretrained=path)
    _assert_same_params(src, loaded)


def test_pretrained_backbone_errors(tmp_path) -> None:
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ZeroSegError, match="corrupt.pth: cannot read weights"):
        DeepLabV3Plus(num_classes=2, backbone="tiny", pretrained_backbone=corrupt)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00\x01garbage")
    with pytest.raises(ZeroSegError, match="bad.safetensors: cannot read weights"):
        build_backbone("tiny", pretrained=bad_st)
    with pytest.raises(ZeroSegError, match="missing.pth: pretrained weights file not found"):
        build_backbone("tiny", pretrained=tmp_path / "missing.pth")
    # Weights of another architecture: key mismatch, one line naming the file.
    other = tmp_path / "tiny.pth"
    torch.save(build_backbone("tiny").state_dict(), other)
    with pytest.raises(ZeroSegError, match=r"tiny.pth: keys do not match the backbone") as info:
        build_backbone("resnet18", pretrained=other)
    assert "\n" not in str(info.value)
    # Right keys, wrong shape.
    state = build_backbone("tiny").state_dict()
    state["stage3.0.weight"] = torch.zeros(24, 16, 1, 1)
    shaped = tmp_path / "shape.pth"
    torch.save(state, shaped)
    with pytest.raises(ZeroSegError, match=r"shape.pth: stage3.0.weight has shape \(24, 16, 1, 1\)"):
        build_backbone("tiny", pretrained=shaped)
    # Pickled non-tensor objects are refused by weights_only loading.
    evil = tmp_path / "evil.pth"
    torch.save({"conv": nn.Conv2d(1, 1, 1)}, evil)
    with pytest.raises(ZeroSegError, match="evil.pth"):
        build_backbone("tiny", pretrained=evil)


def test_build_backbone_bad_arguments() -> None:
    with pytest.raises(ZeroSegError, match="backbone 'vgg16': unknown"):
        build_backbone("vgg16")
    with pytest.raises(ZeroSegError, match="output_stride 32"):
        build_backbone("tiny", output_stride=32)


# --------------------------------------------------------------------------- MMD


def test_mmd_hand_computed_single_bandwidth() -> None:
    # x = {0, 2}, y = {1} in 1-D, sigma = 1, k(a, b) = exp(-(a - b)^2 / 2):
    #   mean Kxx = (1 + 1 + 2 e^-2) / 4 = 0.5676676
    #   mean Kyy = 1
    #   mean Kxy = (e^-0.5 + e^-0.5) / 2 = 0.6065307
    #   MMD^2 = 0.5676676 + 1 - 2 * 0.6065307 = 0.3546063 -> sqrt = 0.5954883
    loss = mmd_loss(torch.tensor([[0.0], [2.0]]), torch.tensor([[1.0]]), sigmas=(1.0,))
    assert loss.item() == pytest.approx(0.5954883056727811, abs=1e-6)


def test_mmd_hand_computed_official_bandwidths() -> None:
    # One point each at distance 1: MMD^2 = sum_s (2 - 2 exp(-1 / (2 s))) for s in {2,5,10,20,40,80}
    #   = 0.4423984 + 0.1903252 + 0.0975412 + 0.0493802 + 0.0248444 + 0.0124610 = 0.8169503
    loss = mmd_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]]))
    assert loss.item() == pytest.approx(0.9038530535947896, abs=1e-6)


def test_mmd_matches_official_matrix_formula() -> None:
    # The official GMMNLoss.moment_loss (equal set sizes), re-derived: X = [gen; real],
    # E = X X^T - |X|^2/2 - |X|^2^T/2, s = [1/N ...; -1/M ...], loss = sqrt(sum_s sum(s s^T * exp(E / s))).
    g = torch.Generator().manual_seed(0)
    gen, real = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g) + 0.7
    big = torch.cat([gen, real]).double()
    sq = (big * big).sum(1, keepdim=True)
    expo = big @ big.t() - 0.5 * sq - 0.5 * sq.t()
    # (dtype given up front: a float32 1/5 would differ from 0.2 by 1.5e-8)
    s = torch.cat([torch.full((5, 1), 1 / 5, dtype=torch.float64), torch.full((5, 1), -1 / 5, dtype=torch.float64)])
    ref = math.sqrt(sum(float(((s @ s.t()) * torch.exp(expo / v)).sum()) for v in (2, 5, 10, 20, 40, 80)))
    assert mmd_loss(gen.double(), real.double()).item() == pytest.approx(ref, rel=1e-9)


def test_mmd_identity_symmetry_and_weights() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 4, generator=g), torch.randn(9, 4, generator=g) * 2
    assert mmd_loss(x, x).item() < 1e-5
    assert mmd_loss(x, y).item() == pytest.approx(mmd_loss(y, x).item(), rel=1e-6)
    assert weighted_mmd_loss(x, y, x_weights=torch.ones(6), y_weights=torch.ones(9)).item() == pytest.approx(
        mmd_loss(x, y).item(), rel=1e-6
    )
    # Weight 2 on a point == that point duplicated (weights are normalised per set).
    dup = torch.cat([x[:1], x])
    w = torch.tensor([2.0, 1, 1, 1, 1, 1])
    assert weighted_mmd_loss(x, y, x_weights=w).item() == pytest.approx(mmd_loss(dup, y).item(), rel=1e-5)


def test_mmd_gradient_finite_at_zero() -> None:
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    loss = mmd_loss(x, x.detach().clone())
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    w = torch.ones(4, requires_grad=True)
    weighted_mmd_loss(x, x.detach(), x_weights=w).backward()
    assert torch.isfinite(w.grad).all()


def test_mmd_bad_inputs() -> None:
    with pytest.raises(ZeroSegError, match="feature sizes differ"):
        mmd_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ZeroSegError, match="x_weights: weights must be finite and non-negative"):
        weighted_mmd_loss(torch.zeros(2, 3), torch.zeros(2, 3), x_weights=torch.tensor([1.0, -1.0]))
    with pytest.raises(ZeroSegError, match="y: expected a non-empty"):
        mmd_loss(torch.zeros(2, 3), torch.zeros(0, 3))


# --------------------------------------------------------------------------- GMMN


def test_gmmn_architecture_is_official() -> None:
    gen = GMMNGenerator(embed_dim=300)
    lin1, act, drop, lin2 = gen.model
    assert (lin1.in_features, lin1.out_features, lin2.out_features) == (600, 256, 256)
    assert isinstance(act, nn.LeakyReLU) and act.negative_slope == 0.2
    assert isinstance(drop, nn.Dropout) and drop.p == 0.5
    assert torch.all(lin1.bias == 0.01) and torch.all(lin2.bias == 0.01)
    assert len(gen.model) == 4  # no output activation


def test_gmmn_forward_generate_and_noise() -> None:
    gen = GMMNGenerator(embed_dim=4, noise_dim=5, hidden_dim=16, feature_dim=8).eval()
    emb = torch.randn(3, 4)
    a = gen(emb, generator=torch.Generator().manual_seed(7))
    b = gen(emb, generator=torch.Generator().manual_seed(7))
    assert a.shape == (3, 8) and torch.equal(a, b)
    # Internal noise is U[0, 1) like torch.rand: identical to passing that draw explicitly.
    z = torch.rand(3, 5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(gen(emb, noise=z), a)
    feats, labels = gen.generate(emb, 4, class_ids=torch.tensor([10, 14, 2]))
    assert feats.shape == (12, 8) and labels.tolist() == [10] * 4 + [14] * 4 + [2] * 4
    gauss = GMMNGenerator(embed_dim=4, noise_dim=5, noise="gaussian")
    assert gauss(emb).shape == (3, 256)
    with pytest.raises(ZeroSegError, match="noise 'poisson': unknown"):
        GMMNGenerator(embed_dim=4, noise="poisson")
    with pytest.raises(ZeroSegError, match=r"embeddings: expected shape \(N, 4\)"):
        gen(torch.randn(3, 6))


def test_gmmn_learns_toy_class_conditional_gaussians() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    means = torch.stack([torch.full((8,), 2.0), torch.tensor([3.0, 3, 3, 3, -1, -1, -1, -1])])
    emb = torch.eye(2, 4)

    def real(c: int, n: int) -> torch.Tensor:
        return means[c] + 0.5 * torch.randn(n, 8, generator=g)

    gen = GMMNGenerator(embed_dim=4, noise_dim=8, hidden_dim=64, feature_dim=8)
    opt = torch.optim.Adam(gen.parameters(), lr=1e-2)

    def total_loss() -> float:
        with torch.no_grad():
            return sum(mmd_loss(gen(emb[c].expand(256, 4), generator=g), real(c, 256)).item() for c in range(2))

    before = total_loss()
    for _ in range(100):
        for c in range(2):  # one Adam step per (class, batch of 128 real features), as the official loop
            opt.zero_grad()
            mmd_loss(gen(emb[c].expand(128, 4)), real(c, 128)).backward()
            opt.step()
    after = total_loss()
    assert after < 0.25 * before
    with torch.no_grad():
        feats, labels = gen.generate(emb, 1000, generator=g)
    for c in range(2):
        assert torch.allclose(feats[labels == c].mean(0), means[c], atol=0.35)


# --------------------------------------------------------------------------- graph context / GCN

# Hand-drawn 6x6 map (255 = ignore). Nodes by first pixel in raster order:
#   0: label 0 top-left block        1: label 1 (rows 0-2, cols 2-3)   2: label 2 (rows 0-2, cols 4-5)
#   3: label 3 ring around (3,1)     4: label 0 enclosed pixel (3,1)   5: label 5 (rows 3-5, cols 4-5)
#   6: label 4 bottom-left row       7: label 1 single pixel (5,5), not connected to node 1
LABEL_MAP = torch.tensor(
    [
        [0, 0, 1, 1, 2, 2],
        [0, 0, 1, 1, 2, 2],
        [3, 3, 1, 1, 2, 2],
        [3, 0, 3, 3, 5, 5],
        [3, 3, 3, 255, 5, 5],
        [4, 4, 4, 255, 5, 1],
    ]
)
EDGES_4 = {(0, 1), (0, 3), (1, 2), (1, 3), (2, 5), (3, 4), (3, 5), (3, 6), (5, 7)}
# Diagonal contacts added by 8-connectivity: (2,2)-(3,1), (2,4)-(3,3), (2,3)-(3,4).
EDGES_8 = EDGES_4 | {(1, 4), (2, 3), (1, 5)}


def _edges(adj: torch.Tensor) -> set[tuple[int, int]]:
    return {(i, j) for i, j in (adj > 0).nonzero().tolist() if i < j}


def test_segment_graph_hand_drawn() -> None:
    graph = build_segment_graph(LABEL_MAP, self_loops=False, normalization="none")
    assert graph.num_nodes == 8
    assert graph.node_labels.tolist() == [0, 1, 2, 3, 0, 5, 4, 1]
    assert graph.node_masks.shape == (8, 6, 6) and graph.node_masks.dtype == torch.bool
    assert graph.node_masks.sum((1, 2)).tolist() == [4, 6, 6, 8, 1, 5, 3, 1]
    assert not graph.node_masks[:, 4:, 3].any()  # ignore pixels belong to no node
    assert _edges(graph.adjacency) == EDGES_4
    assert torch.equal(graph.adjacency, graph.adjacency.t()) and graph.adjacency.diagonal().sum() == 0
    graph8 = build_segment_graph(LABEL_MAP, connectivity=8, self_loops=False, normalization="none")
    assert graph8.num_nodes == 8 and _edges(graph8.adjacency) == EDGES_8


def test_segment_graph_default_normalisation() -> None:
    adj = build_segment_graph(LABEL_MAP).adjacency  # A + I, row-normalised
    assert torch.allclose(adj.sum(1), torch.ones(8))
    # Node 0 touches nodes 1 and 3: row = 1/3 on {0, 1, 3}.
    assert torch.allclose(adj[0], torch.tensor([1 / 3, 1 / 3, 0, 1 / 3, 0, 0, 0, 0]))
    # Node 3 touches 0, 1, 4, 5, 6: degree 6 with its self loop.
    assert torch.allclose(adj[3, [0, 1, 3, 4, 5, 6]], torch.full((6,), 1 / 6))
    keep_ignored = build_segment_graph(LABEL_MAP, ignore_index=None)
    assert keep_ignored.num_nodes == 9 and 255 in keep_ignored.node_labels.tolist()
    empty = build_segment_graph(torch.full((3, 3), 255))
    assert empty.num_nodes == 0 and empty.adjacency.shape == (0, 0)
    with pytest.raises(ZeroSegError, match="label_map: expected a 2-D"):
        build_segment_graph(torch.zeros(1, 3, 3, dtype=torch.long))


def test_scatter_and_pool_node_features() -> None:
    graph = build_segment_graph(LABEL_MAP)
    painted = scatter_node_features(graph.node_labels.float()[:, None], graph.node_masks)
    expected = LABEL_MAP.clone().float()
    expected[LABEL_MAP == 255] = 0.0
    assert painted.shape == (1, 6, 6) and torch.equal(painted[0], expected)
    fmap = torch.arange(36.0).reshape(1, 6, 6)
    mean = pool_node_features(fmap, graph.node_masks)
    first = pool_node_features(fmap, graph.node_masks, reduce="first")
    assert mean[0, 0].item() == pytest.approx((0 + 1 + 6 + 7) / 4)
    assert first[:, 0].tolist() == [0.0, 2.0, 4.0, 12.0, 19.0, 22.0, 30.0, 35.0]


def test_graph_convolution_and_gcn_shapes() -> None:
    torch.manual_seed(0)
    layer = GraphConvolution(3, 2)
    x = torch.randn(4, 3)
    assert torch.allclose(layer(x, torch.eye(4)), x @ layer.weight + layer.bias)
    adj = torch.tensor([[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    assert torch.allclose(layer(x, adj.to_sparse()), layer(x, adj), atol=1e-6)
    graph = build_segment_graph(LABEL_MAP)
    gcn = GCNGenerator(embed_dim=300)
    out = gcn(torch.randn(graph.num_nodes, 300), graph.adjacency)
    assert out.shape == (8, 256)
    assert (gcn.gc1.weight.shape, gcn.gc2.weight.shape) == ((600, 256), (256, 256))
    assert gcn.act.negative_slope == 0.2 and gcn.dropout.p == 0.5
    assert scatter_node_features(out, graph.node_masks).shape == (256, 6, 6)


def test_gcn_trained_with_mmd_matches_two_class_targets() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    # 8x8 map of 2x2 tiles in a checkerboard of two classes: 16 nodes, 4-neighbour grid graph.
    tiles = (torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2
    label_map = tiles.repeat_interleave(2, 0).repeat_interleave(2, 1)
    graph = build_segment_graph(label_map)
    assert graph.num_nodes == 16
    class_emb = torch.eye(2, 6)
    node_emb = class_emb[graph.node_labels]
    class_means = torch.tensor([[1.0, 0.0, 2.0, 0.0], [0.0, 3.0, 0.0, 1.0]])
    # Dropout off: the check is about what MMD training reaches, not about dropout noise.
    gcn = GCNGenerator(embed_dim=6, noise_dim=4, hidden_dim=32, feature_dim=4, dropout=0.0)
    opt = torch.optim.Adam(gcn.parameters(), lr=1e-2)

    def loss_per_class(feats: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return sum(mmd_loss(feats[graph.node_labels == c], targets[graph.node_labels == c]) for c in range(2))  # type: ignore[return-value]

    def targets() -> torch.Tensor:
        return class_means[graph.node_labels] + 0.1 * torch.randn(16, 4, generator=g)

    with torch.no_grad():
        before = loss_per_class(gcn(node_emb, graph.adjacency, generator=g), targets()).item()
    for _ in range(300):
        opt.zero_grad()
        loss_per_class(gcn(node_emb, graph.adjacency), targets()).backward()
        opt.step()
    gcn.eval()
    with torch.no_grad():
        after = loss_per_class(gcn(node_emb, graph.adjacency, generator=g), targets()).item()
        # Average over noise draws so the check is on the learned conditional mean.
        feats = torch.stack([gcn(node_emb, graph.adjacency, generator=g) for _ in range(50)]).mean(0)
    assert after < 0.2 * before
    for c in range(2):
        assert torch.allclose(feats[graph.node_labels == c].mean(0), class_means[c], atol=0.25)
