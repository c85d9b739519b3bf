"""ZS3Net/ZS5Net/ZS3Net-GC as valeoai/ZS3 trains and evaluates them (``classifier.protocol: official`` and the
options the official configs turn on), one test per behaviour of docs/zs3net_official.md's parity table.

Golden values are worked out by hand in the comments; the stand-in "segmenter" returns its input image as the
feature map, so every real feature is known.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zeroseg import generative
from zeroseg.config import load_config
from zeroseg.data import transforms as T
from zeroseg.data.zero_shot import data_train_transform
from zeroseg.engine.train import train_one_epoch
from zeroseg.errors import ZeroSegError
from zeroseg.methods import zs3net
from zeroseg.modules.gcn import GCNGenerator
from zeroseg.modules.gmmn import GMMNGenerator

IGNORE = 255


class FeatureIsImage(nn.Module):
    """A "segmenter" whose features are its input; records the train/eval mode of every feature pass."""

    feature_dim = 2

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(2, num_classes, 1)
        self.modes: list[bool] = []

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return x

    def reset_classifier(self, num_classes: int) -> None:
        self.classifier = nn.Conv2d(2, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)


class Data:
    """Two 4x4 two-channel images: image 0 holds seen classes 0 | 1 (left | right), image 1 holds unseen 2 over 0."""

    class_names = ("a", "b", "c", "d", "e")
    seen_ids, unseen_ids = (0, 1, 4), (2, 3)

    def __init__(self) -> None:
        torch.manual_seed(0)
        y0 = torch.zeros(4, 4, dtype=torch.long)
        y0[:, 2:] = 1
        y1 = torch.zeros(4, 4, dtype=torch.long)
        y1[:2] = 2
        self.train_full = [(torch.randn(2, 4, 4), y0, "s0"), (torch.randn(2, 4, 4), y1, "s1")]


def official_cfg(*overrides: str):
    return load_config(
        None,
        [
            "device=cpu",
            "data.num_workers=0",
            "data.batch_size=2",
            "classifier.protocol=official",
            "generator.noise_dim=2",
            "generator.hidden_dim=4",
            "generator.pixels_per_class=3",
            *overrides,
        ],
    )


EMB = torch.tensor([[1.0 + c, -c] for c in range(5)])


# ------------------------------------------------------------------------------- 1. train-mode real features
def test_train_mode_features_use_batch_statistics_and_update_running_stats() -> None:
    class BNSegmenter(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm2d(1)

        def extract_features(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(x)

    x = torch.tensor([1.0, 3.0]).view(2, 1, 1, 1)
    model = BNSegmenter()
    # eval: running stats (0, 1) -> x / sqrt(1 + eps); nothing updated.
    out = generative.frozen_features(model, x, mode="eval")
    torch.testing.assert_close(out.flatten(), torch.tensor([1.0, 3.0]) / math.sqrt(1 + 1e-5))
    assert model.bn.running_mean.item() == 0.0
    # train: batch mean 2, biased variance 1 -> (-1, 1) / sqrt(1 + eps); running mean 0.9 * 0 + 0.1 * 2 = 0.2,
    # running variance 0.9 * 1 + 0.1 * 2 (unbiased: 2 / 1) = 1.1.
    out = generative.frozen_features(model, x, mode="train")
    torch.testing.assert_close(out.flatten(), torch.tensor([-1.0, 1.0]) / math.sqrt(1 + 1e-5))
    assert model.bn.running_mean.item() == pytest.approx(0.2)
    assert model.bn.running_var.item() == pytest.approx(1.1)
    with pytest.raises(ZeroSegError, match="classifier.features"):
        generative.frozen_features(model, x, mode="test")


# ------------------------------------------------------------------------------- 2. online generator, val selection
def test_online_generator_steps_inside_the_classifier_loop_from_a_fresh_generator(monkeypatch) -> None:
    cfg = official_cfg("classifier.online_generator=true", "classifier.features=train", "classifier.epochs=1")
    model, data = FeatureIsImage(), Data()
    gen = GMMNGenerator(**cfg.generator.model_kwargs(2, 2))
    with torch.no_grad():
        for p in gen.parameters():
            p.fill_(float("nan"))  # a stale generator: only a fresh one gives finite fakes and losses
    events: list = []
    step, loss = generative.official_generator_step, generative.official_classifier_loss

    def gen_spy(g, opt, emb_c, real, idx, *, sigmas):
        events.append(("G", int(round(emb_c[0].item() - 1)), real.shape[0], idx.numel()))
        return step(g, opt, emb_c, real, idx, sigmas=sigmas)

    def loss_spy(*args):
        events.append("C")
        return loss(*args)

    monkeypatch.setattr(zs3net, "official_generator_step", gen_spy)
    monkeypatch.setattr(zs3net, "official_classifier_loss", loss_spy)
    history = zs3net.train_classifier_official(cfg, model, gen, EMB, data, False)
    # One batch of both images: image 0 (seen only) gives one generator step per class, with all 8 of its
    # pixels and a 3-index draw; image 1 holds an unseen class, so none; then the classifier step.
    assert sorted(events[:2]) == [("G", 0, 8, 3), ("G", 1, 8, 3)] and events[2:] == ["C"]
    assert all(torch.isfinite(p).all() for p in gen.parameters()) and math.isfinite(history[0])
    assert model.modes == [True]  # classifier.features=train
    with pytest.raises(ZeroSegError, match="online_generator=true needs classifier.protocol=official"):
        zs3net.check_classifier_config(load_config(None, ["classifier.online_generator=true"]))


def test_select_on_val_keeps_the_epoch_with_the_best_validation_unseen_miou(monkeypatch) -> None:
    cfg = official_cfg("classifier.select_on_val=true", "classifier.epochs=3")
    model, data = FeatureIsImage(), Data()
    gen = GMMNGenerator(**cfg.generator.model_kwargs(2, 2))
    scores, snapshots = iter([10.0, 30.0, 20.0]), []

    def fake_eval(cfg, model, data, progress):
        snapshots.append(model.classifier.weight.detach().clone())
        return {"unseen_miou": next(scores)}

    monkeypatch.setattr(zs3net, "evaluate_segmenter", fake_eval)
    zs3net.train_classifier(cfg, model, gen, EMB, data, False)
    assert len(snapshots) == 3 and not torch.equal(snapshots[1], snapshots[2])
    torch.testing.assert_close(model.classifier.weight, snapshots[1])  # epoch 2 scored 30
    with pytest.raises(ZeroSegError, match="select_on_val=true needs classifier.protocol=official"):
        zs3net.check_classifier_config(load_config(None, ["classifier.select_on_val=true"]))


# ------------------------------------------------------------------------------- 3. classifier loss and lr
def test_official_classifier_loss_upsamples_logits_and_divides_by_the_batch() -> None:
    classifier = nn.Conv2d(1, 2, 1)
    with torch.no_grad():  # logits of feature x: (x, 0)
        classifier.weight.copy_(torch.tensor([1.0, 0.0]).view(2, 1, 1, 1))
        classifier.bias.zero_()
    # One image, features (0, 1) along a 1x2 row, labels a 1x4 row of class 1. align_corners=True upsampling
    # gives x = 0, 1/3, 2/3, 1; the nll of class 1 is ln(1 + e^x); batch of 1.
    maps = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    labels = torch.ones(1, 1, 4, dtype=torch.long)
    expected = sum(math.log(1 + math.exp(x)) for x in (0, 1 / 3, 2 / 3, 1)) / 4
    assert generative.official_classifier_loss(classifier, maps, labels, None).item() == pytest.approx(expected)
    # Two images: constant features 0 and 1; labels image 0 all 0 (4 x ln 2), image 1 [[0, 1], [1, 255]]:
    # ln(1 + e^-1) + 2 ln(1 + e). Mean over the 7 valid pixels, divided by the batch of 2.
    maps = torch.tensor([0.0, 1.0]).view(2, 1, 1, 1)
    labels = torch.tensor([[[0, 0], [0, 0]], [[0, 1], [1, IGNORE]]])
    expected = (4 * math.log(2) + math.log(1 + math.exp(-1)) + 2 * math.log(1 + math.e)) / 7 / 2
    assert generative.official_classifier_loss(classifier, maps, labels, None).item() == pytest.approx(expected)
    # The 10x group: lr 0.007 -> 0.07, poly (1 - T / N) ** 0.9 before each iteration.
    opt = generative.official_classifier_optimizer(classifier, 0.007)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.07)
    assert generative.official_poly_lr(opt, 0.007, 5, 10) == pytest.approx(0.07 * 0.5**0.9)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.07 * 0.5**0.9)


def test_official_feature_maps_real_for_seen_images_generated_and_zero_ignore_for_unseen() -> None:
    feats = torch.arange(2 * 2 * 1 * 3, dtype=torch.float32).view(2, 2, 1, 3)
    labels = torch.tensor([[[0, 1, IGNORE]], [[0, 2, IGNORE]]])  # image 1 holds unseen class 2
    calls = []

    def make_fake(c, real, has_unseen):
        calls.append((c, real.shape[0], has_unseen))
        return torch.full((real.shape[0], 2), 100.0 + c)

    out = generative.official_feature_maps(feats, labels, torch.tensor([2]), make_fake)
    torch.testing.assert_close(out[0], feats[0])  # no unseen pixel: real features, 255 included
    expected = torch.tensor([[100.0, 102.0, 0.0], [100.0, 102.0, 0.0]]).view(2, 1, 3)
    torch.testing.assert_close(out[1], expected)  # generated per class, zeros at the 255 pixel
    assert calls == [(0, 1, False), (1, 1, False), (0, 1, True), (2, 1, True)]


# ------------------------------------------------------------------------------- 4. batch-averaged CE
def test_batch_average_divides_by_the_global_batch_exactly_under_accumulation() -> None:
    def step(batch_average: bool, accum: int) -> tuple[float, torch.Tensor]:
        net = nn.Conv2d(1, 2, 1)
        with torch.no_grad():
            net.weight.zero_()
            net.bias.zero_()
        opt = torch.optim.SGD(net.parameters(), lr=1.0)
        batch = (torch.randn(2, 1, 2, 2), torch.zeros(2, 2, 2, dtype=torch.long), ["a", "b"])
        loss = train_one_epoch(
            net,
            [batch],
            opt,
            None,
            criterion=nn.CrossEntropyLoss(ignore_index=IGNORE),
            device=torch.device("cpu"),
            progress=False,
            grad_accum=accum,
            batch_average=batch_average,
        )
        return loss, net.bias.detach().clone()

    # Logits 0: every pixel's loss is ln 2; bias gradient (p - y) = (-0.5, 0.5). Divided by the batch of 2:
    # loss ln 2 / 2, gradient (-0.25, 0.25), so one lr-1 step moves the bias to (0.25, -0.25).
    for accum in (1, 2):
        loss, bias = step(True, accum)
        assert loss == pytest.approx(math.log(2) / 2)
        torch.testing.assert_close(bias, torch.tensor([0.25, -0.25]))
    loss, bias = step(False, 1)
    assert loss == pytest.approx(math.log(2))
    torch.testing.assert_close(bias, torch.tensor([0.5, -0.5]))


# ------------------------------------------------------------------------------- 5. GC graph keeps 255 pixels
def test_official_graph_has_a_node_for_255_segments_with_class_0_embedding() -> None:
    labels = torch.tensor([[0, IGNORE, 1]])
    graph = zs3net.segment_graph(labels, keep_ignore=True)
    # Three nodes in raster order; 0 and 1 touch only through the 255 node.
    assert graph.node_labels.tolist() == [0, IGNORE, 1]
    assert graph.adjacency.tolist() == [[0, 1, 0], [1, 0, 1], [0, 1, 0]]
    strict = zs3net.segment_graph(labels)
    assert strict.node_labels.tolist() == [0, 1] and strict.adjacency.tolist() == [[0, 0], [0, 0]]
    emb = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    torch.testing.assert_close(
        zs3net.node_embeddings(emb, graph.node_labels), torch.tensor([[1.0, 2.0], [1.0, 2.0], [3.0, 4.0]])
    )
    feats = torch.arange(6, dtype=torch.float32).view(1, 2, 1, 3)
    gcn = GCNGenerator(embed_dim=2, noise_dim=2, hidden_dim=4, feature_dim=2)
    x, y = zs3net.official_graph_nodes(feats, labels[None], gcn, emb, torch.tensor([5]))
    # No unseen pixel: the real feature of every node, the 255 node included (the loss ignores its label).
    assert y.tolist() == [0, IGNORE, 1]
    torch.testing.assert_close(x, feats[0, :, 0].T)


# ------------------------------------------------------------------------------- 6. MMD on shared indices
def test_official_mmd_indexes_one_fake_per_real_pixel_with_the_same_draw() -> None:
    real = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]])

    class CopiesReal(nn.Module):
        """Generates exactly the real features, row by row (plus a trainable offset starting at 0)."""

        def __init__(self) -> None:
            super().__init__()
            self.offset = nn.Parameter(torch.zeros(2))

        def forward(self, e: torch.Tensor) -> torch.Tensor:
            return real[: e.shape[0]] + self.offset

    gen = CopiesReal()
    opt = torch.optim.Adam(gen.parameters(), lr=0.1)
    # fake row i == real row i, so MMD(fake[idx], real[idx]) is 0 for any idx, e.g. (0, 0, 2).
    value, fakes = generative.official_generator_step(
        gen, opt, torch.zeros(2), real, torch.tensor([0, 0, 2]), sigmas=(2.0,)
    )
    assert value == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(fakes, real)  # one fake per real pixel, from before the step
    # The sets: image 0 (classes 0 | 1) gives each class all its pixels and a 5-index draw; image 1 holds
    # unseen class 2 and gives nothing.
    feats = torch.arange(2 * 1 * 1 * 3, dtype=torch.float32).view(2, 1, 1, 3)
    ys = torch.tensor([[[0, 0, 1]], [[0, 2, 2]]])
    sets = list(generative.official_pixel_sets(feats, ys, {0, 1}, {2}, 5, torch.Generator().manual_seed(0)))
    assert [(c, r.flatten().tolist(), idx.numel()) for c, r, idx in sets] == [(0, [0.0, 1.0], 5), (1, [2.0], 5)]
    assert all(int(idx.max()) < r.shape[0] for _, r, idx in sets)


# ------------------------------------------------------------------------------- 7. augmentation, evaluation
def test_official_scale_crop_draws_the_short_side_in_half_to_twice_base_and_pads_0_255() -> None:
    # A 2x2 white image, base 2, crop 4: short side in {1, 2, 3, 4}; the resized square sits top-left
    # (the padded image is exactly 4x4, so the crop is at 0, 0), the rest is padding: image 0, label 255.
    image, label = torch.ones(3, 2, 2), torch.zeros(2, 2, dtype=torch.long)
    sides = set()
    for seed in range(60):
        img, lab = T.OfficialScaleCrop(2, 4)(image, label, torch.Generator().manual_seed(seed))
        assert img.shape == (3, 4, 4) and lab.shape == (4, 4)
        assert torch.equal(img[0] == 0, lab == IGNORE)
        side = math.isqrt(int((lab != IGNORE).sum()))
        assert (lab[:side, :side] == 0).all()
        sides.add(side)
    assert sides == {1, 2, 3, 4}
    # The longer side is floored: 4x6 to short 5 -> 5 x int(7.5) = 5 x 7; 6x4 -> 7 x 5.
    assert T._fix_scale(4, 6, 5) == (5, 7) and T._fix_scale(6, 4, 5) == (7, 5) and T._fix_scale(3, 3, 5) == (5, 5)
    # Order of the official transform_tr: flip, scale-crop, blur.
    tf = T.official_train_transform(312, 312)
    assert [type(t) for t in tf.transforms] == [T.RandomHorizontalFlip, T.OfficialScaleCrop, T.RandomGaussianBlur]
    # data.augmentation picks it; "relative" (the default, the synthetic demo's) keeps the relative scale range.
    official = data_train_transform(load_config("voc_zs3net").data)
    assert isinstance(official.transforms[1], T.OfficialScaleCrop) and official.transforms[1].base_size == 312
    assert isinstance(data_train_transform(load_config(None, []).data).transforms[0], T.RandomScale)


def test_gaussian_blur_of_a_delta_is_the_normalised_gaussian() -> None:
    # sigma 0.5: taps at -2..2 with weights exp(-x^2 / 0.5) = e^-8, e^-2, 1, e^-2, e^-8; the 2-D centre is
    # (1 / S)^2, its horizontal neighbour e^-2 / S^2, with S = 1 + 2e^-2 + 2e^-8.
    image = torch.zeros(3, 7, 7)
    image[:, 3, 3] = 1.0
    out = T.gaussian_blur(image, 0.5)
    s = 1 + 2 * math.exp(-2) + 2 * math.exp(-8)
    assert out[0, 3, 3].item() == pytest.approx(1 / s**2)
    assert out[1, 3, 4].item() == pytest.approx(math.exp(-2) / s**2)
    assert out.sum().item() == pytest.approx(3.0)


def test_fixscale_evaluation_floors_the_long_side_and_resizes_the_ground_truth() -> None:
    # 4x7 to short side 5: 7 * 5 / 4 = 8.75 -> the official int() gives 8 (rounding would give 9).
    image, label = torch.rand(3, 4, 7), torch.arange(28).view(4, 7) % 3
    img, lab = T.eval_transform(5, rounding="floor")(image, label)
    assert img.shape == (3, 5, 8) and lab.shape == (5, 8)
    assert T.eval_transform(5)(image, label)[0].shape == (3, 5, 9)
    # The official configs evaluate at 513 with FixScale on image and ground truth.
    cfg = load_config("voc_zs3net")
    assert (cfg.data.eval_size, cfg.data.eval_rounding, cfg.data.augmentation) == (513, "floor", "official")
    torch.testing.assert_close(F.interpolate(label[None, None].float(), size=(5, 8), mode="nearest")[0, 0].long(), lab)
