"""Confusion-matrix throughput: zeroseg's ConfusionMatrix.update vs torchmetrics' MulticlassJaccardIndex.

Both consume the SAME random (prediction, target) int64 tensors, with about 5% of target pixels set to the
ignore index 255. Each contender gets one warm-up update, then ``--repeats`` timed updates; the median is
reported as pixels/s. Absolute figures depend on the machine and thread count and are printed only as
context; the ratio is the comparable number. torchmetrics is timed with its default argument validation
(``validate_args=True``, which mirrors zeroseg's always-on range check) and without it. Finally both
accumulate the same data from scratch and their per-class IoUs are compared.

Usage::

    python benchmarks/bench_metrics.py [--pixels N] [--classes C] [--repeats R] [--threads T]

Needs torchmetrics (a dev dependency).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

from zeroseg.metrics import ConfusionMatrix

IGNORE = 255


def _make_data(pixels: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (pred, target), both (pixels,) int64; target has ~5% ignore pixels, pred ~70% correct."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, classes, (pixels,), generator=g)
    pred = torch.where(torch.rand(pixels, generator=g) < 0.7, target, torch.randint(0, classes, (pixels,), generator=g))
    target[torch.rand(pixels, generator=g) < 0.05] = IGNORE
    return pred, target


def _median_seconds(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up: first-call allocations and dispatch caches
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a small report; returns a process exit code."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pixels", type=int, default=4 * 512 * 512, help="pixels per update (default 1048576)")
    ap.add_argument("--classes", type=int, default=21, help="number of classes (default 21, VOC)")
    ap.add_argument("--repeats", type=int, default=15, help="timed updates per contender (default 15)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        from torchmetrics.classification import MulticlassJaccardIndex
    except ImportError:
        print("torchmetrics is not installed (pip install torchmetrics)", file=sys.stderr)
        return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    pred, target = _make_data(args.pixels, args.classes, args.seed)
    ours = ConfusionMatrix(args.classes, ignore_index=IGNORE)
    tm_checked = MulticlassJaccardIndex(args.classes, average=None, ignore_index=IGNORE)
    tm_fast = MulticlassJaccardIndex(args.classes, average=None, ignore_index=IGNORE, validate_args=False)

    t_ours = _median_seconds(lambda: ours.update(pred, target), args.repeats)
    t_tm = _median_seconds(lambda: tm_checked.update(pred, target), args.repeats)
    t_tm_fast = _median_seconds(lambda: tm_fast.update(pred, target), args.repeats)

    print(
        f"torch {torch.__version__}, threads={torch.get_num_threads()}, pixels/update={args.pixels}, "
        f"classes={args.classes}, repeats={args.repeats} (median after 1 warm-up)"
    )
    rows = [
        ("zeroseg ConfusionMatrix.update", t_ours),
        ("torchmetrics MulticlassJaccardIndex.update", t_tm),
        ("torchmetrics ... validate_args=False", t_tm_fast),
    ]
    for name, t in rows:
        print(f"  {name:<44} {t * 1e3:8.2f} ms   {args.pixels / t / 1e6:8.1f} Mpix/s")
    print(f"ratio zeroseg / torchmetrics (validated)  : {t_tm / t_ours:.2f}x throughput")
    print(f"ratio zeroseg / torchmetrics (no checks)  : {t_tm_fast / t_ours:.2f}x throughput")

    # Agreement: fresh accumulators, one identical pass each.
    ours.reset()
    ours.update(pred, target)
    tm_check = MulticlassJaccardIndex(args.classes, average=None, ignore_index=IGNORE)
    tm_check.update(pred, target)
    iou_ours = torch.tensor([v if v is not None else 0.0 for v in ours.compute().per_class_iou])
    iou_tm = tm_check.compute().double()
    max_diff = float((iou_ours - iou_tm).abs().max())
    ok = max_diff < 1e-6
    print(f"per-class IoU max |difference| = {max_diff:.2e} -> {'agree' if ok else 'DISAGREE'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
