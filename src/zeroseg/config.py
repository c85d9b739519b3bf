"""Typed experiment configuration.

A config is a tree of dataclasses. YAML files only *set values* of these dataclasses (no inheritance, no
object construction from strings, no eval); ``key.sub=value`` overrides from the command line are applied
on top, and the fully resolved config is saved beside every run so that it can be reproduced exactly.

Unknown keys, wrong types and unreadable files are reported as one-line :class:`ZeroSegError`\\ s naming
the file or key.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from zeroseg.data.synthetic import SynthConfig
from zeroseg.errors import ZeroSegError
from zeroseg.files import atomic_write_text


@dataclass
class DataConfig:
    """Where the data is and how it is read.

    Attributes:
        dataset: reader key ("voc", "context59", "context60", "coco-stuff-171", "ade20k-150", "folder",
            "synthetic" -- the last is the ``folder`` reader over a generated benchmark).
        root: dataset root directory.
        split: zero-shot split name (``zeroseg splits``) or path to a split JSON file.
        train_split / val_split: file-list names of the reader ("train", "train_aug", "val", ...).
        unseen_policy: how training labels treat unseen classes: "drop" removes training images that contain
            any unseen pixel (ZS3Net's rule), "ignore" relabels unseen pixels 255 (SPNet/ZegFormer).
        crop_size: training crop side; eval_size: evaluation resize of image AND label (None = native size; a
            method may still resize the image for its network and its predictions back, e.g. ZegFormer's
            ``zegformer.test_min_size``).
        scale_range: random rescaling range for training (``augmentation: relative``).
        train_pad_value: raw RGB value (0..255) that pads training images smaller than the crop (0 = black;
            MaskFormer/ZegFormer's semantic mapper pads with 128); labels are padded with 255.
        train_pad_last: pad after the horizontal flip, so padding is always at the bottom/right (MaskFormer's
            mapper pads after all augmentations); False pads inside the random crop, before the flip.
        augmentation: "relative" (default): random scale of the image's own size by ``scale_range``, pad-crop,
            h-flip. "official" (valeoai/ZS3 ``transform_tr``): h-flip, ``RandomScaleCrop`` (shorter side drawn
            uniformly in ``[base_size // 2, 2 * base_size]`` pixels, pad 0 / 255, random crop), Gaussian blur
            with probability 1/2 (radius U[0, 1)).
        base_size: the official ``--base-size`` (None: ``crop_size``); only ``augmentation: official`` reads it.
        eval_rounding: how ``eval_size`` resizes the longer side: "round" (default) or "floor" (the official
            ``FixScale``: ``int(long * eval_size / short)``); image and ground truth are resized alike.
        batch_size / eval_batch_size / num_workers: loader settings (``batch_size`` is the global batch of one
            optimiser step, split over the ranks under torchrun).
        augmentation_seed: None (default): the random scale/crop/flip of training images is drawn from the
            loading process's global RNG, so it depends on which process loads an image and in what order.
            An int: each training sample's draws come from a generator seeded by (augmentation_seed, epoch,
            sample index), and methods that shard training over ranks (ZS3Net's segmenter and self-training
            stages) shuffle with one seeded permutation per epoch in a single process too; a torchrun run
            then trains on exactly the batches of a single-process run with the same ``batch_size``.
    """

    dataset: str = "synthetic"
    root: str = "data/synthetic"
    split: str = "synthetic"
    train_split: str = "train"
    val_split: str = "val"
    unseen_policy: Literal["drop", "ignore"] = "drop"
    crop_size: int = 64
    eval_size: int | None = None
    scale_range: tuple[float, float] = (0.75, 1.25)
    train_pad_value: float = 0.0
    train_pad_last: bool = False
    augmentation: Literal["relative", "official"] = "relative"
    base_size: int | None = None
    eval_rounding: Literal["round", "floor"] = "round"
    batch_size: int = 16
    eval_batch_size: int = 16
    num_workers: int = 0
    max_train_images: int | None = None
    max_val_images: int | None = None
    augmentation_seed: int | None = None
    synthetic: SynthConfig = field(default_factory=SynthConfig)


@dataclass
class TextConfig:
    """Class-name embeddings: an encoder spec of :func:`zeroseg.text.get_encoder`.

    Attributes:
        encoder: the encoder spec.
        class_name_style: how dataset class names reach the encoder (:func:`zeroseg.text.class_embeddings`):
            "natural" words ("tvmonitor" -> "tv monitor"; what word-vector encoders need) or "verbatim", the
            strings ZegFormer's official class JSONs hold ("tvmonitor", "wall-concrete"; its CLIP prompts).
    """

    encoder: str = "glove-6b-50d"
    class_name_style: Literal["natural", "verbatim"] = "natural"


@dataclass
class SegmenterConfig:
    """DeepLabv3+ and its supervised training on seen classes (official: SGD 0.007, poly 0.9, 10x head lr).

    Attributes:
        batch_average: divide the (valid-pixel mean) cross-entropy by the global batch size, as valeoai/ZS3's
            ``SegmentationLosses(batch_average=True)`` does for the segmenter and for self-training. With
            weight decay this is not a learning-rate change, so it is a schedule choice of its own.
    """

    backbone: str = "resnet101"
    output_stride: int = 16
    pretrained: str | None = None
    epochs: int = 200
    lr: float = 0.007
    momentum: float = 0.9
    weight_decay: float = 5e-4
    head_lr_mult: float = 10.0
    poly_power: float = 0.9
    batch_average: bool = False

    def model_kwargs(self, num_classes: int) -> dict[str, Any]:
        """The :class:`~zeroseg.modules.deeplab.DeepLabV3Plus` keyword arguments of this config (stored in
        checkpoint metadata; ``pretrained`` only initialises training and is not part of them)."""
        return {"num_classes": num_classes, "backbone": self.backbone, "output_stride": self.output_stride}


@dataclass
class GeneratorConfig:
    """GMMN generator and its MMD training."""

    noise_dim: int = 300
    hidden_dim: int = 256
    dropout: float = 0.5
    noise: Literal["uniform", "gaussian"] = "uniform"
    lr: float = 2e-4
    epochs: int = 50
    pixels_per_class: int = 128
    sigmas: tuple[float, ...] = (2.0, 5.0, 10.0, 20.0, 40.0, 80.0)

    def model_kwargs(self, embed_dim: int, feature_dim: int) -> dict[str, Any]:
        """Keyword arguments of :class:`~zeroseg.modules.gmmn.GMMNGenerator` (and of the graph-context
        :class:`~zeroseg.modules.gcn.GCNGenerator`, which takes the same), stored in checkpoint metadata."""
        return {
            "embed_dim": embed_dim,
            "noise_dim": self.noise_dim,
            "hidden_dim": self.hidden_dim,
            "feature_dim": feature_dim,
            "dropout": self.dropout,
            "noise": self.noise,
        }


@dataclass
class ClassifierConfig:
    """Retraining the final 1x1 classifier on real seen + generated unseen features.

    Attributes:
        protocol: "strict" -- no unseen pixel or mask of a training image is used; generated unseen features
            are mixed with real seen features in proportion to a class prior (the mean seen-class pixel
            count). "official" -- as valeoai/ZS3 does: generated unseen features are placed where the training
            image's ground truth has unseen pixels (uses unseen masks; see valeoai/ZS3 issue 10).
            Under "official" the classifier is also trained as the official script does: SGD over the 10x
            (head) learning-rate group, so ``10 * lr``, poly decay every iteration, logits bilinearly upsampled
            to the image and cross-entropy against the full-resolution labels divided by the batch size;
            pixels labelled 255 in an image with unseen pixels get zero features; the generator MMD compares
            ``fake[idx]`` with ``real[idx]`` for one fake per real pixel and one shared index draw; the
            ZS3Net-GC graph has a node for every segment, 255 included.
        unseen_weight: cross-entropy weight of unseen classes (official 100 is for the official protocol).
        online_generator: train a fresh generator (and GCN) inside the classifier's batch loop, one step per
            (seen-only image, class) before each classifier step, as train_pascal_GMMN.py does; the separate
            generator and graph stages are skipped. Needs ``protocol: official``.
        select_on_val: evaluate on the validation set after every classifier epoch and keep the epoch with the
            best *unseen* mIoU (what the official script's per-epoch checkpoints and ``best_pred`` offer).
            Model selection on the test classes of the validation set: not leakage-free, so it needs
            ``protocol: official``.
        features: "eval" (default): real features with the segmenter in eval mode. "train": in train mode, as
            the official script (BatchNorm normalises with batch statistics and keeps updating its running
            statistics, the decoder's dropouts are on), for the generator, graph and classifier stages.
    """

    protocol: Literal["strict", "official"] = "strict"
    epochs: int = 20
    lr: float = 0.007
    unseen_weight: float = 1.0
    generated_per_class: int = 128
    online_generator: bool = False
    select_on_val: bool = False
    features: Literal["eval", "train"] = "eval"


@dataclass
class SelfTrainingConfig:
    """ZS5Net: pseudo-label the top p% most confident unseen predictions, then fine-tune (transductive)."""

    enabled: bool = False
    top_percent: float = 25.0
    epochs: int = 20
    lr: float = 0.007


@dataclass
class GraphContextConfig:
    """ZS3Net-GC: a GCN generator over the segment graph; its loss weight in classifier training."""

    enabled: bool = False
    weight: float = 0.1


@dataclass
class ZSMMDConfig:
    """ZS-MMD recursive training (Wang, Farazi, Barnes, IJCNN 2021); see ``zeroseg.methods.zs_mmd``.

    Attributes:
        rounds: recursion rounds after ZS3Net's classifier stage (round 0).
        threshold: minimum softmax confidence for a pixel predicted as an unseen class to become a
            pseudo-feature.
        weighting: "confidence" weights each pseudo-feature by its confidence in the ZS-MMD loss; "uniform"
            gives the plain MMD over the selected pixels (ablation).
        source: images the pseudo-features come from. "unlabelled": training images dropped by
            ``data.unseen_policy=drop`` (they contain unseen classes; read without labels -- transductive);
            "train": the training images of stage 1; "all": both.
        max_pseudo_per_class: cap of the stored pseudo-features per unseen class (random subset).
        min_pseudo_per_class: an unseen class with fewer selected pixels gets no ZS-MMD term that round.
        pseudo_weight: weight of the ZS-MMD term added to each generator step's seen-class MMD.
        generator_epochs: generator fine-tuning epochs per round.
        generator_lr: Adam learning rate of that fine-tuning (None: ``generator.lr``).
        reset_generator: re-initialise the generator each round instead of fine-tuning it.
    """

    rounds: int = 3
    threshold: float = 0.8
    weighting: Literal["confidence", "uniform"] = "confidence"
    source: Literal["unlabelled", "train", "all"] = "unlabelled"
    max_pseudo_per_class: int = 4096
    min_pseudo_per_class: int = 16
    pseudo_weight: float = 1.0
    generator_epochs: int = 2
    generator_lr: float | None = None
    reset_generator: bool = False


@dataclass
class ZegFormerConfig:
    """ZegFormer (Ding, Xue, Xia, Dai, CVPR 2022); defaults are the official R101 VOC/COCO-Stuff values.

    Attributes:
        backbone: torchvision trunk ("resnet50", "resnet101"; "resnet18" for CPU-sized runs).
        backbone_norm: "frozen" BatchNorm (official, with ImageNet weights) or trainable "bn" (from scratch).
        pretrained: local ImageNet weights for the trunk (torchvision state dict, ``.pth``/``.safetensors``).
        num_queries / hidden_dim / mask_dim / dec_layers / nheads / dim_feedforward / dropout: the query
            decoder (official 100 / 256 / 256 / 6 / 8 / 2048 / 0.1).
        temperature: T of ``logits = cos / T`` (official 0.01).
        no_object_weight / mask_weight / dice_weight: loss weights (official 0.1 / 20 / 1).
        deep_supervision: losses on every decoder layer (official true).
        iters / lr / weight_decay / backbone_lr_mult / poly_power / clip_grad_norm: AdamW with a poly
            schedule; official VOC 10k (or 30k) iters, COCO-Stuff 60k, 1e-4, 1e-4, 0.1, 0.9, full-model
            L2 gradient clipping at 0.01.
        train_templates / test_templates: prompt-template sets for CLIP text encoders (``single``,
            ``imagenet_select``, ...; see ``zeroseg.text.prompts``). Ignored by word-vector encoders.
        clip_image: ``clip:<model>:<checkpoint>`` of the CLIP image branch used at test time (None: segment
            branch only). Usually the same weights as ``text.encoder``.
        clip_templates: templates of the CLIP branch's own text embeddings (official ``imagenet_select_clip``).
        clip_style: what CLIP sees per query: "cropmask" (masked image cropped to the mask's box, official
            default), "mask" (masked full image), "crop" (unmasked box).
        clip_mode: "per_image" (the official code: the Q crops of one image in one batch), "sequential" (one
            crop at a time), "batched" (all crops of the batch at once, skipped queries left out) or "pool"
            (encode each image once and average CLIP's dense features under each mask).
        ensemble: "seen_unseen" (official ``ENSEMBLING``: CLIP weighs more on unseen classes, its seen-class
            probabilities are averaged), "all_classes" (``ENSEMBLING_ALL_CLS``: the same rule for every class) or
            "none" (CLIP branch on, both ensembling flags off: the CLIP logits, with the segment branch's no-object
            logit appended, replace the segment logits; ``mask_former_model.py:383-384``).
        ensemble_lambda: the geometric fusion weight (official 2/3).
        gzero_calibrate: subtracted from seen-class scores after inference (official 0.1 with the CLIP
            branch; 0 disables).
        skip_empty / skip_no_object: fast path (any clip_mode) -- skip CLIP for queries with an empty mask, or whose
            no-object probability exceeds ``skip_no_object`` (None: never).
        test_min_size / test_max_size: test-time resize of the image for the network (detectron2
            ``ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST)``: shorter side to ``test_min_size``, longer side at
            most ``test_max_size``); the scores are resized back bilinearly to the image's own size
            (``sem_seg_postprocess``), so the ground truth is never resized. None: the network sees the image as
            given (``data.eval_size``).
    """

    backbone: str = "resnet101"
    backbone_norm: Literal["frozen", "bn"] = "frozen"
    pretrained: str | None = None
    num_queries: int = 100
    hidden_dim: int = 256
    mask_dim: int = 256
    dec_layers: int = 6
    nheads: int = 8
    dim_feedforward: int = 2048
    dropout: float = 0.1
    temperature: float = 0.01
    no_object_weight: float = 0.1
    mask_weight: float = 20.0
    dice_weight: float = 1.0
    deep_supervision: bool = True
    iters: int = 10000
    lr: float = 1e-4
    weight_decay: float = 1e-4
    backbone_lr_mult: float = 0.1
    poly_power: float = 0.9
    clip_grad_norm: float = 0.01
    checkpoint_every: int = 1000
    eval_every: int = 0
    train_templates: str = "single"
    test_templates: str = "single"
    clip_image: str | None = None
    clip_templates: str = "imagenet_select_clip"
    clip_style: Literal["cropmask", "mask", "crop"] = "cropmask"
    clip_mode: Literal["per_image", "sequential", "batched", "pool"] = "per_image"
    ensemble: Literal["seen_unseen", "all_classes", "none"] = "seen_unseen"
    ensemble_lambda: float = 2.0 / 3.0
    gzero_calibrate: float = 0.1
    skip_empty: bool = False
    skip_no_object: float | None = None
    test_min_size: int | None = None
    test_max_size: int | None = None

    def model_kwargs(self, text_dim: int) -> dict[str, Any]:
        """Keyword arguments of :class:`~zeroseg.modules.zegformer.ZegFormer` (stored in checkpoint metadata;
        ``pretrained`` only initialises training and is not part of them)."""
        return {
            "text_dim": text_dim,
            "backbone": self.backbone,
            "backbone_norm": self.backbone_norm,
            "hidden_dim": self.hidden_dim,
            "mask_dim": self.mask_dim,
            "num_queries": self.num_queries,
            "dec_layers": self.dec_layers,
            "nheads": self.nheads,
            "dim_feedforward": self.dim_feedforward,
            "dropout": self.dropout,
            "temperature": self.temperature,
        }


@dataclass
class EngineConfig:
    """How training runs on the hardware (all methods).

    Attributes:
        amp: "bf16" runs forward passes under ``torch.autocast(dtype=bfloat16)`` on CUDA (ignored on CPU);
            "none" keeps fp32.
        grad_accum: micro-batches per optimiser step; each micro-batch holds ``data.batch_size / grad_accum``
            images, so the effective batch stays ``data.batch_size`` (reach the official 32 on small GPUs).
        sync_bn: convert BatchNorm layers to SyncBatchNorm under torchrun, so that a multi-process run
            normalises over the global batch exactly like a single process does.
    """

    amp: Literal["none", "bf16"] = "none"
    grad_accum: int = 1
    sync_bn: bool = False


@dataclass
class ExperimentConfig:
    """One experiment: method x dataset x split."""

    name: str = "experiment"
    method: Literal["zs3net", "zs_mmd", "zegformer"] = "zs3net"
    seed: int = 0
    device: str = "cpu"
    out_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    text: TextConfig = field(default_factory=TextConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    selftrain: SelfTrainingConfig = field(default_factory=SelfTrainingConfig)
    graph: GraphContextConfig = field(default_factory=GraphContextConfig)
    zs_mmd: ZSMMDConfig = field(default_factory=ZSMMDConfig)
    zegformer: ZegFormerConfig = field(default_factory=ZegFormerConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


T = TypeVar("T")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert a YAML value to the annotated type ``tp`` (a small, explicit subset of typing)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ZeroSegError as e:
                errors.append(str(e))
        raise ZeroSegError(errors[0] if errors else f"config key '{key}': bad value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ZeroSegError(f"config key '{key}': {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ZeroSegError(f"config key '{key}': expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ZeroSegError(f"config key '{key}': expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args, strict=True))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ZeroSegError(f"config key '{key}': expected a mapping, got {value!r}")
        return _from_dict(tp, value, prefix=f"{key}.")
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ZeroSegError(f"config key '{key}': expected true/false, got {value!r}")
    if tp in (int, str) and isinstance(value, tp) and not isinstance(value, bool):
        return value
    raise ZeroSegError(f"config key '{key}': expected {getattr(tp, '__name__', tp)}, got {value!r}")


def _from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ZeroSegError(f"unknown config key '{prefix}{unknown[0]}'; valid keys here: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")


def _ranges(cfg: ExperimentConfig) -> list[tuple[str, Any, bool, str]]:
    """``(key, value, ok, requirement)`` of every value whose type alone does not make it usable."""
    d, s, g, c = cfg.data, cfg.segmenter, cfg.generator, cfg.classifier
    st, z, zm = cfg.selftrain, cfg.zegformer, cfg.zs_mmd
    return [
        ("device", cfg.device, bool(_DEVICE.match(cfg.device)), "cpu, cuda, cuda:N or mps"),
        ("data.batch_size", d.batch_size, d.batch_size >= 1, ">= 1"),
        ("data.eval_batch_size", d.eval_batch_size, d.eval_batch_size >= 1, ">= 1"),
        ("data.num_workers", d.num_workers, d.num_workers >= 0, ">= 0"),
        ("data.crop_size", d.crop_size, d.crop_size >= 1, ">= 1"),
        ("data.eval_size", d.eval_size, d.eval_size is None or d.eval_size >= 1, "null or >= 1"),
        ("data.max_train_images", d.max_train_images, d.max_train_images is None or d.max_train_images >= 1, ">= 1"),
        ("data.max_val_images", d.max_val_images, d.max_val_images is None or d.max_val_images >= 1, ">= 1"),
        ("data.scale_range", list(d.scale_range), 0 < d.scale_range[0] <= d.scale_range[1], "0 < low <= high"),
        ("segmenter.epochs", s.epochs, s.epochs >= 1, ">= 1"),
        ("segmenter.lr", s.lr, s.lr > 0, "> 0"),
        ("generator.epochs", g.epochs, g.epochs >= 1, ">= 1"),
        ("generator.lr", g.lr, g.lr > 0, "> 0"),
        ("generator.pixels_per_class", g.pixels_per_class, g.pixels_per_class >= 1, ">= 1"),
        ("classifier.epochs", c.epochs, c.epochs >= 1, ">= 1"),
        ("classifier.lr", c.lr, c.lr > 0, "> 0"),
        ("classifier.unseen_weight", c.unseen_weight, c.unseen_weight > 0, "> 0"),
        ("selftrain.epochs", st.epochs, st.epochs >= 1, ">= 1"),
        ("selftrain.top_percent", st.top_percent, 0 < st.top_percent <= 100, "in (0, 100]"),
        ("zegformer.iters", z.iters, z.iters >= 1, ">= 1"),
        ("zegformer.lr", z.lr, z.lr > 0, "> 0"),
        ("zegformer.num_queries", z.num_queries, z.num_queries >= 1, ">= 1"),
        ("zs_mmd.generator_epochs", zm.generator_epochs, zm.generator_epochs >= 1, ">= 1"),
        ("engine.grad_accum", cfg.engine.grad_accum, cfg.engine.grad_accum >= 1, ">= 1"),
    ]


def check_values(cfg: ExperimentConfig) -> ExperimentConfig:
    """Refuse values that type-check but cannot run (negative epochs, an empty batch, an unknown device), before
    any stage starts.

    Raises:
        ZeroSegError: naming the first bad key, its value and what it must be.
    """
    for key, value, ok, requirement in _ranges(cfg):
        if not ok:
            raise ZeroSegError(f"config key '{key}': {value!r} must be {requirement}")
    return cfg


def from_dict(data: dict, cls: type[T] = ExperimentConfig) -> T:
    """Build a config dataclass from a plain mapping, checking keys, types and (for an experiment) value ranges."""
    cfg = _from_dict(cls, data)
    return check_values(cfg) if isinstance(cfg, ExperimentConfig) else cfg


def to_dict(cfg: Any) -> dict:
    """The config as plain YAML-able data (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML scalars/lists) to a nested mapping."""
    for item in overrides:
        if "=" not in item:
            raise ZeroSegError(f"override '{item}' is not of the form key=value (e.g. segmenter.epochs=5)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ZeroSegError(f"override '{item}': '{p}' is not a section")
        node[parts[-1]] = value
    return data


#: Package directory of the shipped experiment configs (``zeroseg/configs/*.yaml``, package data).
PACKAGED_CONFIGS = "configs"


def packaged_configs() -> list[str]:
    """Names (file stems) of the experiment configs shipped inside the package, sorted."""
    root = resources.files("zeroseg") / PACKAGED_CONFIGS
    return sorted(f.name[: -len(".yaml")] for f in root.iterdir() if f.name.endswith(".yaml"))


def packaged_config(name: str) -> Path:
    """The file of the packaged config ``name`` (``voc_zs3net`` or ``voc_zs3net.yaml``).

    Raises:
        ZeroSegError: no such packaged config (the message lists the packaged names).
    """
    stem = name.removesuffix(".yaml")
    names = packaged_configs()
    if stem not in names:
        raise ZeroSegError(f"{name}: no such config file or packaged config (packaged: {', '.join(names)})")
    return Path(str(resources.files("zeroseg") / PACKAGED_CONFIGS / f"{stem}.yaml"))


def resolve_config(spec: str | Path) -> Path:
    """The YAML file meant by ``spec``: an existing file path, else the packaged config of that bare name.

    ``voc_zs3net`` and ``voc_zs3net.yaml`` both name ``zeroseg/configs/voc_zs3net.yaml`` unless a file of that
    name exists in the working directory (a local file wins).

    Raises:
        ZeroSegError: neither a file nor a packaged name (the message lists the packaged names).
    """
    p = Path(spec)
    if p.is_file():
        return p
    if p.parent != Path("."):
        names = ", ".join(packaged_configs())
        raise ZeroSegError(f"{p}: config file not found (packaged configs, by bare name: {names})")
    return packaged_config(p.name)


def read_config_mapping(spec: str | Path) -> dict:
    """The raw mapping of a config file or packaged config name (not validated; see :func:`resolve_config`)."""
    p = resolve_config(spec)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ZeroSegError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise ZeroSegError(f"{p}: not a UTF-8 text file") from None
    except OSError as e:
        raise ZeroSegError(f"{p}: cannot read ({e.strerror or e})") from None
    if not isinstance(data, dict):
        raise ZeroSegError(f"{p}: the top level must be a mapping of config keys")
    return data


def default_run_name(config_stem: str, split: str) -> str:
    """Run name of a config file that sets no ``name``: ``<file stem>_<split>`` (a split JSON file contributes its
    stem), so that one file trained on several splits (``data.split=voc-zs3-k4``) writes one run directory per split
    instead of resuming another split's checkpoints."""
    split_part = Path(split).stem if split.endswith(".json") else split
    return f"{config_stem}_{split_part}"


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML experiment file (or start from defaults), apply overrides, validate.

    Args:
        path: YAML file, a packaged config name (``voc_zs3net``; :func:`packaged_configs`), or None for the
            defaults.
        overrides: ``key.sub=value`` strings.

    A file without a top-level ``name`` (the per-dataset configs whose split is chosen by ``data.split``) is named
    by :func:`default_run_name` from the split after overrides; ``name=...`` in the overrides takes precedence.
    """
    data: dict = {}
    if path is not None:
        data = read_config_mapping(path)
    data = apply_overrides(data, overrides or [])
    if path is not None and "name" not in data:
        section = data.get("data")
        split = section.get("split", DataConfig.split) if isinstance(section, dict) else DataConfig.split
        data["name"] = default_run_name(resolve_config(path).stem, str(split))
    try:
        return from_dict(data)
    except ZeroSegError as e:
        where = f"{path}: " if path is not None else ""
        raise ZeroSegError(f"{where}{e}") from None


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
