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
4. **Inference** -- the image is resized for the network (``test_min_size``/``test_max_size``, detectron2's
   ``ResizeShortestEdge``) and zero-padded to a multiple of 32; class probabilities (softmax, no-object dropped)
   times sigmoid masks, summed over queries (``semantic_inference``); optionally fused with the **CLIP image
   branch** (each query's masked crop of the CLIP-normalised, then zero-padded image classified by CLIP,
   geometric ensembling with lambda = 2/3, seen and unseen treated asymmetrically); the scores are cropped to the
   resized image and resized bilinearly back to the input size (``sem_seg_postprocess``), then the seen-class
   scores are lowered by ``gzero_calibrate`` (0.1 officially) before the argmax.

The final checkpoint is ``<run>/zegformer.safetensors`` + ``.json``; ``zeroseg eval`` and ``zeroseg predict``
(with any class list) read it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from zeroseg.config import ExperimentConfig, TextConfig, ZegFormerConfig, to_dict
from zeroseg.data.transforms import shortest_edge_size
from zeroseg.data.zero_shot import IGNORE, ZeroShotData
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
from zeroseg.engine.distributed import broadcast_state, is_main, maybe_sync_batchnorm, world_size
from zeroseg.engine.evaluator import evaluate_predictor
from zeroseg.engine.loaders import infinite_batches, training_loader
from zeroseg.engine.run import Run, RunResult, join, log, prepare_data, read_metrics, start_run
from zeroseg.engine.train import check_engine_config, float_outputs, parallel, poly_lambda, split_batch, train_step
from zeroseg.errors import ZeroSegError
from zeroseg.methods.predict import vocabulary
from zeroseg.modules.mask_losses import SetCriterion, default_weight_dict
from zeroseg.modules.matcher import HungarianMatcher
from zeroseg.modules.zegformer import ZegFormer, pad_to_multiple
from zeroseg.modules.zegformer_head import semantic_inference
from zeroseg.text import class_embeddings

STAGE = "zegformer"


_log = log


@dataclass(frozen=True)
class InferenceOptions:
    """How a trained ZegFormer turns segments into a label map (stored in checkpoint metadata; see
    :class:`~zeroseg.config.ZegFormerConfig` for each field's meaning and official value, and
    :class:`~zeroseg.config.TextConfig` for ``class_name_style``, how a new vocabulary's names are embedded)."""

    test_templates: str = "single"
    clip_image: str | None = None
    clip_templates: str = "imagenet_select_clip"
    clip_style: str = "cropmask"
    clip_mode: str = "per_image"
    ensemble: str = "seen_unseen"
    ensemble_lambda: float = 2.0 / 3.0
    gzero_calibrate: float = 0.1
    skip_empty: bool = False
    skip_no_object: float | None = None
    test_min_size: int | None = None
    test_max_size: int | None = None
    class_name_style: str = "natural"

    @classmethod
    def from_config(cls, z: ZegFormerConfig, text: TextConfig | None = None) -> InferenceOptions:
        """The options of a :class:`~zeroseg.config.ZegFormerConfig` (its fields of the same names) and, when
        given, ``text.class_name_style`` (else ``"natural"``)."""
        values = {f.name: getattr(z, f.name) for f in dataclasses.fields(cls) if hasattr(z, f.name)}
        if text is not None:
            values["class_name_style"] = text.class_name_style
        return cls(**values)


# --------------------------------------------------------------------------------------------- pieces
def text_embeddings(encoder: str, class_names: Sequence[str], templates: str, style: str = "natural") -> torch.Tensor:
    """``(C, D)`` L2-normalised class embeddings; CLIP encoders use the prompt-template set ``templates``.

    Word-vector and other encoders ignore ``templates`` (ZegFormer's word-vector variant uses none either).
    ``style`` is ``text.class_name_style``: ``"verbatim"`` puts the official class-JSON strings into the templates
    (``transformer_zeroshot_predictor.py:136``), ``"natural"`` plain words (:func:`zeroseg.text.class_embeddings`).
    """
    return class_embeddings(encoder, class_names, templates=templates, normalize=True, style=style)


def build_model(cfg: ExperimentConfig, text_dim: int) -> ZegFormer:
    """The network of ``cfg.zegformer``, its trunk initialised from ``zegformer.pretrained`` when set."""
    return ZegFormer(**cfg.zegformer.model_kwargs(text_dim), pretrained=cfg.zegformer.pretrained)


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


def set_loss(
    criterion: SetCriterion, text: torch.Tensor, to_train_id: torch.Tensor, num_queries: int
) -> tuple[Any, Any]:
    """The ``(loss_terms, normaliser)`` of :func:`~zeroseg.engine.train.train_step` for ZegFormer's set loss on
    ``(images, labels)`` micro-batches from :func:`pad_batch`.

    Each weighted term of :class:`SetCriterion` is normalised over the whole global batch: the cross-entropy terms
    by the class-weight sum of all queries, the mask terms by the number of target masks of every micro-batch of
    every rank (the official criterion averages the latter over the ranks; with accumulation a per-micro-batch
    count would weight a micro-batch with one mask as much as one with many).
    """

    def targets(batch: Any) -> list[dict[str, torch.Tensor]]:
        return make_targets(batch[1], to_train_id)

    def terms(net: nn.Module, batch: Any) -> list[tuple[str, torch.Tensor]]:
        outputs = float_outputs(net(batch[0], text))
        losses = criterion.weighted(criterion(outputs, targets(batch), reduce_over_ranks=False))
        return [(criterion.group(k), v) for k, v in losses.items()]

    def normaliser(batch: Any) -> dict[str, float]:
        present = [torch.unique(label) for label in batch[1]]
        return criterion.normalisers([{"labels": ids[ids != IGNORE]} for ids in present], num_queries)

    return terms, normaliser


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
        meta, rng_state = load_training_state(last, model, optimizer, scheduler)
        start, history = meta["iter"], meta["history"]
        _log(f"[zegformer] resuming after iteration {start}/{z.iters}")
    if start >= z.iters:
        return history
    net = parallel(model)
    terms, normaliser = set_loss(criterion, text.to(device), to_train_id, z.num_queries)
    model.train()
    # Skip the batches of the iterations already done, so a resumed run sees exactly the same data.
    per_epoch = len(loader)
    batches = infinite_batches(loader, cfg.seed, start // per_epoch)
    for _ in range(start % per_epoch):
        next(batches)
    if start:
        # After the skipped batches (whose augmentation drew random numbers), so that augmentation and dropout
        # continue exactly where the interrupted run stopped.
        torch.set_rng_state(rng_state)
    bar = tqdm(range(start, z.iters), desc="zegformer", leave=False, disable=not progress, initial=start, total=z.iters)
    window: list[float] = []
    log_every = max(1, min(100, z.iters // 20))
    for it in bar:
        _, (images, labels, _stems) = next(batches)
        total = train_step(
            net,
            split_batch(pad_batch(images, labels, device), cfg.engine.grad_accum, device),
            loss_terms=terms,
            normaliser=normaliser,
            optimizer=optimizer,
            scheduler=scheduler,
            device=device,
            amp=cfg.engine.amp,
            clip_grad_norm=z.clip_grad_norm,
        )
        if total is not None:
            window.append(total)
        if window and (len(window) == log_every or it + 1 == z.iters):
            history.append(sum(window) / len(window))
            window = []
            bar.set_postfix(loss=f"{history[-1]:.3f}")
        done = it + 1
        if is_main() and (done == z.iters or (z.checkpoint_every and done % z.checkpoint_every == 0)):
            save_training_state(last, model, optimizer, scheduler, {"iter": done, "history": history})
    _log(f"[zegformer] {z.iters} iterations, final loss {history[-1]:.3f}" if history else "[zegformer] done")
    return history


# --------------------------------------------------------------------------------------------- driver
def checkpoint_meta(cfg: ExperimentConfig, data: ZeroShotData, text_dim: int) -> dict:
    """Checkpoint metadata: classes, encoder, the network's constructor arguments (``ZegFormer(**meta["model"])``)
    and the :class:`InferenceOptions`."""
    return {
        "method": "zegformer",
        "variant": "zegformer",
        "stage": STAGE,
        "protocol": "inductive",
        "transductive": False,
        "split": data.split.to_json(),
        "class_names": list(data.class_names),
        "seen_ids": list(data.seen_ids),
        "unseen_ids": list(data.unseen_ids),
        "encoder": cfg.text.encoder,
        "embed_dim": text_dim,
        "model": cfg.zegformer.model_kwargs(text_dim),
        "inference": dataclasses.asdict(InferenceOptions.from_config(cfg.zegformer, cfg.text)),
        "config": to_dict(cfg),
    }


def train(cfg: ExperimentConfig, *, progress: bool = True, allow_changed: bool = False) -> RunResult:
    """Train ZegFormer on the seen classes of ``cfg.data``, evaluate it, write ``<run>/zegformer``."""
    with start_run(cfg, progress=progress, allow_changed=allow_changed) as run:
        return _train(run)


def _class_texts(cfg: ExperimentConfig, data: ZeroShotData) -> tuple[torch.Tensor, torch.Tensor]:
    """``(text.train, text.eval)``: the seen names with the train templates, every name with the test templates."""
    seen_names = [data.class_names[i] for i in data.seen_ids]
    style = cfg.text.class_name_style
    train_text = text_embeddings(cfg.text.encoder, seen_names, cfg.zegformer.train_templates, style)
    eval_text = text_embeddings(cfg.text.encoder, data.class_names, cfg.zegformer.test_templates, style)
    return train_text, eval_text


def _finish(
    run: Run,
    model: ZegFormer,
    data: ZeroShotData,
    texts: tuple[torch.Tensor, torch.Tensor],
    metrics_extra: dict[str, Any],
    meta_extra: dict[str, Any] | None = None,
) -> Path:
    """Evaluate a trained network with ``text.eval`` and write the stage checkpoint; returns its path."""
    cfg = run.cfg
    train_text, eval_text = texts
    meta = {**checkpoint_meta(cfg, data, train_text.shape[1]), **(meta_extra or {})}
    predictor = ZegFormerPredictor(model, meta, eval_text, device=cfg.device)
    metrics = evaluate_predictor(predictor.labels, data, cfg.data, device=predictor.device, progress=run.progress)
    metrics.update(metrics_extra)
    tensors = {**prefixed(model.state_dict(), "model."), "text.eval": eval_text, "text.train": train_text}
    return run.finish_stage(STAGE, tensors, meta, metrics)


def _train(run: Run) -> RunResult:
    cfg, progress, device = run.cfg, run.progress, run.device
    data = run.data()
    texts = _class_texts(cfg, data)
    model = build_model(cfg, texts[0].shape[1]).to(device)
    if run.done(STAGE):
        _log("[zegformer] complete checkpoint found, skipping")
        return run.result(STAGE)
    history = train_zegformer(cfg, model, texts[0], data, run.dir, progress)
    broadcast_state(model)
    path = _finish(run, model, data, texts, {"loss_history": history})
    if is_main():
        # The resume state (weights + AdamW moments) is not needed once the final checkpoint exists.
        checkpoint_path(run.dir / f"{STAGE}_last").unlink(missing_ok=True)
    return run.result(path)


def train_from(cfg: ExperimentConfig, source: str | Path, *, progress: bool = True) -> RunResult:
    """Run ``cfg`` as a ZegFormer run whose training is ``source``'s, without training again.

    Under the inductive protocol training embeds only the *seen* class names (``text.train``): a run whose encoder
    gives the same seen embeddings as ``source``'s -- e.g. the unseen-only-random control, which replaces only the
    unseen names -- would recompute ``source``'s training bit for bit (same seed, data and schedule). This writes
    that run directly: ``source``'s network, ``cfg``'s evaluation vocabulary (``text.eval``), evaluated and
    checkpointed like a trained run, with ``trained_in`` naming ``source`` in its metadata.

    Args:
        cfg: the run to write (its ``text.encoder`` embeds the evaluation vocabulary).
        source: ``<run>/zegformer`` checkpoint of the run that was trained.

    Raises:
        ZeroSegError: ``source`` is not a ZegFormer checkpoint, or its training differs from what ``cfg`` would
            train: another seen-class embedding, seed, data or ZegFormer setting.
    """
    tensors, src_meta = load_checkpoint(source)
    if src_meta.get("method") != "zegformer" or "text.train" not in tensors:
        raise ZeroSegError(f"{checkpoint_path(source)}: not a ZegFormer checkpoint with text.train")
    with start_run(cfg, progress=progress) as run:
        cfg = run.cfg
        data = run.data()
        if run.done(STAGE):
            _log("[zegformer] complete checkpoint found, skipping")
            return run.result(STAGE)
        train_text, eval_text = _class_texts(cfg, data)
        src_cfg = src_meta.get("config", {})
        mine = json.loads(json.dumps(to_dict(cfg)))  # the form the source's metadata was stored in
        differs = [k for k in ("seed", "data", "zegformer", "engine") if src_cfg.get(k) != mine.get(k)]
        if train_text.shape != tensors["text.train"].shape or not torch.equal(train_text, tensors["text.train"]):
            differs.append("the seen-class embeddings")
        if differs:
            raise ZeroSegError(
                f"{checkpoint_path(source)}: its training differs from this run's ({', '.join(differs)}); "
                f"train {cfg.name} instead"
            )
        model = build_model(cfg, train_text.shape[1])
        load_into(model, unprefixed(tensors, "model."), source, "the network")
        trained_in = str(checkpoint_path(source))
        history = read_metrics(Path(source).parent / "metrics.json").get(STAGE, {}).get("loss_history", [])
        extra = {"loss_history": history, "trained_in": trained_in}
        path = _finish(run, model.to(run.device), data, (train_text, eval_text), extra, {"trained_in": trained_in})
        return run.result(path)


# --------------------------------------------------------------------------------------------- inference
def padded_scores(predictor: Any, images: torch.Tensor, pad: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Per-class scores on the padded canvas: the one inference core of :meth:`ZegFormerPredictor.scores` and the
    ONNX graph (:class:`zeroseg.export.graphs.ZegFormerGraph`), which differ only in how they pad and resize.

    Args:
        predictor: anything with the predictor's ``model``, ``text``, ``clip``, ``clip_text``, ``seen_ids``,
            ``unseen_ids`` and ``options.ensemble`` / ``options.ensemble_lambda``.
        images: ``(B, 3, h, w)`` ImageNet-normalised images at the network's size.
        pad: zero-pads ``(B, 3, h, w)`` to a multiple of 32 (bottom and right).

    Returns:
        ``(B, C, H', W')`` scores on the padded canvas (the caller crops ``[:h, :w]``): semantic inference, or with
        a CLIP branch its fused form (the CLIP branch sees the image CLIP-normalised first and padded after).
    """
    padded = pad(images)
    out = predictor.model(padded, predictor.text)
    masks = F.interpolate(out["pred_masks"], size=padded.shape[-2:], mode="bilinear", align_corners=False)
    if predictor.clip is None:
        return semantic_inference(out["pred_logits"], masks)
    from zeroseg.modules.clip_branch import fuse_scores, fused_semantic_inference, imagenet_to_clip

    o = predictor.options
    clip_logits, encoded = predictor.clip.classify(pad(imagenet_to_clip(images)), masks, out["pred_logits"],
                                                   predictor.clip_text)  # fmt: skip
    if o.ensemble == "none":
        # CLIP_CLASSIFICATION without ENSEMBLING(_ALL_CLS): the CLIP logits replace the segment logits.
        return semantic_inference(clip_logits, masks)
    fused = fuse_scores(
        out["pred_logits"],
        clip_logits,
        encoded,
        predictor.seen_ids,
        predictor.unseen_ids,
        lam=o.ensemble_lambda,
        all_classes=o.ensemble == "all_classes",
    )
    return fused_semantic_inference(fused, masks, predictor.seen_ids)


def seen_calibration(
    num_classes: int, seen_ids: Sequence[int], amount: float, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``(C,)``: ``amount`` at the seen classes, 0 elsewhere -- what the official GZSL calibration
    (``GZERO_CALIBRATE``, ``mask_former_model.py:401-402``) subtracts from the per-class scores."""
    shift = torch.zeros(num_classes, dtype=dtype)  # in the scores' dtype: 0.1 in float32 is not 0.1 in float64
    if amount > 0 and len(seen_ids):
        shift[list(seen_ids)] = amount
    return shift


class ZegFormerPredictor:
    """A trained ZegFormer, ready to segment images with its own or any other vocabulary: padding, semantic
    inference, the optional CLIP image branch and its fusion, and the seen-score calibration, in one place that
    training's validation, ``zeroseg eval``/``predict`` and the benchmarks all use.

    Args:
        model: the network.
        meta: checkpoint metadata (:func:`checkpoint_meta`): ``class_names``, ``seen_ids`` (the trained seen
            classes), ``encoder``, ``embed_dim``, ``inference``.
        text: ``(C, D)`` embeddings of ``meta["class_names"]``.
        device: where to run.
        options: inference options replacing ``meta["inference"]``.
    """

    def __init__(
        self,
        model: ZegFormer,
        meta: dict,
        text: torch.Tensor,
        *,
        device: str = "cpu",
        options: InferenceOptions | None = None,
    ) -> None:
        self.options = options or InferenceOptions(**meta["inference"])
        self.meta = {**meta, "inference": dataclasses.asdict(self.options)}
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.class_names: tuple[str, ...] = tuple(meta["class_names"])
        self.trained_seen = {self.class_names[i] for i in meta["seen_ids"]}
        self.seen_ids = list(meta["seen_ids"])
        self.unseen_ids = list(meta["unseen_ids"])
        self.text = text.to(self.device)
        self.clip = None
        self.clip_text: torch.Tensor | None = None
        if self.options.clip_image:
            from zeroseg.modules.clip_branch import ClipImageBranch

            o = self.options
            self.clip = ClipImageBranch.from_spec(
                o.clip_image,
                style=o.clip_style,
                mode=o.clip_mode,
                skip_empty=o.skip_empty,
                skip_no_object=o.skip_no_object,
                device=str(self.device),
            )
            self.clip_text = self._clip_text(self.class_names)

    @classmethod
    def from_checkpoint(
        cls, checkpoint: str | Path, *, device: str = "cpu", options: InferenceOptions | None = None
    ) -> ZegFormerPredictor:
        """Load ``<run>/zegformer`` (``.safetensors`` + ``.json``); ``options`` replace the stored inference options."""
        tensors, meta = load_checkpoint(checkpoint)
        if meta.get("method") != "zegformer":
            raise ZeroSegError(f"{checkpoint}: not a ZegFormer checkpoint (method {meta.get('method')!r})")
        keys = ("class_names", "seen_ids", "unseen_ids", "encoder", "embed_dim", "model", "inference")
        require(meta, keys, checkpoint)
        if "text.eval" not in tensors:
            raise ZeroSegError(f"{checkpoint_path(checkpoint)}: checkpoint lacks the tensor text.eval")
        try:
            model = ZegFormer(**meta["model"])
        except (TypeError, ZeroSegError) as e:
            raise ZeroSegError(f"{checkpoint_path(checkpoint)}: unusable model metadata ({e})") from None
        load_into(model, unprefixed(tensors, "model."), checkpoint, "the network")
        return cls(model, meta, tensors["text.eval"], device=device, options=options)

    def use_clip_branch(self, branch: Any, text_clip: torch.Tensor) -> None:
        """Fuse an already-built CLIP image branch (``.classify`` as :class:`ClipImageBranch`) whose text embeddings
        of the current classes are ``text_clip (C, D)`` (the benchmarks build their own)."""
        self.clip, self.clip_text = branch, text_clip.to(self.device)

    def _clip_text(self, names: Sequence[str]) -> torch.Tensor:
        o = self.options
        return text_embeddings(o.clip_image, names, o.clip_templates, o.class_name_style).to(self.device)

    def set_classes(self, names: Sequence[str]) -> None:
        """Segment with a new vocabulary (names with ``|``-separated synonyms are averaged).

        Names that were seen classes in training count as seen for the fusion and the calibration; every other
        name is treated as unseen.
        """
        names = vocabulary(names)
        if tuple(names) == self.class_names:
            return
        o = self.options
        self.text = text_embeddings(self.meta["encoder"], names, o.test_templates, o.class_name_style).to(self.device)
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

    def network_size(self, h: int, w: int) -> tuple[int, int]:
        """The ``(height, width)`` an ``h x w`` image is resized to for the network (``test_min_size`` /
        ``test_max_size``, detectron2's test-time ``ResizeShortestEdge``; unchanged when ``test_min_size`` is None)."""
        o = self.options
        return (h, w) if o.test_min_size is None else shortest_edge_size(h, w, o.test_min_size, o.test_max_size)

    @torch.inference_mode()
    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """Per-class scores ``(B, C, H, W)`` at the input size for ImageNet-normalised images ``(B, 3, H, W)``.

        The official test path (``mask_former_model.py:214-406``): the image is resized for the network
        (:meth:`network_size`; bilinear with antialiasing, as detectron2's PIL resize), zero-padded to a multiple of
        32; the CLIP branch sees the resized image CLIP-normalised first and zero-padded after (``:216-217``), so
        its padding is 0 in CLIP space; the scores are cropped to the resized image, resized bilinearly back to
        ``(H, W)`` (``sem_seg_postprocess``, ``:397-398``) and only then calibrated (``:401-402``).
        """
        images = images.to(self.device)
        h, w = images.shape[-2:]
        size = self.network_size(h, w)
        if size != (h, w):
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
        sem = padded_scores(self, images, pad_to_multiple)
        sem = sem[..., : size[0], : size[1]]
        if size != (h, w):
            sem = F.interpolate(sem, size=(h, w), mode="bilinear", align_corners=False)
        if self.options.gzero_calibrate > 0 and self.seen_ids:
            shift = seen_calibration(sem.shape[1], self.seen_ids, self.options.gzero_calibrate, sem.dtype)
            sem = sem - shift.to(sem.device)[None, :, None, None]
        return sem

    def labels(self, images: torch.Tensor) -> torch.Tensor:
        """Labels ``(B, H, W)`` (indices into ``class_names``) on the predictor's device."""
        return self.scores(images).argmax(1)

    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels ``(B, H, W)`` (indices into ``class_names``) and the winning scores, on the CPU."""
        conf, labels = self.scores(images).max(1)
        return labels.cpu(), conf.cpu()


def evaluate_checkpoint(cfg: ExperimentConfig, checkpoint: str | Path, *, progress: bool = True) -> dict:
    """Metrics of a ZegFormer checkpoint on ``cfg.data``'s validation set.

    The evaluated vocabulary is the config's split: the same classes as in training, or another dataset's
    (cross-dataset evaluation, e.g. a COCO-Stuff model on ADE20K-150); classes the model was trained on
    count as seen, all others as unseen. The inference options are the config's.
    """
    cfg = join(cfg)
    options = InferenceOptions.from_config(cfg.zegformer, cfg.text)
    predictor = ZegFormerPredictor.from_checkpoint(checkpoint, device=cfg.device, options=options)
    data = prepare_data(cfg.data, progress=progress, train=False)
    if tuple(data.class_names) != predictor.class_names:
        predictor.set_classes(list(data.class_names))
    metrics = evaluate_predictor(
        predictor.labels, data, cfg.data, device=predictor.device, progress=progress and is_main()
    )
    return {
        "method": "zegformer",
        "variant": "zegformer",
        "stage": STAGE,
        "protocol": "inductive",
        "transductive": False,
        "checkpoint": str(checkpoint),
        "split": data.split.name,
        "clip_image": options.clip_image,
        "world_size": world_size(),
        "metrics": metrics,
    }
