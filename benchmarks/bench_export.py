"""Inference speed of the exported graphs: PyTorch eager vs the optimised PyTorch path vs onnxruntime, one run.

Models (RANDOM weights, nothing downloaded; random ImageNet-normalised ``--size`` px images, batch 1), the same
computations as ``bench_inference.py``:

* ``deeplab`` -- DeepLabv3+ ResNet-101, output stride 16, 21 classes: forward + argmax (ZS3Net inference).
* ``zegformer`` -- the ZegFormer segment branch (ResNet-101, 100 queries, 171 classes): padding, forward, mask
  upsampling, semantic inference, seen-class calibration, argmax (``ZegFormerPredictor.labels``, no CLIP).

Paths, timed one after the other in the same process on the same images:

* ``torch eager`` -- ``bench_inference``'s eager fp32 variant (no_grad, NCHW).
* ``torch optimised`` -- ``bench_inference``'s optimised variant (inference_mode, channels_last) with, in
  addition, every BatchNorm folded into its convolution (``torch.fx.experimental.optimization.fuse``; DeepLab
  only: ZegFormer's decoder does not trace symbolically).
* ``onnxruntime`` -- the graph ``zeroseg export`` writes (:mod:`zeroseg.export.graphs`: the same pipeline, argmax
  included) traced at the fixed size, run by onnxruntime's CPU provider with every graph optimisation
  (``ORT_ENABLE_ALL``: conv-BN folding, conv+activation fusion, NCHWc layouts) and ``intra_op_num_threads`` =
  torch's thread count.

FLOPs are counted once per model on the eager pipeline (``bench_inference.count_flops``: matmuls and convolutions
only); the fraction of peak divides the achieved GFLOP/s by the fp32 peak measured in the same run
(``bench_inference.measure_peak_kernels``: the faster of a square matmul and a 3x3 convolution, at the start and
end, the highest kept). The timing rounds are repeated
``--rounds`` times (default 2) and every round's ratios are reported: on a shared machine timings are noisy.

Usage::

    python benchmarks/bench_export.py [--threads 1] [--size 512] [--images 2] [--warmup 1] [--rounds 2]
        [--models deeplab,zegformer] [--out results.json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_inference as bi  # noqa: E402

from zeroseg.export.graphs import ZegFormerGraph, ZS3Graph  # noqa: E402
from zeroseg.export.onnx import onnx_session, trace_to_onnx  # noqa: E402
from zeroseg.methods.zegformer import InferenceOptions, ZegFormerPredictor  # noqa: E402
from zeroseg.modules.deeplab import DeepLabV3Plus  # noqa: E402
from zeroseg.modules.zegformer import ZegFormer  # noqa: E402

MODELS = ("deeplab", "zegformer")
PATHS = ("torch eager", "torch optimised", "onnxruntime")


def _zegformer_predictor(net: torch.nn.Module, text: torch.Tensor, seen: list[int]) -> ZegFormerPredictor:
    names = [f"class{i}" for i in range(text.shape[0])]
    meta = {"class_names": names, "seen_ids": seen, "unseen_ids": [c for c in range(len(names)) if c not in seen],
            "encoder": "benchmark", "embed_dim": int(text.shape[1]), "inference": {}}  # fmt: skip
    return ZegFormerPredictor(net, meta, text, options=InferenceOptions())


def _fold_bn(net: torch.nn.Module) -> torch.nn.Module:
    from torch.fx.experimental.optimization import fuse

    return fuse(net)


def _time(pipeline: Any, images: list[torch.Tensor], *, variant: str, warmup: int, count: bool) -> dict[str, Any]:
    return bi.time_variant(
        pipeline,
        images,
        variant=variant,
        device=torch.device("cpu"),
        warmup=warmup,
        memory=bi.PeakMemory(torch.device("cpu")),
        count=count,
    )


def _kernels(gflops: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in gflops.items())


def run(args: argparse.Namespace) -> dict[str, Any]:
    """All models x paths x rounds; returns the report."""
    cpu = torch.device("cpu")
    threads = torch.get_num_threads()
    kernels_start = bi.measure_peak_kernels(cpu, torch.float32, args.peak_size, args.peak_repeats)
    peak_start = max(kernels_start.values())
    print(f"  peak fp32 {_kernels(kernels_start)} ({threads} thread(s))", file=sys.stderr)
    g = torch.Generator().manual_seed(0)
    images = [torch.randn(1, 3, args.size, args.size, generator=g) for _ in range(args.images)]
    rows: list[dict[str, Any]] = []
    flops: dict[str, float] = {}
    for model in [m for m in MODELS if m in args.models.split(",")]:
        torch.manual_seed(0)
        if model == "deeplab":
            net = DeepLabV3Plus(num_classes=bi.DEEPLAB_CLASSES, backbone=args.backbone).eval().requires_grad_(False)
            eager = bi.deeplab_pipeline(net)
            fast_net = _fold_bn(net).to(memory_format=torch.channels_last)
            optimised = bi.deeplab_pipeline(fast_net)
            graph: torch.nn.Module = ZS3Graph(net).eval()
        else:
            net = ZegFormer(text_dim=bi.TEXT_DIM, backbone=args.backbone).eval().requires_grad_(False)
            text = F.normalize(torch.randn(args.classes, bi.TEXT_DIM, generator=g), dim=-1)
            seen = [c for c in range(args.classes) if c % 4 != 3]
            predictor = _zegformer_predictor(net, text, seen)
            eager = predictor.labels
            optimised = predictor.labels  # the same module, switched to channels_last while timed
            graph = ZegFormerGraph(predictor, (args.size, args.size)).eval()
        print(f"  {model}: tracing the ONNX graph", file=sys.stderr, flush=True)
        session = onnx_session(trace_to_onnx(graph, (args.size, args.size)), threads=threads)

        def ort_pipeline(x: torch.Tensor, session: Any = session) -> torch.Tensor:
            return torch.from_numpy(session.run(["labels"], {"images": x.numpy()})[0])

        for rnd in range(args.rounds):
            for path in PATHS:
                if path == "torch eager":
                    res = _time(eager, images, variant=bi.EAGER, warmup=args.warmup, count=model not in flops)
                    if res["flops_per_batch"] is not None:
                        flops[model] = res["flops_per_batch"]
                    reference = res["predictions"]
                elif path == "torch optimised":
                    if model == "zegformer":
                        net.to(memory_format=torch.channels_last)
                    batches = [x.contiguous(memory_format=torch.channels_last) for x in images]
                    res = _time(optimised, batches, variant=bi.OPTIMISED, warmup=args.warmup, count=False)
                    if model == "zegformer":
                        net.to(memory_format=torch.contiguous_format)
                else:
                    res = _time(ort_pipeline, images, variant=bi.EAGER, warmup=args.warmup, count=False)
                same = sum(int((a == b).sum()) for a, b in zip(res["predictions"], reference, strict=True))
                row = {"model": model, "path": path, "round": rnd + 1, "ms_per_image": res["ms_per_image"],
                       "cpu_ms_per_image": res["cpu_ms_per_image"], "peak_mem_mb": res["peak_mem_mb"],
                       "agreement_with_eager": same / sum(p.numel() for p in reference)}  # fmt: skip
                row["cpu_utilisation"] = bi.cpu_utilisation(row["cpu_ms_per_image"], row["ms_per_image"], cpu)
                rows.append(row)
                print(f"  {model} [{path}] round {rnd + 1}: {row['ms_per_image']:.1f} ms/image", file=sys.stderr)
    kernels_end = bi.measure_peak_kernels(cpu, torch.float32, args.peak_size, args.peak_repeats)
    print(f"  peak fp32 at the end {_kernels(kernels_end)}", file=sys.stderr)
    peak = max(peak_start, *kernels_end.values())
    for row in rows:
        row["gflops_per_image"] = flops[row["model"]] / 1e9
        row["achieved_gflops"] = row["gflops_per_image"] / (row["ms_per_image"] / 1000.0)
        row["fraction_of_peak"] = row["achieved_gflops"] / peak
    ms = {(r["model"], r["path"], r["round"]): r["ms_per_image"] for r in rows}
    ratios = [
        {"model": m, "round": rnd, "path": p, "speedup_vs_eager": ms[(m, "torch eager", rnd)] / v}
        for (m, p, rnd), v in ms.items()
        if p != "torch eager"
    ]
    return {
        "args": vars(args),
        "torch": torch.__version__,
        "onnxruntime": __import__("onnxruntime").__version__,
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "loadavg_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "peak_gflops_fp32": peak,
        "peak_kernels_gflops_start_end": [kernels_start, kernels_end],
        "results": rows,
        "ratios": ratios,
    }


def print_report(report: dict[str, Any]) -> None:
    """The table and the ratios."""
    a = report["args"]
    print(
        f"\nExport paths (random weights): torch {report['torch']}, onnxruntime {report['onnxruntime']}, "
        f"{report['threads']} thread(s), {a['size']} px, batch 1, {a['images']} timed image(s) after {a['warmup']} "
        f"warm-up; peak fp32 (best dense kernel) {report['peak_gflops_fp32']:.1f} GFLOP/s"
    )
    header = f"{'model':<11}{'path':<17}{'round':>6}{'ms/img':>10}{'GFLOP/img':>11}{'GFLOP/s':>9}{'%peak':>7}"
    header += f"{'cpu util':>9}{'agree':>7}"
    print(header)
    print("-" * len(header))
    for r in report["results"]:
        print(
            f"{r['model']:<11}{r['path']:<17}{r['round']:>6}{r['ms_per_image']:>10.1f}{r['gflops_per_image']:>11.1f}"
            f"{r['achieved_gflops']:>9.1f}{100 * r['fraction_of_peak']:>7.1f}{r['cpu_utilisation']:>9.2f}"
            f"{r['agreement_with_eager']:>7.3f}"
        )
    print("\nspeed-up vs torch eager (eager ms / ms):")
    for q in report["ratios"]:
        print(f"  {q['model']:<11}{q['path']:<17}round {q['round']}: {q['speedup_vs_eager']:.2f}x")


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; returns a process exit code."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=0, help="torch and onnxruntime threads (default: torch's)")
    ap.add_argument("--size", type=int, default=None, help="image side (default 512; --quick 64)")
    ap.add_argument("--images", type=int, default=2, help="timed images per path and round")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs per path and round")
    ap.add_argument("--rounds", type=int, default=2, help="timing rounds (ratios reported per round)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--backbone", default="resnet101")
    ap.add_argument("--classes", type=int, default=171, help="ZegFormer vocabulary size")
    ap.add_argument("--peak-size", type=int, default=None, help="peak matmul side (default 4096; --quick 256)")
    ap.add_argument("--peak-repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smoke test: 64 px, resnet18, 1 image, 1 round")
    ap.add_argument("--out", help="write the report as JSON here")
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.warmup, args.rounds, args.backbone = 1, 0, 1, "resnet18"
    args.size = args.size or (64 if args.quick else 512)
    args.peak_size = args.peak_size or (256 if args.quick else 4096)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if min(args.size, args.images, args.rounds, args.classes) < 1 or not math.isfinite(args.size):
        print("bench_export: --size, --images, --rounds and --classes must be at least 1", file=sys.stderr)
        return 2
    report = run(args)
    print_report(report)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2), encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
