"""ZS3Net and ZS5Net (Bucher, Vu, Cord, Pérez: "Zero-Shot Semantic Segmentation", NeurIPS 2019).

The whole pipeline, top to bottom, as :func:`train` runs it:

1. **segmenter** -- DeepLabv3+ trained with cross-entropy on seen classes only. Training images that contain
   unseen pixels are dropped (the official rule; ``data.unseen_policy``).
2. **generator** -- a GMMN maps [class embedding ; noise] to 256-d pixel features. It is trained with the
   multi-bandwidth Gaussian-kernel MMD between generated and real features of the *seen* classes present in
   each batch (real pixels sampled per class and image), the segmenter frozen.
3. **classifier** -- the final 1x1 classifier is re-initialised and trained on frozen real seen features plus
   generated unseen features. Two protocols, named in every report:

   - ``strict`` (default): no unseen pixel or mask of any training image is used. Each batch's generated
     unseen features are mixed with its real seen features, as many per unseen class as the mean count of a
     seen class in that batch (a uniform class prior).
   - ``official``: as valeoai/ZS3 does, every training image is used; an image that contains unseen pixels
     has the features of *all* its labelled pixels replaced by generated ones conditioned on their
     ground-truth classes (which uses unseen masks; valeoai/ZS3 issue 10), and unseen classes are weighted
     by ``classifier.unseen_weight`` (100 officially).

   With ``graph.enabled`` (**ZS3Net-GC**, for complex scenes) a stage **graph** runs before it: a 2-layer GCN
   generator learns, per seen image, to produce every segment's feature from the graph of same-label
   segments (nodes: [class embedding ; noise], edges: touching segments), with the same MMD loss; the
   classifier then also learns from graph-node features, weighted by ``graph.weight`` (0.1 officially).

4. **selftrain** (ZS5Net, optional) -- the ZS3Net model labels the training images that stage 1 dropped; for
   each unseen class the top ``p`` % most confident pixels predicted as that class become pseudo-labels, and
   the whole network is fine-tuned on seen ground truth plus these pseudo-labels. This is *transductive*:
   it reads (unlabelled) training images that contain the unseen classes; reports say so.

Every stage ends in a checkpoint (``<run>/<stage>.safetensors`` + ``.json``); a re-run resumes after the last
complete stage, and the segmenter stage also resumes from its last finished epoch.

The pieces that ZS-MMD shares (feature sampling, the generator step, the classifier's class weights, batches
and fit, the refit samples of :meth:`ZS3Predictor.set_classes`, the top-p % pseudo-label rule) are in
:mod:`zeroseg.generative`; the stage functions here run them with the config's loaders and seeds.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import ConcatDataset
from tqdm import tqdm

from zeroseg.config import ExperimentConfig, to_dict
from zeroseg.data.io import Sample, SegmentationDataset, read_label_png
from zeroseg.data.zero_shot import IGNORE, ZeroShotData, data_train_transform
from zeroseg.engine.cache import TensorCache, cache_key, file_digest
from zeroseg.engine.cache import cache_dir as engine_cache_dir
from zeroseg.engine.checkpoint import (
    checkpoint_exists,
    checkpoint_path,
    load_checkpoint,
    load_into,
    load_training_state,
    prefixed,
    require,
    save_training_state,
    unprefixed,
)
from zeroseg.engine.distributed import (
    ShardSampler,
    barrier,
    broadcast_state,
    is_main,
    maybe_sync_batchnorm,
    world_size,
)
from zeroseg.engine.evaluator import evaluate_predictor
from zeroseg.engine.loaders import make_loader, prepare_epoch, set_dataset_epoch, training_loader
from zeroseg.engine.run import Run, RunResult, join, log, prepare_data, set_rng_state, start_run
from zeroseg.engine.train import check_engine_config, parallel, poly_lambda, train_one_epoch
from zeroseg.errors import ZeroSegError
from zeroseg.generative import (
    class_weights,
    classifier_criterion,
    feature_bank,
    feature_batches,
    fit_linear_classifier,
    frozen_features,
    full_batch_sgd,
    generator_step,
    labels_at,
    official_classifier_loss,
    official_classifier_optimizer,
    official_feature_maps,
    official_generator_step,
    official_pixel_sets,
    official_poly_lr,
    refit_samples,
    seen_pixel_sets,
    solve_linear_classifier,
    strict_batch,
    top_percent_labels,
)
from zeroseg.methods.predict import vocabulary
from zeroseg.modules.deeplab import DeepLabV3Plus
from zeroseg.modules.gcn import GCNGenerator, SegmentGraph, build_segment_graph, pool_node_features
from zeroseg.modules.gmmn import GMMNGenerator
from zeroseg.modules.mmd import mmd_loss
from zeroseg.text import class_embeddings as text_class_embeddings

STAGES = ("segmenter", "generator", "graph", "classifier", "selftrain")
#: :meth:`ZS3Predictor.set_classes` solvers: the full-batch path of the SGD run's steps (default), the optimum of
#: its objective, and the minibatch SGD run itself (docs/benchmarks.md, "Refit" compares them).
REFIT_SOLVERS = ("gd", "lbfgs", "sgd")
#: The refit solve stops when no gradient entry of the objective exceeds this.
REFIT_TOLERANCE = 1e-6
#: The refit cache's folder name under zeroseg's cache root (:func:`zeroseg.engine.cache.cache_dir`).
REFIT_CACHE = "refit"
#: The stages whose checkpoints :class:`ZS3Predictor` serves (ZS3Net, ZS5Net); ZS-MMD's rounds reuse it.
FINAL_STAGES = ("classifier", "selftrain")
_log = log


# --------------------------------------------------------------------------------------------- helpers
def class_embeddings(encoder_spec: str, class_names: tuple[str, ...]) -> torch.Tensor:
    """(C, E) embeddings of the class names (dataset spellings turned into words first)."""
    return text_class_embeddings(encoder_spec, class_names)


def build_segmenter(cfg: ExperimentConfig, num_classes: int) -> DeepLabV3Plus:
    """DeepLabv3+ of ``cfg.segmenter``, its backbone initialised from ``segmenter.pretrained`` when set."""
    return DeepLabV3Plus(**cfg.segmenter.model_kwargs(num_classes), pretrained_backbone=cfg.segmenter.pretrained)


def build_generator(cfg: ExperimentConfig, embed_dim: int, feature_dim: int) -> GMMNGenerator:
    """The GMMN of ``cfg.generator`` from ``embed_dim``-d class embeddings to ``feature_dim``-d pixel features."""
    return GMMNGenerator(**cfg.generator.model_kwargs(embed_dim, feature_dim))


# --------------------------------------------------------------------------------------------- stages
def train_segmenter(
    cfg: ExperimentConfig, model: DeepLabV3Plus, data: ZeroShotData, run_dir: Path, progress: bool
) -> None:
    """Stage 1: supervised training on seen classes, resumable per epoch (``segmenter_last``).

    ``cfg.engine`` applies: bf16 autocast, gradient accumulation, SyncBatchNorm under torchrun (the model's
    BatchNorm layers are converted in place; their state-dict keys do not change).
    """
    s = cfg.segmenter
    device = torch.device(cfg.device)
    check_engine_config(cfg.engine, batch_size=cfg.data.batch_size, world=world_size())
    model = maybe_sync_batchnorm(model, cfg.engine.sync_bn)
    loader = training_loader(data.train, cfg.data, seed=cfg.seed)
    optimizer = torch.optim.SGD(
        model.parameter_groups(s.lr, head_lr_mult=s.head_lr_mult),
        lr=s.lr,
        momentum=s.momentum,
        weight_decay=s.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_lambda(s.epochs * len(loader), s.poly_power))
    criterion = nn.CrossEntropyLoss(ignore_index=IGNORE)
    start = 0
    last = run_dir / "segmenter_last"
    if checkpoint_exists(last):
        meta, rng_state = load_training_state(last, model, optimizer, scheduler)
        start = meta["epoch"]
        torch.set_rng_state(rng_state)
        _log(f"[segmenter] resuming after epoch {start}/{s.epochs}")
    net = parallel(model)
    for epoch in range(start, s.epochs):
        loss = train_one_epoch(
            net,
            prepare_epoch(loader, cfg.seed, epoch),
            optimizer,
            scheduler,
            criterion=criterion,
            device=device,
            desc=f"segmenter {epoch + 1}/{s.epochs}",
            progress=progress,
            amp=cfg.engine.amp,
            grad_accum=cfg.engine.grad_accum,
            batch_average=s.batch_average,
        )
        _log(f"[segmenter] epoch {epoch + 1}/{s.epochs} loss {loss:.4f}")
        if is_main():
            save_training_state(last, model, optimizer, scheduler, {"epoch": epoch + 1})
    set_dataset_epoch(data.train, 0)  # later stages read data.train as a fresh (or resumed) run does


def train_generator(
    cfg: ExperimentConfig,
    model: DeepLabV3Plus,
    gen: GMMNGenerator,
    emb: torch.Tensor,
    data: ZeroShotData,
    progress: bool,
) -> list[float]:
    """Stage 2: GMMN trained with MMD against real features of the seen classes in each batch.

    ``strict``: ``pixels_per_class`` real pixels per (image, seen class), as many fresh fakes. ``official``:
    one fake per real pixel of the class and the same index draw on both sides
    (:func:`~zeroseg.generative.official_pixel_sets`). Features in ``classifier.features`` mode.
    """
    g = cfg.generator
    official = cfg.classifier.protocol == "official"
    unseen_set = set(data.unseen_ids)
    device = torch.device(cfg.device)
    rng = torch.Generator().manual_seed(cfg.seed + 1)
    loader = make_loader(data.train, cfg.data.batch_size, shuffle=True, workers=cfg.data.num_workers, seed=cfg.seed + 1)
    opt = torch.optim.Adam(gen.parameters(), lr=g.lr)
    seen_set = set(data.seen_ids)
    emb = emb.to(device)
    history = []
    for epoch in range(g.epochs):
        gen.train()
        total, n = 0.0, 0
        for feats, ys in feature_batches(
            model,
            loader,
            device,
            desc=f"generator {epoch + 1}/{g.epochs}",
            progress=progress,
            mode=cfg.classifier.features,
        ):
            if official:
                for c, real, idx in official_pixel_sets(feats, ys, seen_set, unseen_set, g.pixels_per_class, rng):
                    total += official_generator_step(gen, opt, emb[c], real, idx, sigmas=g.sigmas)[0]
                    n += 1
                continue
            for c, real in seen_pixel_sets(feats, ys, seen_set, g.pixels_per_class, rng):
                total += generator_step(gen, opt, emb[c], real, sigmas=g.sigmas)
                n += 1
        history.append(total / max(n, 1))
        _log(f"[generator] epoch {epoch + 1}/{g.epochs} mmd {history[-1]:.4f}")
    return history


def segment_graph(labels: torch.Tensor, *, keep_ignore: bool = False) -> SegmentGraph:
    """The ZS3Net-GC graph of one label map at feature resolution: 8-connected same-label segments, edges
    between touching segments, 0/1 adjacency without self loops or normalisation.

    Args:
        keep_ignore: ``False`` (strict): ``IGNORE`` pixels belong to no node. ``True`` (official,
            train_context_GMMN_GCNcontext.py ``construct_adj_mat``): every pixel starts a node, so ``IGNORE``
            segments are nodes (labelled ``IGNORE``) that touch, and so connect, their neighbours.
    """
    return build_segment_graph(
        labels, ignore_index=None if keep_ignore else IGNORE, connectivity=8, self_loops=False, normalization="none"
    )


def node_embeddings(emb: torch.Tensor, node_labels: torch.Tensor) -> torch.Tensor:
    """(K, E) embeddings of graph nodes; an ``IGNORE`` node takes class 0's, as the official dataset gives
    255 pixels the embedding of label 0 (``get_embeddings`` in dataloaders/datasets/base.py)."""
    return emb[torch.where(node_labels == IGNORE, torch.zeros_like(node_labels), node_labels)]


def train_graph_generator(
    cfg: ExperimentConfig,
    model: DeepLabV3Plus,
    gcn: GCNGenerator,
    emb: torch.Tensor,
    data: ZeroShotData,
    progress: bool,
) -> list[float]:
    """Stage GC (ZS3Net-GC): the GCN generator learns to produce every segment's feature of a seen image.

    As valeoai/ZS3: one Adam step per training image (seen-only images), MMD between the generated node
    features and the real feature at each segment's first pixel, over all nodes of the image at once.
    """
    g = cfg.generator
    device = torch.device(cfg.device)
    keep_ignore = cfg.classifier.protocol == "official"
    loader = make_loader(data.train, cfg.data.batch_size, shuffle=True, workers=cfg.data.num_workers, seed=cfg.seed + 5)
    opt = torch.optim.Adam(gcn.parameters(), lr=g.lr)
    emb = emb.to(device)
    history = []
    for epoch in range(g.epochs):
        gcn.train()
        total, n = 0.0, 0
        for feats, ys in feature_batches(
            model, loader, device, desc=f"graph {epoch + 1}/{g.epochs}", progress=progress, mode=cfg.classifier.features
        ):
            for b in range(feats.shape[0]):
                graph = segment_graph(ys[b].cpu(), keep_ignore=keep_ignore)
                if graph.num_nodes < 2:  # the official code skips single-segment images
                    continue
                target = pool_node_features(feats[b], graph.node_masks.to(device), reduce="first")
                fake = gcn(node_embeddings(emb, graph.node_labels.to(device)), graph.adjacency.to(device))
                loss = mmd_loss(fake, target, sigmas=g.sigmas)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item()
                n += 1
        history.append(total / max(n, 1))
        _log(f"[graph] epoch {epoch + 1}/{g.epochs} mmd {history[-1]:.4f}")
    return history


@torch.no_grad()
def graph_node_samples(
    feats: torch.Tensor,
    ys: torch.Tensor,
    gcn: GCNGenerator,
    emb: torch.Tensor,
    unseen: torch.Tensor,
    *,
    strict: bool,
    rng: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Node features and labels for the classifier's graph-context term (ZS3Net-GC).

    ``official``: an image without unseen pixels gives its real node features; an image with unseen pixels
    gives GCN-generated features for all its nodes, from the ground-truth graph. ``strict``: every (seen-only)
    image gives its real node features, plus a GCN-generated copy of its graph in which each node is relabelled
    to a random unseen class with probability 1/2 -- unseen classes in real contexts, with no unseen mask used.
    """
    if not strict:
        return official_graph_nodes(feats, ys, gcn, emb, unseen)
    xs, ys_out = [], []
    for b in range(feats.shape[0]):
        graph = segment_graph(ys[b].cpu())
        if graph.num_nodes < 2:
            continue
        node_labels = graph.node_labels.to(feats.device)
        xs.append(pool_node_features(feats[b], graph.node_masks.to(feats.device), reduce="first"))
        ys_out.append(node_labels)
        swap = torch.rand(graph.num_nodes, generator=rng) < 0.5
        picks = unseen.cpu()[torch.randint(len(unseen), (graph.num_nodes,), generator=rng)]
        node_labels = torch.where(swap.to(feats.device), picks.to(feats.device), node_labels)
        xs.append(gcn(emb[node_labels], graph.adjacency.to(feats.device)))
        ys_out.append(node_labels)
    if not xs:
        return feats.new_zeros(0, feats.shape[1]), ys.new_zeros(0)
    return torch.cat(xs), torch.cat(ys_out)


def official_graph_nodes(
    feats: torch.Tensor,
    ys: torch.Tensor,
    gcn: GCNGenerator,
    emb: torch.Tensor,
    unseen: torch.Tensor,
    *,
    opt: torch.optim.Optimizer | None = None,
    sigmas: tuple[float, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Graph-node features and labels of the official ZS3Net-GC classifier batch
    (train_context_GMMN_GCNcontext.py): per image whose graph (every segment a node, ``IGNORE`` ones included)
    has at least two nodes, the GCN generates every node's feature; with ``opt`` (online training) an image
    without unseen pixels then takes one step on the MMD between them and the real first-pixel features. The
    image contributes its real node features when it has no unseen pixel, else the generated ones.

    Args:
        feats: (B, F, h, w) features; ys: (B, h, w) full ground truth at feature resolution.
        gcn: the graph generator; emb: (C, E) class embeddings; unseen: (U,) unseen ids on ``feats``' device.
        opt: the GCN's optimiser for online steps; None: no step (no gradient).
        sigmas: MMD bandwidths of the online step.

    Returns:
        x: (K, F) node features; y: (K,) node labels (``IGNORE`` nodes included; the loss ignores them).
    """
    xs, ys_out = [], []
    for b in range(feats.shape[0]):
        graph = segment_graph(ys[b].cpu(), keep_ignore=True)
        if graph.num_nodes < 2:
            continue
        node_labels = graph.node_labels.to(feats.device)
        has_unseen = bool(torch.isin(node_labels, unseen).any())
        real = pool_node_features(feats[b], graph.node_masks.to(feats.device), reduce="first")
        with torch.set_grad_enabled(opt is not None and not has_unseen):
            fake = gcn(node_embeddings(emb, node_labels), graph.adjacency.to(feats.device))
        if opt is not None and not has_unseen:
            loss = mmd_loss(fake, real, sigmas=sigmas)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        xs.append(fake.detach() if has_unseen else real)
        ys_out.append(node_labels)
    if not xs:
        return feats.new_zeros(0, feats.shape[1]), ys.new_zeros(0)
    return torch.cat(xs), torch.cat(ys_out)


def unseen_miou(metrics: dict) -> float:
    """The validation unseen mIoU of :func:`evaluate_segmenter`'s metrics (the official selection score)."""
    return float(metrics["unseen_miou"])


def train_classifier_official(
    cfg: ExperimentConfig,
    model: DeepLabV3Plus,
    gen: GMMNGenerator,
    emb: torch.Tensor,
    data: ZeroShotData,
    progress: bool,
    gcn: GCNGenerator | None = None,
) -> list[float]:
    """Stage 3 under ``classifier.protocol: official``, as train_pascal_GMMN.py / train_context_GMMN_GCNcontext.py.

    Every training image with its full ground truth; per batch (1-image batches skipped, as the official
    ``len(sample["image"]) > 1``): real features in ``classifier.features`` mode, the classifier input of
    :func:`~zeroseg.generative.official_feature_maps`, the loss of
    :func:`~zeroseg.generative.official_classifier_loss` (+ ``graph.weight`` x the node cross-entropy for
    ZS3Net-GC), SGD at ``10 * classifier.lr`` under a per-iteration poly decay. With
    ``classifier.online_generator`` the generator (and GCN) start fresh and take their steps inside this
    loop, before each classifier step; otherwise the trained generator only generates. With
    ``classifier.select_on_val`` the state (segmenter incl. BatchNorm statistics, generators) of the epoch with
    the best validation unseen mIoU is kept.

    Returns:
        the mean loss of each epoch.
    """
    c, g = cfg.classifier, cfg.generator
    device = torch.device(cfg.device)
    rng = torch.Generator().manual_seed(cfg.seed + 3)
    num_classes = len(data.class_names)
    model.reset_classifier(num_classes)
    model.classifier.to(device)
    emb = emb.to(device)
    seen_set = set(data.seen_ids)
    unseen = torch.tensor(data.unseen_ids, dtype=torch.long, device=device)
    weight = class_weights(num_classes, data.unseen_ids, c.unseen_weight).to(device)
    node_criterion = classifier_criterion(weight)
    loader = make_loader(
        data.train_full, cfg.data.batch_size, shuffle=True, workers=cfg.data.num_workers, seed=cfg.seed + 3
    )
    iters = len(loader)
    opt = official_classifier_optimizer(model.classifier, c.lr)
    gen_opt = gcn_opt = None
    if c.online_generator:
        gen.load_state_dict(build_generator(cfg, emb.shape[1], model.feature_dim).to(device).state_dict())
        gen_opt = torch.optim.Adam(gen.parameters(), lr=g.lr)
        if gcn is not None:
            fresh = GCNGenerator(**g.model_kwargs(emb.shape[1], model.feature_dim)).to(device)
            gcn.load_state_dict(fresh.state_dict())
            gcn_opt = torch.optim.Adam(gcn.parameters(), lr=g.lr)
    # The official scripts never switch the generators to eval mode: dropout stays on as a noise source.
    gen.train()
    if gcn is not None:
        gcn.train()

    def make_fake(cls: int, real: torch.Tensor, has_unseen: bool) -> torch.Tensor | None:
        if gen_opt is not None and cls in seen_set and not has_unseen:
            idx = torch.randint(real.shape[0], (g.pixels_per_class,), generator=rng).to(device)
            return official_generator_step(gen, gen_opt, emb[cls], real, idx, sigmas=g.sigmas)[1]
        if gen_opt is None and not has_unseen:
            return None  # a trained generator's fakes of a seen-only image would be discarded
        with torch.no_grad():
            return gen(emb[cls].expand(real.shape[0], -1))

    history, best_score, best_state = [], float("-inf"), None
    for epoch in range(c.epochs):
        total, n = 0.0, 0
        bar = tqdm(loader, desc=f"classifier {epoch + 1}/{c.epochs}", leave=False, disable=not progress)
        for i, (images, labels, _) in enumerate(bar):
            if images.shape[0] < 2:
                continue
            official_poly_lr(opt, c.lr, epoch * iters + i, c.epochs * iters)
            images, labels = images.to(device), labels.to(device)
            feats = frozen_features(model, images, mode=c.features)
            small = labels_at(labels, feats.shape[-2:])
            maps = official_feature_maps(feats, small, unseen, make_fake)
            loss = official_classifier_loss(model.classifier, maps.detach(), labels, weight)
            if gcn is not None:
                x, y = official_graph_nodes(feats, small, gcn, emb, unseen, opt=gcn_opt, sigmas=g.sigmas)
                if bool((y != IGNORE).any()):
                    logits = model.classifier(x[:, :, None, None])[:, :, 0, 0]
                    loss = loss + cfg.graph.weight * node_criterion(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
            n += 1
        history.append(total / max(n, 1))
        _log(f"[classifier] epoch {epoch + 1}/{c.epochs} loss {history[-1]:.4f}")
        if c.select_on_val:
            score = unseen_miou(evaluate_segmenter(cfg, model, data, progress))
            _log(f"[classifier] epoch {epoch + 1}/{c.epochs} validation unseen mIoU {score:.2f}")
            if best_state is None or score > best_score:
                best_score = score
                best_state = [{k: v.clone() for k, v in m.state_dict().items()} for m in (model, gen, gcn) if m]
    if best_state is not None:
        for m, state in zip([m for m in (model, gen, gcn) if m], best_state, strict=True):
            m.load_state_dict(state)
    return history


def train_classifier(
    cfg: ExperimentConfig,
    model: DeepLabV3Plus,
    gen: GMMNGenerator,
    emb: torch.Tensor,
    data: ZeroShotData,
    progress: bool,
    gcn: GCNGenerator | None = None,
) -> None:
    """Stage 3: re-initialise the 1x1 classifier, train it on real seen + generated unseen features.

    ``official`` runs :func:`train_classifier_official`. ``strict``: :func:`~zeroseg.generative.strict_batch`
    over the seen-only images, fit by :func:`~zeroseg.generative.fit_linear_classifier` at ``classifier.lr``.
    The loss weights unseen classes by ``classifier.unseen_weight`` (:func:`~zeroseg.generative.class_weights`).
    With ``gcn`` (ZS3Net-GC) each batch also carries graph-node features (see :func:`graph_node_samples`),
    weighted by ``graph.weight``.
    """
    c = cfg.classifier
    if c.protocol == "official":
        train_classifier_official(cfg, model, gen, emb, data, progress, gcn=gcn)
        return
    device = torch.device(cfg.device)
    rng = torch.Generator().manual_seed(cfg.seed + 3)
    num_classes = len(data.class_names)
    model.reset_classifier(num_classes)
    model.classifier.to(device)
    # The official scripts never switch the generator to eval mode: dropout stays on as a noise source.
    gen.train()
    emb = emb.to(device)
    seen = torch.tensor(data.seen_ids)
    unseen = torch.tensor(data.unseen_ids, dtype=torch.long)
    weight = class_weights(num_classes, data.unseen_ids, c.unseen_weight)
    per = cfg.generator.pixels_per_class
    if gcn is not None:
        gcn.train()  # dropout on while generating, as for the GMMN
    loader = make_loader(
        data.train_plain, cfg.data.batch_size, shuffle=True, workers=cfg.data.num_workers, seed=cfg.seed + 3
    )

    def batches():
        for f, y_small in feature_batches(model, loader, device, mode=c.features):
            batch = strict_batch(f, y_small, gen, emb, seen, unseen, per, rng)
            if batch is None:
                continue
            if gcn is None:
                yield batch
            else:
                nodes = graph_node_samples(f, y_small, gcn, emb, unseen.to(device), strict=True, rng=rng)
                yield (*batch, *nodes)

    fit_linear_classifier(
        model.classifier,
        batches,
        epochs=c.epochs,
        lr=c.lr,
        class_weight=weight.to(device),
        desc="classifier",
        progress=progress,
        aux_weight=cfg.graph.weight if gcn is not None else 0.0,
    )


@torch.no_grad()
def make_pseudo_labels(
    cfg: ExperimentConfig, model: DeepLabV3Plus, data: ZeroShotData, out_dir: Path, progress: bool
) -> list[str]:
    """ZS5Net: label the unlabelled training images with the top-p% most confident unseen predictions.

    The threshold of each unseen class is the (100 - p)-th percentile of the confidences of all pixels
    predicted as that class over the unlabelled pool (:func:`~zeroseg.generative.top_percent_labels`); pixels
    below it, and all other pixels, are 255 (under the ``official`` protocol the seen ground truth of those
    images is kept as well).
    """
    if data.unlabelled is None:
        raise ZeroSegError("self-training needs the images dropped by unseen_policy=drop; none were dropped")
    device = torch.device(cfg.device)
    model.eval()
    loader = make_loader(data.unlabelled, cfg.data.eval_batch_size, shuffle=False, workers=cfg.data.num_workers, seed=0)
    preds, confs, stems, bases = [], [], [], []
    for images, labels, names in tqdm(loader, desc="pseudo-labels", leave=False, disable=not progress):
        prob = model(images.to(device)).softmax(1).cpu()
        conf, pred = prob.max(1)
        preds.append(pred)
        confs.append(conf)
        stems.extend(names)
        bases.append(labels if cfg.classifier.protocol == "official" else torch.full_like(labels, IGNORE))
    pred, conf, base = torch.cat(preds), torch.cat(confs), torch.cat(bases)
    pseudo = top_percent_labels(pred, conf, base, data.unseen_ids, cfg.selftrain.top_percent)
    if is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
        for stem, lab in zip(stems, pseudo, strict=True):
            Image.fromarray(lab.numpy().astype(np.uint8)).save(out_dir / f"{stem}.png")
    barrier()
    return stems


def self_train(cfg: ExperimentConfig, model: DeepLabV3Plus, data: ZeroShotData, run_dir: Path, progress: bool) -> None:
    """Stage 4 (ZS5Net): fine-tune the whole network on seen ground truth + unseen pseudo-labels.

    ``cfg.engine`` applies as in :func:`train_segmenter`.
    """
    st = cfg.selftrain
    device = torch.device(cfg.device)
    check_engine_config(cfg.engine, batch_size=cfg.data.batch_size, world=world_size())
    aug_seed = cfg.data.augmentation_seed
    pseudo_dir = run_dir / "pseudo_labels"
    stems = make_pseudo_labels(cfg, model, data, pseudo_dir, progress)
    images = {s.stem: s.image_path for s in data.unlabelled.base.samples}
    pseudo = SegmentationDataset(
        [Sample(images[s], pseudo_dir / f"{s}.png") for s in stems],
        read_label_png,
        data.class_names,
        transform=data_train_transform(cfg.data),
        seed=None if aug_seed is None else aug_seed + 1,  # + 1: not the draws of data.train's same indices
        name="pseudo-labels",
    )
    train_set = ConcatDataset([data.train, pseudo])
    loader = training_loader(train_set, cfg.data, seed=cfg.seed + 4)
    model = maybe_sync_batchnorm(model, cfg.engine.sync_bn)
    optimizer = torch.optim.SGD(
        model.parameter_groups(st.lr, head_lr_mult=cfg.segmenter.head_lr_mult),
        lr=st.lr,
        momentum=cfg.segmenter.momentum,
        weight_decay=cfg.segmenter.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, poly_lambda(st.epochs * len(loader), cfg.segmenter.poly_power)
    )
    criterion = nn.CrossEntropyLoss(ignore_index=IGNORE)
    net = parallel(model)
    for epoch in range(st.epochs):
        if isinstance(loader.sampler, ShardSampler):
            loader.sampler.set_epoch(epoch)
        set_dataset_epoch(train_set, epoch)
        loss = train_one_epoch(
            net,
            loader,
            optimizer,
            scheduler,
            criterion=criterion,
            device=device,
            desc=f"selftrain {epoch + 1}/{st.epochs}",
            progress=progress,
            amp=cfg.engine.amp,
            grad_accum=cfg.engine.grad_accum,
            batch_average=cfg.segmenter.batch_average,
        )
        _log(f"[selftrain] epoch {epoch + 1}/{st.epochs} loss {loss:.4f}")
    set_dataset_epoch(train_set, 0)


# --------------------------------------------------------------------------------------------- driver
def checkpoint_meta(
    cfg: ExperimentConfig, data: ZeroShotData, stage: str, emb: torch.Tensor, *, feature_dim: int, **extra: Any
) -> dict:
    """Checkpoint metadata: what the checkpoint is (method, stage, protocol), its classes and encoder, and the
    constructor arguments that rebuild its networks (``DeepLabV3Plus(**meta["segmenter"])``,
    ``GMMNGenerator(**meta["generator"])``)."""
    num_classes = len(data.class_names)
    return {
        "method": "zs3net",
        "variant": "zs5net" if stage == "selftrain" else ("zs3net-gc" if cfg.graph.enabled else "zs3net"),
        "stage": stage,
        "protocol": cfg.classifier.protocol,
        "transductive": stage == "selftrain",
        "graph_context": cfg.graph.enabled,
        "split": data.split.to_json(),
        "class_names": list(data.class_names),
        "seen_ids": list(data.seen_ids),
        "unseen_ids": list(data.unseen_ids),
        "encoder": cfg.text.encoder,
        "embed_dim": int(emb.shape[1]),
        "segmenter": cfg.segmenter.model_kwargs(num_classes),
        "generator": cfg.generator.model_kwargs(int(emb.shape[1]), feature_dim),
        "config": to_dict(cfg),
        **extra,
    }


def evaluate_segmenter(cfg: ExperimentConfig, model: DeepLabV3Plus, data: ZeroShotData, progress: bool) -> dict:
    """Metrics of ``model`` on the validation set (argmax over every class of the split)."""
    model.eval()
    return evaluate_predictor(
        lambda x: model(x).argmax(1), data, cfg.data, device=torch.device(cfg.device), progress=progress
    )


def check_classifier_config(cfg: ExperimentConfig) -> None:
    """``classifier.online_generator`` and ``classifier.select_on_val`` are valeoai/ZS3's schedule; the second
    selects on the unseen classes of the validation set, so neither is allowed with the leakage-free
    ``strict`` protocol.

    Raises:
        ZeroSegError: either set with ``classifier.protocol: strict``.
    """
    c = cfg.classifier
    for key in ("online_generator", "select_on_val"):
        if getattr(c, key) and c.protocol != "official":
            raise ZeroSegError(f"classifier.{key}=true needs classifier.protocol=official (strict is leakage-free)")


def train(cfg: ExperimentConfig, *, progress: bool = True, allow_changed: bool = False) -> RunResult:
    """Run every stage of ZS3Net (and ZS5Net when ``selftrain.enabled``), resuming after the last done.

    A resumed run continues bit for bit as the uninterrupted one: each stage checkpoint carries the random
    states (:func:`~zeroseg.engine.run.rng_state`), restored before the next stage.
    """
    with start_run(cfg, progress=progress, allow_changed=allow_changed) as run:
        return run_stages(run)


def run_stages(run: Run) -> RunResult:
    """The stages of ZS3Net/ZS5Net in an open :class:`~zeroseg.engine.run.Run` (ZS-MMD runs them in its own)."""
    cfg, progress, device = run.cfg, run.progress, run.device
    data = run.data()
    emb = class_embeddings(cfg.text.encoder, data.class_names)
    model = build_segmenter(cfg, len(data.class_names)).to(device)
    gen = build_generator(cfg, emb.shape[1], model.feature_dim).to(device)
    gcn = None
    if cfg.graph.enabled:
        gcn = GCNGenerator(**cfg.generator.model_kwargs(emb.shape[1], model.feature_dim)).to(device)

    def finish(stage: str, history: list[float] | None = None) -> None:
        broadcast_state(model, gen, gcn)
        tensors = {
            **prefixed(model.state_dict(), "segmenter."),
            **prefixed(gen.state_dict(), "generator."),
            "embeddings": emb,
        }
        if gcn is not None:
            tensors.update(prefixed(gcn.state_dict(), "gcn."))
        if stage in ("classifier", "selftrain"):
            bank_x, bank_y = feature_bank(model, data, cfg)
            tensors.update({"bank.features": bank_x, "bank.labels": bank_y})
        if stage in ("generator", "graph"):
            metrics: dict = {"mmd_history": history}
        else:
            metrics = evaluate_segmenter(cfg, model, data, progress)
        run.finish_stage(stage, tensors, checkpoint_meta(cfg, data, stage, emb, feature_dim=model.feature_dim), metrics)

    check_classifier_config(cfg)
    online = cfg.classifier.online_generator  # the generators are trained inside the classifier stage
    skip = {"selftrain": not cfg.selftrain.enabled, "graph": not cfg.graph.enabled or online, "generator": online}
    last_done, todo = run.todo([s for s in STAGES if not skip.get(s, False)])
    if last_done:
        tensors, _ = load_checkpoint(run.dir / last_done)
        model.load_state_dict(unprefixed(tensors, "segmenter."))
        gen.load_state_dict(unprefixed(tensors, "generator."))
        if gcn is not None and any(k.startswith("gcn.") for k in tensors):
            gcn.load_state_dict(unprefixed(tensors, "gcn."))
        set_rng_state(tensors)
        _log(f"[{last_done}] complete checkpoint found, skipping")
    for stage in todo:
        if stage == "segmenter":
            train_segmenter(cfg, model, data, run.dir, progress)
            finish(stage)
        elif stage == "generator":
            finish(stage, train_generator(cfg, model, gen, emb, data, progress))
        elif stage == "graph":
            finish(stage, train_graph_generator(cfg, model, gcn, emb, data, progress))
        elif stage == "classifier":
            train_classifier(cfg, model, gen, emb, data, progress, gcn=gcn)
            finish(stage)
        else:
            self_train(cfg, model, data, run.dir, progress)
            finish(stage)
    return run.result(todo[-1] if todo else (last_done or "segmenter"))


# --------------------------------------------------------------------------------------------- inference
#: Multiply-adds of one pass over the refit samples (N x F x K) up to which the refit runs on one CPU thread.
SMALL_REFIT_MACS = 1 << 26


@contextmanager
def _few_threads_when_small(macs: int) -> Iterator[None]:
    """One intra-op thread for a refit of at most :data:`SMALL_REFIT_MACS` per pass on the CPU, the previous count
    restored after: its matrix products (e.g. 1536 x 256 x 6) are too small to split, and on a shared machine
    waiting for a second busy core made each of its few hundred steps several times slower (docs/benchmarks.md)."""
    n = torch.get_num_threads()
    if n == 1 or macs > SMALL_REFIT_MACS:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class ZS3Predictor:
    """A trained ZS3Net/ZS5Net model loaded from a checkpoint, ready to label images.

    Args:
        checkpoint: path of a ``classifier`` or ``selftrain`` stage checkpoint.
        device: where to run.
    """

    def __init__(self, checkpoint: str | Path, *, device: str = "cpu") -> None:
        from zeroseg.methods import checkpoint_method

        checkpoint_method(checkpoint)  # a final checkpoint of ZS3Net, ZS5Net or ZS-MMD, or a one-line error
        tensors, meta = load_checkpoint(checkpoint)
        require(meta, ("class_names", "seen_ids", "encoder", "segmenter"), checkpoint)
        self.meta, self.device = meta, torch.device(device)
        self.class_names: tuple[str, ...] = tuple(meta["class_names"])
        try:
            self.model = DeepLabV3Plus(**meta["segmenter"])
            # An imported official segmenter without its generator file has neither (zeroseg.weights.zs3).
            self.generator: GMMNGenerator | None = None
            if meta.get("generator") is not None:
                self.generator = GMMNGenerator(**meta["generator"])
        except TypeError as e:
            raise ZeroSegError(f"{checkpoint_path(checkpoint)}: unusable model metadata ({e})") from None
        load_into(self.model, unprefixed(tensors, "segmenter."), checkpoint, "the segmenter")
        self.model.to(self.device).eval()
        if self.generator is not None:
            load_into(self.generator, unprefixed(tensors, "generator."), checkpoint, "the generator")
            self.generator.to(self.device).eval()
        self.bank_x = tensors.get("bank.features")
        self.bank_y = tensors.get("bank.labels")
        self.seen_names = [self.class_names[i] for i in meta["seen_ids"]]
        self.checkpoint = checkpoint_path(checkpoint)
        c = self.model.classifier
        self._trained_classifier = (c.weight.detach().cpu().clone(), c.bias.detach().cpu().clone())

    def set_classes(
        self,
        names: list[str],
        *,
        samples_per_class: int = 256,
        epochs: int = 60,
        seed: int = 0,
        solver: str = "gd",
        cache: bool = True,
        cache_dir: str | Path | None = None,
    ) -> None:
        """Refit the 1x1 classifier for a new class list, without retraining the segmenter.

        Classes that were seen in training use their stored real features; any other name gets features
        from the generator, conditioned on its embedding (:meth:`refit_weights`). ZS5Net checkpoints were
        fine-tuned for their own class list, so only ZS3Net (``classifier`` stage) checkpoints accept a new one.
        The checkpoint's own class list brings its trained classifier back.

        A refit is kept in a bounded cache (:mod:`zeroseg.engine.cache`) keyed by the checkpoint file's content
        hash, the class list, the text encoder, the seed, the solver and its options and the device type, so the
        same call in a later process (another ``zeroseg predict``, a web request) reads it back instead of
        refitting.

        Args:
            names: the new class list.
            samples_per_class: generated features per name that was not seen in training.
            epochs: SGD epochs (``solver="sgd"`` only).
            seed: seeds the generated features (and SGD's initialisation and batches).
            solver: ``"gd"`` (default): the SGD run's own steps (``epochs`` x batches of 256, lr 0.01, momentum
                0.9, weight decay 5e-4, same initialisation) with the full-batch gradient
                (:func:`~zeroseg.generative.full_batch_sgd`): the expected path of the minibatch run, which it
                matches on 99.9 % of the benchmark's pixels; ``"lbfgs"``: the exact optimum of the same objective
                (:func:`~zeroseg.generative.solve_linear_classifier`), which the 60-epoch run has not reached (it
                labels 82-95 % of the pixels alike and lowers unseen-class IoU); ``"sgd"``: the minibatch run
                itself (:func:`~zeroseg.generative.fit_linear_classifier`), kept for comparison.
            cache: read and write the refit cache.
            cache_dir: the cache's directory (default :data:`REFIT_CACHE` under ``$ZEROSEG_CACHE`` or
                ``~/.cache/zeroseg``).

        Raises:
            ZeroSegError: a ZS5Net checkpoint, a checkpoint without generator/bank/encoder, or an unknown solver.
        """
        names = vocabulary(names)
        if tuple(names) == self.class_names:
            return
        if tuple(names) == tuple(self.meta["class_names"]):
            self._install(*self._trained_classifier, names)
            return
        if self.meta["stage"] == "selftrain":
            raise ZeroSegError(
                "a ZS5Net (selftrain) checkpoint is fine-tuned for its own classes; "
                "use the run's classifier checkpoint to segment a new class list"
            )
        if self.generator is None or self.bank_x is None or not self.meta.get("encoder"):
            raise ZeroSegError(
                "this checkpoint serves its own classes only (it has no generator, feature bank or text encoder); "
                "import the official generator file with --generator and --encoder to segment other classes"
            )
        if solver not in REFIT_SOLVERS:
            raise ZeroSegError(f"refit solver {solver!r}: unknown (choose one of {', '.join(REFIT_SOLVERS)})")
        options = {"samples_per_class": samples_per_class, "seed": seed, "solver": solver}
        options.update({"tolerance_grad": REFIT_TOLERANCE} if solver == "lbfgs" else {"epochs": epochs})
        store = key = None
        if cache:
            store, key = self._refit_cache(names, options, cache_dir)
        if store is not None and key is not None:
            shape = (len(names), self.model.classifier.in_channels)
            dtype = self.model.classifier.weight.dtype
            hit = store.get(key, {"weight": ((*shape, 1, 1), dtype), "bias": ((shape[0],), dtype)})
            if hit is not None:
                self._install(hit["weight"], hit["bias"], names)
                return
        weight, bias = self.refit_weights(
            names, samples_per_class=samples_per_class, epochs=epochs, seed=seed, solver=solver
        )
        self._install(weight, bias, names)
        if store is not None and key is not None:
            try:
                store.put(key, {"weight": weight, "bias": bias}, {"names": names, **options})
            except OSError as e:  # an unwritable cache costs the next call a refit, nothing else
                _log(f"[refit] cache not written ({e.strerror or e.__class__.__name__}): {store.directory}")

    def refit_weights(
        self, names: list[str], *, samples_per_class: int = 256, epochs: int = 60, seed: int = 0, solver: str = "gd"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Compute (not install, not cache) the refitted classifier of ``names``; see :meth:`set_classes`. The
        predictor keeps serving its current class list.

        Returns:
            weight: (K, F, 1, 1), bias: (K,) on the CPU, for the K names.
        """
        names = vocabulary(names)
        current = self.model.classifier
        n_samples = samples_per_class * len(names) + (0 if self.bank_x is None else self.bank_x.shape[0])
        try:
            with _few_threads_when_small(n_samples * current.in_channels * len(names)):
                return self._refit_weights(names, samples_per_class, epochs, seed, solver)
        finally:
            self._install(current.weight.detach(), current.bias.detach(), self.class_names)

    def _refit_weights(
        self, names: list[str], samples_per_class: int, epochs: int, seed: int, solver: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(seed)
        emb = class_embeddings(self.meta["encoder"], tuple(names)).to(self.device)
        self.generator.train()  # dropout on while generating, as in training (see train_classifier)
        # The bank's labels index the checkpoint's classes (meta), not a class list set by an earlier call.
        x_all, y_all = refit_samples(
            names,
            self.meta["class_names"],
            self.seen_names,
            self.bank_x,
            self.bank_y,
            self.generator,
            emb,
            samples_per_class,
        )
        self.generator.eval()
        self.model.reset_classifier(len(names))
        classifier = self.model.classifier.to(self.device)
        if solver == "gd":
            steps = epochs * -(-x_all.shape[0] // 256)  # the SGD run's step count: 60 epochs of 256-sample batches
            full_batch_sgd(classifier, x_all, y_all, steps=steps, lr=0.01)
        elif solver == "sgd":

            def batches():
                perm = torch.randperm(x_all.shape[0])
                for i in range(0, len(perm), 256):
                    j = perm[i : i + 256]
                    yield x_all[j], y_all[j]

            fit_linear_classifier(
                classifier, batches, epochs=epochs, lr=0.01, class_weight=None, desc="refit", progress=False
            )
        else:
            solve_linear_classifier(classifier, x_all, y_all, tolerance_grad=REFIT_TOLERANCE)
        self.model.eval()
        return classifier.weight.detach().cpu().clone(), classifier.bias.detach().cpu().clone()

    def _install(self, weight: torch.Tensor, bias: torch.Tensor, names: list[str] | tuple[str, ...]) -> None:
        self.model.reset_classifier(len(names))
        with torch.no_grad():
            self.model.classifier.weight.copy_(weight)
            self.model.classifier.bias.copy_(bias)
        self.model.classifier.to(self.device)
        self.model.eval()
        self.class_names = tuple(names)

    def _refit_cache(
        self, names: list[str], options: dict[str, Any], cache_dir: str | Path | None
    ) -> tuple[TensorCache | None, str | None]:
        """The refit cache and the key of this refit, or ``(None, None)`` when the checkpoint cannot be hashed."""
        directory = Path(cache_dir) if cache_dir is not None else engine_cache_dir(REFIT_CACHE)
        try:
            digest = file_digest(self.checkpoint, directory)
        except OSError:
            return None, None
        parts = {
            "kind": "zs3net-refit/1",
            "checkpoint": digest,
            "names": list(names),
            "encoder": self.meta["encoder"],
            "device": self.device.type,
            **options,
        }
        return TensorCache(directory), cache_key(parts)

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Label a batch.

        Args:
            images: (B, 3, H, W) normalised images.

        Returns:
            labels: (B, H, W) indices into ``class_names``; confidence: (B, H, W) softmax maxima.
        """
        prob = self.model(images.to(self.device)).softmax(1)
        conf, labels = prob.max(1)
        return labels.cpu(), conf.cpu()


def evaluate_checkpoint(cfg: ExperimentConfig, checkpoint: str | Path, *, progress: bool = True) -> dict:
    """Metrics of a final checkpoint on ``cfg.data``'s validation set (sharded under torchrun)."""
    cfg = join(cfg)
    predictor = ZS3Predictor(checkpoint, device=cfg.device)
    meta = predictor.meta
    data = prepare_data(cfg.data, progress=progress, train=False)
    if list(data.class_names) != meta["class_names"]:
        raise ZeroSegError(
            f"{checkpoint}: trained for classes {meta['class_names'][:4]}..., config's split has "
            f"{list(data.class_names)[:4]}... (different split or dataset)"
        )
    if list(data.unseen_ids) != list(meta.get("unseen_ids", data.unseen_ids)):
        theirs = [meta["class_names"][i] for i in meta["unseen_ids"]]
        raise ZeroSegError(
            f"{checkpoint}: trained with unseen classes {theirs}, the config's split '{data.split.name}' has "
            f"{[data.class_names[i] for i in data.unseen_ids]}; evaluate with the split it was trained on"
        )
    metrics = evaluate_predictor(
        lambda x: predictor.predict(x)[0], data, cfg.data, device=predictor.device, progress=progress and is_main()
    )
    return {
        "method": meta["method"],
        "variant": meta.get("variant", meta["method"]),
        "stage": meta["stage"],
        "protocol": meta["protocol"],
        "transductive": meta["transductive"],
        "checkpoint": str(checkpoint),
        "split": meta["split"]["name"],
        "world_size": world_size(),
        "metrics": metrics,
    }
