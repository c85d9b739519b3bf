"""ZegFormer parity with the official code (dingjiansw101/ZegFormer), items 8-12 of docs/zegformer_official.md.

Every expected value is written out by hand from the official file:line named in the test (or derived from it with
one line of arithmetic in the test); none is read from zeroseg's own output.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from zeroseg.config import DataConfig, load_config
from zeroseg.data.classes import COCO_STUFF_171_CLASSES, official_prompt_name
from zeroseg.data.splits import load_split
from zeroseg.data.synthetic import SynthConfig
from zeroseg.data.transforms import Normalize, eval_transform, shortest_edge_size, train_transform
from zeroseg.data.zero_shot import build_zero_shot_data
from zeroseg.methods.zegformer import InferenceOptions, ZegFormerPredictor
from zeroseg.text import class_embeddings
from zeroseg.text.clip import ClipTextEncoder

# ------------------------------------------------------------------------------------------------ item 8
# datasets/pascal/create_voc_class_names_json.py:4-24 (= mask_former/data/datasets/register_pascal_voc.py:8-28):
# the strings of datasets/VOCZERO/all_classnames.json, in label order.
OFFICIAL_VOC = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip


def test_verbatim_names_are_the_official_class_json_strings():
    voc = load_split("voc-spnet-15-5").class_names
    assert [official_prompt_name(n) for n in voc] == OFFICIAL_VOC
    # COCO-Stuff (datasets/coco-stuff/create_cocostuff_class_names_json.py:6-178): zeroseg's 171 spellings are
    # the official ones, including the 30 that natural_name would rewrite.
    for name in ("wall-concrete", "playingfield", "building-other", "sky-other", "tv", "dining table"):
        assert name in COCO_STUFF_171_CLASSES and official_prompt_name(name) == name


def test_verbatim_style_puts_the_official_strings_into_the_clip_prompt(tiny_clip, monkeypatch):
    seen: list[str] = []
    original = ClipTextEncoder.encode_texts

    def record(self, texts):
        seen.extend(texts)
        return original(self, texts)

    monkeypatch.setattr(ClipTextEncoder, "encode_texts", record)
    spec = f"clip:{tiny_clip['cfg']}:{tiny_clip['st']}"
    names = ["tvmonitor", "diningtable", "wall-concrete", "playingfield", "pottedplant"]
    class_embeddings(spec, names, templates="single", style="verbatim")
    # transformer_zeroshot_predictor.py:121 (template) and :136 (template.format(classname)).
    assert seen == [
        "A photo of a tvmonitor in the scene",
        "A photo of a diningtable in the scene",
        "A photo of a wall-concrete in the scene",
        "A photo of a playingfield in the scene",
        "A photo of a potted plant in the scene",
    ]
    seen.clear()
    class_embeddings(spec, ["tvmonitor", "wall-concrete"], templates="single")  # natural stays the default
    assert seen == ["A photo of a tv monitor in the scene", "A photo of a wall concrete in the scene"]
    seen.clear()
    # The official synonym separator ", " (:129-134): each synonym formatted on its own.
    class_embeddings(spec, ["sofa, couch"], templates="single", style="verbatim")
    assert seen == ["A photo of a sofa in the scene", "A photo of a couch in the scene"]


def test_official_configs_embed_verbatim_names_and_the_demo_natural_ones():
    for name in ("voc_zegformer", "coco_stuff_zegformer", "coco_stuff_zegformer_eval_ade150"):
        assert load_config(name).text.class_name_style == "verbatim", name
    assert load_config("synthetic_zegformer").text.class_name_style == "natural"
    cfg = load_config("voc_zegformer")
    assert InferenceOptions.from_config(cfg.zegformer, cfg.text).class_name_style == "verbatim"


# ------------------------------------------------------------------------------------------------ helpers
class _FixedNet(nn.Module):
    """Stands in for the network: returns given logits and full-size mask logits; records its input."""

    def __init__(self, logits: torch.Tensor, masks: torch.Tensor) -> None:
        super().__init__()
        self.logits, self.masks, self.inputs = logits, masks, []

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> dict:
        self.inputs.append(images.clone())
        b, _, h, w = images.shape
        masks = self.masks[..., :h, :w].expand(b, -1, -1, -1)
        return {"pred_logits": self.logits.expand(b, -1, -1), "pred_masks": masks}


class _RecordingBranch:
    """Stands in for the CLIP image branch: records the CLIP images, returns fixed CLIP logits."""

    def __init__(self, clip_logits: torch.Tensor | None = None) -> None:
        self.clip_logits, self.images = clip_logits, []

    def classify(self, clip_images, masks, segment_logits, text_clip):
        self.images.append(clip_images.clone())
        out = segment_logits if self.clip_logits is None else self.clip_logits.expand_as(segment_logits)
        return out, torch.ones(segment_logits.shape[:2], dtype=torch.bool)


def _predictor(net: nn.Module, num_classes: int, seen: list[int], **options) -> ZegFormerPredictor:
    meta = {
        "class_names": [f"c{i}" for i in range(num_classes)],
        "seen_ids": seen,
        "unseen_ids": [i for i in range(num_classes) if i not in seen],
        "encoder": "random:4",
        "embed_dim": 4,
        "inference": {},
    }
    return ZegFormerPredictor(net, meta, torch.zeros(num_classes, 4), options=InferenceOptions(**options))


# ------------------------------------------------------------------------------------------------ item 9
def test_clip_image_is_clip_normalised_then_zero_padded():
    # mask_former_model.py:216-217: (x - CLIP_PIXEL_MEAN) / CLIP_PIXEL_STD first, then ImageList zero padding.
    rgb = torch.tensor([0.5, 0.25, 0.75])
    imagenet = (rgb - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    image = imagenet.view(1, 3, 1, 1).expand(1, 3, 40, 40).contiguous()
    net = _FixedNet(torch.zeros(1, 1, 3), torch.zeros(1, 1, 64, 64))
    predictor = _predictor(net, 2, [0])
    branch = _RecordingBranch()
    predictor.use_clip_branch(branch, torch.zeros(2, 4))
    predictor.scores(image)
    clip = branch.images[0]
    assert clip.shape == (1, 3, 64, 64)  # padded to a multiple of 32, at least 64 (as the network input)
    # mask_former/config.py:124-125 (CLIP_PIXEL_MEAN / CLIP_PIXEL_STD, 0..255 RGB).
    mean = torch.tensor([122.7709383, 116.7460125, 104.09373615])
    std = torch.tensor([68.5005327, 66.6321579, 70.3231630])
    expected = (rgb * 255 - mean) / std
    torch.testing.assert_close(clip[0, :, :40, :40], expected.view(3, 1, 1).expand(3, 40, 40), atol=1e-5, rtol=0)
    assert (clip[0, :, 40:, :] == 0).all() and (clip[0, :, :, 40:] == 0).all()


# ------------------------------------------------------------------------------------------------ item 10
def test_training_pad_is_raw_grey_128_at_bottom_right_after_the_flip():
    # mask_former_semantic_dataset_mapper.py:126-147: augment (resize, crop, colour, flip), THEN pad to
    # SIZE_DIVISIBILITY at the bottom/right with raw 128, the label with ignore_label 255.
    image = torch.arange(3 * 4 * 6, dtype=torch.float32).view(3, 4, 6) / 100.0
    label = torch.tensor([[0, 1, 2, 3, 4, 5]] * 4)
    tf = train_transform(8, (1.0, 1.0), flip_p=1.0, pad_value=128, pad_last=True)
    out_img, out_lab = tf(image, label, torch.Generator().manual_seed(0))
    assert out_img.shape == (3, 8, 8) and out_lab.shape == (8, 8)
    assert torch.equal(out_img[:, :4, :6], image.flip(-1)) and torch.equal(out_lab[:4, :6], label.flip(-1))
    assert (out_img[:, 4:, :] == 128 / 255).all() and (out_img[:, :, 6:] == 128 / 255).all()
    assert (out_lab[4:, :] == 255).all() and (out_lab[:, 6:] == 255).all()
    # In the network's normalised space the pad is (128 - PIXEL_MEAN) / PIXEL_STD (Base-VOC-20.yaml:6-7), not 0.
    norm, _ = Normalize()(out_img, out_lab)
    official = [(128 - 123.675) / 58.395, (128 - 116.280) / 57.120, (128 - 103.530) / 57.375]
    for c, value in enumerate(official):
        assert norm[c, 7, 7].item() == pytest.approx(value, abs=1e-5)


def test_default_training_pad_is_unchanged_black_before_the_flip():
    image = torch.ones(3, 4, 6)
    out_img, out_lab = train_transform(8, (1.0, 1.0), flip_p=1.0)(image, torch.zeros(4, 6, dtype=torch.long))
    # padded inside the crop (bottom/right) with 0, then flipped: the padding columns end up on the left.
    assert (out_img[:, :4, 2:] == 1).all() and (out_img[:, :, :2] == 0).all() and (out_lab[:, :2] == 255).all()


def test_data_config_pad_reaches_the_training_set(tmp_path):
    cfg = DataConfig(
        root=str(tmp_path / "synth"),
        unseen_policy="ignore",
        crop_size=32,
        scale_range=(1.0, 1.0),
        train_pad_value=128,
        train_pad_last=True,
        synthetic=SynthConfig(num_train=2, num_val=1, image_size=16),
    )
    image, label, _ = build_zero_shot_data(cfg, progress=False).train[0]
    assert image.shape == (3, 32, 32) and (label[16:, :] == 255).all() and (label[:, 16:] == 255).all()
    official = torch.tensor([(128 - 123.675) / 58.395, (128 - 116.280) / 57.120, (128 - 103.530) / 57.375])
    torch.testing.assert_close(image[:, 31, 31], official, atol=1e-5, rtol=0)
    # The bottom rows are padding over the whole width.
    torch.testing.assert_close(image[:, 31, 0], official, atol=1e-5, rtol=0)


def test_official_configs_pad_training_images_like_the_mapper():
    for name in ("voc_zegformer", "coco_stuff_zegformer"):
        data = load_config(name).data
        assert (data.train_pad_value, data.train_pad_last) == (128, True), name
    data = load_config("synthetic_zegformer").data
    assert (data.train_pad_value, data.train_pad_last) == (0, False)


# ------------------------------------------------------------------------------------------------ item 11
def test_shortest_edge_size_is_detectron2s_rule():
    # detectron2 ResizeShortestEdge.get_output_shape: short side -> size, long side capped, int(x + 0.5).
    assert shortest_edge_size(375, 500, 512, 2048) == (512, 683)  # 500 * 512 / 375 = 682.67
    assert shortest_edge_size(500, 375, 512, 2048) == (683, 512)
    assert shortest_edge_size(100, 1000, 512, 2048) == (205, 2048)  # 5120 > 2048: x 0.4 -> 204.8, 2048
    assert shortest_edge_size(480, 640, 640, 2560) == (640, 853)  # 853.33
    assert shortest_edge_size(64, 64, 64, None) == (64, 64)


def test_scores_come_back_at_the_original_size_bilinearly_then_calibrated():
    # A 4x4 image, test_min_size 2: the network sees 2x2 (zero-padded to 64x64); sem_seg_postprocess crops the
    # scores to 2x2 and resizes them bilinearly (align_corners=False) to 4x4; calibration comes after
    # (mask_former_model.py:397-402).
    sig = torch.tensor([[0.2, 0.6], [0.2, 0.6]])
    masks = torch.full((1, 1, 64, 64), -30.0)  # padding region: sigmoid ~ 0, so an uncropped resize would leak
    masks[0, 0, :2, :2] = torch.log(sig / (1 - sig))
    logits = torch.tensor([[[0.0, 0.0, -1e4]]])  # one query, p = (0.5, 0.5), no-object ~ 0
    net = _FixedNet(logits, masks)
    predictor = _predictor(net, 2, [0], test_min_size=2, gzero_calibrate=0.1)
    scores = predictor.scores(torch.zeros(1, 3, 4, 4))
    assert net.inputs[0].shape == (1, 3, 64, 64) and (net.inputs[0][..., 2:, :] == 0).all()
    assert scores.shape == (1, 2, 4, 4)
    # 1-D bilinear x2 of [a, b] with half-pixel centres: [a, 0.75a + 0.25b, 0.25a + 0.75b, b].
    row = 0.5 * torch.tensor([0.2, 0.3, 0.5, 0.6])
    torch.testing.assert_close(scores[0, 1], row.expand(4, 4), atol=1e-5, rtol=0)  # unseen
    torch.testing.assert_close(scores[0, 0], (row - 0.1).expand(4, 4), atol=1e-5, rtol=0)  # seen, calibrated


def test_official_configs_resize_for_the_network_and_never_the_ground_truth():
    sizes = {
        "voc_zegformer": (512, 2048),  # Base-VOC-20.yaml:38, :40
        "coco_stuff_zegformer": (640, 2560),  # Base-COCOStuff-171.yaml:39, :41
        "coco_stuff_zegformer_eval_ade150": (640, 2560),
        "coco_stuff_zegformer_eval_context59": (640, 2560),
        "coco_stuff_zegformer_eval_voc20": (640, 2560),
    }
    for name, (low, high) in sizes.items():
        cfg = load_config(name)
        assert (cfg.zegformer.test_min_size, cfg.zegformer.test_max_size) == (low, high), name
        assert cfg.data.eval_size is None and cfg.data.eval_batch_size == 1, name
    label = torch.randint(0, 20, (37, 45))
    assert eval_transform(None)(torch.zeros(3, 37, 45), label)[1] is label
    # The demo evaluates its 64x64 images at native size.
    demo = load_config("synthetic_zegformer")
    assert demo.data.eval_size is None and demo.zegformer.test_min_size is None


# ------------------------------------------------------------------------------------------------ item 12
def test_clip_without_ensembling_classifies_with_the_clip_logits():
    # mask_former_model.py:383-384 + :396: with CLIP on and both ENSEMBLING flags off, mask_cls_result is the
    # CLIP logits (segment no-object appended) and goes through semantic_inference (softmax, no-object dropped).
    clip_logits = torch.tensor([[[math.log(3.0), 0.0, 0.0]]])  # softmax = (0.6, 0.2, 0.2)
    seg_logits = torch.tensor([[[0.0, 5.0, 0.0]]])
    net = _FixedNet(seg_logits, torch.zeros(1, 1, 64, 64))  # sigmoid(0) = 0.5
    predictor = _predictor(net, 2, [0], ensemble="none", gzero_calibrate=0.0)
    predictor.use_clip_branch(_RecordingBranch(clip_logits), torch.zeros(2, 4))
    scores = predictor.scores(torch.zeros(1, 3, 8, 8))
    torch.testing.assert_close(scores[0, :, 0, 0], torch.tensor([0.3, 0.1]), atol=1e-6, rtol=0)


OFFICIAL = {
    # name: (iters, batch, crop, train templates, test templates, ensemble, calibrate, backbone)
    # VOC: Base-VOC-20.yaml:20-22, :44; zegformer_R50_bs32_10k_vit16_voc.yaml:31; R101 ..._voc.yaml:5-7;
    # R101 ..._voc_gzss_eval.yaml:20, :22.
    "voc_zegformer": (10000, 32, 512, "single", "single", "seen_unseen", 0.1, "resnet101"),
    # COCO-Stuff: Base-COCOStuff-171.yaml:20-22, :45; zegformer_R50_..._coco-stuff.yaml:18;
    # R101 ..._coco-stuff.yaml:5-8; R101 ..._coco-stuff_gzss_eval.yaml:10, :12, :13.
    "coco_stuff_zegformer": (60000, 32, 640, "imagenet_select", "single", "seen_unseen", 0.1, "resnet101"),
}


def test_configs_hold_the_official_values():
    for name, (iters, batch, crop, train_t, test_t, ensemble, cal, backbone) in OFFICIAL.items():
        cfg = load_config(name)
        z = cfg.zegformer
        assert (z.iters, cfg.data.batch_size, cfg.data.crop_size) == (iters, batch, crop), name
        assert (z.train_templates, z.test_templates, z.ensemble, z.gzero_calibrate) == (train_t, test_t, ensemble, cal)
        assert z.backbone == backbone and z.backbone_lr_mult == 0.1 and z.lr == 1e-4 and z.weight_decay == 1e-4
        assert (z.num_queries, z.hidden_dim, z.dec_layers, z.nheads, z.dim_feedforward) == (100, 256, 6, 8, 2048)
        assert (z.no_object_weight, z.mask_weight, z.dice_weight, z.clip_grad_norm) == (0.1, 20.0, 1.0, 0.01)
        assert z.ensemble_lambda == pytest.approx(2 / 3) and z.clip_templates == "imagenet_select_clip"
        assert z.clip_image is not None and z.clip_style == "cropmask"
    # The one official cross-dataset config, ..._coco-stuff_gzss_eval_847_classes.yaml: calibration 0 (:11), no
    # ensembling flag (:12-13 commented, config.py:76-77 defaults False), imagenet_select prompts (:14).
    for target in ("ade150", "context59", "voc20"):
        z = load_config(f"coco_stuff_zegformer_eval_{target}").zegformer
        assert (z.ensemble, z.gzero_calibrate, z.test_templates) == ("none", 0.0, "imagenet_select"), target
        assert z.clip_image is not None
