"""Seen-only and unseen-only vocabulary accuracy of the ZegFormer demo's checkpoints (GloVe and both controls).

The demo's generalised metrics (every class competes on every pixel) can hide *why* a model fails: a control
whose class names carry no meaning may still segment the seen classes, yet lose every pixel to one unseen
name. This script separates the two questions, per seed, on the demo's validation images:

* seen-only: on pixels of seen classes, the argmax over the seen classes only (is the segment branch working?);
* unseen-only (classic zero-shot): on pixels of unseen classes, the argmax over the unseen classes only (does
  the class name transfer?). Chance is about 1 / (number of unseen classes).

Usage (after ``zeroseg demo --method zegformer --out demo_zegformer``)::

    python benchmarks/zegformer_vocab_split.py --demo demo_zegformer
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from zeroseg.data.zero_shot import build_zero_shot_data
from zeroseg.demo import demo_config
from zeroseg.methods.zegformer import ZegFormerPredictor


def vocab_split_accuracy(predictor: ZegFormerPredictor, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Percent of seen pixels right among seen classes, and of unseen pixels right among unseen classes."""
    seen, unseen = torch.tensor(predictor.seen_ids), torch.tensor(predictor.unseen_ids)
    out = {}
    scores = torch.cat([predictor.scores(images[i : i + 32]) for i in range(0, len(images), 32)])
    for name, ids in (("seen_only_acc", seen), ("unseen_only_acc", unseen)):
        mask = torch.isin(labels, ids)
        pred = ids[scores[:, ids].argmax(1)]
        out[name] = round(100.0 * (pred[mask] == labels[mask]).float().mean().item(), 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default="demo_zegformer", help="output folder of zeroseg demo --method zegformer")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", help="write the rows as JSON")
    args = parser.parse_args()
    out = Path(args.demo)
    rows = []
    for seed in args.seeds:
        cfg = demo_config(out, seed, quick=False, method="zegformer")
        data = build_zero_shot_data(cfg.data, progress=False)
        images = torch.stack([data.val[i][0] for i in range(len(data.val))])
        labels = torch.stack([data.val[i][1] for i in range(len(data.val))])
        for control in (False, "random", "unseen"):
            run = demo_config(out, seed, quick=False, method="zegformer", control=control)
            predictor = ZegFormerPredictor.from_checkpoint(run.run_dir / "zegformer")
            rows.append({"run": run.name, "seed": seed, **vocab_split_accuracy(predictor, images, labels)})
            print(f"{run.name:34s} seen-only acc {rows[-1]['seen_only_acc']:5.1f}   "
                  f"unseen-only acc {rows[-1]['unseen_only_acc']:5.1f}")  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
