"""ZS-MMD: the weighted MMD loss, pseudo-feature selection, and the recursive training end to end (tiny)."""

import json
from pathlib import Path

import pytest
import torch

from zeroseg.cli import main
from zeroseg.config import load_config
from zeroseg.engine.checkpoint import load_checkpoint
from zeroseg.errors import ZeroSegError
from zeroseg.methods import zs_mmd
from zeroseg.modules.mmd import mmd_loss, weighted_mmd_loss


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------------------------- weighted MMD
def test_unit_weights_give_plain_mmd() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 3, generator=g), torch.randn(7, 3, generator=g) + 1
    plain = mmd_loss(x, y, sigmas=(1.0, 4.0))
    for w in (torch.ones(7), torch.full((7,), 3.5)):  # any constant weight normalises to 1/M
        torch.testing.assert_close(weighted_mmd_loss(x, y, y_weights=w, sigmas=(1.0, 4.0)), plain)


def test_weighted_mmd_golden_value() -> None:
    # x = {0}, y = {0 (weight 3), 2 (weight 1)} on a line, one bandwidth s = 1: k(a, b) = exp(-(a-b)^2 / 2).
    # Normalised weights v = (3/4, 1/4); MMD^2 = 1 + (9/16 + 1/16 + 2*3/16*e^-2) - 2*(3/4 + 1/4*e^-2)
    #        = 1/8 + e^-2 * (6/16 - 8/16) = 1/8 - e^-2 / 8.
    x = torch.tensor([[0.0]], dtype=torch.float64)
    y = torch.tensor([[0.0], [2.0]], dtype=torch.float64)
    got = weighted_mmd_loss(x, y, y_weights=torch.tensor([3.0, 1.0], dtype=torch.float64), sigmas=(1.0,))
    expected = ((1 - torch.exp(torch.tensor(-2.0, dtype=torch.float64))) / 8).sqrt()
    torch.testing.assert_close(got, expected)


def test_weighted_mmd_gradients_match_finite_differences() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    y = (torch.randn(4, 2, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    w = (torch.rand(4, generator=g, dtype=torch.float64) + 0.2).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b, v: weighted_mmd_loss(a, b, y_weights=v, sigmas=(0.5, 2.0)), (x, y, w), eps=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("n", [1, 2])
def test_small_batches_and_identical_points_are_stable(n: int) -> None:
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(n), requires_grad=True)
    w = torch.rand(n, generator=torch.Generator().manual_seed(9)) + 0.1
    loss = weighted_mmd_loss(x, x.detach().clone(), x_weights=w, y_weights=w)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() < 1e-5
    assert torch.isfinite(x.grad).all()
    # one point against one other: sqrt(2 * sum_s (1 - exp(-d^2 / 2s))) with d^2 = 4, s = 2
    a, b = torch.zeros(1, 1), torch.full((1, 1), 2.0)
    want = (2 * (1 - torch.exp(torch.tensor(-1.0)))).sqrt()
    torch.testing.assert_close(weighted_mmd_loss(a, b, y_weights=torch.tensor([0.3]), sigmas=(2.0,)), want)


def test_bad_weights_are_one_line_errors() -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(ZeroSegError, match="weights sum to zero"):
        weighted_mmd_loss(x, x, y_weights=torch.zeros(2))
    with pytest.raises(ZeroSegError, match=r"expected shape \(2,\)"):
        weighted_mmd_loss(x, x, y_weights=torch.ones(3))


# --------------------------------------------------------------------------------------------- selection
def test_select_pseudo_features_thresholds_unseen_predictions() -> None:
    # 1 image, 2x2 pixels, classes 0 (seen), 1 (seen), 2 (unseen), 3 (unseen).
    probs = torch.tensor(
        [
            [0.05, 0.05, 0.85, 0.05],  # unseen 2, conf 0.85 -> kept
            [0.10, 0.10, 0.20, 0.60],  # unseen 3, conf 0.60 -> below threshold
            [0.90, 0.05, 0.03, 0.02],  # seen 0, conf 0.90 -> not unseen
            [0.02, 0.03, 0.05, 0.90],  # unseen 3, conf 0.90 -> kept
        ]
    ).T.reshape(1, 4, 2, 2)
    feats = torch.arange(1 * 3 * 4, dtype=torch.float).reshape(1, 3, 2, 2)  # pixel p has (p, 4+p, 8+p)
    unseen = torch.tensor([2, 3])
    x, y, w = zs_mmd.select_pseudo_features(feats, probs, unseen, 0.8)
    assert y.tolist() == [2, 3]
    torch.testing.assert_close(w, torch.tensor([0.85, 0.90]))
    torch.testing.assert_close(x, torch.tensor([[0.0, 4, 8], [3, 7, 11]]))
    _, y, w = zs_mmd.select_pseudo_features(feats, probs, unseen, 0.5, weighting="uniform")
    assert y.tolist() == [2, 3, 3] and w.tolist() == [1.0, 1.0, 1.0]
    _, y, _ = zs_mmd.select_pseudo_features(feats, probs, unseen, 0.95)
    assert y.numel() == 0
    with pytest.raises(ZeroSegError, match="batch or size differ"):
        zs_mmd.select_pseudo_features(feats[:, :, :1], probs, unseen, 0.5)


# --------------------------------------------------------------------------------------------- end to end
ZS_MMD = {
    "method": "zs_mmd",
    "zs_mmd": {"rounds": 2, "generator_epochs": 1, "threshold": 0.0, "min_pseudo_per_class": 1},
}


def test_train_rounds_resume_and_eval(tmp_path: Path, tiny_config, monkeypatch, capsys) -> None:
    cfg = tiny_config(**ZS_MMD)
    assert main(["train", str(cfg), "--quiet"]) == 0
    run = tmp_path / "runs" / "tiny"
    for name in ("segmenter", "generator", "classifier", "zs_mmd_round1", "zs_mmd_round2"):
        assert (run / f"{name}.safetensors").is_file()
    assert not (run / "selftrain.safetensors").exists()
    _, meta = load_checkpoint(run / "zs_mmd_round2")
    assert meta["method"] == "zs_mmd" and meta["stage"] == "zs_mmd" and meta["round"] == 2
    assert meta["transductive"] and meta["pseudo_source"] == "unlabelled"
    assert set(meta["pseudo_counts"]) == {"red dotted", "green checkered", "blue striped", "yellow checkered"}
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"classifier", "zs_mmd_round1", "zs_mmd_round2"} <= set(metrics)
    assert "zs_mmd_round2" in capsys.readouterr().out
    # The generator really changed in each round.
    t1, _ = load_checkpoint(run / "zs_mmd_round1")
    t0, _ = load_checkpoint(run / "classifier")
    changed = [k for k in t0 if k.startswith("generator.") and not torch.equal(t0[k], t1[k])]
    assert changed

    # A re-run with one more round trains only round 3; finished rounds are skipped.
    calls = []
    real = zs_mmd.retrain_generator
    monkeypatch.setattr(zs_mmd, "retrain_generator", lambda *a, **k: calls.append(1) or real(*a, **k))
    res = zs_mmd.train(load_config(cfg, ["zs_mmd.rounds=3"]), progress=False, allow_changed=True)
    assert len(calls) == 1 and res.checkpoint.name == "zs_mmd_round3.safetensors"
    t3, _ = load_checkpoint(run / "zs_mmd_round3")
    res = zs_mmd.train(load_config(cfg, ["zs_mmd.rounds=3"]), progress=False, allow_changed=True)
    assert len(calls) == 1  # nothing retrained, round 3 untouched
    for k, v in load_checkpoint(run / "zs_mmd_round3")[0].items():
        torch.testing.assert_close(v, t3[k], msg=k)

    out_json = tmp_path / "eval.json"
    ckpt = run / "zs_mmd_round3.safetensors"
    assert main(["eval", str(cfg), "--checkpoint", str(ckpt), "--json", str(out_json), "--quiet"]) == 0
    result = json.loads(out_json.read_text())
    assert result["method"] == "zs_mmd" and result["transductive"]
    stored = json.loads((run / "metrics.json").read_text())["zs_mmd_round3"]
    assert result["metrics"]["hiou"] == pytest.approx(stored["hiou"])

    image = tmp_path / "synth" / "images" / "val" / "00000.png"
    out = tmp_path / "pred"
    assert (
        main(["predict", str(image), "--checkpoint", str(ckpt), "--out", str(out), "--classes", "sky, red dotted"]) == 0
    )
    assert (out / "00000.png").is_file() and (out / "00000_overlay.png").is_file()


def test_config_errors(tiny_config) -> None:
    cfg = load_config(tiny_config(**ZS_MMD), ["graph.enabled=true"])
    with pytest.raises(ZeroSegError, match="graph.enabled"):
        zs_mmd.train(cfg, progress=False)
    with pytest.raises(ZeroSegError, match="zs_mmd.weighting"):
        load_config(tiny_config(**ZS_MMD), ["zs_mmd.weighting=soft"])


def test_confidence_weights_pull_the_generator_to_confident_pseudo_features() -> None:
    """Pseudo-features from two clusters: the generator follows the one carrying the high confidences."""
    from zeroseg.modules.gmmn import GMMNGenerator

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    good, bad = torch.full((4,), 3.0), torch.full((4,), -3.0)
    pseudo = torch.cat([good + 0.2 * torch.randn(64, 4, generator=g), bad + 0.2 * torch.randn(64, 4, generator=g)])
    conf = torch.cat([torch.full((64,), 0.95), torch.full((64,), 0.05)])
    gen = GMMNGenerator(embed_dim=2, noise_dim=2, hidden_dim=32, feature_dim=4, dropout=0.0)
    opt = torch.optim.Adam(gen.parameters(), lr=1e-2)
    emb = torch.tensor([[1.0, 0.0]])
    for _ in range(200):
        loss = weighted_mmd_loss(gen(emb.expand(64, -1)), pseudo, y_weights=conf, sigmas=(1.0, 8.0))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = gen(emb.expand(500, -1))
    near_good = ((out - good).norm(dim=1) < (out - bad).norm(dim=1)).float().mean()
    assert near_good > 0.85  # ~95 % of the weight sits on the good cluster
