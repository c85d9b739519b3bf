"""ZS3Net's classifier refit for a new vocabulary: time before (minibatch SGD, 60 epochs) / after (the full-batch
path of the same steps, ``gd``, the default; and the L-BFGS optimum of their objective) / cached, and how the
solvers' classifiers agree on the embedded benchmark's validation set.

Everything timed is zeroseg's own code on a trained checkpoint (``zeroseg train`` or ``zeroseg demo`` output, a
``classifier`` stage of ZS3Net or ZS-MMD):

* ``first call`` -- ``ZS3Predictor.set_classes(new vocabulary)`` in a fresh cache folder, first thing after loading:
  the checkpoint's content hash, the text encoder's first load, the generated features, the default solver and the
  cache write -- what the first ``zeroseg predict --classes ...`` with a new vocabulary pays on top of loading;
* ``cached`` -- the same call again as a later process makes it (the in-process digest memo cleared, so the digest
  comes from the cache folder's record; another vocabulary installed in between): a cache hit;
* ``forward`` -- ``predictor.predict`` of one validation-sized image (the reference of the "repeated calls" goal);
* ``sgd`` / ``gd`` / ``lbfgs`` -- ``ZS3Predictor.refit_weights(names, solver=...)`` (samples + solve, no cache) per
  refit seed, for the new vocabulary and for the checkpoint's own class list: the minibatch SGD run of before (at
  the process's thread count, as before: the one-thread rule for small refits, ``zs3net.SMALL_REFIT_MACS``, is
  lifted for it), the full-batch path of the same SGD steps (the default), and the optimum of their objective.

Agreement: % of validation pixels on which the SGD classifier and the other solver's of the same seed give the same
label.
mIoU (percent): for the checkpoint's own classes as ``zeroseg eval`` computes it (plus seen/unseen/hIoU); for the
new vocabulary over its names, with every ground-truth pixel of a class outside the vocabulary ignored (a name
with no ground-truth pixel counts only where it is predicted: IoU 0). The spread over refit seeds is printed
beside, so "unchanged within the seed spread" can be read off. The validation features are computed once and
each classifier applied to them (``classify`` + bilinear upsampling: exactly ``model(x)``, checked on one batch).

Usage::

    python benchmarks/bench_refit.py --checkpoint demo_out/runs/zs3net_seed0/classifier [--data-root DIR]
        [--threads 2] [--seeds 0,1,2] [--classes "sky, road, ..."] [--out results.json] [--quick]

``--data-root`` is the synthetic benchmark's folder when the run's ``config.yaml`` names a relative one from another
working directory. ``--quick`` (one seed, 3 SGD epochs, 16 validation images) is a smoke test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from zeroseg.config import load_config
from zeroseg.data.zero_shot import IGNORE
from zeroseg.engine import cache as cache_mod
from zeroseg.engine.checkpoint import checkpoint_path
from zeroseg.engine.loaders import make_loader
from zeroseg.engine.run import prepare_data
from zeroseg.methods import load_predictor, zs3net
from zeroseg.methods.predict import vocabulary
from zeroseg.metrics import ConfusionMatrix, compute_metrics

NEW_VOCABULARY = "sky, road, sand, red dotted, purple striped, orange checkered"
#: The refit solvers compared: the SGD run of before first (the reference of the agreement).
SOLVERS = ("sgd", "gd", "lbfgs")


def _timed(fn, *args, **kwargs) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


@torch.inference_mode()
def validation_features(predictor, data, batch_size: int, limit: int | None) -> list[tuple[torch.Tensor, ...]]:
    """``(features (B, F, h, w), labels (B, H, W))`` of the validation set, the segmenter run once."""
    loader = make_loader(data.val, batch_size, shuffle=False, workers=0, seed=0)
    out, n = [], 0
    for images, labels, *_ in loader:
        out.append((predictor.model.extract_features(images.to(predictor.device)).cpu(), labels))
        n += images.shape[0]
        if limit is not None and n >= limit:
            break
    return out


@torch.inference_mode()
def label_maps(weight: torch.Tensor, bias: torch.Tensor, feats: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
    """(N, H, W) labels of a 1x1 classifier on the stored features, as ``DeepLabV3Plus.forward`` + argmax."""
    preds = []
    for f, labels in feats:
        logits = F.conv2d(f, weight, bias)
        up = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=True)
        preds.append(up.argmax(1))
    return torch.cat(preds)


def vocabulary_metrics(pred: torch.Tensor, gt: torch.Tensor, names: list[str], ckpt_names: list[str]) -> dict:
    """mIoU and per-name IoU (percent) over ``names``: ground-truth ids of the checkpoint's classes mapped to the
    vocabulary's, every pixel of a class outside it ignored; a name with no ground truth that is never predicted
    is left out (None)."""
    lut = torch.full((max(256, len(ckpt_names) + 1),), IGNORE, dtype=torch.long)
    for i, n in enumerate(ckpt_names):
        if n in names:
            lut[i] = names.index(n)
    cm = ConfusionMatrix(len(names))
    cm.update(pred, lut[gt.long()])
    m = compute_metrics(cm.mat)
    out = {"miou": 100.0 * m.miou}
    out.update({f"IoU {n}": None if v is None else 100.0 * v for n, v in zip(names, m.per_class_iou, strict=True)})
    return out


def own_metrics(pred: torch.Tensor, gt: torch.Tensor, data) -> dict[str, float]:
    cm = ConfusionMatrix(len(data.class_names))
    cm.update(pred, gt.long())
    m = compute_metrics(cm.mat, seen_ids=list(data.seen_ids), unseen_ids=list(data.unseen_ids))
    return {k: 100.0 * getattr(m, k) for k in ("miou", "seen_miou", "unseen_miou", "hiou")}


def _spread(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}"
    mean, sd = statistics.mean(values), statistics.stdev(values)
    return f"{mean:.2f} +- {sd:.2f} (min {min(values):.2f}, max {max(values):.2f})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="a ZS3Net/ZS-MMD classifier-stage checkpoint")
    ap.add_argument("--config", help="the run's config (default: config.yaml beside the checkpoint)")
    ap.add_argument("--data-root", help="override data.root (the synthetic benchmark's folder)")
    ap.add_argument("--classes", default=NEW_VOCABULARY, help="the new vocabulary, comma-separated")
    ap.add_argument("--seeds", default="0,1,2", help="refit seeds (the spread of both solvers)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's choice)")
    ap.add_argument("--forward-repeats", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=60, help="SGD epochs of the 'before' refit")
    ap.add_argument("--max-val", type=int, default=None, help="use only the first N validation images")
    ap.add_argument("--out", help="write the results as JSON")
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 seed, 3 SGD epochs, 16 validation images")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.max_val, args.forward_repeats = "0", 3, args.max_val or 16, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    new = vocabulary(args.classes.split(","))
    ckpt = checkpoint_path(args.checkpoint)
    cfg_path = Path(args.config) if args.config else ckpt.parent / "config.yaml"
    overrides = ["device=cpu", "data.num_workers=0"] + ([f"data.root={args.data_root}"] if args.data_root else [])
    cfg = load_config(cfg_path, overrides)
    results: dict[str, Any] = {"checkpoint": str(ckpt), "threads": torch.get_num_threads(), "vocabulary": new}

    predictor, results["load_s"] = _timed(load_predictor, ckpt)
    own = list(predictor.meta["class_names"])
    with tempfile.TemporaryDirectory() as tmp:
        _, results["first_call_s"] = _timed(predictor.set_classes, new, cache_dir=tmp)
        predictor.set_classes(own)
        cache_mod._DIGEST_MEMO.clear()  # as a later process: the digest comes from the cache folder's record
        _, results["cached_s"] = _timed(predictor.set_classes, new, cache_dir=tmp)

    data = prepare_data(cfg.data, progress=False, train=False)
    if list(data.class_names) != own:
        raise SystemExit(f"{cfg_path}: its split's classes differ from the checkpoint's")
    feats = validation_features(predictor, data, cfg.data.eval_batch_size, args.max_val)
    gt = torch.cat([labels for _, labels in feats])
    image = torch.zeros(1, 3, *gt.shape[-2:])
    predictor.predict(image)  # first-call allocations are not the steady state
    fwd = [_timed(predictor.predict, image)[1] for _ in range(args.forward_repeats)]
    results["forward_s"] = statistics.median(fwd)
    check = label_maps(predictor.model.classifier.weight, predictor.model.classifier.bias, feats[:1])
    direct = torch.cat([predictor.predict(x)[0] for x in _first_images(data, cfg, feats[0][1].shape[0])])
    results["shortcut_matches_predict_pct"] = 100.0 * (check == direct).float().mean().item()

    rows = {}
    small = zs3net.SMALL_REFIT_MACS
    for label, names in (("new vocabulary", new), ("own classes", own)):
        per_seed = []
        for seed in seeds:
            row: dict[str, Any] = {"seed": seed}
            preds = {}
            for solver in SOLVERS:
                # "before" as it ran before: at the process's thread count (the small-refit one-thread rule is new)
                zs3net.SMALL_REFIT_MACS = -1 if solver == "sgd" else small
                (w, b), row[f"{solver}_s"] = _timed(
                    predictor.refit_weights, names, seed=seed, solver=solver, epochs=args.epochs
                )
                zs3net.SMALL_REFIT_MACS = small
                preds[solver] = label_maps(w, b, feats)
                if names == own:
                    row[solver] = own_metrics(preds[solver], gt, data)
                else:
                    row[solver] = vocabulary_metrics(preds[solver], gt, names, own)
            for solver in SOLVERS[1:]:
                row[f"agreement_{solver}_pct"] = 100.0 * (preds["sgd"] == preds[solver]).float().mean().item()
            per_seed.append(row)
        rows[label] = per_seed
    results["refits"] = rows
    print(report(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


def _first_images(data, cfg, n: int) -> list[torch.Tensor]:
    loader = make_loader(data.val, cfg.data.eval_batch_size, shuffle=False, workers=0, seed=0)
    images = next(iter(loader))[0][:n]
    return [images]


def report(r: dict[str, Any]) -> str:
    """The printed table of :func:`main`'s results."""
    new_rows = r["refits"]["new vocabulary"]
    t = {solver: statistics.median(x[f"{solver}_s"] for x in new_rows) for solver in SOLVERS}
    lines = [
        f"checkpoint {r['checkpoint']}  threads {r['threads']}  vocabulary: {', '.join(r['vocabulary'])}",
        f"load checkpoint          {r['load_s']:8.3f} s",
        f"first call (cold)        {r['first_call_s']:8.3f} s   set_classes(new vocabulary), default solver, no cache",
        f"cached call              {r['cached_s'] * 1e3:8.2f} ms  same vocabulary again (cache hit)",
        f"forward, one image       {r['forward_s'] * 1e3:8.2f} ms  predictor.predict",
        f"refit before (SGD)       {t['sgd']:8.3f} s   median over seeds, refit_weights(solver='sgd')",
        f"refit after (GD path)    {t['gd']:8.3f} s   refit_weights(solver='gd'), the default",
        f"refit L-BFGS optimum     {t['lbfgs']:8.3f} s   refit_weights(solver='lbfgs')",
        f"speed-up  SGD/GD path    {t['sgd'] / t['gd']:8.1f} x",
        f"speed-up  SGD/L-BFGS     {t['sgd'] / t['lbfgs']:8.1f} x",
        f"speed-up  SGD/cached     {t['sgd'] / r['cached_s']:8.0f} x",
        f"cached / forward         {r['cached_s'] / r['forward_s']:8.3f}",
        f"predict shortcut check   {r['shortcut_matches_predict_pct']:8.2f} % of pixels as predictor.predict",
    ]
    for label, rows in r["refits"].items():
        lines.append(f"-- {label} ({len(rows)} refit seeds)")
        for solver in SOLVERS[1:]:
            agree = _spread([x[f"agreement_{solver}_pct"] for x in rows])
            lines.append(f"   agreement SGD vs {solver}: {agree} % of pixels")
        for key in rows[0]["sgd"]:
            for solver in SOLVERS:
                values = [x[solver][key] for x in rows if x[solver][key] is not None]
                lines.append(f"   {key:18s} {solver:6s} {_spread(values) if values else '-'}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
