"""Tests for zeroseg.modules.clip_branch: ZegFormer's CLIP image branch, fusion and fast paths."""

from __future__ import annotations

import math

import pytest
import torch

from zeroseg.errors import ZeroSegError
from zeroseg.modules.clip_branch import (
    CLIP_MEAN_255,
    CLIP_STD_255,
    ClipImageBranch,
    fuse_scores,
    fused_semantic_inference,
    imagenet_to_clip,
    mask_boxes,
    segment_crops,
    to_clip_input,
)

# ------------------------------------------------------------------------------------------ normalisation


def test_clip_normalisation_helpers():
    assert CLIP_MEAN_255 == (122.7709383, 116.7460125, 104.09373615)
    assert CLIP_STD_255 == (68.5005327, 66.6321579, 70.3231630)
    img = torch.tensor([122.7709383, 116.7460125 + 66.6321579, 104.09373615 - 2 * 70.3231630]).view(1, 3, 1, 1)
    torch.testing.assert_close(to_clip_input(img).flatten(), torch.tensor([0.0, 1.0, -2.0]))
    # uint8 input is accepted; ImageNet-normalised input round-trips through 0..1 RGB.
    rgb = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    imagenet = (rgb.float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(imagenet_to_clip(imagenet), to_clip_input(rgb), atol=1e-4, rtol=0)
    with pytest.raises(ZeroSegError, match=r"\(B, 3, H, W\)"):
        to_clip_input(torch.zeros(3, 4, 4))


# ----------------------------------------------------------------------------------------------- boxes


def test_mask_boxes_official_rule():
    h, w = 8, 10
    masks = torch.zeros(6, h, w, dtype=torch.bool)
    masks[0, 1:4, 2:6] = True  # rectangle rows 1..3, cols 2..5
    masks[1, 1:7, 1] = True  # L: vertical bar in column 1 ...
    masks[1, 6, 1:8] = True  # ... and a foot along row 6 to column 7
    # masks[2] empty -> full image
    masks[3, 4, 4] = True  # single pixel -> area 0 -> full image
    masks[4, 2, 3:7] = True  # one-pixel-thin line -> area 0 -> full image (official quirk)
    masks[5, 5:8, 7:10] = True  # touches the last row and column
    boxes = mask_boxes(masks)
    assert boxes.dtype == torch.float32
    expected = torch.tensor(
        [
            [2.0, 1.0, 5.0, 3.0],  # x2/y2 are the last column/row index, not one past it
            [1.0, 1.0, 7.0, 6.0],
            [0.0, 0.0, 10.0, 8.0],
            [0.0, 0.0, 10.0, 8.0],
            [0.0, 0.0, 10.0, 8.0],
            [7.0, 5.0, 9.0, 7.0],
        ]
    )
    torch.testing.assert_close(boxes, expected, atol=0, rtol=0)
    with pytest.raises(ZeroSegError, match="mask_boxes"):
        mask_boxes(torch.zeros(8, 10))


# ---------------------------------------------------------------------------------------------- fusion


def _logits(rows: list[list[float]], shift: float = 3.0) -> torch.Tensor:
    """(1, Q, C+1) logits whose softmax is exactly the given probability rows (a shift changes nothing)."""
    return torch.tensor(rows, dtype=torch.float64).log().unsqueeze(0) + shift


# Segment probabilities (classes 0, 1, 2, no-object); perfect cubes so that the 1/3 and 2/3 powers are exact.
P_SEG = [[27 / 64, 1 / 8, 1 / 64, 28 / 64], [1 / 27, 8 / 27, 8 / 27, 10 / 27]]
SEEN, UNSEEN = [0, 1], [2]


def test_fuse_scores_hand_computed():
    # CLIP probabilities; the seen-class means are 1/8 (query 0) and 1/27 (query 1).
    p_clip = [[1 / 16, 3 / 16, 27 / 64, 21 / 64], [1 / 54, 3 / 54, 1 / 8, 1 - 4 / 54 - 1 / 8]]
    fused = fuse_scores(_logits(P_SEG), _logits(p_clip, -1.0), None, SEEN, UNSEEN)
    # seen: p_seg**(2/3) * mean_seen(p_clip)**(1/3); unseen: p_seg**(1/3) * p_clip**(2/3)
    expected = torch.tensor(
        [
            [(9 / 16) * (1 / 2), (1 / 4) * (1 / 2), (1 / 4) * (9 / 16)],
            [(1 / 9) * (1 / 3), (4 / 9) * (1 / 3), (2 / 3) * (1 / 4)],
        ],
        dtype=torch.float64,
    )
    assert fused.shape == (1, 2, 3)
    torch.testing.assert_close(fused[0], expected, atol=1e-12, rtol=0)
    # lam is a parameter: lam = 1 keeps p_seg on seen classes and p_clip on unseen ones.
    fused1 = fuse_scores(_logits(P_SEG), _logits(p_clip), None, SEEN, UNSEEN, lam=1.0)
    torch.testing.assert_close(fused1[0, :, :2], torch.tensor(P_SEG, dtype=torch.float64)[:, :2])
    torch.testing.assert_close(fused1[0, :, 2], torch.tensor([27 / 64, 1 / 8], dtype=torch.float64))


def test_fuse_scores_all_classes_and_skipped_queries():
    p_clip = [[1 / 8, 1 / 8, 27 / 64, 21 / 64], [1 / 27, 1 / 27, 1 / 8, 1 - 2 / 27 - 1 / 8]]
    fused = fuse_scores(_logits(P_SEG), _logits(p_clip), None, SEEN, UNSEEN, all_classes=True)
    # every class: p_seg**(1/3) * p_clip**(2/3)
    expected = torch.tensor(
        [[(3 / 4) * (1 / 4), (1 / 2) * (1 / 4), (1 / 4) * (9 / 16)], [(1 / 3) * (1 / 9), (2 / 3) * (1 / 9), 1 / 6]],
        dtype=torch.float64,
    )
    torch.testing.assert_close(fused[0], expected, atol=1e-12, rtol=0)
    # A query that CLIP did not encode keeps the segment branch's probabilities.
    encoded = torch.tensor([[True, False]])
    for all_cls in (False, True):
        part = fuse_scores(_logits(P_SEG), _logits(p_clip), encoded, SEEN, UNSEEN, all_classes=all_cls)
        full = fuse_scores(_logits(P_SEG), _logits(p_clip), None, SEEN, UNSEEN, all_classes=all_cls)
        torch.testing.assert_close(part[0, 0], full[0, 0], atol=0, rtol=0)
        torch.testing.assert_close(part[0, 1], torch.tensor(P_SEG[1][:3], dtype=torch.float64), atol=1e-12, rtol=0)
    with pytest.raises(ZeroSegError, match="disjoint"):
        fuse_scores(_logits(P_SEG), _logits(p_clip), None, [0, 1], [1, 2])
    with pytest.raises(ZeroSegError, match="disjoint"):
        fuse_scores(_logits(P_SEG), _logits(p_clip), None, [0], [2])
    with pytest.raises(ZeroSegError, match="class ids"):
        fuse_scores(_logits(P_SEG), _logits(p_clip), None, [0, 1], [3])


def test_fused_semantic_inference_golden_with_calibration():
    fused = torch.tensor([[[0.5, 0.2, 0.1], [0.1, 0.3, 0.55]]])
    # sigmoid: q0 -> (0.75, 0.25), q1 -> (0.5, 0.5)
    masks = torch.tensor([[[[math.log(3), -math.log(3)]], [[0.0, 0.0]]]])
    raw = fused_semantic_inference(fused, masks, SEEN, gzero_calibrate=0.0)
    expected = torch.tensor([[0.425, 0.175], [0.3, 0.2], [0.35, 0.3]]).view(1, 3, 1, 2)
    torch.testing.assert_close(raw, expected, atol=1e-6, rtol=0)
    cal = fused_semantic_inference(fused, masks, SEEN, gzero_calibrate=0.1)
    expected_cal = torch.tensor([[0.325, 0.075], [0.2, 0.1], [0.35, 0.3]]).view(1, 3, 1, 2)
    torch.testing.assert_close(cal, expected_cal, atol=1e-6, rtol=0)
    # Calibration hands pixel 0 from the seen class 0 to the unseen class 2.
    assert raw.argmax(1).tolist() == [[[0, 2]]] and cal.argmax(1).tolist() == [[[2, 2]]]


class _FixedSegments(torch.nn.Module):
    """Stands in for the ZegFormer network: 2 queries with given segment logits and spatially constant masks."""

    def __init__(self, pred_logits: torch.Tensor, mask_logits: list[float]) -> None:
        super().__init__()
        self.pred_logits = pred_logits
        self.mask_logits = torch.tensor(mask_logits, dtype=torch.float64)

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        b, _, h, w = images.shape
        masks = self.mask_logits.view(1, -1, 1, 1).expand(b, -1, h // 4, w // 4)
        return {"pred_logits": self.pred_logits.expand(b, -1, -1), "pred_masks": masks}


class _FixedClip:
    """Stands in for the CLIP image branch: the given CLIP logits for every query, all queries encoded."""

    def __init__(self, clip_logits: torch.Tensor) -> None:
        self.clip_logits = clip_logits

    def classify(
        self, images: torch.Tensor, masks: torch.Tensor, pred_logits: torch.Tensor, text: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, q = pred_logits.shape[:2]
        return self.clip_logits.expand(b, -1, -1), torch.ones(b, q, dtype=torch.bool)


def test_predictor_fuses_seen_and_unseen_classes_by_the_official_ensembling_rule():
    """``ZegFormerPredictor.scores`` hands its seen and unseen ids to the fusion and the calibration the right way
    round: class 2 (unseen) gets CLIP's own probability, classes 0 and 1 (seen) CLIP's seen-class mean."""
    from zeroseg.methods.zegformer import ZegFormerPredictor

    p_clip = [[1 / 16, 3 / 16, 27 / 64, 21 / 64], [1 / 54, 3 / 54, 1 / 8, 1 - 4 / 54 - 1 / 8]]
    meta = {
        "class_names": ["red striped", "blue dotted", "green checkered"],
        "seen_ids": SEEN,
        "unseen_ids": UNSEEN,
        "inference": {"gzero_calibrate": 0.1, "ensemble_lambda": 2.0 / 3.0, "ensemble": "seen_unseen"},
        "encoder": "fixed",
        "embed_dim": 4,
    }
    # sigmoid of the mask logits: query 0 covers every pixel with 3/4, query 1 with 1/2.
    model = _FixedSegments(_logits(P_SEG), [math.log(3.0), 0.0])
    predictor = ZegFormerPredictor(model, meta, torch.zeros(3, 4))
    predictor.use_clip_branch(_FixedClip(_logits(p_clip)), torch.zeros(3, 4))
    scores = predictor.scores(torch.zeros(1, 3, 8, 8))
    assert scores.shape == (1, 3, 8, 8)
    # Official ENSEMBLING, lambda 2/3. Seen c in {0, 1}: p_seg[c]**(2/3) * mean(p_clip[0], p_clip[1])**(1/3);
    # unseen c = 2: p_seg[2]**(1/3) * p_clip[2]**(2/3). Query 0: mean seen CLIP (1/16 + 3/16)/2 = 1/8.
    q0 = [(27 / 64) ** (2 / 3) * (1 / 8) ** (1 / 3), (1 / 8) ** (2 / 3) * (1 / 8) ** (1 / 3)]
    q0 += [(1 / 64) ** (1 / 3) * (27 / 64) ** (2 / 3)]
    # Query 1: mean seen CLIP (1/54 + 3/54)/2 = 1/27.
    q1 = [(1 / 27) ** (2 / 3) * (1 / 27) ** (1 / 3), (8 / 27) ** (2 / 3) * (1 / 27) ** (1 / 3)]
    q1 += [(8 / 27) ** (1 / 3) * (1 / 8) ** (2 / 3)]
    # = [9/32, 1/8, 9/64] and [1/27, 4/27, 1/6]; scores = sum over queries of fused * sigmoid(mask), then the
    # calibration 0.1 is subtracted from the seen classes only.
    calibration = [0.1 if c in SEEN else 0.0 for c in range(3)]
    expected = [3 / 4 * a + 1 / 2 * b - cal for a, b, cal in zip(q0, q1, calibration, strict=True)]
    torch.testing.assert_close(scores[0, :, 0, 0], torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=0)
    assert (scores == scores[..., :1, :1]).all()
    # The unseen class wins: 27/256 + 1/12 = 0.189 against 27/128 + 1/54 - 0.1 = 0.129 for class 0.
    assert scores.argmax(1).unique().tolist() == [2]


# ------------------------------------------------------------------------------------------------ crops


def test_crop_styles():
    g = torch.Generator().manual_seed(0)
    img = torch.randn(1, 3, 16, 16, generator=g) + 5.0  # no zeros in the image itself
    logits = torch.full((1, 3, 16, 16), -4.0)
    logits[0, 0, :, :4] = 4.0  # L: a left bar ...
    logits[0, 0, 12:, :] = 4.0  # ... and a bottom bar; box (0, 0, 15, 15)
    # query 1 empty -> full-image box; query 2: a 4x4 square in the middle -> box (6, 6, 9, 9)
    logits[0, 2, 6:10, 6:10] = 4.0
    cm = segment_crops(img, logits, "cropmask", 32)
    assert cm.shape == (1, 3, 3, 32, 32)
    # Sample points of crop row/col j lie at -0.5 + (j + 0.5) * 15 / 32: rows 0..21 are above row 10, columns
    # >= 12 right of column 5 -> every bilinear neighbour is outside the L -> exactly zero.
    assert torch.all(cm[0, 0, :, :21, 12:] == 0)
    assert torch.all(cm[0, 0, :, 27:, :] != 0) and torch.all(cm[0, 0, :, :, :7] != 0)
    assert torch.all(cm[0, 1] == 0)  # empty mask: the full image, all masked out
    assert torch.all(cm[0, 2] != 0)  # the box lies inside the square
    crop = segment_crops(img, logits, "crop", 16)
    # Empty mask -> box (0, 0, W, H); with S = H = W and aligned=True, roi_align samples exact pixel centres.
    torch.testing.assert_close(crop[0, 1], img[0], atol=1e-5, rtol=0)
    assert torch.all(crop[0, 0] != 0)
    # Box (6, 6, 9, 9) of the square: sample rows/cols j >= 3 (at 5.5 + (j + 0.5) * 3 / 16 >= 6) only touch
    # pixels inside the square, so cropmask equals crop there; j = 0 also reads the masked-out row/col 5.
    sq = segment_crops(img, logits, "cropmask", 16)[0, 2]
    torch.testing.assert_close(crop[0, 2, :, 3:, 3:], sq[:, 3:, 3:], atol=1e-5, rtol=0)
    assert torch.all((crop[0, 2, :, 0] - sq[:, 0]).abs() > 1e-3)
    mk = segment_crops(img, logits, "mask", 8)
    assert mk.shape == (1, 3, 3, 8, 8)
    half = torch.nn.functional.interpolate(img, size=8, mode="bilinear", align_corners=False)
    torch.testing.assert_close(mk[0, 0, :, 6:, :], half[0, :, 6:, :])  # bottom bar kept
    assert torch.all(mk[0, 0, :, :6, 2:] == 0) and torch.all(mk[0, 1] == 0)
    with pytest.raises(ZeroSegError, match="unknown style"):
        segment_crops(img, logits, "box", 8)
    with pytest.raises(ZeroSegError, match="do not match images"):
        segment_crops(img, logits[..., :8], "crop", 8)


# ------------------------------------------------------------------------------------------- tiny CLIP


def _inputs(b: int = 2, q: int = 6, c: int = 4, h: int = 40, w: int = 48):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(b, 3, h, w, generator=g)
    masks = torch.full((b, q, h, w), -3.0)
    for i in range(b):
        for j in range(q - 1):  # last query of each image stays empty
            y0, x0 = (5 * j + 3 * i) % (h - 12), (7 * j + i) % (w - 14)
            masks[i, j, y0 : y0 + 6 + 2 * j, x0 : x0 + 5 + 3 * j] = 2.0
    seg = torch.randn(b, q, c + 1, generator=g) * 3
    seg[..., -1] = -5.0  # objects ...
    seg[:, 1, -1] = 20.0  # ... except query 1: certainly no-object
    text = torch.nn.functional.normalize(torch.randn(c, 16, generator=g), dim=-1)
    return images, masks, seg, text


def test_from_spec_loads_both_formats_and_modes_agree(tiny_clip):
    images, masks, seg, text = _inputs()
    spec_pt = f"clip:{tiny_clip['cfg']}:{tiny_clip['ckpt']}"
    branch = ClipImageBranch.from_spec(spec_pt, mode="sequential")
    assert branch.input_size == (32, 32)
    ref, enc = branch(images, masks, seg, text)
    assert ref.shape == (2, 6, 5) and enc.all()
    torch.testing.assert_close(ref[..., -1], seg[..., -1], atol=0, rtol=0)  # no-object column appended
    # Reference for one query, by hand from open_clip: crop, encode, normalise, scale.
    model = tiny_clip["model"]
    crop = segment_crops(images, masks, "cropmask", 32)[1, 2:3]
    with torch.no_grad():
        f = model.encode_image(crop, normalize=True)
    torch.testing.assert_close(ref[1, 2, :-1], model.logit_scale.exp() * (f @ text.t())[0], atol=1e-4, rtol=0)
    for mode, max_batch in (("per_image", 128), ("batched", 5), ("batched", 128)):
        out, enc = ClipImageBranch(branch.model, mode=mode, max_batch=max_batch)(images, masks, seg, text)
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-5)
        assert enc.all()
    st_branch = ClipImageBranch.from_spec(f"clip:{tiny_clip['cfg']}:{tiny_clip['st']}", mode="batched")
    torch.testing.assert_close(st_branch(images, masks, seg, text)[0], ref, atol=1e-4, rtol=1e-5)
    # The other styles: different CLIP inputs, hence different logits; modes still agree.
    for style in ("crop", "mask"):
        seq = ClipImageBranch(branch.model, style=style, mode="sequential")(images, masks, seg, text)[0]
        bat = ClipImageBranch(branch.model, style=style, mode="batched", max_batch=4)(images, masks, seg, text)[0]
        torch.testing.assert_close(bat, seq, atol=1e-4, rtol=1e-5)
        assert not torch.allclose(seq, ref, atol=1e-2)


def test_skipping_leaves_the_right_queries_unencoded(tiny_clip):
    images, masks, seg, text = _inputs()
    full, _ = ClipImageBranch(tiny_clip["model"], mode="batched")(images, masks, seg, text)
    for mode in ("batched", "per_image", "sequential", "pool"):
        branch = ClipImageBranch(tiny_clip["model"], mode=mode, skip_empty=True, skip_no_object=0.9)
        out, enc = branch(images, masks, seg, text)
        expected = torch.ones(2, 6, dtype=torch.bool)
        expected[:, 5] = False  # empty masks
        expected[:, 1] = False  # no-object probability ~1
        assert enc.tolist() == expected.tolist(), mode
        torch.testing.assert_close(out[~enc], seg[~enc], atol=0, rtol=0)
        if mode != "pool":
            torch.testing.assert_close(out[enc], full[enc], atol=1e-4, rtol=1e-5)
        fused = fuse_scores(seg, out, enc, [0, 1], [2, 3])
        torch.testing.assert_close(fused[~enc], seg.softmax(-1)[..., :4][~enc], atol=0, rtol=0)
    only_empty = ClipImageBranch(tiny_clip["model"], mode="batched", skip_empty=True)(images, masks, seg, text)[1]
    assert only_empty[:, 1].all() and not only_empty[:, 5].any()
    # Nothing to encode at all: every row is the segment logits.
    none_out, none_enc = ClipImageBranch(tiny_clip["model"], mode="batched", skip_no_object=0.0)(
        images, masks, seg, text
    )
    assert not none_enc.any()
    torch.testing.assert_close(none_out, seg, atol=0, rtol=0)


def test_pool_mode_uses_dense_tokens(tiny_clip):
    model = tiny_clip["model"]
    h = w = 64
    images = torch.zeros(1, 3, h, w)
    images[0, 0, :, : w // 2] = 2.0  # left half one colour ...
    images[0, 2, :, w // 2 :] = 2.0  # ... right half another
    masks = torch.full((1, 4, h, w), -5.0)
    masks[0, 0, :, : w // 2] = 5.0  # left half: patches (0, 0) and (1, 0)
    masks[0, 1, :, w // 2 :] = 5.0  # right half
    masks[0, 2] = 5.0  # whole image
    # query 3 empty -> falls back to the global image embedding
    seg = torch.zeros(1, 4, 4)
    text = torch.nn.functional.normalize(torch.randn(3, 16, generator=torch.Generator().manual_seed(2)), dim=-1)
    out, enc = ClipImageBranch(model, mode="pool")(images, masks, seg, text)
    assert out.shape == (1, 4, 4) and enc.all()
    assert not torch.allclose(out[0, 0], out[0, 1], atol=1e-3)
    # Reference from open_clip's own forward_intermediates: last block, ln_post, proj.
    with torch.no_grad():
        x = torch.nn.functional.interpolate(images, size=32, mode="bilinear", align_corners=False)
        inter = model.visual.forward_intermediates(x, indices=1, normalize_intermediates=True, output_fmt="NLC")
        tokens = inter["image_intermediates"][-1][0] @ model.visual.proj  # (4, 16), row-major 2x2 grid
        global_f = inter["image_features"][0]
    scale = model.logit_scale.exp()
    for qi, feat in enumerate((tokens[[0, 2]].mean(0), tokens[[1, 3]].mean(0), tokens.mean(0), global_f)):
        feat = feat / feat.norm()
        torch.testing.assert_close(out[0, qi, :3], scale * feat @ text.t(), atol=1e-4, rtol=0)


def test_bad_options_and_inputs(tiny_clip):
    model = tiny_clip["model"]
    with pytest.raises(ZeroSegError, match="unknown mode"):
        ClipImageBranch(model, mode="fast")
    with pytest.raises(ZeroSegError, match="unknown style"):
        ClipImageBranch(model, style="box")
    with pytest.raises(ZeroSegError, match="max_batch"):
        ClipImageBranch(model, max_batch=0)
    with pytest.raises(ZeroSegError, match="skip_no_object"):
        ClipImageBranch(model, skip_no_object=1.5)
    with pytest.raises(ZeroSegError, match="expected clip:"):
        ClipImageBranch.from_spec("clip:ViT-B-16")
    with pytest.raises(ZeroSegError, match="not found"):
        ClipImageBranch.from_spec(f"clip:{tiny_clip['cfg']}:{tiny_clip['cfg'].parent / 'absent.safetensors'}")
    images, masks, seg, text = _inputs()
    branch = ClipImageBranch(model)
    with pytest.raises(ZeroSegError, match="text embeddings"):
        branch(images, masks, seg, text[:3])
    with pytest.raises(ZeroSegError, match="segment logits"):
        branch(images, masks, seg[:, :4], text)
