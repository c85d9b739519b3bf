"""ONNX export (zeroseg export / predict --onnx): onnxruntime equals PyTorch for ZS3Net and ZegFormer at a fixed and
a dynamic size, the baked vocabulary, calibration and test-time resize, the metadata, and one-line errors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from zeroseg.cli import main  # noqa: E402
from zeroseg.data.io import read_label_png  # noqa: E402
from zeroseg.engine.checkpoint import prefixed, save_checkpoint  # noqa: E402
from zeroseg.export import OnnxPredictor, export_onnx, read_metadata  # noqa: E402
from zeroseg.methods import load_predictor  # noqa: E402
from zeroseg.methods.zegformer import InferenceOptions  # noqa: E402
from zeroseg.modules.deeplab import DeepLabV3Plus  # noqa: E402
from zeroseg.modules.zegformer import ZegFormer  # noqa: E402

NAMES = ["red square", "blue circle", "green stripe", "yellow dot"]
ZF = {"text_dim": 8, "backbone": "resnet18", "backbone_norm": "bn", "hidden_dim": 32, "mask_dim": 32,
      "num_queries": 5, "dec_layers": 2, "nheads": 4, "dim_feedforward": 32}  # fmt: skip


def _randomise_bn(model: torch.nn.Module) -> None:
    # Fresh BatchNorms are the identity in eval mode; random statistics make the folded constants matter.
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))


@pytest.fixture(scope="module")
def zs3_checkpoint(tmp_path_factory) -> Path:
    """A ZS3Net classifier checkpoint built directly: a tiny DeepLabV3+ (random weights), 3 seen + 1 unseen."""
    torch.manual_seed(0)
    kwargs = {"num_classes": 4, "backbone": "tiny", "output_stride": 16}
    model = DeepLabV3Plus(**kwargs)
    _randomise_bn(model)
    meta = {"method": "zs3net", "variant": "zs3net", "stage": "classifier", "protocol": "inductive",
            "class_names": NAMES, "seen_ids": [0, 1, 2], "unseen_ids": [3], "encoder": "random:8:0",
            "segmenter": kwargs}  # fmt: skip
    root = tmp_path_factory.mktemp("zs3")
    return save_checkpoint(root / "classifier", prefixed(model.state_dict(), "segmenter."), meta)


def _zegformer_checkpoint(root: Path, **inference) -> Path:
    torch.manual_seed(0)
    model = ZegFormer(**ZF)
    _randomise_bn(model)
    text = torch.nn.functional.normalize(torch.randn(len(NAMES), 8), dim=-1)
    meta = {"method": "zegformer", "variant": "zegformer", "stage": "zegformer", "protocol": "inductive",
            "class_names": NAMES, "seen_ids": [0, 1, 2], "unseen_ids": [3], "encoder": "random:8:0", "embed_dim": 8,
            "model": ZF, "inference": dataclasses.asdict(InferenceOptions(**inference))}  # fmt: skip
    tensors = {**prefixed(model.state_dict(), "model."), "text.eval": text}
    return save_checkpoint(root / "zegformer", tensors, meta)


@pytest.fixture(scope="module")
def zeg_checkpoint(tmp_path_factory) -> Path:
    """A ZegFormer checkpoint built directly (tiny, random weights, official calibration 0.1)."""
    return _zegformer_checkpoint(tmp_path_factory.mktemp("zeg"))


def _images(b: int, h: int, w: int, seed: int) -> torch.Tensor:
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _torch_scores(predictor, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return predictor.scores(x) if hasattr(predictor, "scores") else predictor.model(x)


def _assert_same(onnx_path: Path, predictor, x: torch.Tensor) -> None:
    scores, labels = OnnxPredictor(onnx_path).run(x)
    ref = _torch_scores(predictor, x)
    assert scores.shape == tuple(ref.shape) and labels.shape == (x.shape[0], *x.shape[-2:])
    assert np.abs(scores - ref.numpy()).max() < 1e-4 * max(1.0, float(ref.abs().max()))
    assert (labels == ref.argmax(1).numpy()).mean() >= 0.999
    # The labels are the argmax of the scores the graph returns (ties aside).
    assert (labels == scores.argmax(1)).mean() >= 0.999


@pytest.mark.parametrize("which", ["zs3", "zeg"])
def test_onnxruntime_equals_pytorch_fixed_and_dynamic(which, zs3_checkpoint, zeg_checkpoint, tmp_path):
    ckpt = zs3_checkpoint if which == "zs3" else zeg_checkpoint
    predictor = load_predictor(ckpt)
    fixed = export_onnx(ckpt, tmp_path / "fixed.onnx", size=(48, 64))
    _assert_same(fixed, predictor, _images(1, 48, 64, seed=1))
    dynamic = export_onnx(ckpt, tmp_path / "dynamic.onnx", dynamic=True)
    # A second and third size, batch 2; ZegFormer pads 20 px to 64 (the 2 x 32 minimum, not 32), 70 to 96.
    _assert_same(dynamic, predictor, _images(2, 20, 70, seed=2))
    _assert_same(dynamic, predictor, _images(1, 96, 64, seed=3))
    with pytest.raises(Exception, match="exactly 48x64"):
        OnnxPredictor(fixed).run(_images(1, 40, 64, seed=4))


def test_zegformer_calibration_and_test_resize_are_in_the_graph(tmp_path):
    # test_min_size 40 turns a 48 x 64 image into 40 x 53 for the network (antialiased), scores resized back.
    ckpt = _zegformer_checkpoint(tmp_path, test_min_size=40, gzero_calibrate=0.3)
    predictor = load_predictor(ckpt)
    assert predictor.network_size(48, 64) == (40, 53)
    path = export_onnx(ckpt, tmp_path / "m.onnx", size=(48, 64))
    x = _images(1, 48, 64, seed=5)
    _assert_same(path, predictor, x)
    # Calibration by definition: the seen classes' scores are 0.3 below the uncalibrated ones, the unseen equal.
    scores, _ = OnnxPredictor(path).run(x)
    uncalibrated = _torch_scores(predictor, x).numpy()
    uncalibrated[:, :3] += 0.3
    diff = uncalibrated - scores
    assert np.allclose(diff[:, :3], 0.3, atol=1e-4) and np.allclose(diff[:, 3], 0.0, atol=1e-4)
    with pytest.raises(Exception, match="--size H W, not --dynamic"):
        export_onnx(ckpt, tmp_path / "d.onnx", dynamic=True)


def test_new_vocabulary_is_baked(zeg_checkpoint, tmp_path):
    names = ["purple star", "blue circle", "orange ring"]
    path = export_onnx(zeg_checkpoint, tmp_path / "v.onnx", classes=names, size=(32, 48))
    predictor = load_predictor(zeg_checkpoint)
    predictor.set_classes(names)
    _assert_same(path, predictor, _images(2, 32, 48, seed=6))
    meta = read_metadata(path)
    assert meta["class_names"] == names
    assert meta["seen"] == ["blue circle"] and meta["unseen"] == ["purple star", "orange ring"]


def test_clip_image_branch_is_in_the_graph(zeg_checkpoint, tiny_clip, tmp_path):
    spec = f"clip:{tiny_clip['cfg']}:{tiny_clip['st']}"
    ckpt = _zegformer_checkpoint(tmp_path, clip_image=spec, clip_templates="single")
    predictor = load_predictor(ckpt)
    assert predictor.clip is not None
    path = export_onnx(ckpt, tmp_path / "clip.onnx", size=(32, 48))
    assert read_metadata(path)["clip_image"] == "yes"
    _assert_same(path, predictor, _images(1, 32, 48, seed=7))


def test_metadata_round_trips(zs3_checkpoint, tmp_path):
    path = export_onnx(zs3_checkpoint, tmp_path / "m.onnx", size=(32, 40))
    meta = read_metadata(path)
    assert meta["class_names"] == NAMES
    assert meta["seen"] == NAMES[:3] and meta["unseen"] == NAMES[3:]
    assert meta["mean"] == [0.485, 0.456, 0.406] and meta["std"] == [0.229, 0.224, 0.225]
    assert meta["protocol"] == "inductive" and meta["method"] == "zs3net"
    assert meta["input_size"] == (32, 40) and meta["opset"] == 17
    assert meta["source_checkpoint"] == str(Path(zs3_checkpoint).resolve())
    assert meta["source_sha256"] == hashlib.sha256(Path(zs3_checkpoint).read_bytes()).hexdigest()
    assert read_metadata(export_onnx(zs3_checkpoint, tmp_path / "d.onnx", dynamic=True))["input_size"] is None


def test_cli_export_then_predict_equals_torch_predict(zeg_checkpoint, tmp_path, capsys):
    rng = np.random.default_rng(0)
    image = tmp_path / "img.png"
    Image.fromarray(rng.integers(0, 256, (36, 52, 3), dtype=np.uint8)).save(image)
    model = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(zeg_checkpoint), "--format", "onnx", "--out", str(model),
                 "--dynamic"]) == 0  # fmt: skip
    assert main(["predict", str(image), "--onnx", str(model), "--out", str(tmp_path / "onnx")]) == 0
    assert main(["predict", str(image), "--checkpoint", str(zeg_checkpoint), "--out", str(tmp_path / "torch")]) == 0
    a, b = read_label_png(tmp_path / "onnx" / "img.png"), read_label_png(tmp_path / "torch" / "img.png")
    assert a.shape == (36, 52) and (a == b).mean() >= 0.999
    assert (tmp_path / "onnx" / "img_overlay.png").is_file()
    # A fixed-size export labels a resized copy and resizes the labels back to the image's size.
    fixed = tmp_path / "fixed.onnx"
    assert main(["export", "--checkpoint", str(zeg_checkpoint), "--out", str(fixed), "--size", "32", "32"]) == 0
    assert main(["predict", str(image), "--onnx", str(fixed), "--out", str(tmp_path / "fixed")]) == 0
    assert read_label_png(tmp_path / "fixed" / "img.png").shape == (36, 52)
    assert "fixed input size" in capsys.readouterr().err


@pytest.mark.parametrize(
    "case",
    ["empty vocabulary", "missing checkpoint", "not onnx", "onnx of another tool", "size and dynamic", "other classes"],
)
def test_user_errors_are_one_line(case, zs3_checkpoint, tmp_path, capsys):
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(image)
    out = str(tmp_path / "m.onnx")
    if case == "empty vocabulary":
        argv = ["export", "--checkpoint", str(zs3_checkpoint), "--classes", " , ", "--out", out]
        expected = "empty class list"
    elif case == "missing checkpoint":
        argv = ["export", "--checkpoint", str(tmp_path / "nope"), "--out", out]
        expected = "checkpoint not found"
    elif case == "size and dynamic":
        argv = ["export", "--checkpoint", str(zs3_checkpoint), "--out", out, "--size", "0", "8"]
        expected = "must be positive"
    elif case == "other classes":
        export_onnx(zs3_checkpoint, out, size=(8, 8))
        argv = ["predict", str(image), "--onnx", out, "--classes", "cat,dog", "--out", str(tmp_path / "o")]
        expected = "baked in at export"
    else:
        bad = tmp_path / "bad.onnx"
        if case == "not onnx":
            bad.write_text("this is not a model\n")
            expected = "not a loadable ONNX model"
        else:
            import onnx
            from onnx import TensorProto, helper

            node = helper.make_node("Identity", ["x"], ["y"])
            vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y")]
            onnx.save(helper.make_model(helper.make_graph([node], "g", vi[:1], vi[1:])), str(bad))
            expected = "not a zeroseg ONNX export"
        argv = ["predict", str(image), "--onnx", str(bad), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("zeroseg: error: ") and expected in err and err.count("\n") == 1, err


def test_json_metadata_values_are_json(zs3_checkpoint, tmp_path):
    import onnx

    model = onnx.load(str(export_onnx(zs3_checkpoint, tmp_path / "m.onnx", size=(16, 16))))
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["zeroseg.class_names"]) == NAMES
    assert props["zeroseg.format"] == "zeroseg-onnx/1"


@pytest.mark.slow
def test_bench_export_quick_smoke(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_export", Path(__file__).parents[1] / "benchmarks/bench_export.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "r.json"
    assert bench.main(["--quick", "--models", "deeplab", "--threads", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["path"] for r in rows] == list(bench.PATHS)
    assert all(r["agreement_with_eager"] > 0.99 and r["fraction_of_peak"] > 0 for r in rows)
