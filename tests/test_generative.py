"""The rules that make ZS3Net, ZS5Net and ZS-MMD what they are, on hand-built features (zeroseg.generative),
and checked again through the stage functions that apply them (tiny stand-in models, spies).

Stand-ins: the "segmenter" returns its input image as the feature map (and as logits), so every real feature
is known; the "generator" returns the class embedding itself, so every generated feature is recognisable.
"""

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from zeroseg import generative
from zeroseg.config import load_config
from zeroseg.methods import zs3net, zs_mmd

IGNORE = 255


class ImageIsFeatures(nn.Module):
    """A frozen "segmenter" whose feature map (and logit map) is its input; a real, resettable 1x1 classifier."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.dim = dim
        self.classifier = nn.Conv2d(dim, num_classes, 1)

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def classify(self, f: torch.Tensor) -> torch.Tensor:
        return self.classifier(f)

    def reset_classifier(self, num_classes: int) -> None:
        self.classifier = nn.Conv2d(self.dim, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class EmbeddingIsFeature(nn.Module):
    """A noise-free "generator": the generated feature of a class is its embedding."""

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return e.clone()


def rows(x: torch.Tensor, y: torch.Tensor) -> list[tuple]:
    """The (feature..., label) rows of a sample set, sorted: a multiset to compare."""
    return sorted((*[round(v, 4) for v in f.tolist()], int(c)) for f, c in zip(x, y, strict=True))


def capture_fit(monkeypatch) -> list[dict]:
    """Replace ``zs3net.fit_linear_classifier`` by a spy recording its keyword arguments and one epoch's batches."""
    calls: list[dict] = []

    def spy(classifier, batches, **kwargs):
        calls.append({**kwargs, "batches": [tuple(t.clone() for t in b) for b in batches()]})

    monkeypatch.setattr(zs3net, "fit_linear_classifier", spy)
    return calls


# Five classes: 0, 1, 4 seen (4 never appears in the images), 2 and 3 unseen. Embedding of class c: (100 + c, -c).
EMB = torch.tensor([[100.0 + c, -c] for c in range(5)])
SEEN, UNSEEN = (0, 1, 4), (2, 3)


def tiny_cfg(*overrides: str):
    return load_config(None, ["device=cpu", "data.num_workers=0", "classifier.epochs=1", *overrides])


def tiny_data(**datasets) -> SimpleNamespace:
    return SimpleNamespace(class_names=("a", "b", "c", "d", "e"), seen_ids=SEEN, unseen_ids=UNSEEN, **datasets)


# --------------------------------------------------------------------------------------------- a. strict prior
def strict_images() -> tuple[torch.Tensor, torch.Tensor]:
    """Two seen-only 2x3 images. Image 0: class 0 x4, class 1 x2; image 1: class 0 x2, three 255 pixels."""
    feats = torch.arange(2 * 2 * 2 * 3, dtype=torch.float).reshape(2, 2, 2, 3)  # every pixel distinct
    labels = torch.tensor([[[0, 0, 0], [0, 1, 1]], [[0, 0, IGNORE], [IGNORE, IGNORE, IGNORE]]])
    return feats, labels


def test_strict_batch_gives_each_unseen_class_the_mean_count_of_a_present_seen_class() -> None:
    feats, labels = strict_images()
    rng = torch.Generator().manual_seed(0)
    x, y = generative.strict_batch(
        feats, labels, EmbeddingIsFeature(), EMB, torch.tensor(SEEN), torch.tensor(UNSEEN), 10, rng
    )
    # Real part: all 8 labelled pixels (per_class 10 caps nothing): class 0 x6, class 1 x2. Mean count of a
    # seen class present in the batch = 8 / 2 = 4 (class 4 is absent and does not count): 4 per unseen class.
    labelled = torch.nonzero(labels != IGNORE).tolist()
    real = [(*feats[b, :, i, j].tolist(), int(labels[b, i, j])) for b, i, j in labelled]
    assert rows(x[:8], y[:8]) == sorted(real)
    assert y[8:].tolist() == [2, 2, 2, 2, 3, 3, 3, 3]
    torch.testing.assert_close(x[8:], EMB[[2, 2, 2, 2, 3, 3, 3, 3]])
    empty = torch.full_like(labels, IGNORE)
    assert (
        generative.strict_batch(
            feats, empty, EmbeddingIsFeature(), EMB, torch.tensor(SEEN), torch.tensor(UNSEEN), 10, rng
        )
        is None
    )


def test_train_classifier_strict_uses_the_uniform_prior_and_seen_only_images(monkeypatch) -> None:
    feats, labels = strict_images()
    # train_full (the official protocol's images) also holds an image with unseen pixels, which the strict
    # protocol must not read at all, not even its seen pixels.
    mixed = torch.tensor([[0, 2, 2], [1, 1, 2]])
    data = tiny_data(
        train_plain=[(feats[b], labels[b], f"s{b}") for b in range(2)],
        train_full=[(feats[b], labels[b], f"s{b}") for b in range(2)] + [(feats[0] + 50, mixed, "mixed")],
    )
    calls = capture_fit(monkeypatch)
    cfg = tiny_cfg("data.batch_size=2", "generator.pixels_per_class=10", "classifier.unseen_weight=7")
    zs3net.train_classifier(cfg, ImageIsFeatures(2, 5), EmbeddingIsFeature(), EMB, data, False)
    (call,) = calls
    (batch,) = call["batches"]
    x, y = batch
    assert torch.bincount(y, minlength=5).tolist() == [6, 2, 4, 4, 0]
    torch.testing.assert_close(x[y >= 2], EMB[y[y >= 2]])  # unseen rows are generated, seen rows real
    assert (x[y < 2, 0] < 100).all()
    torch.testing.assert_close(call["class_weight"], torch.tensor([1.0, 1, 7, 7, 1]))  # c. reaches the loss


# --------------------------------------------------------------------------------------------- b. official
def official_images() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 2x2 images with full ground truth. Image 0 has an unseen pixel (class 2) and a 255 pixel;
    image 1 is seen-only with a 255 pixel."""
    feats = torch.arange(2 * 2 * 2 * 2, dtype=torch.float).reshape(2, 2, 2, 2)
    labels = torch.tensor([[[0, 2], [IGNORE, 1]], [[0, 1], [1, IGNORE]]])
    return feats, labels


def official_expected(feats: torch.Tensor, labels: torch.Tensor, b: int) -> torch.Tensor:
    """Image ``b``'s (4, F) expected features: image 0 generated at its 3 labelled pixels, real at 255."""
    real = feats[b].permute(1, 2, 0).reshape(4, 2)
    if b == 1:
        return real
    return torch.stack([EMB[0], EMB[2], real[2], EMB[1]])


def test_official_batch_replaces_every_labelled_pixel_of_images_with_unseen_pixels() -> None:
    feats, labels = official_images()
    x, y = generative.official_batch(feats, labels, EmbeddingIsFeature(), EMB, torch.tensor(UNSEEN))
    assert y.tolist() == [0, 2, IGNORE, 1, 0, 1, 1, IGNORE]
    torch.testing.assert_close(x[:4], official_expected(feats, labels, 0))
    torch.testing.assert_close(x[4:], official_expected(feats, labels, 1))


# --------------------------------------------------------------------------------------------- c. unseen weight
def test_class_weights_and_the_weighted_classifier_loss() -> None:
    torch.testing.assert_close(generative.class_weights(5, UNSEEN, 7.0), torch.tensor([1.0, 1, 7, 7, 1]))
    # Logits of feature x: (x, 0). Sample x=0 of class 0: nll ln 2; x=1 of class 1: nll ln(1 + e).
    # Weights (1, 3): loss = (1 * ln 2 + 3 * ln(1 + e)) / (1 + 3).
    classifier = nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        classifier.weight.copy_(torch.tensor([1.0, 0.0]).view(2, 1, 1, 1))
        classifier.bias.zero_()
    batch = (torch.tensor([[0.0], [1.0]]), torch.tensor([0, 1]))
    history = generative.fit_linear_classifier(
        classifier, lambda: [batch], epochs=1, lr=0.1, class_weight=torch.tensor([1.0, 3.0]), desc="t", progress=False
    )
    assert history == [pytest.approx((math.log(2) + 3 * math.log(1 + math.e)) / 4)]


# --------------------------------------------------------------------------------------------- d. ZS5Net top p %
# Two 1x5 images (the unlabelled pool), predicted class and confidence per pixel.
PRED = torch.tensor([[[2, 2, 2, 3, 0]], [[2, 2, 3, 3, 0]]])
CONF = torch.tensor([[[0.3, 0.4, 0.5, 0.6, 0.99]], [[0.6, 0.7, 0.9, 0.95, 0.99]]])
# p = 40: class 2's confidences over the pool (0.3, 0.4, 0.5, 0.6, 0.7): the 60th percentile sits at
# position 0.6 * 4 = 2.4 -> 0.5 + 0.4 * 0.1 = 0.54: keep 0.6 and 0.7. Class 3's (0.6, 0.9, 0.95): position
# 1.2 -> 0.9 + 0.2 * 0.05 = 0.91: keep 0.95. Class 0 is seen: never a pseudo-label.
TOP40 = torch.tensor([[[IGNORE] * 5], [[2, 2, IGNORE, 3, IGNORE]]])


def test_top_percent_keeps_the_most_confident_pixels_per_unseen_class_over_the_pool() -> None:
    base = torch.full_like(PRED, IGNORE)
    assert torch.equal(generative.top_percent_labels(PRED, CONF, base, UNSEEN, 40.0), TOP40)
    # Official protocol: seen ground truth stays and its pixels are not candidates. Candidates 0.4, 0.6, 0.8
    # (median 0.6): keep 0.6 and 0.8; the labelled pixel (confidence 0.9) keeps its label 1.
    pred = torch.tensor([[[2, 2, 2, 2]]])
    conf = torch.tensor([[[0.9, 0.4, 0.6, 0.8]]])
    base = torch.tensor([[[1, IGNORE, IGNORE, IGNORE]]])
    assert generative.top_percent_labels(pred, conf, base, UNSEEN, 50.0).tolist() == [[[1, IGNORE, 2, 2]]]


def test_make_pseudo_labels_writes_the_top_percent_labels(tmp_path: Path) -> None:
    # Logits whose softmax is (conf at the predicted class, (1 - conf) / 3 elsewhere), 4 classes.
    probs = ((1 - CONF) / 3)[:, None].repeat(1, 4, 1, 1)
    probs.scatter_(1, PRED[:, None], CONF[:, None])
    data = SimpleNamespace(
        unlabelled=[(probs[b].log(), torch.zeros(1, 5, dtype=torch.long), f"u{b}") for b in range(2)],
        unseen_ids=UNSEEN,
    )
    cfg = tiny_cfg("data.eval_batch_size=2", "selftrain.top_percent=40")
    stems = zs3net.make_pseudo_labels(cfg, ImageIsFeatures(4, 4), data, tmp_path, False)
    assert stems == ["u0", "u1"]
    for b in range(2):
        assert np.array(Image.open(tmp_path / f"u{b}.png")).tolist() == TOP40[b].tolist()


# --------------------------------------------------------------------------------------------- e. ZS-MMD step
class Scale(nn.Module):
    """gen(e) = a * e with one parameter a (1-d features, no noise)."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float64))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.a * e


def test_zs_mmd_step_is_seen_mmd_plus_weighted_pseudo_mmd() -> None:
    k = lambda d: torch.exp(-(d**2) / 2)  # noqa: E731 -- one bandwidth s = 1: exp(-d^2 / (2 s))
    a = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    # Seen: 2 generated copies of a (embedding 1) vs real {0, 1}.
    seen2 = 1 + (2 + 2 * k(torch.tensor(1.0))) / 4 - 2 * (k(a - 0) + k(a - 1)) / 2
    # Unseen: 2 generated copies of 2a (embedding 2) vs pseudo {0 (confidence 3), 3 (confidence 1)}: v = (3/4, 1/4).
    v0, v1 = 0.75, 0.25
    zs2 = 1 + v0**2 + v1**2 + 2 * v0 * v1 * k(torch.tensor(3.0)) - 2 * (v0 * k(2 * a - 0) + v1 * k(2 * a - 3))
    want = seen2.sqrt() + 0.5 * zs2.sqrt()
    (grad,) = torch.autograd.grad(want, a)

    gen = Scale(0.5)
    opt = torch.optim.SGD(gen.parameters(), lr=1.0)  # a <- a - dloss/da
    f64 = dict(dtype=torch.float64)
    loss = generative.zs_mmd_step(
        gen,
        opt,
        torch.tensor([1.0], **f64),
        torch.tensor([[0.0], [1.0]], **f64),
        torch.tensor([2.0], **f64),
        torch.tensor([[0.0], [3.0]], **f64),
        torch.tensor([3.0, 1.0], **f64),
        sigmas=(1.0,),
        pseudo_weight=0.5,
    )
    assert loss == pytest.approx(want.item())
    torch.testing.assert_close(gen.a.detach(), (0.5 - grad).detach())
    # ZS3Net's step is the seen term alone.
    gen = Scale(0.5)
    opt = torch.optim.SGD(gen.parameters(), lr=1.0)
    seen = generative.generator_step(
        gen, opt, torch.tensor([1.0], **f64), torch.tensor([[0.0], [1.0]], **f64), sigmas=(1.0,)
    )
    assert seen == pytest.approx(seen2.sqrt().item())


def test_retrain_generator_feeds_confidence_weights_to_every_step(monkeypatch) -> None:
    # One 1x2 image with seen classes 0 and 1: two MMD sets, two steps; the unseen pools take turns (2, then 3).
    data = SimpleNamespace(train=[(torch.tensor([[[1.0, 2.0]]]), torch.tensor([[0, 1]]), "t")], seen_ids=SEEN)
    pool_x = torch.tensor([[10.0], [20.0], [30.0]])
    pools = {2: (pool_x, pool_x[:, 0] / 100), 3: (pool_x + 1, (pool_x[:, 0] + 1) / 100)}  # weight = feature / 100
    calls = []
    real_step = zs_mmd.zs_mmd_step

    def spy(gen, opt, emb_c, real, emb_u, pseudo, pseudo_w, **kw):
        calls.append((emb_c.clone(), real.clone(), emb_u.clone(), pseudo.clone(), pseudo_w.clone(), kw))
        return real_step(gen, opt, emb_c, real, emb_u, pseudo, pseudo_w, **kw)

    monkeypatch.setattr(zs_mmd, "zs_mmd_step", spy)
    cfg = tiny_cfg(
        "data.batch_size=1", "generator.pixels_per_class=2", "zs_mmd.generator_epochs=1", "zs_mmd.pseudo_weight=0.37"
    )
    emb = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]])
    gen = nn.Linear(1, 1)
    rng = torch.Generator().manual_seed(0)
    history = zs_mmd.retrain_generator(cfg, ImageIsFeatures(1, 5), gen, emb, data, pools, rng, False)
    assert len(calls) == 2 and len(history) == 1
    for (emb_c, real, emb_u, pseudo, pseudo_w, kw), c, u in zip(calls, (0, 1), (2, 3), strict=True):
        assert emb_c.tolist() == emb[c].tolist() and real.tolist() == [[float(c + 1)]] * 2
        assert emb_u.tolist() == emb[u].tolist()
        assert set(pseudo[:, 0].tolist()) <= set(pools[u][0][:, 0].tolist()) and pseudo.shape == (2, 1)
        torch.testing.assert_close(pseudo_w, pseudo[:, 0] / 100)  # each pseudo-feature with its own confidence
        assert kw == {"sigmas": cfg.generator.sigmas, "pseudo_weight": 0.37}


# --------------------------------------------------------------------------------------------- f. predictor refit
BANK_X = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
BANK_Y = torch.tensor([0, 1, 0, 1])  # sky: 1, 3; grass: 2, 4 (ids into the checkpoint's classes)
CKPT_NAMES = ["sky", "grass", "sand"]  # sand was unseen in training: no bank features


def test_refit_samples_real_for_seen_names_generated_for_others() -> None:
    names = ["grass", "cat", "sand", "sky"]
    emb = torch.tensor([[10.0], [20.0], [30.0], [40.0]])
    x, y = generative.refit_samples(names, CKPT_NAMES, ["sky", "grass"], BANK_X, BANK_Y, EmbeddingIsFeature(), emb, 2)
    assert y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert x[:, 0].tolist() == [2.0, 4.0, 20.0, 20.0, 30.0, 30.0, 1.0, 3.0]


def test_set_classes_refits_on_bank_features_of_seen_names(monkeypatch) -> None:
    predictor = object.__new__(zs3net.ZS3Predictor)
    predictor.meta = {"stage": "classifier", "encoder": "stub", "class_names": CKPT_NAMES}
    predictor.class_names = tuple(CKPT_NAMES)
    predictor.device = torch.device("cpu")
    predictor.model = ImageIsFeatures(1, 3)
    predictor.generator = EmbeddingIsFeature()
    predictor.bank_x, predictor.bank_y = BANK_X, BANK_Y
    predictor.seen_names = ["sky", "grass"]
    word = {"grass": 10.0, "cat": 20.0, "sky": 40.0, "dog": 50.0}
    monkeypatch.setattr(zs3net, "class_embeddings", lambda spec, names: torch.tensor([[word[n]] for n in names]))
    calls = capture_fit(monkeypatch)

    def refit_rows(names: list[str]) -> list[tuple]:
        predictor.set_classes(names, samples_per_class=2, epochs=1, solver="sgd", cache=False)
        x, y = (torch.cat(t) for t in zip(*calls[-1]["batches"], strict=True))
        assert calls[-1]["class_weight"] is None and predictor.class_names == tuple(names)
        return rows(x, y)

    assert refit_rows(["grass", "cat", "sky"]) == [(1.0, 2), (2.0, 0), (3.0, 2), (4.0, 0), (20.0, 1), (20.0, 1)]
    # A second refit still finds sky's stored features (its bank id is in the checkpoint's class list).
    assert refit_rows(["dog", "sky"]) == [(1.0, 1), (3.0, 1), (50.0, 0), (50.0, 0)]
