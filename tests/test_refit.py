"""The fast refit of ZS3Net's classifier for a new vocabulary: the full-batch L-BFGS solve reaches the optimum of
the SGD refit's objective, and the bounded refit cache (zeroseg.engine.cache) hits, misses and heals as it should.

Stand-ins as in test_generative: the "segmenter" has a real 1x1 classifier on F-d features, the "generator" returns
the class embedding, so every refit sample is known.
"""

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from zeroseg import generative
from zeroseg.engine import cache as cache_mod
from zeroseg.engine.cache import TensorCache, cache_dir, cache_key, file_digest
from zeroseg.errors import ZeroSegError
from zeroseg.files import atomic_write_bytes
from zeroseg.methods import zs3net


# --------------------------------------------------------------------------------------------- the solve
def _conv(f: int, c: int, seed: int = 0) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(f, c, 1)


def _bisect(fn, lo: float, hi: float) -> float:
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if fn(mid) < 0 else (lo, mid)
    return 0.5 * (lo + hi)


@pytest.mark.parametrize("weight_decay", [0.1, 5e-4])
def test_solve_reaches_the_hand_derived_optimum_of_a_symmetric_problem(weight_decay: float) -> None:
    # x = -1 is class 0, x = +1 class 1, equally often. By the symmetry x -> -x, class 0 <-> 1 the unique optimum
    # has W = (-w, w) and b = (0, 0); each sample's loss is log(1 + exp(-2w)), so the objective is
    # log(1 + exp(-2w)) + lam/2 * 2 w^2, stationary where lam * w * (1 + exp(2w)) = 1.
    x = torch.tensor([[-1.0], [1.0]]).repeat(5, 1)
    y = torch.tensor([0, 1]).repeat(5)
    w_star = _bisect(lambda w: weight_decay * w * (1 + math.exp(2 * w)) - 1, 0.0, 20.0)
    conv = _conv(1, 2)
    result = generative.solve_linear_classifier(conv, x, y, weight_decay=weight_decay, tolerance_grad=1e-9)
    torch.testing.assert_close(conv.weight.flatten(), torch.tensor([-w_star, w_star]), atol=1e-5, rtol=0)
    torch.testing.assert_close(conv.bias, torch.zeros(2), atol=1e-5, rtol=0)
    expected = math.log1p(math.exp(-2 * w_star)) + weight_decay * w_star**2
    assert result.objective == pytest.approx(expected, abs=1e-9)
    assert result.grad_norm < 1e-6 and result.iterations > 0


def test_solution_is_stationary_by_the_hand_written_gradient() -> None:
    # Overlapping classes in 3-d: gradient of mean CE = (softmax - onehot)^T [x, 1] / N, plus lam * (W, b).
    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat_interleave(20)
    x = torch.randn(60, 3, generator=g) + 1.5 * nn.functional.one_hot(y, 3).float()
    conv = _conv(3, 3)
    generative.solve_linear_classifier(conv, x, y, weight_decay=0.01, tolerance_grad=1e-9)
    w, b = conv.weight.detach().reshape(3, 3).double(), conv.bias.detach().double()
    xd = x.double()
    r = (xd @ w.T + b).softmax(1) - nn.functional.one_hot(y, 3).double()
    grad_w = r.T @ xd / 60 + 0.01 * w
    grad_b = r.sum(0) / 60 + 0.01 * b
    assert torch.cat([grad_w.flatten(), grad_b]).abs().max() < 1e-6  # float32 storage of the float64 solution
    # and it is a minimum: any small move raises the objective
    obj = generative.linear_objective(w, b, xd, y, 0.01)
    for d in torch.randn(5, 12, generator=g, dtype=torch.float64):
        moved = generative.linear_objective(w + 1e-2 * d[:9].reshape(3, 3), b + 1e-2 * d[9:], xd, y, 0.01)
        assert moved > obj


def test_objective_is_what_sgd_with_weight_decay_descends_bias_included() -> None:
    # One full-batch step of the refit's SGD (momentum's first step is the plain gradient) moves every parameter,
    # the bias too, by -lr * gradient of linear_objective with lam = the optimiser's weight decay.
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 4, generator=g), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    conv = _conv(4, 3)
    w0 = conv.weight.detach().reshape(3, 4).clone().requires_grad_(True)
    b0 = conv.bias.detach().clone().requires_grad_(True)
    generative.linear_objective(w0, b0, x, y, generative.WEIGHT_DECAY).backward()
    generative.fit_linear_classifier(
        conv, lambda: [(x, y)], epochs=1, lr=0.5, class_weight=None, desc="t", progress=False
    )
    torch.testing.assert_close(conv.weight.detach().reshape(3, 4), w0.detach() - 0.5 * w0.grad)
    torch.testing.assert_close(conv.bias.detach(), b0.detach() - 0.5 * b0.grad)


def test_solve_agrees_with_a_long_sgd_run() -> None:
    g = torch.Generator().manual_seed(2)
    y = torch.arange(3).repeat_interleave(30)
    x = torch.randn(90, 2, generator=g) + 2.0 * torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])[y]
    solved = _conv(2, 3, seed=3)
    generative.solve_linear_classifier(solved, x, y, weight_decay=0.05)
    sgd = _conv(2, 3, seed=3)
    opt = torch.optim.SGD(sgd.parameters(), lr=0.05, momentum=0.9, weight_decay=0.05)
    for _ in range(600):  # full-batch SGD: converges to the optimum itself, not to a noise ball around it
        loss = nn.functional.cross_entropy(sgd(x[:, :, None, None])[:, :, 0, 0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.testing.assert_close(solved.weight, sgd.weight, atol=1e-3, rtol=0)
    torch.testing.assert_close(solved.bias, sgd.bias, atol=1e-3, rtol=0)


def test_solve_agrees_with_the_refits_minibatch_sgd_on_a_tiny_bank() -> None:
    # The refit's own SGD (lr 0.01, momentum 0.9, weight decay 5e-4, shuffled minibatches) for many epochs ends in
    # a small noise ball around the solve's optimum: same labels, nearly the same weights up to the component common
    # to all classes (softmax ignores it; only the tiny decay pulls it to 0, at lr * 5e-4 per step, so SGD keeps
    # most of its initialisation's there).
    g = torch.Generator().manual_seed(4)
    y = torch.arange(3).repeat_interleave(40)
    x = 2.0 * (torch.randn(120, 2, generator=g) + 1.5 * torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])[y])
    solved = _conv(2, 3, seed=5)
    generative.solve_linear_classifier(solved, x, y)
    sgd = _conv(2, 3, seed=5)

    def passes():  # 500 shuffled passes of 4 minibatches, as one "epoch" (one log line)
        for _ in range(500):
            perm = torch.randperm(120, generator=g)
            yield from ((x[perm[i : i + 30]], y[perm[i : i + 30]]) for i in range(0, 120, 30))

    generative.fit_linear_classifier(sgd, passes, epochs=1, lr=0.01, class_weight=None, desc="t", progress=False)

    def centred(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
        w, b = conv.weight.detach()[:, :, 0, 0], conv.bias.detach()
        return w - w.mean(0), b - b.mean()

    for a, b in zip(centred(solved), centred(sgd), strict=True):
        torch.testing.assert_close(a, b, atol=0.05, rtol=0)
    grid = torch.cartesian_prod(torch.linspace(-8, 8, 41), torch.linspace(-8, 8, 41))[:, :, None, None]
    agree = (solved(grid).argmax(1) == sgd(grid).argmax(1)).float().mean().item()
    assert agree > 0.99


def test_full_batch_path_is_torchs_sgd_with_the_whole_batch() -> None:
    # The hand-written gradient, momentum buffer and decay reproduce torch's SGD (momentum 0.9, weight decay on
    # weight and bias) stepping on the full batch, step for step.
    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(50, 4, generator=g), torch.randint(0, 3, (50,), generator=g)
    ours, ref = _conv(4, 3, seed=7), _conv(4, 3, seed=7)
    objective = generative.full_batch_sgd(ours, x, y, steps=25, lr=0.1, weight_decay=0.01)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    for _ in range(25):
        loss = nn.functional.cross_entropy(ref(x[:, :, None, None])[:, :, 0, 0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.testing.assert_close(ours.weight, ref.weight, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.bias, ref.bias, atol=1e-5, rtol=1e-5)
    w, b = ref.weight.detach()[:, :, 0, 0], ref.bias.detach()
    assert objective == pytest.approx(generative.linear_objective(w, b, x, y, 0.01).item(), rel=1e-5)


def test_default_refit_is_the_full_batch_path_of_the_sgd_runs_steps(refit_env, monkeypatch) -> None:
    seen = {}
    monkeypatch.setattr(zs3net, "full_batch_sgd", lambda conv, x, y, **kw: seen.update(n=x.shape[0], **kw))
    refit_env["predictor"]().set_classes(["cat", "sky", "dog"], samples_per_class=300, epochs=7)  # the default
    # cat, dog: 300 generated each; sky: its 2 bank features -> 602 samples = 3 batches of 256 per epoch
    assert seen == {"n": 602, "steps": 21, "lr": 0.01}


# --------------------------------------------------------------------------------------------- the cache
def test_cache_dir_follows_the_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ZEROSEG_CACHE", str(tmp_path))
    assert cache_dir("refit") == tmp_path / "refit"
    monkeypatch.delenv("ZEROSEG_CACHE")
    assert cache_dir("refit") == Path.home() / ".cache" / "zeroseg" / "refit"


def test_file_digest_is_the_sha256_and_is_recomputed_when_the_file_changes(tmp_path: Path) -> None:
    f = tmp_path / "ckpt.safetensors"
    f.write_bytes(b"first")
    memo = tmp_path / "memo"
    assert file_digest(f, memo) == hashlib.sha256(b"first").hexdigest()
    f.write_bytes(b"second!")
    os.utime(f, ns=(1, 10**18))
    assert file_digest(f, memo) == hashlib.sha256(b"second!").hexdigest()
    # Another process: the in-process memo is empty, the record on disk is used while size and mtime match ...
    cache_mod._DIGEST_MEMO.clear()
    (memo / "digests.json").write_text(
        json.dumps({str(f.resolve()): {"size": 7, "mtime_ns": 10**18, "inode": f.stat().st_ino, "sha256": "a" * 64}}),
        encoding="utf-8",
    )
    assert file_digest(f, memo) == "a" * 64
    # ... and not once the file's mtime differs; a corrupt record file is ignored and rewritten.
    cache_mod._DIGEST_MEMO.clear()
    os.utime(f, ns=(1, 2 * 10**18))
    (memo / "digests.json").write_text("{not json", encoding="utf-8")
    assert file_digest(f, memo) == hashlib.sha256(b"second!").hexdigest()
    assert hashlib.sha256(b"second!").hexdigest() in (memo / "digests.json").read_text(encoding="utf-8")


EXPECT = {"w": ((2, 3), torch.float32)}


def test_cache_rejects_a_file_that_is_not_what_the_key_names(tmp_path: Path) -> None:
    store = TensorCache(tmp_path)
    ka, kb = cache_key({"a": 1}), cache_key({"a": 2})
    store.put(ka, {"w": torch.ones(2, 3)})
    assert torch.equal(store.get(ka, EXPECT)["w"], torch.ones(2, 3))
    store.path(kb).write_bytes(store.path(ka).read_bytes())  # a valid file under another key's name
    assert store.get(kb, EXPECT) is None
    assert store.get(ka, {"w": ((3, 2), torch.float32)}) is None  # wrong shape
    assert store.get(ka, {"w": ((2, 3), torch.float64)}) is None  # wrong dtype
    assert store.get(ka, {"w": ((2, 3), torch.float32), "b": ((2,), torch.float32)}) is None  # missing tensor
    store.put(ka, {"w": torch.full((2, 3), float("nan"))})
    assert store.get(ka, EXPECT) is None  # not finite
    store.path(ka).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    assert store.get(ka, EXPECT) is None


def test_cache_stays_within_its_bounds_least_recently_used_out_first(tmp_path: Path) -> None:
    store = TensorCache(tmp_path, max_entries=2, max_bytes=10**6)
    keys = [cache_key({"i": i}) for i in range(4)]
    for i, k in enumerate(keys[:2]):
        store.put(k, {"w": torch.full((2, 3), float(i))})
        os.utime(store.path(k), ns=(1, (i + 1) * 10**9))
    assert store.get(keys[0], EXPECT) is not None  # a use: keys[1] is now the least recently used
    store.put(keys[2], {"w": torch.zeros(2, 3)})
    assert [p.name for p in store.entries()] == [f"{keys[0]}.safetensors", f"{keys[2]}.safetensors"]
    one = store.path(keys[2]).stat().st_size
    small = TensorCache(tmp_path, max_entries=10, max_bytes=2 * one)
    small.put(keys[3], {"w": torch.ones(2, 3)})
    assert len(small.entries()) == 2 and sum(p.stat().st_size for p in small.entries()) <= 2 * one
    assert small.path(keys[3]).is_file()


# --------------------------------------------------------------------------------------------- set_classes
CKPT_NAMES = ["sky", "grass", "sand"]  # sand was unseen in training: no bank features
WORD = {"sky": [1.0, 0.0], "grass": [0.0, 1.0], "cat": [-1.0, 0.5], "dog": [0.5, -1.0], "sand": [-1.0, -1.0]}


class _Segmenter(nn.Module):
    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.feature_dim = dim
        self.classifier = nn.Conv2d(dim, num_classes, 1)

    def reset_classifier(self, num_classes: int) -> None:
        self.classifier = nn.Conv2d(self.feature_dim, num_classes, 1)


class _EmbeddingIsFeature(nn.Module):
    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return e.clone()


def _predictor(path: Path) -> zs3net.ZS3Predictor:
    p = object.__new__(zs3net.ZS3Predictor)
    p.meta = {"stage": "classifier", "encoder": "stub", "class_names": CKPT_NAMES}
    p.class_names = tuple(CKPT_NAMES)
    p.device = torch.device("cpu")
    p.model = _Segmenter(2, 3)
    p._trained_classifier = (torch.full((3, 2, 1, 1), 7.0), torch.full((3,), 7.0))
    p.generator = _EmbeddingIsFeature()
    p.bank_x = torch.tensor([[1.0, 0.1], [0.9, -0.1], [0.1, 1.0], [-0.1, 0.9]])
    p.bank_y = torch.tensor([0, 0, 1, 1])
    p.seen_names = ["sky", "grass"]
    p.checkpoint = path
    return p


@pytest.fixture
def refit_env(tmp_path: Path, monkeypatch):
    """A stand-in predictor over a checkpoint file, and counters of the solver (either full-batch one) and encoder
    calls."""
    ckpt = tmp_path / "classifier.safetensors"
    ckpt.write_bytes(b"checkpoint v1")
    calls = {"solve": 0, "embed": 0}

    def counted(real):
        def solve(*args, **kwargs):
            calls["solve"] += 1
            return real(*args, **kwargs)

        return solve

    def embed(spec, names):
        calls["embed"] += 1
        return torch.tensor([WORD[n] for n in names])

    for solver in ("solve_linear_classifier", "full_batch_sgd"):  # L-BFGS and the default full-batch path
        monkeypatch.setattr(zs3net, solver, counted(getattr(zs3net, solver)))
    monkeypatch.setattr(zs3net, "class_embeddings", embed)
    return {"ckpt": ckpt, "calls": calls, "dir": tmp_path / "cache", "predictor": lambda: _predictor(ckpt)}


def _weights(p: zs3net.ZS3Predictor) -> tuple[torch.Tensor, torch.Tensor]:
    return p.model.classifier.weight.detach().clone(), p.model.classifier.bias.detach().clone()


def test_second_call_is_a_cache_hit_in_a_new_predictor_too(refit_env) -> None:
    calls, d = refit_env["calls"], refit_env["dir"]
    first = refit_env["predictor"]()
    first.set_classes(["cat", "sky", "dog"], samples_per_class=3, cache_dir=d)
    assert calls == {"solve": 1, "embed": 1} and first.class_names == ("cat", "sky", "dog")
    solved = _weights(first)
    second = refit_env["predictor"]()  # as a later process would: nothing in memory
    cache_mod._DIGEST_MEMO.clear()
    second.set_classes(["cat", "sky", "dog"], samples_per_class=3, cache_dir=d)
    assert calls == {"solve": 1, "embed": 1}  # neither the solver nor the text encoder ran
    assert all(torch.equal(a, b) for a, b in zip(_weights(second), solved, strict=True))
    assert second.class_names == ("cat", "sky", "dog")


@pytest.mark.parametrize(
    "change", ["vocabulary", "order", "seed", "samples", "solver", "checkpoint"], ids=lambda c: c
)
def test_cache_misses_when_anything_the_refit_depends_on_changes(refit_env, change: str) -> None:
    calls, d = refit_env["calls"], refit_env["dir"]
    kwargs = {"samples_per_class": 3, "seed": 0, "cache_dir": d}
    names = ["cat", "sky", "dog"]
    refit_env["predictor"]().set_classes(names, **kwargs)
    if change == "vocabulary":
        names = ["cat", "sky", "grass"]
    elif change == "order":
        names = ["sky", "cat", "dog"]
    elif change == "seed":
        kwargs["seed"] = 1
    elif change == "samples":
        kwargs["samples_per_class"] = 4
    elif change == "checkpoint":  # same size, rewritten as checkpoints are (atomically), maybe in the same mtime tick
        atomic_write_bytes(refit_env["ckpt"], b"checkpoint v2")
    if change == "solver":
        refit_env["predictor"]().set_classes(names, solver="sgd", epochs=1, **kwargs)
        assert calls["embed"] == 2 and calls["solve"] == 1
        return
    refit_env["predictor"]().set_classes(names, **kwargs)
    assert calls["solve"] == 2


def test_a_corrupt_cache_file_is_ignored_and_rewritten(refit_env) -> None:
    calls, d = refit_env["calls"], refit_env["dir"]
    p = refit_env["predictor"]()
    p.set_classes(["cat", "dog"], samples_per_class=3, cache_dir=d)
    solved = _weights(p)
    (entry,) = TensorCache(d).entries()
    entry.write_bytes(entry.read_bytes()[:-5])  # truncated
    q = refit_env["predictor"]()
    q.set_classes(["cat", "dog"], samples_per_class=3, cache_dir=d)
    assert calls["solve"] == 2 and all(torch.equal(a, b) for a, b in zip(_weights(q), solved, strict=True))
    refit_env["predictor"]().set_classes(["cat", "dog"], samples_per_class=3, cache_dir=d)
    assert calls["solve"] == 2  # the rewritten file is good again


def test_cache_can_be_turned_off_and_own_classes_bring_the_trained_classifier_back(refit_env) -> None:
    calls, d = refit_env["calls"], refit_env["dir"]
    p = refit_env["predictor"]()
    p.set_classes(["cat", "dog"], samples_per_class=3, cache=False, cache_dir=d)
    p.set_classes(["dog", "cat"], samples_per_class=3, cache=False, cache_dir=d)
    assert calls["solve"] == 2 and not d.exists()
    p.set_classes(list(CKPT_NAMES))
    assert calls["solve"] == 2 and p.class_names == tuple(CKPT_NAMES)
    assert torch.equal(p.model.classifier.weight, torch.full((3, 2, 1, 1), 7.0))
    with pytest.raises(ZeroSegError, match="solver"):
        p.set_classes(["cat", "dog"], solver="adam")


def test_refit_separates_the_bank_and_generated_features(refit_env) -> None:
    p = refit_env["predictor"]()
    p.set_classes(["sky", "grass", "cat"], samples_per_class=3, cache=False)
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.5]])[:, :, None, None]
    assert p.model.classifier(feats).argmax(1).flatten().tolist() == [0, 1, 2]


def test_predict_images_refits_once_for_all_images(tmp_path: Path, monkeypatch) -> None:
    import zeroseg.methods as methods
    from zeroseg.methods.predict import predict_images

    class Stub:
        class_names = ("a", "b")
        meta = {"method": "zs3net"}
        refits: list = []

        def set_classes(self, names):
            self.refits.append(list(names))
            self.class_names = tuple(names)

        def predict(self, x):
            return torch.zeros(1, *x.shape[-2:], dtype=torch.long), torch.ones(1, *x.shape[-2:])

    monkeypatch.setattr(methods, "load_predictor", lambda ckpt: Stub())
    images = []
    for i in range(3):
        images.append(tmp_path / f"im{i}.png")
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images[-1])
    predict_images("ckpt", images, tmp_path / "out", classes=["x", "y"])
    assert Stub.refits == [["x", "y"]]


@pytest.mark.parametrize("small", [True, False])
def test_a_small_refit_runs_on_one_thread_and_restores_the_count(refit_env, monkeypatch, small: bool) -> None:
    threads = []
    monkeypatch.setattr(zs3net, "full_batch_sgd", lambda *a, **k: threads.append(torch.get_num_threads()))
    if not small:
        monkeypatch.setattr(zs3net, "SMALL_REFIT_MACS", 10)  # this refit: 8 samples x 2 features x 2 classes
    torch.set_num_threads(2)  # the autouse fixture restores the count after the test
    refit_env["predictor"]().set_classes(["cat", "dog"], samples_per_class=2, cache=False)
    assert threads == [1 if small else 2] and torch.get_num_threads() == 2


def test_refit_weights_leaves_the_served_classifier_alone(refit_env) -> None:
    p = refit_env["predictor"]()
    p.set_classes(["cat", "dog"], samples_per_class=3, cache=False)
    before = _weights(p)
    weight, bias = p.refit_weights(["sky", "cat", "dog"], samples_per_class=3)
    assert weight.shape == (3, 2, 1, 1) and bias.shape == (3,) and p.class_names == ("cat", "dog")
    assert all(torch.equal(a, b) for a, b in zip(_weights(p), before, strict=True))
