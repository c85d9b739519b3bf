"""Smoke tests of benchmarks/bench_inference.py and benchmarks/bench_train_step.py (tiny settings, seconds)."""

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench_inference() -> ModuleType:
    return _load("bench_inference")


@pytest.fixture(scope="module")
def bench_train() -> ModuleType:
    return _load("bench_train_step")


def test_count_flops_hand_computed(bench_inference):
    torch.manual_seed(0)
    with torch.no_grad():
        linear = nn.Linear(8, 4).requires_grad_(False)
        # addmm (3, 8) x (8, 4): 2 * 3 * 8 * 4
        assert bench_inference.count_flops(lambda: linear(torch.randn(3, 8))) == 192
        conv = nn.Conv2d(2, 3, 3, padding=1).requires_grad_(False)
        # 3 x 5 x 5 outputs, each 2 * 3 * 3 multiply-adds
        assert bench_inference.count_flops(lambda: conv(torch.randn(1, 2, 5, 5))) == 2 * 75 * 18
        mha = nn.MultiheadAttention(8, 2, batch_first=True).eval().requires_grad_(False)
        x = torch.randn(1, 5, 8)
        # in_proj 2*5*8*24 + out_proj 2*5*8*8 + attention (QK^T and AV: 2 * 2*H*L*S*E_head = 4*2*5*5*4); the fused
        # fast path must be off while counting (else the projections are invisible) and restored afterwards.
        assert torch.backends.mha.get_fastpath_enabled()
        assert bench_inference.count_flops(lambda: mha(x, x, x, need_weights=False)) == 1920 + 640 + 800
        assert torch.backends.mha.get_fastpath_enabled()


def test_no_object_flags(bench_inference):
    flags = bench_inference.no_object_flags(3, 10, 0.6, seed=1)
    assert flags.shape == (3, 10) and flags.dtype == torch.bool
    assert flags.sum(1).tolist() == [6, 6, 6]
    assert torch.equal(flags, bench_inference.no_object_flags(3, 10, 0.6, seed=1))
    assert not bench_inference.no_object_flags(2, 10, 0.0, seed=1).any()


@pytest.mark.slow
def test_inference_quick_report(bench_inference, tmp_path):
    pytest.importorskip("open_clip")
    out = tmp_path / "inference.json"
    argv = ["--quick", "--size", "64", "--backbone", "resnet18", "--queries", "4", "--clip-model", "ViT-S-32"]
    assert bench_inference.main([*argv, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    a = report["args"]
    # --quick defaults; the explicit size wins; on CPU no compile and no bf16 unless asked
    assert (a["size"], a["images"], a["warmup"], a["compile"], a["bf16"]) == (64, 1, 0, False, False)
    assert report["peak_gflops"]["fp32"] == max(report["peak_gflops_start_end"]["fp32"]) > 0
    assert "bf16" not in report["peak_gflops"]
    assert report["memory_method"].split()[0] in ("psutil", "Linux", "resource")
    rows = {(r["model"], r["mode"], r["variant"]): r for r in report["results"]}
    expected = [("deeplab", None), ("zegformer", None)] + [("zegformer_clip", m) for m in bench_inference.CLIP_MODES]
    assert set(rows) == {(m, mode, v) for m, mode in expected for v in bench_inference.VARIANTS}
    for r in rows.values():
        assert r["images"] == 1 and r["batch"] == 1
        assert r["ms_per_image"] > 0 and r["images_per_s"] * r["ms_per_image"] == pytest.approx(1000.0)
        assert r["cpu_utilisation"] == pytest.approx(r["cpu_ms_per_image"] / (r["ms_per_image"] * report["threads"]))
        assert r["gflops_per_image"] > 0
        assert r["achieved_gflops"] == pytest.approx(r["gflops_per_image"] * 1000.0 / r["ms_per_image"])
        assert r["fraction_of_peak"] == pytest.approx(r["achieved_gflops"] / report["peak_gflops"]["fp32"])
        assert r["peak_mem_mb"] > 0 and r["mem_delta_mb"] >= 0
        assert r["compile_s"] is None
        assert ("clip_queries_per_image" in r) == (r["model"] == "zegformer_clip")
        if r["variant"] == "eager fp32":
            assert r["agreement_with_eager"] is None
        else:  # channels_last + inference_mode in fp32: (almost) the same label maps
            assert r["agreement_with_eager"] > 0.9
    clip = {m: rows[("zegformer_clip", m, "eager fp32")] for m in bench_inference.CLIP_MODES}
    # per_image encodes every query; the skip rules drop the round(0.6 * 4) = 2 queries made no-object.
    assert clip["per_image"]["clip_queries_per_image"] == 4.0
    assert clip["batched+skip"]["clip_queries_per_image"] <= 2.0
    assert clip["batched+skip"]["gflops_per_image"] < clip["per_image"]["gflops_per_image"]
    seg = rows[("zegformer", None, "eager fp32")]["gflops_per_image"]
    assert all(c["gflops_per_image"] > seg for c in clip.values())  # the CLIP tower adds FLOPs in every mode
    ratios = {(q["model"], q["mode"], q["ratio"]): q["value"] for q in report["ratios"]}
    assert len(ratios) == 5 + 2 * 2 + 3 * 2
    eager, opt = rows[("deeplab", None, "eager fp32")], rows[("deeplab", None, "optimised")]
    assert ratios[("deeplab", None, "speed-up optimised vs eager fp32")] == pytest.approx(
        eager["ms_per_image"] / opt["ms_per_image"]
    )
    assert ratios[("zegformer_clip", "pool", "speed-up vs per_image (optimised)")] == pytest.approx(
        rows[("zegformer_clip", "per_image", "optimised")]["ms_per_image"]
        / rows[("zegformer_clip", "pool", "optimised")]["ms_per_image"]
    )


def test_inference_bad_arguments(bench_inference, capsys):
    assert bench_inference.main(["--models", "deeplab,nope"]) == 2
    assert bench_inference.main(["--quick", "--images", "0"]) == 2
    assert "--images" in capsys.readouterr().err
    if importlib.util.find_spec("open_clip") is not None:
        assert bench_inference.main(["--quick", "--clip-model", "No-Such-ViT"]) == 2
        assert "No-Such-ViT" in capsys.readouterr().err


def test_render_batch(bench_train):
    from zeroseg.config import load_config

    cfg = load_config(bench_train.ZS3NET_CONFIG)
    names = cfg.data.synthetic.class_names
    unseen = torch.tensor([names.index(u) for u in cfg.data.synthetic.unseen])
    x, y = bench_train.render_batch(cfg, 6, seed=0, drop_unseen=True)
    assert x.shape == (6, 3, 64, 64) and x.dtype == torch.float32 and y.shape == (6, 64, 64)
    assert not torch.isin(y, unseen).any() and not (y == 255).any() and int(y.max()) < len(names)
    x2, y2 = bench_train.render_batch(cfg, 6, seed=0, drop_unseen=False)
    assert not torch.isin(y2, unseen).any() and bool(((y2 < len(names)) | (y2 == 255)).all())
    x3, y3 = bench_train.render_batch(cfg, 6, seed=0, drop_unseen=False)
    assert torch.equal(x2, x3) and torch.equal(y2, y3)


@pytest.mark.slow
def test_train_quick_report(bench_train, tmp_path):
    out = tmp_path / "train.json"
    assert bench_train.main(["--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert (report["args"]["batch"], report["args"]["steps"], report["args"]["warmup"]) == (4, 1, 0)
    rows = {(r["step"], r["amp"], r["grad_accum"]): r for r in report["results"]}
    assert set(rows) == {
        ("zs3net segmenter", "none", 1),
        ("zs3net segmenter", "none", 2),
        ("zs3net generator step", "none", 1),
        ("zs3net generator batch", "none", 1),
        ("zs3net classifier step", "none", 1),
        ("zs3net classifier batch", "none", 1),
        ("zegformer", "none", 1),
        ("zegformer", "none", 2),
    }
    for (step, _, _), r in rows.items():
        assert r["steps"] == 1 and r["ms_per_step"] > 0
        assert r["cpu_utilisation"] == pytest.approx(r["cpu_ms_per_step"] / (r["ms_per_step"] * report["threads"]))
        assert r["steps_per_s"] == pytest.approx(1000.0 / r["ms_per_step"])
        if step.endswith("step"):
            assert r["images_per_s"] is None
        else:
            assert r["images_per_s"] == pytest.approx(4 * r["steps_per_s"])
    # every scene has a (seen) stuff background, so at least one 128-pixel MMD set per image
    assert report["mmd_sets_per_batch"] >= 4 and report["classifier_pixels_per_step"] > 0
    ratios = {(q["step"], q["ratio"]): q["value"] for q in report["ratios"]}
    assert set(ratios) == {
        ("zs3net segmenter", "grad_accum=2 vs 1 (amp none)"),
        ("zegformer", "grad_accum=2 vs 1 (amp none)"),
    }
    seg1, seg2 = rows[("zs3net segmenter", "none", 1)], rows[("zs3net segmenter", "none", 2)]
    assert ratios[("zs3net segmenter", "grad_accum=2 vs 1 (amp none)")] == pytest.approx(
        seg1["ms_per_step"] / seg2["ms_per_step"]
    )


def test_train_bad_arguments(bench_train, capsys):
    assert bench_train.main(["--quick", "--batch", "3"]) == 2
    assert "--batch" in capsys.readouterr().err
    assert bench_train.main(["--quick", "--zs3net-config", "/nonexistent.yaml"]) == 2
    assert "nonexistent.yaml" in capsys.readouterr().err


def test_refit_vocabulary_metrics_by_hand():
    bench = _load("bench_refit")
    # checkpoint classes a, b, c; vocabulary (c, a, z): a -> 1, c -> 0, b is outside it (ignored), z has no pixel.
    gt = torch.tensor([[[0, 1, 2, 2]]])
    pred = torch.tensor([[[1, 0, 0, 2]]])  # a right, (b ignored), c right, c taken for z
    m = bench.vocabulary_metrics(pred, gt, ["c", "a", "z"], ["a", "b", "c"])
    # IoU c = 1 / (1 + 1 missed), a = 1, z = 0 (predicted once, never true)
    assert m == {"miou": pytest.approx(50.0), "IoU c": 50.0, "IoU a": 100.0, "IoU z": 0.0}
