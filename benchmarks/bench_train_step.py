"""Training-step time of ZS3Net's three stages and of ZegFormer on the embedded benchmark configs.

The models, optimisers and losses are those of ``configs/synthetic_zs3net.yaml`` and
``configs/synthetic_zegformer.yaml`` (``--zs3net-config`` / ``--zegformer-config``), built with zeroseg's own
functions; the inputs are scenes of the embedded synthetic benchmark rendered in memory
(``zeroseg.data.synthetic.render_scene`` at the config's image size, ImageNet-normalised; nothing is read from
disk), so the label maps are realistic. All weights are random. Rows:

* ``zs3net segmenter`` -- DeepLabv3+ (ResNet-18, OS16, 16 classes) on ``data.batch_size`` images: forward +
  cross-entropy + backward + SGD step (momentum, weight decay, 10x head lr), through
  ``zeroseg.engine.train.train_one_epoch`` with a one-batch loader -- exactly the code the segmenter stage runs.
  Training scenes contain no unseen class (``unseen_policy: drop``).
* ``zs3net generator step`` -- one GMMN MMD step, ``zeroseg.generative.generator_step`` as
  ``zs3net.train_generator`` takes it per (image, seen class) pixel set: the generator maps
  ``--pixels-per-class`` (128) copies of the class embedding (+ noise) to 256-d features, ``mmd_loss`` against
  128 real features of that class (frozen-segmenter features of the rendered batch, drawn with
  ``generative.seen_pixel_sets``), backward, Adam step.
* ``zs3net generator batch`` -- what the generator stage does per loader batch: the frozen segmenter's features of
  the batch, then one MMD step per (image, seen class present) pixel set (the count is in the JSON).
* ``zs3net classifier step`` -- one ``zeroseg.generative.classifier_step`` (the step of ``fit_linear_classifier``:
  the 1x1 conv as a linear classifier, SGD, class-weighted cross-entropy) on the pixel features that one batch
  gives under the strict protocol (``generative.strict_batch``): sampled pixels of the seen classes
  (``--pixels-per-class`` per image and class) plus as many generated features per unseen class as an average
  seen class has (their count is in the JSON).
* ``zs3net classifier batch`` -- the whole per-batch work of that stage: frozen features + sampling + generation
  (no grad) + the linear step.
* ``zegformer`` -- the config's network (shipped: ResNet-18 with trainable BN, 20 queries, 3 decoder layers) on
  ``data.batch_size`` images with unseen pixels ignored: forward + Hungarian matching + set criterion (CE, focal,
  dice on every decoder layer) + backward + full-model gradient clipping + AdamW + poly scheduler step, as
  ``zegformer.train_zegformer`` does.

Engine options: ``grad_accum=2`` (two micro-batches of half the batch, gradients accumulated) for the segmenter
and ZegFormer; ``amp=bf16`` (forward under bf16 autocast) only with ``--device cuda`` (on CPU it is ignored by
the engine, so it is not measured). Each row: ``--warmup`` untimed steps, then at least ``--steps`` timed steps and
at least ``--min-time`` seconds; reported: mean and median ms/step, the process's CPU time per step (all threads)
and CPU utilisation = CPU time / (wall time x threads) -- well below 1 means other processes shared the CPU and the
row is unreliable (the table warns below 0.8) --, steps/s, images/s (rows that process a batch of images), and
ratios (grad_accum=2 vs 1, bf16 vs fp32; speed-up = reference ms / ms).

Usage::

    python benchmarks/bench_train_step.py [--device cpu|cuda] [--threads N] [--steps 10] [--warmup 2]
        [--min-time 1.0] [--batch N] [--pixels-per-class 128] [--out results.json] [--quick]

The full CPU run takes about a minute on 2 cores; ``--quick`` (batch 4, 1 step, no warm-up) is a smoke test.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zeroseg import generative
from zeroseg.config import ExperimentConfig, load_config
from zeroseg.data.io import IGNORE, IMAGENET_MEAN, IMAGENET_STD
from zeroseg.data.synthetic import render_scene
from zeroseg.engine.train import poly_lambda, split_batch, train_one_epoch, train_step
from zeroseg.errors import ZeroSegError
from zeroseg.methods import zegformer as zf
from zeroseg.methods import zs3net

#: Packaged config names (zeroseg/configs/*.yaml); the options also take a YAML path.
ZS3NET_CONFIG = "synthetic_zs3net"
ZEGFORMER_CONFIG = "synthetic_zegformer"
#: option -> (default, default under --quick)
QUICK_DEFAULTS = {"steps": (10, 1), "warmup": (2, 0), "min_time": (1.0, 0.0), "batch": (None, 4)}


# --------------------------------------------------------------------------------------------- inputs
def render_batch(cfg: ExperimentConfig, n: int, *, seed: int, drop_unseen: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` synthetic scenes of the config's benchmark, ImageNet-normalised, with their label maps.

    Args:
        cfg: experiment config (its ``data.synthetic`` parameters are used).
        n: number of scenes.
        seed: first scene seed.
        drop_unseen: True: redraw scenes that contain an unseen class (ZS3Net's ``unseen_policy: drop``);
            False: their unseen pixels become ``IGNORE`` (ZegFormer's ``ignore``).

    Returns:
        ``images (n, 3, S, S)`` float32 and ``labels (n, S, S)`` int64.
    """
    synth = cfg.data.synthetic
    names = synth.class_names
    unseen = torch.tensor([names.index(u) for u in synth.unseen])
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    images, labels = [], []
    for k in itertools.count(seed):
        if len(images) == n:
            break
        if k - seed > 100 * n:
            raise ZeroSegError(f"synthetic benchmark: fewer than {n} of {100 * n} scenes have no unseen class")
        image, label = render_scene(synth, np.random.default_rng(k))
        y = torch.from_numpy(label.astype(np.int64))
        has_unseen = torch.isin(y, unseen)
        if drop_unseen and has_unseen.any():
            continue
        y[has_unseen] = IGNORE
        x = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
        images.append((x - mean) / std)
        labels.append(y)
    return torch.stack(images), torch.stack(labels)


def split_ids(cfg: ExperimentConfig) -> tuple[list[int], list[int]]:
    """Seen and unseen class ids of the config's synthetic benchmark."""
    names = cfg.data.synthetic.class_names
    unseen = [names.index(u) for u in cfg.data.synthetic.unseen]
    return [i for i in range(len(names)) if i not in unseen], unseen


# --------------------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(
    step: Callable[[], Any], device: torch.device, *, warmup: int, steps: int, min_time: float
) -> dict[str, float]:
    """Run ``step`` ``warmup`` times untimed, then at least ``steps`` times and ``min_time`` seconds, timed.

    Returns:
        ``{"ms_per_step" (mean wall time), "cpu_ms_per_step" (mean CPU time of this process, all threads),
        "median_ms", "min_ms", "steps"}``.
    """
    for _ in range(warmup):
        step()
    times: list[float] = []
    cpu = 0.0
    while len(times) < max(1, steps) or sum(times) < min_time:
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
        cpu += time.process_time() - c0
    return {
        "ms_per_step": 1000.0 * sum(times) / len(times),
        "cpu_ms_per_step": 1000.0 * cpu / len(times),
        "median_ms": 1000.0 * statistics.median(times),
        "min_ms": 1000.0 * min(times),
        "steps": len(times),
    }


# --------------------------------------------------------------------------------------------- steps
def segmenter_step(
    cfg: ExperimentConfig, images: torch.Tensor, labels: torch.Tensor, device: torch.device, *, amp: str, accum: int
) -> Callable[[], float]:
    """One ZS3Net segmenter optimiser step (``train_one_epoch`` over a one-batch loader)."""
    s = cfg.segmenter
    torch.manual_seed(cfg.seed)
    model = zs3net.build_segmenter(cfg, len(cfg.data.synthetic.class_names)).to(device)
    opt = torch.optim.SGD(
        model.parameter_groups(s.lr, head_lr_mult=s.head_lr_mult), lr=s.lr, momentum=s.momentum,
        weight_decay=s.weight_decay,
    )  # fmt: skip
    sched = torch.optim.lr_scheduler.LambdaLR(opt, poly_lambda(10_000, s.poly_power))
    criterion = nn.CrossEntropyLoss(ignore_index=IGNORE)
    batch = [(images.to(device), labels.to(device))]

    def step() -> float:
        return train_one_epoch(
            model, batch, opt, sched, criterion=criterion, device=device, progress=False, amp=amp, grad_accum=accum
        )

    return step


def frozen_features(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen segmenter's features and labels at feature resolution (``generative.feature_batches``)."""
    return next(generative.feature_batches(model, [(images, labels, None)], device))


def zs3net_steps(
    cfg: ExperimentConfig, images: torch.Tensor, labels: torch.Tensor, device: torch.device, embed_dim: int
) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    """The generator and classifier steps (see the module docstring) and facts about one batch."""
    torch.manual_seed(cfg.seed)
    seen, unseen = split_ids(cfg)
    num_classes = len(cfg.data.synthetic.class_names)
    model = zs3net.build_segmenter(cfg, num_classes).to(device)
    gen = zs3net.build_generator(cfg, embed_dim, model.feature_dim).to(device)
    gen.train()  # as both stages run it (dropout on)
    emb = F.normalize(torch.randn(num_classes, embed_dim), dim=-1).to(device)
    g = cfg.generator
    per = g.pixels_per_class
    gen_opt = torch.optim.Adam(gen.parameters(), lr=g.lr)
    rng = torch.Generator().manual_seed(cfg.seed + 1)
    feats, ys = frozen_features(model, images, labels, device)
    sets = list(generative.seen_pixel_sets(feats, ys, set(seen), per, rng))
    if not sets:
        raise ZeroSegError("the rendered batch has no seen-class pixel set")
    cycle = itertools.cycle(sets)

    def generator_step() -> float:
        c, real = next(cycle)
        return generative.generator_step(gen, gen_opt, emb[c], real, sigmas=g.sigmas)

    def generator_batch() -> None:
        f, y = frozen_features(model, images, labels, device)
        for c, real in generative.seen_pixel_sets(f, y, set(seen), per, rng):
            generative.generator_step(gen, gen_opt, emb[c], real, sigmas=g.sigmas)

    # Classifier stage (strict protocol), with the pieces zs3net.train_classifier runs.
    model.reset_classifier(num_classes)
    model.classifier.to(device)
    classifier = model.classifier
    weight = generative.class_weights(num_classes, unseen, cfg.classifier.unseen_weight)
    cls_opt = generative.classifier_optimizer(classifier, cfg.classifier.lr)
    criterion = generative.classifier_criterion(weight.to(device))
    seen_t = torch.tensor(seen)
    unseen_t = torch.tensor(unseen)

    def classifier_inputs(f: torch.Tensor, y_small: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = generative.strict_batch(f, y_small, gen, emb, seen_t, unseen_t, per, rng)
        if batch is None:
            raise ZeroSegError("the rendered batch has no seen-class pixel")
        return batch

    def linear_step(batch: tuple[torch.Tensor, torch.Tensor]) -> float:
        return generative.classifier_step(classifier, cls_opt, criterion, batch)

    fixed = classifier_inputs(feats, ys)

    def classifier_batch() -> float:
        return linear_step(classifier_inputs(*frozen_features(model, images, labels, device)))

    steps = {
        "zs3net generator step": generator_step,
        "zs3net generator batch": generator_batch,
        "zs3net classifier step": lambda: linear_step(fixed),
        "zs3net classifier batch": classifier_batch,
    }
    facts = {"mmd_sets_per_batch": len(sets), "classifier_pixels_per_step": int(fixed[1].numel())}
    return steps, facts


def zegformer_step(
    cfg: ExperimentConfig,
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    text_dim: int,
    *,
    amp: str,
    accum: int,
) -> Callable[[], float]:
    """One ZegFormer optimiser step, as the loop of ``zegformer.train_zegformer`` runs it."""
    z = cfg.zegformer
    seen, _ = split_ids(cfg)
    num_classes = len(cfg.data.synthetic.class_names)
    torch.manual_seed(cfg.seed)
    model = zf.build_model(cfg, text_dim).to(device)
    text = F.normalize(torch.randn(len(seen), text_dim), dim=-1).to(device)
    to_train_id = zf.train_id_map(num_classes, seen)
    criterion = zf.build_criterion(cfg, len(seen)).to(device)
    opt = zf.build_optimizer(cfg, model, device)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, poly_lambda(z.iters, z.poly_power))
    padded, lab = zf.pad_batch(images, labels, device)

    terms, normaliser = zf.set_loss(criterion, text, to_train_id, z.num_queries)

    def step() -> float:
        model.train()
        return train_step(
            model,
            split_batch((padded, lab), accum, device),
            loss_terms=terms,
            normaliser=normaliser,
            optimizer=opt,
            scheduler=sched,
            device=device,
            amp=amp,
            clip_grad_norm=z.clip_grad_norm,
        )

    return step


# --------------------------------------------------------------------------------------------- driver
def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Runs every step of ``args``; returns the report (see ``main`` for the JSON)."""
    device = torch.device(args.device)
    zs_cfg = load_config(args.zs3net_config, [f"device={args.device}"])
    zf_cfg = load_config(args.zegformer_config, [f"device={args.device}"])
    zs_batch = args.batch or zs_cfg.data.batch_size
    zf_batch = args.batch or zf_cfg.data.batch_size
    zs_cfg = dataclasses.replace(zs_cfg, generator=dataclasses.replace(zs_cfg.generator, pixels_per_class=args.ppc))
    zs_images, zs_labels = render_batch(zs_cfg, zs_batch, seed=args.seed, drop_unseen=True)
    zf_images, zf_labels = render_batch(zf_cfg, zf_batch, seed=args.seed, drop_unseen=False)
    amps = ["none", "bf16"] if device.type == "cuda" else ["none"]
    rows: list[dict[str, Any]] = []

    def add(name: str, step: Callable[[], Any], images: int | None, unit: str, **extra: Any) -> None:
        res = time_steps(step, device, warmup=args.warmup, steps=args.steps, min_time=args.min_time)
        row: dict[str, Any] = {"step": name, "unit": unit, **extra, **res}
        row["steps_per_s"] = 1000.0 / res["ms_per_step"]
        row["images_per_s"] = images * row["steps_per_s"] if images else None
        row["cpu_utilisation"] = (
            res["cpu_ms_per_step"] / (res["ms_per_step"] * torch.get_num_threads()) if device.type == "cpu" else None
        )
        rows.append(row)
        label = f"{name} (amp {extra['amp']}, grad_accum {extra['grad_accum']})"
        print(f"  {label}: {res['ms_per_step']:.1f} ms/step", file=sys.stderr, flush=True)

    for amp in amps:
        for accum in (1, 2):
            step = segmenter_step(zs_cfg, zs_images, zs_labels, device, amp=amp, accum=accum)
            add("zs3net segmenter", step, zs_batch, f"{zs_batch} images", amp=amp, grad_accum=accum)
    steps, facts = zs3net_steps(zs_cfg, zs_images, zs_labels, device, args.text_dim)
    units = {
        "zs3net generator step": f"{args.ppc}-pixel set",
        "zs3net generator batch": f"{zs_batch} images, {facts['mmd_sets_per_batch']} sets",
        "zs3net classifier step": f"{facts['classifier_pixels_per_step']} pixels",
        "zs3net classifier batch": f"{zs_batch} images",
    }
    for name, step in steps.items():
        add(name, step, zs_batch if name.endswith("batch") else None, units[name], amp="none", grad_accum=1)
    for amp in amps:
        for accum in (1, 2):
            step = zegformer_step(zf_cfg, zf_images, zf_labels, device, args.text_dim, amp=amp, accum=accum)
            add("zegformer", step, zf_batch, f"{zf_batch} images", amp=amp, grad_accum=accum)

    return {
        "args": vars(args),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "loadavg_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "image_size": zs_cfg.data.synthetic.image_size,
        **facts,
        "results": rows,
        "ratios": _ratios(rows),
    }


def _ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Speed-ups (reference ms / ms) of grad_accum=2 vs 1 and bf16 vs none for the segmenter and ZegFormer."""
    ms = {(r["step"], r["amp"], r["grad_accum"]): r["ms_per_step"] for r in rows}
    out = []
    for step, amp, accum in ms:
        if accum == 2 and (step, amp, 1) in ms:
            out.append(
                {
                    "step": step,
                    "ratio": f"grad_accum=2 vs 1 (amp {amp})",
                    "value": ms[(step, amp, 1)] / ms[(step, amp, 2)],
                }
            )
        if amp == "bf16" and (step, "none", accum) in ms:
            out.append(
                {
                    "step": step,
                    "ratio": f"bf16 vs fp32 (grad_accum {accum})",
                    "value": ms[(step, "none", accum)] / ms[(step, "bf16", accum)],
                }
            )
    return out


def print_report(report: dict[str, Any]) -> None:
    """The results table and the ratios."""
    a = report["args"]
    print(
        f"\nTraining steps (random weights, synthetic scenes of {report['image_size']} px): device "
        f"{report['device']}, torch {report['torch']}, threads {report['threads']}; {a['warmup']} warm-up step(s), "
        f">= {a['steps']} timed step(s) and >= {a['min_time']} s per row"
    )
    header = (
        f"{'step':<26}{'amp':<6}{'accum':>6}{'ms/step':>10}{'median':>10}{'cpu ms':>10}{'cpu util':>9}{'steps/s':>9}"
        f"{'img/s':>9}  one step ="
    )
    print(header)
    print("-" * (len(header) + 22))
    for r in report["results"]:
        img = "-" if r["images_per_s"] is None else f"{r['images_per_s']:.1f}"
        util = "-" if r["cpu_utilisation"] is None else f"{r['cpu_utilisation']:.2f}"
        print(
            f"{r['step']:<26}{r['amp']:<6}{r['grad_accum']:>6}{r['ms_per_step']:>10.1f}{r['median_ms']:>10.1f}"
            f"{r['cpu_ms_per_step']:>10.1f}{util:>9}"
            f"{r['steps_per_s']:>9.2f}{img:>9}  {r['unit']}"
        )
    shared = [r for r in report["results"] if (r["cpu_utilisation"] or 1.0) < 0.8]
    if shared:
        print(
            f"WARNING: {len(shared)} row(s) got less than 80% of the threads' CPU time (cpu util): other processes "
            "were probably running; their times are unreliable."
        )
    print("\nratios (speed-up = reference ms / ms):")
    for q in report["ratios"]:
        print(f"  {q['step']:<26}{q['ratio']:<34}{q['value']:>7.2f}x")


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--steps", type=int, default=None, help="least timed steps per row (default 10; --quick 1)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps per row (default 2; --quick 0)")
    ap.add_argument("--min-time", type=float, default=None, help="least timed seconds per row (default 1; --quick 0)")
    ap.add_argument(
        "--batch", type=int, default=None, help="images per step (default: each config's data.batch_size; --quick 4)"
    )
    ap.add_argument("--pixels-per-class", dest="ppc", type=int, default=128, help="MMD set size (default 128)")
    ap.add_argument("--text-dim", type=int, default=50, help="class-embedding size (default 50: glove-6b-50d)")
    ap.add_argument("--zs3net-config", default=str(ZS3NET_CONFIG))
    ap.add_argument("--zegformer-config", default=str(ZEGFORMER_CONFIG))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke-test defaults (explicit options still win)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark, prints a table and optionally writes JSON; returns a process exit code."""
    args = build_parser().parse_args(argv)
    for name, (normal, quick) in QUICK_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else normal)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_train_step: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    if args.batch is not None and (args.batch < 2 or args.batch % 2):
        print(f"bench_train_step: --batch {args.batch} must be even and >= 2 (grad_accum=2)", file=sys.stderr)
        return 2
    if args.steps < 1 or args.warmup < 0 or args.min_time < 0 or args.ppc < 1 or args.text_dim < 1:
        print(
            "bench_train_step: --steps, --pixels-per-class, --text-dim >= 1; --warmup, --min-time >= 0", file=sys.stderr
        )
        return 2
    try:
        report = run_benchmark(args)
    except ZeroSegError as e:
        print(f"bench_train_step: {e}", file=sys.stderr)
        return 2
    print_report(report)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
