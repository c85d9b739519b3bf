"""ZegFormer's test-time CLIP image branch: the official per-image path vs the naive and fast paths.

Times, in ONE process under ``torch.inference_mode``, the CLIP branch of :mod:`zeroseg.modules.clip_branch` on the
same synthetic head outputs for every mode:

* ``sequential``   -- one crop per ``encode_image`` call (naive baseline);
* ``per_image``    -- the Q crops of one image per call (what the official ZegFormer code does);
* ``batched``      -- all crops of the batch together, chunked by ``--max-batch``, no skipping;
* ``batched+skip`` -- as ``batched`` but queries with an empty mask or no-object probability above
  ``--skip-no-object`` are not encoded (they keep the segment branch's probabilities);
* ``pool``         -- each image encoded once, dense ViT patch tokens averaged under each mask (approximate).

One timed run = CLIP classification (``ClipImageBranch.classify``) + fusion (``fuse_scores``) + fused semantic
inference, i.e. everything ZegFormer does after the mask/segment heads at test time. ``--warmup`` untimed runs
precede ``--repeats`` timed runs per mode (median reported).

Synthetic inputs: ``--images`` CLIP-normalised random images of ``--size`` px; ``--queries`` masks per image, ~30%
empty, the rest random rectangles/ellipses from ~3% to ~60% of the image side (mask logits +-4); segment logits
over ``--classes`` classes + no-object with ~60% of the queries (all empty ones included) at no-object
probability ~1. The CLIP model is an open_clip built-in config (``--model``, default ViT-B-16) with RANDOM
weights -- nothing is downloaded; speed does not depend on the weights.

Reported per mode: ms/image (CLIP branch alone and total), images/s, speed-up relative to ``per_image`` and to
``sequential`` (their ms divided by this mode's ms), crops encoded, peak memory, and agreement with
``per_image`` (max |logit difference| over the encoded queries; for ``pool``, which is an approximation, the
top-1 class agreement instead). Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (reset before each
mode); on CPU the process's max RSS so far (``resource``), which never decreases -- modes therefore run in
roughly increasing memory order (sequential, pool, batched+skip, per_image, batched) and are printed in the
canonical order.

Usage::

    python benchmarks/bench_zegformer_clip.py [--size 512] [--queries 100] [--images 2] [--warmup 1]
        [--repeats 1] [--threads N] [--device cpu|cuda] [--model ViT-B-16] [--classes 171]
        [--max-batch 128] [--skip-no-object 0.5] [--style cropmask] [--out results.json]

Quick CPU setting: ``python benchmarks/bench_zegformer_clip.py --images 1 --queries 100`` encodes about 330 ViT-B/16
crops in all and takes a few minutes on 2 CPU cores (add ``--warmup 0`` to halve it); ``--queries 20 --size 256``
is a smoke test of well under a minute.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from zeroseg.modules.clip_branch import ClipImageBranch, fuse_scores, fused_semantic_inference

RUN_ORDER = ("sequential", "pool", "batched+skip", "per_image", "batched")
PRINT_ORDER = ("sequential", "per_image", "batched", "batched+skip", "pool")


def make_inputs(
    images: int, queries: int, size: int, classes: int, embed_dim: int, seed: int
) -> dict[str, torch.Tensor]:
    """Synthetic CLIP-normalised images, mask logits, segment logits and text embeddings (all on the CPU)."""
    g = torch.Generator().manual_seed(seed)
    imgs = torch.randn(images, 3, size, size, generator=g)
    masks = torch.full((images, queries, size, size), -4.0)
    empty = torch.rand(images, queries, generator=g) < 0.3
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    for b in range(images):
        for q in range(queries):
            if empty[b, q]:
                continue
            side = size * (0.03 + 0.57 * torch.rand(2, generator=g))
            cy, cx = (size * torch.rand(2, generator=g)).tolist()
            hy, hx = (side / 2).tolist()
            if torch.rand(1, generator=g).item() < 0.5:
                inside = ((yy - cy).abs() <= hy) & ((xx - cx).abs() <= hx)
            else:
                inside = ((yy - cy) / hy) ** 2 + ((xx - cx) / hx) ** 2 <= 1.0
            masks[b, q][inside] = 4.0
    seg = torch.randn(images, queries, classes + 1, generator=g) * 2.0
    # ~60% no-object: every empty query plus enough of the others.
    extra = (0.6 - 0.3) / 0.7
    no_obj = empty | (torch.rand(images, queries, generator=g) < extra)
    seg[..., -1] = torch.where(no_obj, torch.tensor(12.0), torch.tensor(-4.0))
    text = torch.nn.functional.normalize(torch.randn(classes, embed_dim, generator=g), dim=-1)
    return {"images": imgs, "masks": masks, "seg": seg, "text": text}


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark, prints a table and optionally writes JSON; returns a process exit code."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    ap.add_argument("--queries", type=int, default=100, help="queries (masks) per image (default 100)")
    ap.add_argument("--images", type=int, default=2, help="images per batch (default 2)")
    ap.add_argument("--classes", type=int, default=171, help="classes C (default 171, COCO-Stuff)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs per mode (default 1)")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per mode, median reported (default 1)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--model", default="ViT-B-16", help="open_clip built-in model name (random weights)")
    ap.add_argument("--style", default="cropmask", choices=("cropmask", "crop", "mask"))
    ap.add_argument("--max-batch", type=int, default=128, help="crops per encode call in batched mode")
    ap.add_argument("--skip-no-object", type=float, default=0.5, help="no-object threshold of batched+skip")
    ap.add_argument("--modes", default=",".join(PRINT_ORDER), help="comma-separated subset of the modes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_zegformer_clip: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(PRINT_ORDER))
    if unknown:
        print(f"bench_zegformer_clip: unknown mode(s) {unknown}; choose from {PRINT_ORDER}", file=sys.stderr)
        return 2
    device = torch.device(args.device)

    import open_clip

    torch.manual_seed(args.seed)
    model = open_clip.create_model(args.model, pretrained=None, device=device).eval()
    embed_dim = int(model.text_projection.shape[1]) if model.text_projection is not None else 512
    data = make_inputs(args.images, args.queries, args.size, args.classes, embed_dim, args.seed)
    data = {k: v.to(device) for k, v in data.items()}
    seen = [c for c in range(args.classes) if c % 4 != 3]  # 3/4 seen, 1/4 unseen
    unseen = [c for c in range(args.classes) if c % 4 == 3]

    settings = {
        "mode_kwargs": {
            "sequential": {"mode": "sequential"},
            "per_image": {"mode": "per_image"},
            "batched": {"mode": "batched", "max_batch": args.max_batch},
            "batched+skip": {
                "mode": "batched",
                "max_batch": args.max_batch,
                "skip_empty": True,
                "skip_no_object": args.skip_no_object,
            },
            "pool": {"mode": "pool", "max_batch": args.max_batch},
        }
    }
    results: dict[str, dict[str, Any]] = {}
    outputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    with torch.inference_mode():
        for name in [m for m in RUN_ORDER if m in modes]:
            branch = ClipImageBranch(model, style=args.style, **settings["mode_kwargs"][name])

            def clip_step(branch: ClipImageBranch = branch) -> tuple[torch.Tensor, torch.Tensor]:
                return branch(data["images"], data["masks"], data["seg"], data["text"])

            def post_step(out: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
                fused = fuse_scores(data["seg"], out[0], out[1], seen, unseen)
                return fused_semantic_inference(fused, data["masks"], seen, gzero_calibrate=0.1)

            for _ in range(args.warmup):
                post_step(clip_step())
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            clip_times, total_times = [], []
            for _ in range(max(1, args.repeats)):
                t_clip, out = _timed(clip_step, device)
                t_post, _ = _timed(lambda out=out: post_step(out), device)
                clip_times.append(t_clip)
                total_times.append(t_clip + t_post)
            outputs[name] = out
            results[name] = {
                "clip_ms_per_image": 1000 * statistics.median(clip_times) / args.images,
                "total_ms_per_image": 1000 * statistics.median(total_times) / args.images,
                "encoded_queries": int(out[1].sum()),
                "peak_mem_mb": _peak_mb(device),
            }
            print(f"  {name}: {results[name]['total_ms_per_image']:.1f} ms/image", file=sys.stderr, flush=True)

    ref = outputs.get("per_image")
    for name, res in results.items():
        res["images_per_s"] = 1000.0 / res["total_ms_per_image"]
        for base in ("per_image", "sequential"):
            res[f"speedup_vs_{base}"] = (
                results[base]["total_ms_per_image"] / res["total_ms_per_image"] if base in results else math.nan
            )
        if ref is not None:
            logits, enc = outputs[name]
            if name == "pool":
                top1 = logits[..., :-1].argmax(-1) == ref[0][..., :-1].argmax(-1)
                res["top1_agree_vs_per_image"] = float(top1[enc].float().mean()) if enc.any() else math.nan
            else:
                diff = (logits - ref[0])[enc].abs()
                res["max_abs_diff_vs_per_image"] = float(diff.max()) if diff.numel() else 0.0

    mem_label = "peak MiB (cuda alloc)" if device.type == "cuda" else "max RSS MiB (so far)"
    print(
        f"\nZegFormer CLIP branch: {args.model} (random weights), style {args.style}, device {args.device}, "
        f"threads {torch.get_num_threads()}, {args.images} image(s) of {args.size}px x {args.queries} queries, "
        f"{args.classes} classes"
    )
    header = (
        f"{'mode':<14}{'clip ms/img':>12}{'total ms/img':>14}{'img/s':>9}{'x per_image':>13}{'x sequential':>14}"
        f"{'crops':>7}{mem_label:>23}  agreement with per_image"
    )
    print(header)
    print("-" * len(header))
    for name in [m for m in PRINT_ORDER if m in results]:
        r = results[name]
        if "top1_agree_vs_per_image" in r:
            agree = f"top-1 {100 * r['top1_agree_vs_per_image']:.0f}% (approximation)"
        elif "max_abs_diff_vs_per_image" in r:
            agree = f"max|dlogit| {r['max_abs_diff_vs_per_image']:.2e}"
        else:
            agree = "-"
        print(
            f"{name:<14}{r['clip_ms_per_image']:>12.1f}{r['total_ms_per_image']:>14.1f}{r['images_per_s']:>9.3f}"
            f"{r['speedup_vs_per_image']:>13.2f}{r['speedup_vs_sequential']:>14.2f}{r['encoded_queries']:>7d}"
            f"{r['peak_mem_mb']:>23.0f}  {agree}"
        )
    if args.out:
        payload = {
            "args": vars(args),
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
            "threads": torch.get_num_threads(),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "results": results,
        }
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
