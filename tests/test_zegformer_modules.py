"""ZegFormer building blocks: matcher, losses, pixel decoder, transformer decoder, zero-shot head."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

from zeroseg.errors import ZeroSegError
from zeroseg.modules.mask_losses import SetCriterion, default_weight_dict, dice_loss, sigmoid_focal_loss
from zeroseg.modules.matcher import HungarianMatcher
from zeroseg.modules.pixel_decoder import FPNPixelDecoder, ResNetFeatures
from zeroseg.modules.transformer_decoder import QueryTransformerDecoder, sine_position_encoding
from zeroseg.modules.zegformer_head import ZeroShotSegmentHead, semantic_inference

LN2 = math.log(2.0)


@pytest.fixture(autouse=True)
def _one_thread():
    # Another engineer shares the 2 cores.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ----------------------------------------------------------------------------------------------- losses


def test_focal_loss_hand_computed():
    # logit 0 -> p = 0.5; BCE = ln 2; (1 - p_t)^2 = 1/4; alpha_t = 0.25 (pos) or 0.75 (neg).
    logits = torch.zeros(1, 2)
    target = torch.tensor([[1.0, 0.0]])
    expected = (0.25 * 0.25 * LN2 + 0.75 * 0.25 * LN2) / 2  # mean over the 2 pixels
    assert sigmoid_focal_loss(logits, target, 1.0).item() == pytest.approx(expected, rel=1e-6)
    # Summed over masks, divided by num_masks.
    two = sigmoid_focal_loss(logits.repeat(2, 1), target.repeat(2, 1), 4.0)
    assert two.item() == pytest.approx(2 * expected / 4, rel=1e-6)


def test_dice_loss_hand_computed():
    # p = (0.5, 0.5), t = (1, 0): 1 - (2*0.5 + 1) / (1 + 1 + 1) = 1/3.
    assert dice_loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), 1.0).item() == pytest.approx(1 / 3, rel=1e-6)
    # A confident correct mask has ~0 loss; the sum over 2 masks is divided by num_masks = 2.
    logits = torch.tensor([[0.0, 0.0], [30.0, -30.0]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert dice_loss(logits, targets, 2.0).item() == pytest.approx((1 / 3 + 0.0) / 2, abs=1e-6)


def test_default_weight_dict_matches_official():
    w = default_weight_dict(dec_layers=6)
    assert w["loss_ce"] == 1.0 and w["loss_mask"] == 20.0 and w["loss_dice"] == 1.0
    assert sorted(k for k in w if k.startswith("loss_mask_")) == [f"loss_mask_{i}" for i in range(5)]
    assert len(w) == 18
    assert default_weight_dict(deep_supervision=False) == {
        "loss_ce": 1.0,
        "loss_mask": 20.0,
        "loss_dice": 1.0,
    }


# ---------------------------------------------------------------------------------------------- matcher


def _two_targets() -> dict[str, torch.Tensor]:
    masks = torch.zeros(2, 4, 4)
    masks[0, :, :2] = 1  # left half, class 0
    masks[1, :, 2:] = 1  # right half, class 1
    return {"labels": torch.tensor([0, 1]), "masks": masks}


def _predictions_for(targets: dict[str, torch.Tensor], order: list[int]) -> dict[str, torch.Tensor]:
    """Query i predicts target order[i] (class and mask); extra queries predict no-object."""
    num_queries, num_classes = 3, 2
    logits = torch.zeros(1, num_queries, num_classes + 1)
    logits[0, :, -1] = 5.0
    masks = torch.full((1, num_queries, 4, 4), -5.0)
    for q, t in enumerate(order):
        logits[0, q] = 0.0
        logits[0, q, targets["labels"][t]] = 5.0
        masks[0, q] = targets["masks"][t] * 10 - 5
    return {"pred_logits": logits, "pred_masks": masks}


def test_matcher_obvious_assignment_and_query_permutation():
    targets = _two_targets()
    matcher = HungarianMatcher()
    outputs = _predictions_for(targets, [1, 0])
    ((q, t),) = matcher(outputs, [targets])
    assert dict(zip(q.tolist(), t.tolist(), strict=True)) == {0: 1, 1: 0}
    # Permuting queries permutes the assignment the same way.
    perm = torch.tensor([2, 0, 1])  # new query j is old query perm[j]
    permuted = {k: v[:, perm] for k, v in outputs.items()}
    ((q2, t2),) = matcher(permuted, [targets])
    assert {perm[a].item(): b for a, b in zip(q2.tolist(), t2.tolist(), strict=True)} == {0: 1, 1: 0}
    assert q2.dtype == torch.int64 and t2.dtype == torch.int64


def test_matcher_cost_golden_value_and_downsampling():
    # 3 classes with zero logits -> p = 1/3; zero mask logits on 2x2 vs target [1,0,0,0]:
    # focal = (0.0625 * 1 + 0.1875 * 3) ln2 / 4, dice = 1 - (2*0.5 + 1) / (2 + 1 + 1) = 0.5.
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=20.0, cost_dice=1.0)
    target = torch.zeros(1, 4, 4)
    target[0, :2, :2] = 1  # nearest-downsampled to 2x2 -> [1, 0, 0, 0]
    cost = matcher.cost_matrix(torch.zeros(1, 3), torch.zeros(1, 2, 2), torch.tensor([0]), target)
    expected = 20 * (0.0625 + 0.1875 * 3) * LN2 / 4 - 1 / 3 + 0.5
    assert cost.shape == (1, 1)
    assert cost.item() == pytest.approx(expected, rel=1e-5)


def test_matcher_empty_target_and_points_and_errors():
    targets = _two_targets()
    outputs = _predictions_for(targets, [1, 0])
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 4, 4)}
    batch = {k: v.repeat(2, 1, 1, 1) if v.dim() == 4 else v.repeat(2, 1, 1) for k, v in outputs.items()}
    torch.manual_seed(0)  # the point sample is drawn from the global generator
    res = HungarianMatcher(num_points=12)(batch, [targets, empty])
    assert dict(zip(res[0][0].tolist(), res[0][1].tolist(), strict=True)) == {0: 1, 1: 0}
    assert res[1][0].numel() == 0 and res[1][1].numel() == 0
    with pytest.raises(ZeroSegError, match="cannot all be 0"):
        HungarianMatcher(cost_class=0, cost_mask=0, cost_dice=0)
    with pytest.raises(ZeroSegError, match="2 targets for a batch of 1"):
        HungarianMatcher()(outputs, [targets, targets])


# -------------------------------------------------------------------------------------------- criterion


def _criterion(num_classes: int = 2) -> SetCriterion:
    return SetCriterion(
        num_classes=num_classes,
        matcher=HungarianMatcher(),
        eos_coef=0.1,
        weight_dict=default_weight_dict(dec_layers=3),
    )


def test_criterion_ce_golden_and_aux_keys():
    targets = _two_targets()
    zeros = {"pred_logits": torch.zeros(1, 3, 3), "pred_masks": torch.zeros(1, 3, 4, 4)}
    outputs = dict(zeros, aux_outputs=[dict(zeros), dict(zeros)])
    losses = _criterion()(outputs, [targets])
    expected_keys = {f"loss_{n}{s}" for n in ("ce", "mask", "dice") for s in ("", "_0", "_1")}
    assert set(losses) == expected_keys
    # Uniform logits: every query's CE is ln 3, so the weighted mean is ln 3 whatever the weights.
    assert losses["loss_ce"].item() == pytest.approx(math.log(3), rel=1e-6)
    # Zero mask logits: focal mean per mask = (0.0625 * 8 + 0.1875 * 8) ln2 / 16, 2 masks / num_masks 2.
    assert losses["loss_mask"].item() == pytest.approx(0.125 * LN2, rel=1e-5)
    # Dice per mask: 1 - (2*4 + 1) / (8 + 8 + 1) = 8/17.
    assert losses["loss_dice_1"].item() == pytest.approx(8 / 17, rel=1e-5)


def test_criterion_no_object_weight():
    # 1 matched query (target class 0) and 2 unmatched (no-object) with known per-query CE values.
    target = {"labels": torch.tensor([0]), "masks": torch.ones(1, 2, 2)}
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]])
    masks = torch.tensor([10.0, -10.0, -10.0])[None, :, None, None].expand(1, 3, 2, 2)
    losses = _criterion()({"pred_logits": logits, "pred_masks": masks}, [target])
    ce_match = -F.log_softmax(logits[0, 0], -1)[0].item()
    ce_bg = -F.log_softmax(logits[0, 1], -1)[2].item()
    expected = (ce_match + 0.1 * 2 * ce_bg) / (1 + 0.1 * 2)
    assert losses["loss_ce"].item() == pytest.approx(expected, rel=1e-6)


def test_criterion_decreases_toward_targets_and_validates():
    targets = _two_targets()
    crit = _criterion()
    bad = {"pred_logits": torch.zeros(1, 3, 3), "pred_masks": torch.zeros(1, 3, 4, 4)}
    good = _predictions_for(targets, [1, 0])
    total_bad = sum(crit.weighted(crit(bad, [targets])).values())
    total_good = sum(crit.weighted(crit(good, [targets])).values())
    assert total_good < 0.2 * total_bad
    wrong = {"labels": torch.tensor([5]), "masks": torch.ones(1, 4, 4)}
    with pytest.raises(ZeroSegError, match=r"label ids \[5\] outside 0..1"):
        crit(bad, [wrong])
    with pytest.raises(ZeroSegError, match="expected 3 \\+ 1"):
        _criterion(num_classes=3)(bad, [targets])


# ------------------------------------------------------------------------------------- decoder modules


TINY_CHANNELS = {"res2": 8, "res3": 16, "res4": 24, "res5": 32}


def _tiny_features(batch: int, size: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        name: torch.randn(batch, ch, size // s, size // s, generator=g)
        for (name, ch), s in zip(TINY_CHANNELS.items(), (4, 8, 16, 32), strict=True)
    }


def test_pixel_decoder_shapes_and_groupnorm():
    torch.manual_seed(0)
    dec = FPNPixelDecoder(in_channels=TINY_CHANNELS, conv_dim=32, mask_dim=16)
    out = dec(_tiny_features(2, 64))
    assert out.shape == (2, 16, 16, 16)
    norms = [m for m in dec.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 7 and all(m.num_groups == 32 for m in norms)
    default = FPNPixelDecoder(in_channels=TINY_CHANNELS)
    assert default.mask_features.out_channels == 256 and default.conv_dim == 256
    with pytest.raises(ZeroSegError, match="lacks \\['res2'\\]"):
        FPNPixelDecoder(in_channels={"res3": 8, "res4": 8, "res5": 8})


def test_pixel_decoder_on_torchvision_resnet():
    torch.manual_seed(0)
    trunk = ResNetFeatures(resnet18(weights=None)).eval()
    assert trunk.channels == {"res2": 64, "res3": 128, "res4": 256, "res5": 512}
    with torch.no_grad():
        feats = trunk(torch.randn(1, 3, 64, 64))
        assert feats["res5"].shape == (1, 512, 2, 2)
        out = FPNPixelDecoder(in_channels=trunk.channels, conv_dim=32, mask_dim=32)(feats)
    assert out.shape == (1, 32, 16, 16)


def test_sine_position_encoding_values():
    pos = sine_position_encoding(1, 2, 3, 4)
    assert pos.shape == (1, 8, 2, 3)
    # Row 0: y = 1/2 * 2pi = pi -> sin = 0, cos = -1 (first frequency is 1); row 1: y = 2pi -> cos = 1.
    assert pos[0, 0, 0, 0].item() == pytest.approx(0.0, abs=1e-5)
    assert pos[0, 1, 0, 0].item() == pytest.approx(-1.0, abs=1e-5)
    assert pos[0, 1, 1, 2].item() == pytest.approx(1.0, abs=1e-5)
    # x channels follow: column 0 has x = 1/3 * 2pi.
    assert pos[0, 4, 1, 0].item() == pytest.approx(math.sin(2 * math.pi / 3), abs=1e-5)


def test_transformer_decoder_shapes_and_defaults():
    torch.manual_seed(0)
    dec = QueryTransformerDecoder(
        in_channels=32, hidden_dim=32, num_queries=4, num_layers=2, num_heads=8, dim_feedforward=64
    ).eval()
    hs = dec(torch.randn(2, 32, 2, 2))
    assert hs.shape == (2, 2, 4, 32)
    # Every layer output goes through the shared final LayerNorm (zero mean, unit variance per query).
    assert hs.mean(-1).abs().max().item() < 1e-5
    official = QueryTransformerDecoder(in_channels=2048)
    assert len(official.layers) == 6 and official.num_queries == 100 and official.hidden_dim == 256
    layer = official.layers[0]
    assert layer.self_attn.num_heads == 8 and layer.linear1.out_features == 2048 and not layer.pre_norm
    assert isinstance(official.input_proj, nn.Conv2d)
    assert isinstance(QueryTransformerDecoder(in_channels=32, hidden_dim=32, num_heads=4).input_proj, nn.Identity)


# ------------------------------------------------------------------------------------------------- head


def test_head_logits_are_cosine_over_temperature():
    torch.manual_seed(0)
    text = torch.randn(3, 8)
    queries = torch.randn(2, 1, 4, 16)
    mask_features = torch.randn(1, 16, 5, 5)
    head = ZeroShotSegmentHead(hidden_dim=16, text_dim=8, mask_dim=16, temperature=0.01)
    bound = 1 / math.sqrt(8)
    assert head.bg_embedding.shape == (1, 8) and head.bg_embedding.abs().max().item() <= bound
    assert not any(p is head.logit_scale for p in head.parameters())
    out = head(queries, mask_features, text)
    assert out["pred_logits"].shape == (1, 4, 4) and out["pred_masks"].shape == (1, 4, 5, 5)
    assert len(out["aux_outputs"]) == 1 and out["aux_outputs"][0]["pred_masks"].shape == (1, 4, 5, 5)
    seg = head.segment_embeddings(queries[-1])
    assert torch.allclose(seg.norm(dim=-1), torch.ones(1, 4), atol=1e-6)
    cos = seg @ F.normalize(text, dim=-1).T
    assert torch.allclose(out["pred_logits"][..., :3], cos / 0.01, atol=1e-4)
    assert torch.allclose(out["pred_logits"][..., 3], 100 * (seg @ head.bg_embedding.T)[..., 0], atol=1e-4)
    # Same weights, T = 0.1: logits are 10x smaller.
    warm = ZeroShotSegmentHead(hidden_dim=16, text_dim=8, mask_dim=16, temperature=0.1)
    warm.load_state_dict({k: v for k, v in head.state_dict().items() if k != "logit_scale"}, strict=False)
    assert torch.allclose(warm(queries, mask_features, text)["pred_logits"], out["pred_logits"] / 10, atol=1e-5)
    with pytest.raises(ZeroSegError, match="expected \\(C, 8\\)"):
        head(queries, mask_features, torch.randn(3, 7))


def test_semantic_inference_golden():
    # q0: softmax([ln3, 0, 0]) = (3/5, 1/5, 1/5), mask sigmoid(0) = 0.5;
    # q1: uniform 1/3, mask sigmoid(ln 3) = 0.75.
    logits = torch.tensor([[[math.log(3), 0.0, 0.0], [0.0, 0.0, 0.0]]])
    masks = torch.tensor([[[[0.0]], [[math.log(3)]]]])
    sem = semantic_inference(logits, masks)
    assert sem.shape == (1, 2, 1, 1)
    assert sem[0, 0, 0, 0].item() == pytest.approx(0.6 * 0.5 + 0.75 / 3, rel=1e-6)
    assert sem[0, 1, 0, 0].item() == pytest.approx(0.2 * 0.5 + 0.75 / 3, rel=1e-6)


# ------------------------------------------------------------------------------------- end-to-end overfit


class _TinyTrunk(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, stride=4)
        self.s3 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.s4 = nn.Conv2d(16, 24, 3, stride=2, padding=1)
        self.s5 = nn.Conv2d(24, 32, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        r2 = F.relu(self.stem(x))
        r3 = F.relu(self.s3(r2))
        r4 = F.relu(self.s4(r3))
        return {"res2": r2, "res3": r3, "res4": r4, "res5": F.relu(self.s5(r4))}


def test_tiny_model_overfits_one_image():
    torch.manual_seed(0)
    trunk = _TinyTrunk()
    # res5 is only 2x2 here; 8 groups keep several values per group.
    pixel = FPNPixelDecoder(in_channels=TINY_CHANNELS, conv_dim=32, mask_dim=32, norm_groups=8)
    decoder = QueryTransformerDecoder(
        in_channels=32,
        hidden_dim=32,
        num_queries=4,
        num_layers=2,
        num_heads=4,
        dim_feedforward=64,
        dropout=0.0,
    )
    head = ZeroShotSegmentHead(hidden_dim=32, text_dim=8, mask_dim=32)
    text = F.normalize(torch.randn(3, 8), dim=-1)
    modules = nn.ModuleList([trunk, pixel, decoder, head])

    # 64x64 rather than 32x32: with a 1x1 res5 every query cross-attends to the same single token and the
    # zero-initialised queries stay identical (query_pos never reaches the values), so nothing can be learned.
    image = torch.zeros(1, 3, 64, 64)
    image[:, 0, :, :32] = 1.0
    image[:, 2, :, 32:] = 1.0
    semantic = torch.zeros(64, 64, dtype=torch.long)
    semantic[:, 32:] = 2  # left class 0, right class 2; class 1 absent
    target = {"labels": torch.tensor([0, 2]), "masks": torch.stack([semantic == 0, semantic == 2]).float()}
    crit = SetCriterion(num_classes=3, matcher=HungarianMatcher(), weight_dict=default_weight_dict(dec_layers=2))

    def forward() -> dict:
        feats = trunk(image)
        return head(decoder(feats["res5"]), pixel(feats), text)

    opt = torch.optim.AdamW(modules.parameters(), lr=1e-3, weight_decay=1e-4)
    totals = []
    for _ in range(100):
        loss = sum(crit.weighted(crit(forward(), [target])).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        totals.append(loss.item())
    assert totals[-1] < 0.1 * totals[0]
    with torch.no_grad():
        out = forward()
        masks = F.interpolate(out["pred_masks"], size=(64, 64), mode="bilinear", align_corners=False)
        pred = semantic_inference(out["pred_logits"], masks)[0].argmax(0)
    assert (pred == semantic).float().mean().item() > 0.97
    # Masks recovered: each segment's matched query predicts its class and a mask with IoU > 0.9.
    ((queries, segments),) = crit.matcher(out, [target])
    for q, t in zip(queries.tolist(), segments.tolist(), strict=True):
        assert out["pred_logits"][0, q].argmax().item() == target["labels"][t].item()
        binary = masks[0, q] > 0
        truth = target["masks"][t] > 0
        assert (binary & truth).sum().item() / (binary | truth).sum().item() > 0.9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_modules_run_on_cuda():
    torch.manual_seed(0)
    dev = torch.device("cuda")
    pixel = FPNPixelDecoder(in_channels=TINY_CHANNELS, conv_dim=32, mask_dim=32).to(dev)
    decoder = QueryTransformerDecoder(in_channels=32, hidden_dim=32, num_queries=4, num_layers=2).to(dev)
    head = ZeroShotSegmentHead(hidden_dim=32, text_dim=8, mask_dim=32).to(dev)
    feats = {k: v.to(dev) for k, v in _tiny_features(2, 64).items()}
    out = head(decoder(feats["res5"]), pixel(feats), torch.randn(3, 8, device=dev))
    targets = [_two_targets(), _two_targets()]
    targets = [{k: v.to(dev) for k, v in t.items()} for t in targets]
    crit = SetCriterion(num_classes=3, matcher=HungarianMatcher(), weight_dict=default_weight_dict(dec_layers=2))
    total = sum(crit.weighted(crit(out, targets)).values())
    total.backward()
    assert total.device.type == "cuda" and torch.isfinite(total)
