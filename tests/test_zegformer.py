"""ZegFormer method: targets, optimiser groups, end-to-end train/eval/predict, resume after a kill."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from zeroseg.cli import main, parse_class_list
from zeroseg.config import load_config
from zeroseg.engine.checkpoint import load_checkpoint
from zeroseg.engine.train import split_batch, train_step
from zeroseg.errors import ZeroSegError
from zeroseg.methods import load_predictor, zegformer
from zeroseg.methods.zegformer import ZegFormerPredictor, make_targets
from zeroseg.modules.zegformer import ZegFormer, pad_to_multiple

TINY_ZF = {
    "backbone": "resnet18",
    "backbone_norm": "bn",
    "hidden_dim": 32,
    "mask_dim": 32,
    "num_queries": 6,
    "dec_layers": 2,
    "nheads": 4,
    "dim_feedforward": 64,
    "iters": 4,
    "checkpoint_every": 2,
    "lr": 1e-3,
}


def _tiny_zegformer(tiny_config, **zf) -> Path:
    return tiny_config(
        method="zegformer",
        data={
            "unseen_policy": "ignore",
            "batch_size": 4,
            "eval_batch_size": 4,
            "crop_size": 32,
            "synthetic": {"num_train": 8, "num_val": 4, "image_size": 32},
        },
        zegformer={**TINY_ZF, **zf},
    )


def test_make_targets_one_mask_per_seen_class_and_ignore_in_none():
    labels = torch.tensor([[[0, 0, 2], [255, 2, 2]], [[255, 255, 255], [255, 255, 255]]])
    to_train = torch.tensor([0, -1, 1])  # class 1 is unseen: it must never be a target
    t = make_targets(labels, to_train)
    assert t[0]["labels"].tolist() == [0, 1]
    assert t[0]["masks"].tolist() == [[[1, 1, 0], [0, 0, 0]], [[0, 0, 1], [0, 1, 1]]]
    assert t[1]["labels"].numel() == 0 and t[1]["masks"].shape == (0, 2, 3)
    with pytest.raises(ZeroSegError, match="not seen classes"):
        make_targets(torch.tensor([[[1]]]), to_train)


def test_parameter_groups_follow_official_optimizer():
    model = ZegFormer(text_dim=8, backbone="resnet18", backbone_norm="bn", hidden_dim=32, mask_dim=32, num_queries=4,
                      dec_layers=1, nheads=4, dim_feedforward=16)  # fmt: skip
    groups = model.parameter_groups(1e-4, 1e-4, 0.1)
    by_id = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert len(by_id) == sum(1 for p in model.parameters() if p.requires_grad)  # every parameter exactly once
    assert by_id[id(model.backbone.conv1.weight)] == (pytest.approx(1e-5), 1e-4)
    assert by_id[id(model.backbone.bn1.weight)] == (pytest.approx(1e-5), 0.0)  # norm: no decay
    assert by_id[id(model.decoder.query_embed.weight)] == (1e-4, 0.0)  # embedding: no decay
    assert by_id[id(model.decoder.norm.weight)] == (1e-4, 0.0)  # LayerNorm
    assert by_id[id(model.pixel_decoder.layer_res5.norm.weight)] == (1e-4, 0.0)  # GroupNorm
    assert by_id[id(model.head.bg_embedding)] == (1e-4, 1e-4)
    assert by_id[id(model.head.projection.weight)] == (1e-4, 1e-4)


def test_frozen_backbone_norm_has_no_trainable_bn_and_pads():
    model = ZegFormer(text_dim=8, backbone="resnet18", hidden_dim=32, mask_dim=32, num_queries=4, dec_layers=1,
                      nheads=4, dim_feedforward=16)  # fmt: skip
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.modules())
    x = pad_to_multiple(torch.zeros(1, 3, 33, 64))
    assert x.shape == (1, 3, 64, 64)
    assert pad_to_multiple(torch.zeros(1, 3, 20, 100)).shape == (1, 3, 64, 128)  # res5 at least 2 x 2
    out = model(x, torch.randn(3, 8))
    assert out["pred_logits"].shape == (1, 4, 4) and out["pred_masks"].shape == (1, 4, 16, 16)


def test_zegformer_end_to_end_train_eval_predict(tiny_config, tmp_path, capsys):
    cfg_path = _tiny_zegformer(tiny_config)
    cfg = load_config(cfg_path)
    res = zegformer.train(cfg, progress=False)
    ckpt = res.checkpoint
    assert ckpt.name == "zegformer.safetensors" and not ckpt.with_suffix(".json").exists()
    m = res.stages["zegformer"]
    assert {"seen_miou", "unseen_miou", "hiou"} <= set(m) and len(m["loss_history"]) >= 1
    tensors, meta = load_checkpoint(ckpt)
    assert meta["method"] == "zegformer" and meta["protocol"] == "inductive" and not meta["transductive"]
    assert tensors["text.train"].shape[0] == len(meta["seen_ids"])
    assert tensors["text.eval"].shape[0] == len(meta["class_names"])

    # zeroseg eval reproduces the metrics stored at the end of training.
    assert main(["eval", str(cfg_path), "--checkpoint", str(ckpt), "--json", str(tmp_path / "e.json"), "--quiet"]) == 0
    ev = json.loads((tmp_path / "e.json").read_text())
    assert ev["method"] == "zegformer"
    assert ev["metrics"]["hiou"] == pytest.approx(m["hiou"], abs=1e-6)

    # predict with a vocabulary the model never saw (names given in a file), on an odd-sized image.
    img = tmp_path / "img.png"
    Image.fromarray((np.random.default_rng(0).random((37, 45, 3)) * 255).astype(np.uint8)).save(img)
    names = tmp_path / "names.txt"
    names.write_text("# my classes\npurple spotted\norange | tangerine\n\nred striped\n")
    assert parse_class_list(str(names)) == ["purple spotted", "orange | tangerine", "red striped"]
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(ckpt), str(img), "--out", str(out), "--classes", str(names)]) == 0
    label = np.array(Image.open(out / "img.png"))
    assert label.shape == (37, 45) and label.max() <= 2
    assert (out / "img_overlay.png").is_file()

    predictor = load_predictor(ckpt)
    assert isinstance(predictor, ZegFormerPredictor)
    predictor.set_classes(["purple spotted", "red striped"])
    assert predictor.unseen_ids == [0]  # purple spotted was never a training class
    scores = predictor.scores(torch.zeros(2, 3, 32, 32))
    assert scores.shape == (2, 2, 32, 32)
    with pytest.raises(ZeroSegError, match="empty class list"):
        predictor.set_classes([" ", ""])


def test_calibration_lowers_seen_scores_exactly(tiny_config):
    cfg = load_config(_tiny_zegformer(tiny_config, iters=1))
    ckpt = zegformer.train(cfg, progress=False).checkpoint
    x = torch.randn(1, 3, 32, 32)
    options = zegformer.InferenceOptions.from_config(cfg.zegformer)
    base = ZegFormerPredictor.from_checkpoint(ckpt, options=dataclasses.replace(options, gzero_calibrate=0.0))
    cal = ZegFormerPredictor.from_checkpoint(ckpt, options=dataclasses.replace(options, gzero_calibrate=0.1))
    a, b = base.scores(x), cal.scores(x)
    seen, unseen = base.seen_ids, base.unseen_ids
    torch.testing.assert_close(b[:, seen], a[:, seen] - 0.1)
    torch.testing.assert_close(b[:, unseen], a[:, unseen])


@pytest.mark.slow  # trains twice (killed + uninterrupted); the method's fast smoke test stays
def test_resume_after_kill_gives_the_same_weights(tiny_config, monkeypatch):
    cfg = load_config(_tiny_zegformer(tiny_config))
    full = zegformer.train(cfg, progress=False)
    ref, _ = load_checkpoint(full.checkpoint)

    killed = load_config(_tiny_zegformer(tiny_config), ["name=killed"])
    real = zegformer.pad_to_multiple
    calls = {"n": 0}

    def dies_in_iteration_4(x):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(x)

    monkeypatch.setattr(zegformer, "pad_to_multiple", dies_in_iteration_4)
    with pytest.raises(KeyboardInterrupt):
        zegformer.train(killed, progress=False)
    assert not (killed.run_dir / "zegformer.safetensors").exists()
    _, last_meta = load_checkpoint(killed.run_dir / "zegformer_last")
    assert last_meta["iter"] == 2
    monkeypatch.setattr(zegformer, "pad_to_multiple", real)
    resumed = zegformer.train(killed, progress=False)
    got, _ = load_checkpoint(resumed.checkpoint)
    assert not (killed.run_dir / "zegformer_last.safetensors").exists()  # resume state removed when done
    for k, v in ref.items():
        if k.startswith("model."):
            torch.testing.assert_close(got[k], v, msg=k)
    assert resumed.stages["zegformer"]["hiou"] == pytest.approx(full.stages["zegformer"]["hiou"])


def test_unknown_method_and_wrong_checkpoint_errors(tiny_config, tmp_path):
    from zeroseg.engine.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "c", {"x": torch.zeros(1)}, {"method": "zs3net", "stage": "segmenter"})
    with pytest.raises(ZeroSegError, match="not a ZegFormer checkpoint"):
        ZegFormerPredictor.from_checkpoint(tmp_path / "c")
    with pytest.raises(ZeroSegError, match="class list file not found"):
        parse_class_list(str(tmp_path / "missing.txt"))


def test_clip_image_branch_fused_at_inference(tiny_config, tiny_clip):
    cfg = load_config(_tiny_zegformer(tiny_config, iters=1))
    ckpt = zegformer.train(cfg, progress=False).checkpoint
    spec = f"clip:{tiny_clip['cfg']}:{tiny_clip['st']}"
    x = torch.randn(2, 3, 64, 64)
    labels = {}
    for mode in ("sequential", "per_image", "batched", "pool"):
        options = dataclasses.replace(
            zegformer.InferenceOptions.from_config(cfg.zegformer), clip_image=spec, clip_mode=mode
        )
        predictor = ZegFormerPredictor.from_checkpoint(ckpt, options=options)
        assert predictor.clip is not None and predictor.clip_text.shape == (len(predictor.class_names), 16)
        scores = predictor.scores(x)
        assert scores.shape == (2, len(predictor.class_names), 64, 64) and torch.isfinite(scores).all()
        labels[mode] = scores
    # The three crop modes are the same computation (batched differently); pool is another approximation.
    torch.testing.assert_close(labels["sequential"], labels["per_image"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(labels["sequential"], labels["batched"], atol=1e-5, rtol=1e-5)
    # Fused scores differ from the segment branch alone.
    alone = ZegFormerPredictor.from_checkpoint(ckpt).scores(x)
    assert not torch.allclose(alone, labels["per_image"])
    # A new vocabulary re-embeds the CLIP branch's text too.
    predictor.set_classes(["purple spotted", "red striped", "sky"])
    assert predictor.clip_text.shape == (3, 16)
    assert predictor.scores(x).shape == (2, 3, 64, 64)


def test_trunk_loads_local_torchvision_weights_then_freezes_bn(tmp_path):
    from torchvision.models import resnet18

    from zeroseg.modules.zegformer import build_trunk

    torch.manual_seed(0)
    ref = resnet18(weights=None)
    with torch.no_grad():
        ref.bn1.running_mean.uniform_()
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)  # torchvision's own format (with fc.* and num_batches_tracked)
    trunk = build_trunk("resnet18", norm="frozen", pretrained=path)
    torch.testing.assert_close(trunk.conv1.weight, ref.conv1.weight)
    torch.testing.assert_close(trunk.bn1.running_mean, ref.bn1.running_mean)
    assert type(trunk.bn1).__name__ == "FrozenBatchNorm2d"
    with pytest.raises(ZeroSegError, match="not found"):
        build_trunk("resnet18", pretrained=tmp_path / "missing.pth")
    with pytest.raises(ZeroSegError, match="unknown"):
        build_trunk("resnet7")


def _step_loss_and_grads(model, batch, terms, normaliser, accum):
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    loss = train_step(
        model,
        split_batch(batch, accum, "cpu"),
        loss_terms=terms,
        normaliser=normaliser,
        optimizer=opt,
        scheduler=None,
        device="cpu",
    )
    return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_grad_accum_is_exact_for_the_set_loss_with_uneven_mask_counts():
    """A 4-image batch whose halves hold 5 and 1 target masks: 2 micro-batches give the loss and gradient of one.

    Each micro-batch's set loss is normalised by its own mask count; averaging the two halves' losses (what a
    per-chunk loop does) would give the single mask of the second half the weight of five.
    """
    torch.manual_seed(0)
    cfg = {**TINY_ZF, "backbone_norm": "frozen", "dropout": 0.0}
    model = ZegFormer(
        text_dim=8,
        **{k: cfg[k] for k in ("backbone", "backbone_norm", "hidden_dim", "mask_dim", "num_queries")},
        dec_layers=cfg["dec_layers"],
        nheads=cfg["nheads"],
        dim_feedforward=cfg["dim_feedforward"],
        dropout=0.0,
    ).train()
    labels = torch.full((4, 32, 32), 255)
    labels[0, :10], labels[0, 10:20], labels[0, 20:] = 0, 1, 2  # 3 masks
    labels[1, :, :16], labels[1, :, 16:] = 1, 3  # 2 masks -> 5 in the first half
    labels[2, 8:24, 8:24] = 2  # 1 mask; image 3 has none -> 1 in the second half
    images = torch.randn(4, 3, 32, 32)
    criterion = zegformer.SetCriterion(
        num_classes=4,
        matcher=zegformer.HungarianMatcher(cost_class=1.0, cost_mask=20.0, cost_dice=1.0),
        eos_coef=0.1,
        weight_dict=zegformer.default_weight_dict(mask_weight=20.0, dice_weight=1.0, dec_layers=cfg["dec_layers"]),
    )
    text = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    terms, normaliser = zegformer.set_loss(criterion, text, torch.arange(4), cfg["num_queries"])
    assert normaliser((images[:2], labels[:2]))["masks"] == 5 and normaliser((images[2:], labels[2:]))["masks"] == 1
    full_loss, full_grads = _step_loss_and_grads(model, (images, labels), terms, normaliser, 1)
    # The full batch's loss straight from the criterion: the reference the accumulated step must reproduce.
    outputs = model(images, text)
    direct = sum(criterion.weighted(criterion(outputs, zegformer.make_targets(labels, torch.arange(4)))).values())
    assert full_loss == pytest.approx(float(direct.detach()), rel=1e-5)
    accum_loss, accum_grads = _step_loss_and_grads(model, (images, labels), terms, normaliser, 2)
    assert accum_loss == pytest.approx(full_loss, rel=1e-5)
    assert full_grads.keys() == accum_grads.keys()
    scale = max(float(g.abs().max()) for g in full_grads.values())
    for name, g in full_grads.items():  # float32 sums in another order: differences ~1e-6 of the largest gradient
        torch.testing.assert_close(accum_grads[name], g, rtol=1e-4, atol=1e-6 * scale, msg=name)


def test_train_from_equals_training_the_unseen_only_control(tiny_config):
    """Inductive training embeds only the seen names: the unseen-only-random control trained from scratch has the
    real run's weights bit for bit, and ``train_from`` (no training) gives the same checkpoint and metrics."""
    from zeroseg.data.splits import load_split
    from zeroseg.text import unseen_matched_spec

    path = _tiny_zegformer(tiny_config)
    real = zegformer.train(load_config(path), progress=False)
    split = load_split("synthetic")
    spec = unseen_matched_spec("glove-6b-50d", split.unseen, split.seen, 7)
    trained = zegformer.train(load_config(path, ["name=ctrl_trained", f"text.encoder={spec}"]), progress=False)
    shortcut = zegformer.train_from(
        load_config(path, ["name=ctrl_eval", f"text.encoder={spec}"]), real.checkpoint, progress=False
    )
    ref, _ = load_checkpoint(real.checkpoint)
    got_trained, _ = load_checkpoint(trained.checkpoint)
    got, meta = load_checkpoint(shortcut.checkpoint)
    for k, v in ref.items():
        if k.startswith("model."):
            assert torch.equal(got_trained[k], v), k  # the premise: training is the real run's
            assert torch.equal(got[k], v), k
    assert torch.equal(got["text.eval"], got_trained["text.eval"]) and not torch.equal(
        got["text.eval"], ref["text.eval"]
    )
    assert meta["trained_in"] == str(real.checkpoint) and meta["encoder"] == spec
    for key in ("seen_miou", "unseen_miou", "hiou"):
        assert shortcut.stages["zegformer"][key] == trained.stages["zegformer"][key]


def test_train_from_refuses_a_run_whose_training_differs(tiny_config):
    path = _tiny_zegformer(tiny_config)
    real = zegformer.train(load_config(path), progress=False)
    with pytest.raises(ZeroSegError, match="the seen-class embeddings"):  # all names random: seen ones differ too
        zegformer.train_from(
            load_config(path, ["name=c1", "text.encoder=random:50:0"]), real.checkpoint, progress=False
        )
    with pytest.raises(ZeroSegError, match=r"\(seed\)"):
        zegformer.train_from(load_config(path, ["name=c2", "seed=5"]), real.checkpoint, progress=False)
