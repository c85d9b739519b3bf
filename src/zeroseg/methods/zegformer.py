"""ZegFormer (Ding, Xue, Xia, Dai: "Decoupling Zero-Shot Semantic Segmentation", CVPR 2022).

The pipeline, top to bottom, as :func:`train` and :class:`ZegFormerPredictor` run it:

1. **Grouping** -- class-agnostic: a ResNet trunk, an FPN pixel decoder and a 6-layer query decoder turn an
   image into Q (100) segments, each a mask and a query vector (:class:`zeroseg.modules.zegformer.ZegFormer`).
2. **Segment classification** -- each query is projected into the text-embedding space and L2-normalised;
   its class logits are ``cos / T`` (T = 0.01) against the frozen class-name embeddings, plus a learned
   no-object embedding as the last class. Any vocabulary works at test time because classes are only text.
3. **Training** (inductive) -- on the *seen* classes only: per image, one binary target mask per seen class
   present; unseen pixels carry the ignore label, so they belong to no target mask and no unseen name is ever
   embedded during training. Hungarian matching (class 1, focal 20, dice 1) and the set loss (CE with
   no-object weight 0.1, focal x20, dice x1) on every decoder layer; AdamW 1e-4, weight decay 1e-4 (none on
   norms and queries), backbone lr x 0.1, poly schedule, full-model gradient clipping at 0.01 -- the official
   ``train_net.py``/configs (``docs/zegformer_official.md``). Iteration-based, resumable from
   ``<run>/zegformer_last`` after a kill.
4. **Inference** -- class probabilities (softmax, no-object dropped) times sigmoid masks, summed over queries
   (``semantic_inference``); optionally fused with the **CLIP image branch** (each query's masked crop
   classified by CLIP, geometric ensembling with lambda = 2/3, seen and unseen treated asymmetrically); the
   seen-class scores are lowered by ``gzero_calibrate`` (0.1 officially) before the argmax.

The final checkpoint is ``<run>/zegformer.safetensors`` + ``.json``; ``zeroseg eval`` and ``zeroseg predict``
(with any class list) read it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from zeroseg.config import ExperimentConfig, save_config, to_dict
from zeroseg.data.zero_shot import IGNORE, ZeroShotData, build_zero_shot_data
from zeroseg.engine.checkpoint import checkpoint_exists, load_checkpoint, prefixed, save_checkpoint, unprefixed
from zeroseg.engine.distributed import (
    barrier,
    broadcast_state,
    init_distributed,
    is_main,
    maybe_sync_batchnorm,
    world_size,
)
from zeroseg.engine.loop import (
    RunResult,
    autocast_context,
    check_engine_config,
    evaluate_model,
    make_loader,
    metrics_dict,
    optimizer_from_tensors,
    optimizer_to_tensors,
    poly_lambda,
    reseed_loader,
    seed_everything,
    set_dataset_epoch,
    training_loader,
)
from zeroseg.errors import ZeroSegError
from zeroseg.modules.mask_losses import SetCriterion, default_weight_dict
from zeroseg.modules.matcher import HungarianMatcher
from zeroseg.modules.zegformer import ZegFormer, pad_to_multiple
from zeroseg.modules.zegformer_head import semantic_inference
from zeroseg.text import class_embeddings

STAGE = "zegformer"


def _log(msg: str) -> None:
    if is_main():
        tqdm.write(msg)


# --------------------------------------------------------------------------------------------- pieces
def text_embeddings(encoder: str, class_names: Sequence[str], templates: str) -> torch.Tensor:
    """``(C, D)`` L2-normalised class embeddings; CLIP encoders use the prompt-template set ``templates``.

    Word-vector and other encoders ignore ``templates`` (ZegFormer's word-vector variant uses none either).
    """
    return class_embeddings(encoder, class_names, templates=templates, normalize=True)


def build_model(cfg: ExperimentConfig, text_dim: int) -> ZegFormer:
    z = cfg.zegformer
    return ZegFormer(
        text_dim=text_dim,
        backbone=z.backbone,
        backbone_norm=z.backbone_norm,
        pretrained=z.pretrained,
        hidden_dim=z.hidden_dim,
        mask_dim=z.mask_dim,
        num_queries=z.num_queries,
        dec_layers=z.dec_layers,
        nheads=z.nheads,
        dim_feedforward=z.dim_feedforward,
        dropout=z.dropout,
        temperature=z.temperature,
    )


def build_criterion(cfg: ExperimentConfig, num_classes: int) -> SetCriterion:
    z = cfg.zegformer
    return SetCriterion(
        num_classes=num_classes,
        matcher=HungarianMatcher(cost_class=1.0, cost_mask=z.mask_weight, cost_dice=z.dice_weight),
        eos_coef=z.no_object_weight,
        weight_dict=default_weight_dict(
            mask_weight=z.mask_weight,
            dice_weight=z.dice_weight,
            dec_layers=z.dec_layers if z.deep_supervision else 1,
        ),
        deep_supervision=z.deep_supervision,
    )


def make_targets(labels: torch.Tensor, to_train_id: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Per image, one binary mask per labelled class present (MaskFormer's semantic mapper).

    Args:
        labels: ``(B, H, W)`` class ids (indices of the split's classes), ``IGNORE`` for unlabelled pixels --
            including every unseen pixel of a training image.
        to_train_id: ``(num_classes,)`` long tensor mapping a class id to its index in the training
            vocabulary (the seen classes), -1 for classes that must not appear.

    Returns:
        ``B`` dicts ``{"labels": (N,), "masks": (N, H, W) float}``. Ignored pixels are in no mask.
    """
    targets = []
    for label in labels:
        ids = torch.unique(label)
        ids = ids[ids != IGNORE]
        train_ids = to_train_id.to(ids.device)[ids]
        if (train_ids < 0).any():
            bad = ids[train_ids < 0].tolist()
            raise ZeroSegError(f"training labels contain class ids {bad} that are not seen classes")
        masks = (label[None] == ids[:, None, None]).float()
        targets.append({"labels": train_ids, "masks": masks})
    return targets


def _infinite(loader: Any, seed: int, start_epoch: int) -> Iterator[tuple[int, Any]]:
    """Batches of successive epochs, each reshuffled as a function of ``(seed, epoch)`` alone."""
    for epoch in itertools.count(start_epoch):
        reseed_loader(loader, seed * 100_003 + epoch)
        set_dataset_epoch(loader.dataset, epoch)
        for batch in loader:
            yield epoch, batch


def train_id_map(num_classes: int, seen_ids: Sequence[int]) -> torch.Tensor:
    """``(num_classes,)``: a class id's index among the seen classes (the training vocabulary), -1 otherwise."""
    to_train_id = torch.full((num_classes,), -1, dtype=torch.long)
    to_train_id[list(seen_ids)] = torch.arange(len(seen_ids))
    return to_train_id


def build_optimizer(cfg: ExperimentConfig, model: ZegFormer, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the official parameter groups (see :meth:`ZegFormer.parameter_groups`)."""
    z = cfg.zegformer
    # The fused kernel (CPU and CUDA) is several times faster than the per-tensor loop torch picks on CPU.
    return torch.optim.AdamW(
        model.parameter_groups(z.lr, z.weight_decay, z.backbone_lr_mult),
        lr=z.lr,
        fused=device.type in ("cpu", "cuda"),
    )


def pad_batch(images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Images padded to the network's size multiple, labels padded alike with the ignore id, on ``device``."""
    images = pad_to_multiple(images.to(device))
    labels = labels.to(device)
    pad = (0, images.shape[-1] - labels.shape[-1], 0, images.shape[-2] - labels.shape[-2])
    return images, F.pad(labels, pad, value=IGNORE)


def train_step(
    net: nn.Module,
    model: ZegFormer,
    images: torch.Tensor,
    labels: torch.Tensor,
    text: torch.Tensor,
    *,
    to_train_id: torch.Tensor,
    criterion: SetCriterion,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    accum: int,
    amp: str,
    clip_grad_norm: float | None,
) -> float:
    """One optimiser step on a padded batch, in ``accum`` micro-batches; returns the weighted loss.

    Args:
        net: ``model`` itself, or its DistributedDataParallel wrapper (gradients are then all-reduced only with
            the last micro-batch).
        model: the network (its parameters are clipped).
        images / labels: a batch from :func:`pad_batch`.
        text: ``(num_seen, D)`` embeddings of the training vocabulary.
        to_train_id: :func:`train_id_map`.
        criterion / optimizer / scheduler: from :func:`build_criterion`, :func:`build_optimizer`, poly LambdaLR.
        accum: micro-batches per step (``engine.grad_accum``).
        amp: ``engine.amp``.
        clip_grad_norm: full-model L2 gradient clipping (None or 0: off).
    """
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    chunks = list(zip(images.chunk(accum), labels.chunk(accum), strict=True))
    for k, (chunk_images, chunk_labels) in enumerate(chunks):
        targets = make_targets(chunk_labels, to_train_id)
        sync = contextlib.nullcontext() if k == len(chunks) - 1 or net is model else net.no_sync()
        with sync:
            with autocast_context(images.device, amp):
                outputs = net(chunk_images, text)
            losses = criterion.weighted(criterion(_to_float(outputs), targets))
            loss = sum(losses.values()) / len(chunks)
            loss.backward()
        total += float(loss.detach())
    if clip_grad_norm and clip_grad_norm > 0:
        nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
    optimizer.step()
    scheduler.step()
    return total


def train_zegformer(
    cfg: ExperimentConfig,
    model: ZegFormer,
    text: torch.Tensor,
    data: ZeroShotData,
    run_dir: Path,
    progress: bool,
) -> list[float]:
    """Train the segment branch on the seen classes; resumable (``<run>/zegformer_last``).

    Returns:
        The mean weighted loss of every logged window (``log_every`` iterations).
    """
    z = cfg.zegformer
    device = torch.device(cfg.device)
    to_train_id = train_id_map(len(data.class_names), data.seen_ids)
    criterion = build_criterion(cfg, len(data.seen_ids)).to(device)
    check_engine_config(cfg.engine, batch_size=cfg.data.batch_size, world=world_size())
    maybe_sync_batchnorm(model, cfg.engine.sync_bn)  # before the optimizer: the parameters stay the same tensors
    optimizer = build_optimizer(cfg, model, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_lambda(z.iters, z.poly_power))
    loader = training_loader(data.train, cfg.data, seed=cfg.seed)
    if len(loader) == 0:
        raise ZeroSegError(f"{cfg.data.root}: no training images")
    start, history = 0, []
    last = run_dir / f"{STAGE}_last"
    if checkpoint_exists(last):
        tensors, meta = load_checkpoint(last)
        model.load_state_dict(unprefixed(tensors, "model."))
        optimizer_from_tensors(optimizer, unprefixed(tensors, "opt."), meta["optimizer"])
        scheduler.load_state_dict(meta["scheduler"])
        start, history = meta["iter"], meta["history"]
        _log(f"[zegformer] resuming after iteration {start}/{z.iters}")
    if start >= z.iters:
        return history
    net = nn.parallel.DistributedDataParallel(model) if world_size() > 1 else model
    text = text.to(device)
    accum = max(1, cfg.engine.grad_accum)
    model.train()
    # Skip the batches of the iterations already done, so a resumed run sees exactly the same data.
    per_epoch = len(loader)
    batches = _infinite(loader, cfg.seed, start // per_epoch)
    for _ in range(start % per_epoch):
        next(batches)
    if start:
        # After the skipped batches (whose augmentation drew random numbers), so that augmentation and dropout
        # continue exactly where the interrupted run stopped.
        torch.set_rng_state(tensors["rng.cpu"])
    bar = tqdm(range(start, z.iters), desc="zegformer", leave=False, disable=not progress, initial=start, total=z.iters)
    window: list[float] = []
    log_every = max(1, min(100, z.iters // 20))
    for it in bar:
        _, (images, labels, _stems) = next(batches)
        images, labels = pad_batch(images, labels, device)
        total = train_step(
            net,
            model,
            images,
            labels,
            text,
            to_train_id=to_train_id,
            criterion=criterion,
            optimizer=optimizer,
            scheduler=scheduler,
            accum=accum,
            amp=cfg.engine.amp,
            clip_grad_norm=z.clip_grad_norm,
        )
        window.append(total)
        if len(window) == log_every or it + 1 == z.iters:
            history.append(sum(window) / len(window))
            window = []
            bar.set_postfix(loss=f"{history[-1]:.3f}")
        done = it + 1
        if is_main() and (done == z.iters or (z.checkpoint_every and done % z.checkpoint_every == 0)):
            opt_t, opt_meta = optimizer_to_tensors(optimizer)
            save_checkpoint(
                last,
                {**prefixed(model.state_dict(), "model."), **prefixed(opt_t, "opt."), "rng.cpu": torch.get_rng_state()},
                {"iter": done, "optimizer": opt_meta, "scheduler": scheduler.state_dict(), "history": history},
            )
    _log(f"[zegformer] {z.iters} iterations, final loss {history[-1]:.3f}" if history else "[zegformer] done")
    return history


def _to_float(outputs: dict[str, Any]) -> dict[str, Any]:
    """Losses in fp32 (autocast produces bf16 logits)."""
    out = {k: v.float() for k, v in outputs.items() if k != "aux_outputs"}
    out["aux_outputs"] = [{k: v.float() for k, v in aux.items()} for aux in outputs.get("aux_outputs", [])]
    return out


# --------------------------------------------------------------------------------------------- driver
def _meta(cfg: ExperimentConfig, data: ZeroShotData, text_dim: int, **extra: Any) -> dict:
    z = cfg.zegformer
    return {
        "method": "zegformer",
        "stage": STAGE,
        "protocol": "inductive",
        "transductive": False,
        "split": data.split.to_json(),
        "class_names": list(data.class_names),
        "seen_ids": list(data.seen_ids),
        "unseen_ids": list(data.unseen_ids),
        "encoder": cfg.text.encoder,
        "embed_dim": text_dim,
        "model": {
            "backbone": z.backbone,
            "backbone_norm": z.backbone_norm,
            "hidden_dim": z.hidden_dim,
            "mask_dim": z.mask_dim,
            "num_queries": z.num_queries,
            "dec_layers": z.dec_layers,
            "nheads": z.nheads,
            "dim_feedforward": z.dim_feedforward,
            "dropout": z.dropout,
            "temperature": z.temperature,
        },
        "inference": _inference_options(cfg),
        "config": to_dict(cfg),
        **extra,
    }


def _inference_options(cfg: ExperimentConfig) -> dict:
    z = cfg.zegformer
    return {
        "test_templates": z.test_templates,
        "clip_image": z.clip_image,
        "clip_templates": z.clip_templates,
        "clip_style": z.clip_style,
        "clip_mode": z.clip_mode,
        "ensemble": z.ensemble,
        "ensemble_lambda": z.ensemble_lambda,
        "gzero_calibrate": z.gzero_calibrate,
        "skip_empty": z.skip_empty,
        "skip_no_object": z.skip_no_object,
    }


def train(cfg: ExperimentConfig, *, progress: bool = True) -> RunResult:
    """Train ZegFormer on the seen classes of ``cfg.data``, evaluate it, write ``<run>/zegformer``."""
    t0 = time.perf_counter()
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    local_device = init_distributed(cfg.device)
    if is_main():
        save_config(cfg, run_dir / "config.yaml")
    cfg = dataclasses.replace(cfg, device=local_device)
    progress = progress and is_main()
    seed_everything(cfg.seed)
    device = torch.device(cfg.device)
    if not is_main():
        barrier()
    data = build_zero_shot_data(cfg.data, progress=progress)
    if is_main():
        barrier()
    seen_names = [data.class_names[i] for i in data.seen_ids]
    train_text = text_embeddings(cfg.text.encoder, seen_names, cfg.zegformer.train_templates)
    eval_text = text_embeddings(cfg.text.encoder, data.class_names, cfg.zegformer.test_templates)
    model = build_model(cfg, train_text.shape[1]).to(device)
    results: dict[str, dict] = {}
    metrics_path = run_dir / "metrics.json"
    final = run_dir / STAGE
    if checkpoint_exists(final):
        _log("[zegformer] complete checkpoint found, skipping")
        results = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
        return RunResult(stages=results, checkpoint=final.with_suffix(".safetensors"), wall_s=time.perf_counter() - t0)
    history = train_zegformer(cfg, model, train_text, data, run_dir, progress)
    broadcast_state(model)
    tensors = {**prefixed(model.state_dict(), "model."), "text.eval": eval_text, "text.train": train_text}
    predictor = ZegFormerPredictor.from_parts(
        model, _meta(cfg, data, train_text.shape[1]), eval_text, device=cfg.device
    )
    results[STAGE] = evaluate_predictor(cfg, predictor, data, progress)
    results[STAGE]["loss_history"] = history
    if is_main():
        save_checkpoint(final, tensors, _meta(cfg, data, train_text.shape[1], metrics=results[STAGE]))
        metrics_path.write_text(json.dumps(results, indent=2) + "\n")
        # The resume state (weights + AdamW moments) is not needed once the final checkpoint exists.
        for suffix in (".safetensors", ".json"):
            (run_dir / f"{STAGE}_last{suffix}").unlink(missing_ok=True)
    barrier()
    m = results[STAGE]
    _log(f"[zegformer] seen mIoU {m['seen_miou']:.1f}  unseen mIoU {m['unseen_miou']:.1f}  hIoU {m['hiou']:.1f}")
    return RunResult(stages=results, checkpoint=final.with_suffix(".safetensors"), wall_s=time.perf_counter() - t0)


def evaluate_predictor(
    cfg: ExperimentConfig, predictor: ZegFormerPredictor, data: ZeroShotData, progress: bool
) -> dict:
    """Metrics of ``predictor`` on the validation set (sharded under torchrun, confusion matrices summed)."""
    loader = make_loader(
        data.val, cfg.data.eval_batch_size, shuffle=False, workers=cfg.data.num_workers, seed=0, shard=True
    )
    cm = evaluate_model(
        lambda x: predictor.predict(x)[0],
        loader,
        num_classes=len(data.class_names),
        device=predictor.device,
        progress=progress,
    )
    return metrics_dict(cm.mat, data)


# --------------------------------------------------------------------------------------------- inference
class ZegFormerPredictor:
    """A trained ZegFormer, ready to segment images with its own or any other vocabulary.

    Args:
        checkpoint: ``<run>/zegformer`` (``.safetensors`` + ``.json``).
        device: where to run.
        inference: inference options replacing the checkpoint's (keys of ``_inference_options``: templates, CLIP
            image branch spec/style/mode, fusion lambda, calibration, skipping).
    """

    def __init__(self, checkpoint: str | Path, *, device: str = "cpu", inference: dict | None = None) -> None:
        tensors, meta = load_checkpoint(checkpoint)
        if meta.get("method") != "zegformer":
            raise ZeroSegError(f"{checkpoint}: not a ZegFormer checkpoint (method {meta.get('method')!r})")
        m = meta["model"]
        model = ZegFormer(
            text_dim=meta["embed_dim"],
            backbone=m["backbone"],
            backbone_norm=m["backbone_norm"],
            hidden_dim=m["hidden_dim"],
            mask_dim=m["mask_dim"],
            num_queries=m["num_queries"],
            dec_layers=m["dec_layers"],
            nheads=m["nheads"],
            dim_feedforward=m["dim_feedforward"],
            dropout=m["dropout"],
            temperature=m["temperature"],
        )
        model.load_state_dict(unprefixed(tensors, "model."))
        if inference is not None:
            meta = {**meta, "inference": dict(inference)}
        self._setup(model, meta, tensors["text.eval"], device)

    @classmethod
    def from_parts(cls, model: ZegFormer, meta: dict, text: torch.Tensor, *, device: str = "cpu") -> ZegFormerPredictor:
        """A predictor around an in-memory model (used right after training)."""
        self = cls.__new__(cls)
        self._setup(model, meta, text, device)
        return self

    def _setup(self, model: ZegFormer, meta: dict, text: torch.Tensor, device: str) -> None:
        self.meta = meta
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.class_names: tuple[str, ...] = tuple(meta["class_names"])
        self.trained_seen = {self.class_names[i] for i in meta["seen_ids"]}
        self.seen_ids = list(meta["seen_ids"])
        self.unseen_ids = list(meta["unseen_ids"])
        self.text = text.to(self.device)
        opts = meta["inference"]
        self.gzero_calibrate = float(opts["gzero_calibrate"])
        self.clip = None
        self.clip_text: torch.Tensor | None = None
        if opts.get("clip_image"):
            from zeroseg.modules.clip_branch import ClipImageBranch

            self.clip = ClipImageBranch.from_spec(
                opts["clip_image"],
                style=opts["clip_style"],
                mode=opts["clip_mode"],
                skip_empty=opts["skip_empty"],
                skip_no_object=opts["skip_no_object"],
                device=str(self.device),
            )
            self.clip_text = self._clip_text(self.class_names)

    def _clip_text(self, names: Sequence[str]) -> torch.Tensor:
        opts = self.meta["inference"]
        return text_embeddings(opts["clip_image"], names, opts["clip_templates"]).to(self.device)

    def set_classes(self, names: Sequence[str]) -> None:
        """Segment with a new vocabulary (names with ``|``-separated synonyms are averaged).

        Names that were seen classes in training count as seen for the fusion and the calibration; every other
        name is treated as unseen.
        """
        names = [n.strip() for n in names if n.strip()]
        if not names:
            raise ZeroSegError("empty class list")
        if len(set(names)) != len(names):
            raise ZeroSegError(f"duplicate class names in {names}")
        if tuple(names) == self.class_names:
            return
        opts = self.meta["inference"]
        self.text = text_embeddings(self.meta["encoder"], names, opts["test_templates"]).to(self.device)
        if self.text.shape[1] != self.meta["embed_dim"]:
            raise ZeroSegError(
                f"encoder {self.meta['encoder']} gives {self.text.shape[1]}-d embeddings, the model expects "
                f"{self.meta['embed_dim']}"
            )
        self.class_names = tuple(names)
        self.seen_ids = [i for i, n in enumerate(names) if n in self.trained_seen]
        self.unseen_ids = [i for i, n in enumerate(names) if n not in self.trained_seen]
        if self.clip is not None:
            self.clip_text = self._clip_text(names)

    @torch.inference_mode()
    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """Per-class scores ``(B, C, H, W)`` for ImageNet-normalised images ``(B, 3, H, W)`` (any size)."""
        images = images.to(self.device)
        h, w = images.shape[-2:]
        padded = pad_to_multiple(images)
        out = self.model(padded, self.text)
        masks = F.interpolate(out["pred_masks"], size=padded.shape[-2:], mode="bilinear", align_corners=False)
        if self.clip is None:
            sem = semantic_inference(out["pred_logits"], masks)
            if self.gzero_calibrate > 0 and self.seen_ids:
                sem[:, self.seen_ids] -= self.gzero_calibrate
        else:
            from zeroseg.modules.clip_branch import fuse_scores, fused_semantic_inference, imagenet_to_clip

            opts = self.meta["inference"]
            clip_logits, encoded = self.clip.classify(
                imagenet_to_clip(padded), masks, out["pred_logits"], self.clip_text
            )
            fused = fuse_scores(
                out["pred_logits"],
                clip_logits,
                encoded,
                self.seen_ids,
                self.unseen_ids,
                lam=opts["ensemble_lambda"],
                all_classes=opts.get("ensemble") == "all_classes",
            )
            sem = fused_semantic_inference(fused, masks, self.seen_ids, self.gzero_calibrate)
        return sem[..., :h, :w]

    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels ``(B, H, W)`` (indices into ``class_names``) and the winning scores."""
        conf, labels = self.scores(images).max(1)
        return labels.cpu(), conf.cpu()


def evaluate_checkpoint(cfg: ExperimentConfig, checkpoint: str | Path, *, progress: bool = True) -> dict:
    """Metrics of a ZegFormer checkpoint on ``cfg.data``'s validation set.

    The evaluated vocabulary is the config's split: the same classes as in training, or another dataset's
    (cross-dataset evaluation, e.g. a COCO-Stuff model on ADE20K-150); classes the model was trained on
    count as seen, all others as unseen.
    """
    cfg = dataclasses.replace(cfg, device=init_distributed(cfg.device))
    progress = progress and is_main()
    predictor = ZegFormerPredictor(checkpoint, device=cfg.device, inference=_inference_options(cfg))
    if not is_main():
        barrier()
    data = build_zero_shot_data(cfg.data, progress=progress)
    if is_main():
        barrier()
    if tuple(data.class_names) != predictor.class_names:
        predictor.set_classes(list(data.class_names))
    metrics = evaluate_predictor(cfg, predictor, data, progress)
    return {
        "method": "zegformer",
        "stage": STAGE,
        "protocol": "inductive",
        "transductive": False,
        "checkpoint": str(checkpoint),
        "split": data.split.name,
        "clip_image": predictor.meta["inference"].get("clip_image"),
        "world_size": world_size(),
        "metrics": metrics,
    }
