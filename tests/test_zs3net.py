"""ZS3Net end to end on tiny data: the CLI path, resume after a kill, and the zero-shot mechanism on a toy."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zeroseg import generative
from zeroseg.cli import main
from zeroseg.config import load_config
from zeroseg.engine.checkpoint import load_checkpoint
from zeroseg.methods import zs3net
from zeroseg.modules.gmmn import GMMNGenerator
from zeroseg.modules.mmd import mmd_loss

ZS5 = {"segmenter": {"epochs": 2}, "selftrain": {"enabled": True, "epochs": 1}}


def test_cli_train_eval_predict(tmp_path: Path, tiny_config, capsys) -> None:
    cfg = tiny_config(**ZS5)
    assert main(["train", str(cfg), "--quiet"]) == 0
    run = tmp_path / "runs" / "tiny"
    for stage in ("segmenter", "generator", "classifier", "selftrain"):
        assert (run / f"{stage}.safetensors").is_file()
    assert (run / "config.yaml").is_file()
    _, meta = load_checkpoint(run / "classifier")
    assert meta["method"] == "zs3net" and meta["protocol"] == "strict" and not meta["transductive"]
    assert meta["encoder"] == "glove-6b-50d" and meta["embed_dim"] == 50
    assert meta["split"]["unseen"] == ["red dotted", "green checkered", "blue striped", "yellow checkered"]
    _, meta5 = load_checkpoint(run / "selftrain")
    assert meta5["method"] == "zs3net" and meta5["variant"] == "zs5net" and meta5["transductive"]
    # ZS5Net wrote one pseudo-label PNG per unlabelled (dropped) training image, unseen ids or 255 only.
    pseudo = sorted((run / "pseudo_labels").glob("*.png"))
    assert pseudo
    unseen = set(meta["unseen_ids"]) | {255}
    for p in pseudo:
        assert set(np.unique(np.array(Image.open(p))).tolist()) <= unseen

    out_json = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval",
                str(cfg),
                "--checkpoint",
                str(run / "classifier.safetensors"),
                "--json",
                str(out_json),
                "--quiet",
            ]
        )
        == 0
    )
    result = json.loads(out_json.read_text())
    assert result["protocol"] == "strict"
    stored = json.loads((run / "metrics.json").read_text())["classifier"]
    assert result["metrics"]["hiou"] == pytest.approx(stored["hiou"])
    printed = capsys.readouterr().out
    assert "hIoU" in printed and "strict protocol" in printed

    image = tmp_path / "synth" / "images" / "val" / "00000.png"
    out = tmp_path / "pred"
    # A class list with names the model never saw ("purple circle"): refit on the spot.
    assert (
        main(
            [
                "predict",
                str(image),
                "--checkpoint",
                str(run / "classifier"),
                "--out",
                str(out),
                "--classes",
                "sky, grass, sand, road, purple dotted, red dotted",
            ]
        )
        == 0
    )
    label = np.array(Image.open(out / "00000.png"))
    assert label.shape == (32, 32) and label.max() < 6
    assert (out / "00000_overlay.png").is_file()


def test_cli_errors_are_one_line(tmp_path: Path, tiny_config, capsys) -> None:
    cfg = tiny_config(**ZS5)
    assert main(["train", str(cfg), "segmenter.epochz=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown config key 'segmenter.epochz'" in err
    assert main(["predict", "nope.png", "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


@pytest.mark.slow  # trains twice (killed + uninterrupted); the method's fast smoke test stays
def test_resume_after_kill_matches_uninterrupted_run(tiny_config, monkeypatch) -> None:
    cfg_path = tiny_config(**ZS5)
    straight = load_config(cfg_path, ["name=straight", "selftrain.enabled=false"])
    zs3net.train(straight, progress=False)

    killed = load_config(cfg_path, ["name=killed", "selftrain.enabled=false"])
    real_epoch = zs3net.train_one_epoch
    calls = {"n": 0}

    def dying_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed during the second segmenter epoch
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(zs3net, "train_one_epoch", dying_epoch)
    with pytest.raises(KeyboardInterrupt):
        zs3net.train(killed, progress=False)
    run = killed.run_dir
    assert (run / "segmenter_last.safetensors").is_file() and not (run / "segmenter.safetensors").exists()
    assert load_checkpoint(run / "segmenter_last")[1]["epoch"] == 1
    monkeypatch.setattr(zs3net, "train_one_epoch", real_epoch)
    zs3net.train(killed, progress=False)

    a, _ = load_checkpoint(straight.run_dir / "segmenter")
    b, _ = load_checkpoint(run / "segmenter")
    for k in a:
        if k.startswith("segmenter."):
            torch.testing.assert_close(a[k], b[k], msg=k)
    # A second run finds every stage complete and trains nothing.
    monkeypatch.setattr(zs3net, "train_one_epoch", lambda *a, **k: pytest.fail("retrained a done stage"))
    res = zs3net.train(killed, progress=False)
    assert res.checkpoint.name == "classifier.safetensors"


def test_generated_features_teach_the_classifier_an_unseen_class() -> None:
    """Toy ZS3: features are a fixed function of compositional embeddings; class 3 is never seen."""
    g = torch.Generator().manual_seed(0)
    emb = torch.tensor([[1.0, 0, 1, 0], [1, 0, 0, 1], [0, 1, 1, 0], [0, 1, 0, 1]])  # colour x shape
    proj = torch.randn(4, 8, generator=g) * 2
    centres = emb @ proj

    def real(c: int, n: int) -> torch.Tensor:
        return centres[c] + 0.3 * torch.randn(n, 8, generator=g)

    gen = GMMNGenerator(embed_dim=4, noise_dim=4, hidden_dim=64, feature_dim=8, dropout=0.0)
    opt = torch.optim.Adam(gen.parameters(), lr=5e-3)
    first = None
    for step in range(400):
        c = step % 3
        loss = mmd_loss(gen(emb[c].expand(64, -1)), real(c, 64), sigmas=(1.0, 4.0, 16.0))
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first

    classifier = torch.nn.Conv2d(8, 4, 1)
    with torch.no_grad():
        fake_unseen = gen(emb[3].expand(200, -1))

    def batches():
        x = torch.cat([real(0, 200), real(1, 200), real(2, 200), fake_unseen])
        y = torch.arange(4).repeat_interleave(200)
        perm = torch.randperm(800, generator=g)
        for i in range(0, 800, 100):
            yield x[perm[i : i + 100]], y[perm[i : i + 100]]

    generative.fit_linear_classifier(
        classifier, batches, epochs=30, lr=0.05, class_weight=None, desc="t", progress=False
    )
    test = real(3, 300)
    pred = classifier(test[:, :, None, None])[:, :, 0, 0].argmax(1)
    assert (pred == 3).float().mean() > 0.9  # recognised from generated features alone


def test_sample_pixels_caps_per_image_and_class() -> None:
    feats = torch.arange(2 * 3 * 4 * 4, dtype=torch.float).reshape(2, 3, 4, 4)
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    labels[0, :2] = 1
    labels[1] = 255
    x, y = generative.sample_pixels(feats, labels, torch.tensor([0, 1]), per_class=5)
    assert x.shape == (10, 3) and sorted(y.tolist()) == [0] * 5 + [1] * 5
    # every sampled feature is a real pixel of its class in image 0
    for f, c in zip(x, y, strict=True):
        hits = (feats[0].permute(1, 2, 0) == f).all(-1)
        assert hits.any() and (labels[0][hits] == c).all()


def test_graph_context_stage_runs_and_is_stored(tiny_config) -> None:
    cfg = load_config(
        tiny_config(**ZS5), ["name=gc", "graph.enabled=true", "selftrain.enabled=false", "generator.epochs=2"]
    )
    res = zs3net.train(cfg, progress=False)
    tensors, meta = load_checkpoint(cfg.run_dir / "graph")
    assert any(k.startswith("gcn.") for k in tensors) and meta["graph_context"]
    assert len(res.stages["graph"]["mmd_history"]) == 2
    final, meta = load_checkpoint(cfg.run_dir / "classifier")
    assert meta["graph_context"] and "hiou" in res.stages["classifier"]


def test_graph_node_samples_protocols() -> None:
    torch.manual_seed(0)
    feats = torch.randn(2, 5, 4, 4)
    ys = torch.zeros(2, 4, 4, dtype=torch.long)
    ys[0, :, 2:] = 1  # image 0: two segments (0 | 1)
    ys[1, :2] = 2  # image 1: segment of unseen class 2 above class 0
    emb = torch.eye(3)
    from zeroseg.modules.gcn import GCNGenerator

    gcn = GCNGenerator(embed_dim=3, noise_dim=2, hidden_dim=8, feature_dim=5)
    unseen = torch.tensor([2])
    rng = torch.Generator().manual_seed(0)
    x, y = zs3net.graph_node_samples(feats, ys, gcn, emb, unseen, strict=False, rng=rng)
    # official: image 0 gives its 2 real nodes (first pixels), image 1 (has unseen) 2 generated nodes
    assert y.tolist() == [0, 1, 2, 0]
    torch.testing.assert_close(x[0], feats[0, :, 0, 0])
    torch.testing.assert_close(x[1], feats[0, :, 0, 2])
    x, y = zs3net.graph_node_samples(feats, ys, gcn, emb, unseen, strict=True, rng=rng)
    # strict: every image gives real nodes + a generated copy (4 nodes each), relabelled only to unseen ids
    assert x.shape == (8, 5)
    assert y[:2].tolist() == [0, 1] and y[4:6].tolist() == [2, 0]
    assert all(int(v) in (0, 1, 2) for v in y[2:4]) and all(int(v) in (0, 2) for v in y[6:])
