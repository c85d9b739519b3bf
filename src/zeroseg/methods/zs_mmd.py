"""ZS-MMD recursive training (Wang, Farazi, Barnes: "Recursive Training for Zero-Shot Semantic Segmentation",
IJCNN 2021, arXiv 2103.00086).

ZS-MMD extends ZS3Net by closing the loop on the generator. What :func:`train` runs, top to bottom:

0. **ZS3Net** -- segmenter, GMMN generator and classifier stages of :mod:`zeroseg.methods.zs3net`, reused as
   they are (self-training off). The classifier checkpoint is *round 0*.
1. For each round ``r = 1..zs_mmd.rounds``:

   a. **pseudo-features** -- the current model (frozen segmenter features + the last classifier) labels the
      pixels of the source images (:func:`collect_pseudo_features`). Every pixel whose arg-max class is
      *unseen* and whose softmax confidence is at least ``zs_mmd.threshold`` becomes a pseudo-feature of that
      class, weighted by its confidence (:func:`zeroseg.generative.select_pseudo_features`).
   b. **generator** -- the GMMN is retrained with, at every Adam step, the usual MMD between generated and
      real features of one seen class of one image (as ZS3Net) plus ``zs_mmd.pseudo_weight`` times the
      **ZS-MMD** loss: the confidence-weighted MMD (:func:`zeroseg.modules.mmd.weighted_mmd_loss`) between
      generated features of an unseen class and a sample of its pseudo-features; the unseen classes take
      turns, step by step (:func:`retrain_generator`, one :func:`zeroseg.generative.zs_mmd_step` per step).
   c. **classifier** -- the 1x1 classifier is re-initialised and retrained on real seen + newly generated
      unseen features (:func:`zeroseg.methods.zs3net.train_classifier`, same protocol as round 0).
   d. a checkpoint ``<run>/zs_mmd_round{r}`` (meta ``method="zs_mmd"``, ``stage="zs_mmd"``, ``round=r``)
      and its validation metrics; a re-run skips every finished round.

Inductive or transductive: with the default ``zs_mmd.source="unlabelled"`` the pseudo-features come from the
training images that ``data.unseen_policy=drop`` removed because they contain unseen classes. Their labels
are never read, but their unseen *pixels* are: the method is **transductive** (like ZS5Net), and checkpoint
metadata and reports say so. Validation images are never used for pseudo-features. ``source="train"`` reads
only stage 1's seen-only images (inductive, but with ``drop`` every "unseen" pixel there is a false positive,
so it is an ablation, not a way to make the method inductive).

The paper's full text could not be consulted (only its abstract: confidence-weighted pseudo-features fed back
to the generator through a ZS-MMD loss, recursive retraining). Every detail below is therefore an assumption,
each a ``zs_mmd.*`` option (see ``docs/zs_mmd.md``): the confidence threshold (0.8), the weighting (the
softmax maximum, normalised over the sample), the source images, the per-step interleaving of seen MMD and
ZS-MMD with weight 1, fine-tuning (not re-initialising) the generator for 2 epochs per round, 3 rounds, and
pseudo-features taken at feature resolution from the classifier's logits there.
"""

from __future__ import annotations

import dataclasses

import torch
from torch.utils.data import ConcatDataset, Dataset
from tqdm import tqdm

from zeroseg.config import ExperimentConfig
from zeroseg.data.zero_shot import ZeroShotData
from zeroseg.engine.checkpoint import load_checkpoint, prefixed, unprefixed
from zeroseg.engine.distributed import broadcast_state
from zeroseg.engine.loaders import make_loader
from zeroseg.engine.run import Run, RunResult, seed_everything, start_run
from zeroseg.engine.run import log as _log
from zeroseg.errors import ZeroSegError
from zeroseg.generative import (
    draw_pseudo,
    feature_bank,
    feature_batches,
    frozen_features,
    generator_step,
    pseudo_pools,
    seen_pixel_sets,
    select_pseudo_features,
    zs_mmd_step,
)
from zeroseg.methods import zs3net
from zeroseg.methods.zs3net import (
    build_generator,
    build_segmenter,
    checkpoint_meta,
    class_embeddings,
    evaluate_segmenter,
    train_classifier,
)
from zeroseg.modules.deeplab import DeepLabV3Plus
from zeroseg.modules.gmmn import GMMNGenerator

STAGE = "zs_mmd"


def round_name(r: int) -> str:
    """Checkpoint name of recursion round ``r`` (round 0 is ZS3Net's ``classifier``)."""
    return "classifier" if r == 0 else f"zs_mmd_round{r}"


# --------------------------------------------------------------------------------------------- pseudo-features
def _source(data: ZeroShotData, source: str) -> Dataset:
    if source == "train":
        return data.train_plain
    if data.unlabelled is None:
        raise ZeroSegError(
            f"zs_mmd.source={source}: no unlabelled images (needs data.unseen_policy=drop and training images "
            "that contain unseen classes); use zs_mmd.source=train"
        )
    return data.unlabelled if source == "unlabelled" else ConcatDataset([data.train_plain, data.unlabelled])


@torch.no_grad()
def collect_pseudo_features(
    cfg: ExperimentConfig, model: DeepLabV3Plus, data: ZeroShotData, rng: torch.Generator, progress: bool
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Step (a): confident unseen pixels of the source images, per unseen class.

    Labels of the source images are never read. At most ``zs_mmd.max_pseudo_per_class`` per class are kept
    (a uniform random subset).

    Returns:
        ``{class_id: (x (N, F), w (N,))}`` for every unseen class with at least ``min_pseudo_per_class``.
    """
    z = cfg.zs_mmd
    device = torch.device(cfg.device)
    loader = make_loader(
        _source(data, z.source), cfg.data.eval_batch_size, shuffle=False, workers=cfg.data.num_workers, seed=0
    )
    unseen = torch.tensor(data.unseen_ids)
    xs, ys, ws = [], [], []
    for images, _, _ in tqdm(loader, desc="pseudo-features", leave=False, disable=not progress):
        f = frozen_features(model, images.to(device))
        x, y, w = select_pseudo_features(f, model.classify(f).softmax(1), unseen, z.threshold, weighting=z.weighting)
        xs.append(x.cpu())
        ys.append(y.cpu())
        ws.append(w.cpu())
    x, y, w = torch.cat(xs), torch.cat(ys), torch.cat(ws)
    return pseudo_pools(
        x, y, w, data.unseen_ids, min_count=z.min_pseudo_per_class, max_count=z.max_pseudo_per_class, rng=rng
    )


# --------------------------------------------------------------------------------------------- generator
def retrain_generator(
    cfg: ExperimentConfig,
    model: DeepLabV3Plus,
    gen: GMMNGenerator,
    emb: torch.Tensor,
    data: ZeroShotData,
    pools: dict[int, tuple[torch.Tensor, torch.Tensor]],
    rng: torch.Generator,
    progress: bool,
) -> list[float]:
    """Step (b): seen-class MMD (as ZS3Net) + ``pseudo_weight`` x ZS-MMD on pseudo-features, per Adam step.

    As ZS3Net's stage 2: one step per (training image, seen class present), ``pixels_per_class`` real pixels
    drawn with replacement. Each step also draws ``pixels_per_class`` pseudo-features of the next unseen class
    in turn (without replacement when the pool is large enough) and adds the confidence-weighted MMD between
    them and as many generated features of that class.

    Returns:
        the mean total loss of each epoch.
    """
    g, z = cfg.generator, cfg.zs_mmd
    device = torch.device(cfg.device)
    n = g.pixels_per_class
    loader = make_loader(
        data.train, cfg.data.batch_size, shuffle=True, workers=cfg.data.num_workers, seed=cfg.seed + 11
    )
    opt = torch.optim.Adam(gen.parameters(), lr=z.generator_lr if z.generator_lr is not None else g.lr)
    seen_set = set(data.seen_ids)
    emb = emb.to(device)
    turn = sorted(pools)
    pools = {c: (x.to(device), w.to(device)) for c, (x, w) in pools.items()}
    history, step = [], 0
    for epoch in range(z.generator_epochs):
        gen.train()
        total, count = 0.0, 0
        desc = f"zs-mmd generator {epoch + 1}/{z.generator_epochs}"
        for feats, ys in feature_batches(model, loader, device, desc=desc, progress=progress):
            for c, real in seen_pixel_sets(feats, ys, seen_set, n, rng):
                if turn:
                    u = turn[step % len(turn)]
                    px, pw = draw_pseudo(*pools[u], n, rng)
                    loss = zs_mmd_step(
                        gen, opt, emb[c], real, emb[u], px, pw, sigmas=g.sigmas, pseudo_weight=z.pseudo_weight
                    )
                else:
                    loss = generator_step(gen, opt, emb[c], real, sigmas=g.sigmas)
                total += loss
                count += 1
                step += 1
        history.append(total / max(count, 1))
        _log(f"[zs-mmd generator] epoch {epoch + 1}/{z.generator_epochs} loss {history[-1]:.4f}")
    return history


# --------------------------------------------------------------------------------------------- driver
def _check(cfg: ExperimentConfig) -> None:
    z = cfg.zs_mmd
    if cfg.graph.enabled:
        raise ZeroSegError("method zs_mmd: graph.enabled=true (ZS3Net-GC) is not supported; set graph.enabled=false")
    if z.rounds < 1:
        raise ZeroSegError(f"zs_mmd.rounds={z.rounds}: need at least 1 round")
    if not 0.0 <= z.threshold < 1.0:
        raise ZeroSegError(f"zs_mmd.threshold={z.threshold}: must be in [0, 1)")
    if z.max_pseudo_per_class < 1 or z.min_pseudo_per_class < 1:
        raise ZeroSegError("zs_mmd.max_pseudo_per_class and zs_mmd.min_pseudo_per_class must be >= 1")


def train(cfg: ExperimentConfig, *, progress: bool = True, allow_changed: bool = False) -> RunResult:
    """ZS3Net (round 0), then ``zs_mmd.rounds`` rounds of pseudo-features -> generator -> classifier.

    Resumable: ZS3Net's stages resume as in :func:`zeroseg.methods.zs3net.train`; every finished round has a
    checkpoint ``<run>/zs_mmd_round{r}`` and is skipped on a re-run.
    """
    _check(cfg)
    # Round 0 is plain ZS3Net; ZS5Net self-training is a different method and stays off.
    cfg = dataclasses.replace(cfg, selftrain=dataclasses.replace(cfg.selftrain, enabled=False))
    with start_run(cfg, progress=progress, allow_changed=allow_changed) as run:
        zs3net.run_stages(run)
        return _rounds(run)


def _rounds(run: Run) -> RunResult:
    """Rounds 1..``zs_mmd.rounds`` after ZS3Net's stages, in the same run."""
    cfg, progress, device = run.cfg, run.progress, run.device
    z = cfg.zs_mmd
    data = run.data()
    emb = class_embeddings(cfg.text.encoder, data.class_names)
    model = build_segmenter(cfg, len(data.class_names)).to(device)
    gen = build_generator(cfg, emb.shape[1], model.feature_dim).to(device)
    transductive = z.source != "train" or cfg.data.unseen_policy != "drop"

    rounds = [round_name(r) for r in range(1, z.rounds + 1)]
    last_done, _ = run.todo(rounds)
    start = rounds.index(last_done) + 1 if last_done else 0
    if start:
        _log(f"[zs-mmd] rounds 1..{start} complete, skipping")
    tensors, _ = load_checkpoint(run.dir / round_name(start))
    model.load_state_dict(unprefixed(tensors, "segmenter."))
    gen.load_state_dict(unprefixed(tensors, "generator."))
    for r in range(start + 1, z.rounds + 1):
        # Every round seeds from (seed, round) alone, so a resumed round reproduces an uninterrupted one.
        seed_everything(cfg.seed * 1000 + r)
        rng = torch.Generator().manual_seed(cfg.seed * 1000 + r)
        _log(f"[zs-mmd] round {r}/{z.rounds}")
        pools = collect_pseudo_features(cfg, model, data, rng, progress)
        counts = {data.class_names[c]: int(pools[c][0].shape[0]) if c in pools else 0 for c in data.unseen_ids}
        _log(f"[zs-mmd] round {r}: pseudo-features per unseen class {counts}")
        if z.reset_generator:
            gen = build_generator(cfg, emb.shape[1], model.feature_dim).to(device)
        history = retrain_generator(cfg, model, gen, emb, data, pools, rng, progress)
        train_classifier(cfg, model, gen, emb, data, progress)
        broadcast_state(model, gen)
        bank_x, bank_y = feature_bank(model, data, cfg)
        metrics = evaluate_segmenter(cfg, model, data, progress)
        tensors = {
            **prefixed(model.state_dict(), "segmenter."),
            **prefixed(gen.state_dict(), "generator."),
            "embeddings": emb,
            "bank.features": bank_x,
            "bank.labels": bank_y,
        }
        meta = checkpoint_meta(
            cfg,
            data,
            STAGE,
            emb,
            feature_dim=model.feature_dim,
            method="zs_mmd",
            variant="zs_mmd",
            round=r,
            transductive=transductive,
            pseudo_source=z.source,
            pseudo_counts=counts,
        )
        run.finish_stage(round_name(r), tensors, meta, {**metrics, "pseudo_counts": counts, "generator_loss": history})
    return run.result(round_name(max(start, z.rounds)))
