"""CLIP weights from OpenAI's TorchScript archive and Hugging Face ``transformers`` names -> open_clip.

No released file is here (offline): the files are built in the real formats from tiny models -- an open_clip CLIP
(whose attribute tree is OpenAI's ``clip/model.py`` tree) traced and ``torch.jit.save``-d, and a
``transformers.CLIPModel`` written with ``save_pretrained`` -- and the converted weights must reproduce the
original model's image and text features.
"""

from __future__ import annotations

import json
import pickle
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from zeroseg.errors import ZeroSegError
from zeroseg.text.clip import load_clip_model
from zeroseg.weights.clip import convert_clip, read_clip
from zeroseg.weights.readers import read_torchscript

open_clip = pytest.importorskip("open_clip")

WIDTH, HEADS, MLP, LAYERS, EMBED, VOCAB, CONTEXT, IMAGE, PATCH = 16, 2, 32, 2, 8, 20, 6, 8, 4
#: open_clip config of both tiny models: OpenAI-style ViT (class token, ln_pre, QuickGELU), 2 x 2 patches.
CFG = {
    "embed_dim": EMBED,
    "quick_gelu": True,
    "vision_cfg": {"image_size": IMAGE, "layers": LAYERS, "width": WIDTH, "head_width": WIDTH // HEADS,
                   "patch_size": PATCH, "mlp_ratio": MLP / WIDTH},
    "text_cfg": {"context_length": CONTEXT, "vocab_size": VOCAB, "width": WIDTH, "heads": HEADS, "layers": LAYERS,
                 "mlp_ratio": MLP / WIDTH},
}  # fmt: skip
#: Each row has its end-of-text token (the highest id, VOCAB - 1) once, then padding: open_clip pools at
#: ``argmax(ids)``, Hugging Face (eos_token_id != 2) at the first ``eos_token_id``; both are that position.
TOKENS = torch.tensor([[17, 3, 5, VOCAB - 1, 0, 0], [17, 8, 2, 11, 4, VOCAB - 1]])


def _randomize(model: torch.nn.Module, seed: int) -> None:
    # Both libraries start biases at 0 and LayerNorms at 1: random values make every tensor's place matter.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _config(root: Path) -> Path:
    path = root / "tiny-quickgelu.json"
    path.write_text(json.dumps(CFG), encoding="utf-8")
    return path


def _images() -> torch.Tensor:
    return torch.randn(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(3))


# ----------------------------------------------------------------------------------------------- OpenAI


class _OpenAIStyle(torch.nn.Module):
    """What ``torch.jit.save`` of OpenAI's traced CLIP holds besides the weights: the top-level settings as 0-d
    tensors (``clip.load`` reads ``model.input_resolution.item()``) next to open_clip's tree."""

    def __init__(self, clip: torch.nn.Module) -> None:
        super().__init__()
        self.visual = clip.visual
        self.transformer = clip.transformer
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.logit_scale = clip.logit_scale
        self.register_buffer("attn_mask", clip.attn_mask.clone())  # a plain tensor attribute in OpenAI's model
        self.register_buffer("input_resolution", torch.tensor(IMAGE))
        self.register_buffer("context_length", torch.tensor(CONTEXT))
        self.register_buffer("vocab_size", torch.tensor(VOCAB))
        self._clip = [clip]  # not a submodule: only for the forward below

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        clip = self._clip[0]
        return clip.encode_image(image), clip.encode_text(text)


@pytest.fixture(scope="module")
def openai_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("openai")
    torch.manual_seed(0)
    model = open_clip.CLIP(**CFG).eval()
    _randomize(model, 1)
    for block in model.transformer.resblocks:  # OpenAI's ResidualAttentionBlock keeps its own causal mask
        block.register_buffer("attn_mask", model.attn_mask.clone(), persistent=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notices
        traced = torch.jit.trace(_OpenAIStyle(model), (_images(), TOKENS), check_trace=False)
        path = root / "ViT-tiny.pt"
        torch.jit.save(traced, str(path))
    return {"path": path, "model": model, "root": root}


def test_openai_torchscript_archive_is_read_without_jit_and_matches_the_model(openai_file, monkeypatch):
    def no_jit(*args, **kwargs):
        raise AssertionError("torch.jit.load must not be called")

    monkeypatch.setattr(torch.jit, "load", no_jit)
    path, model = openai_file["path"], openai_file["model"]
    with zipfile.ZipFile(path) as z:  # it is the real format: a module tree pickle plus code
        names = z.namelist()
    assert "ViT-tiny/data.pkl" in names and any(n.startswith("ViT-tiny/code/") for n in names)

    tree = read_torchscript(path)
    assert tree["input_resolution"].item() == IMAGE and tree["attn_mask"].shape == (CONTEXT, CONTEXT)
    assert tree["transformer.resblocks.1.attn_mask"].shape == (CONTEXT, CONTEXT)
    state, layout = read_clip(path)
    assert layout == "openai-torchscript"
    expected = model.state_dict()
    assert set(state) == set(expected) - {"attn_mask"}  # settings and the mask dropped, nothing else
    for k, v in expected.items():
        if k != "attn_mask":
            assert torch.equal(state[k], v), k

    net, _, dim = load_clip_model(str(_config(openai_file["root"])), path)
    assert dim == EMBED
    with torch.no_grad():
        torch.testing.assert_close(net.encode_image(_images()), model.encode_image(_images()), atol=1e-6, rtol=0)
        torch.testing.assert_close(net.encode_text(TOKENS), model.encode_text(TOKENS), atol=1e-6, rtol=0)


def test_torchscript_reader_keeps_dtypes_views_and_the_values(tmp_path):
    class Mixed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3, 2).half()  # OpenAI's files: float16 conv/linear/attention weights
            self.register_buffer("brain", torch.arange(6, dtype=torch.bfloat16).reshape(2, 3))
            self.register_buffer("ids", torch.tensor([5, -7], dtype=torch.int64))
            base = torch.arange(12.0).reshape(3, 4)
            self.register_buffer("column", base[:, 1])  # a strided view of a larger storage

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x.half()).float() + self.column.sum() + self.brain.float().sum() + self.ids.sum()

    module = Mixed()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(module, torch.zeros(1, 3)), str(tmp_path / "m.pt"))
    tree = read_torchscript(tmp_path / "m.pt")
    assert set(tree) == {"lin.weight", "lin.bias", "brain", "ids", "column"}
    for k, v in module.state_dict().items():
        assert tree[k].dtype == v.dtype and torch.equal(tree[k], v), k
    assert tree["column"].tolist() == [1.0, 5.0, 9.0]  # offset 1, stride 4 into the 3 x 4 storage


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def _fake_archive(path: Path, payload: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", payload)
        z.writestr("evil/constants.pkl", pickle.dumps(()))
        z.writestr("evil/code/__torch__.py", "")
    return path


def test_archive_naming_another_global_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = _fake_archive(tmp_path / "evil.pt", pickle.dumps(_Evil(), protocol=2))
    with pytest.raises(ZeroSegError, match=r"refused.*os\.system|refused.*posix\.system") as err:
        convert_clip(evil)
    assert "\n" not in str(err.value) and str(evil) in str(err.value)
    assert not (tmp_path / "pwned").exists()
    # A torch function is no better than os.system: only the tensor rebuilder is admitted from torch.
    tensor_load = pickle.dumps(torch.load, protocol=2)
    with pytest.raises(ZeroSegError, match="torch.serialization.load is not allowed"):
        convert_clip(_fake_archive(tmp_path / "load.pt", tensor_load))


def test_torchscript_of_something_else_is_not_taken_for_clip(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)), str(tmp_path / "lin.pt"))
    with pytest.raises(ZeroSegError, match="not an OpenAI CLIP model"):
        convert_clip(tmp_path / "lin.pt")


# ------------------------------------------------------------------------------------------ Hugging Face


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("hf")
    tower = {"hidden_size": WIDTH, "intermediate_size": MLP, "num_hidden_layers": LAYERS,
             "num_attention_heads": HEADS, "hidden_act": "quick_gelu"}  # fmt: skip
    config = transformers.CLIPConfig(
        text_config={**tower, "vocab_size": VOCAB, "max_position_embeddings": CONTEXT,
                     "bos_token_id": VOCAB - 2, "eos_token_id": VOCAB - 1, "pad_token_id": 0},
        vision_config={**tower, "image_size": IMAGE, "patch_size": PATCH},
        projection_dim=EMBED,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.CLIPModel(config).eval()
    _randomize(model, 2)
    model.save_pretrained(str(root / "clip"))  # model.safetensors + config.json
    return {"dir": root / "clip", "model": model, "root": root}


def _features(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output  # transformers 5 returns a record


def test_hugging_face_clip_converts_to_the_same_features(hf_dir):
    hf = hf_dir["model"]
    state, layout = read_clip(hf_dir["dir"] / "model.safetensors")
    assert layout == "huggingface"
    sd = hf.state_dict()
    # q, k, v stacked in that order; projections transposed; class token and position rows kept.
    block = "vision_model.encoder.layers.1.self_attn"
    qkv = [sd[f"{block}.{p}_proj.weight"] for p in "qkv"]
    assert torch.equal(state["visual.transformer.resblocks.1.attn.in_proj_weight"], torch.cat(qkv))
    assert torch.equal(state["transformer.resblocks.0.attn.in_proj_bias"][WIDTH : 2 * WIDTH],
                       sd["text_model.encoder.layers.0.self_attn.k_proj.bias"])  # fmt: skip
    assert torch.equal(state["visual.proj"], sd["visual_projection.weight"].T)
    assert torch.equal(state["visual.positional_embedding"], sd["vision_model.embeddings.position_embedding.weight"])

    net, _, _ = load_clip_model(str(_config(hf_dir["root"])), hf_dir["dir"])  # the folder is accepted too
    with torch.no_grad():
        torch.testing.assert_close(
            net.encode_image(_images()), _features(hf.get_image_features(pixel_values=_images())), atol=1e-5, rtol=0
        )
        torch.testing.assert_close(
            net.encode_text(TOKENS), _features(hf.get_text_features(input_ids=TOKENS)), atol=1e-5, rtol=0
        )
        assert torch.equal(net.logit_scale, hf.logit_scale)


def test_hugging_face_file_with_unknown_or_missing_keys_is_one_error_listing_them(hf_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    sd = load_file(str(hf_dir["dir"] / "model.safetensors"))
    sd["vision_model.embeddings.position_ids"] = torch.arange(5).unsqueeze(0)  # dropped by rule, not an error
    sd.pop("text_model.encoder.layers.1.self_attn.v_proj.bias")
    sd["vision_model.encoder.layers.0.adapter.weight"] = torch.zeros(2)
    save_file(sd, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ZeroSegError) as err:
        convert_clip(tmp_path / "bad.safetensors")
    message = str(err.value)
    assert "\n" not in message and "bad.safetensors" in message
    assert "1 unused key(s): vision_model.encoder.layers.0.adapter.weight" in message
    assert "1 missing key(s): transformer.resblocks.1.attn.in_proj_bias:v" in message
    assert "position_ids" not in message


def test_convert_clip_command_writes_open_clip_safetensors(hf_dir, openai_file, tmp_path):
    from safetensors.torch import load_file

    from zeroseg.cli import main

    for source, name in ((openai_file["path"], "openai"), (hf_dir["dir"] / "model.safetensors", "hf")):
        out = tmp_path / f"{name}.safetensors"
        assert main(["weights", "convert-clip", str(source), "--out", str(out)]) == 0
        written = load_file(str(out))
        expected = convert_clip(source)
        assert set(written) == set(expected) and all(torch.equal(written[k], expected[k]) for k in expected)
        assert convert_clip(out).keys() == expected.keys()  # read back as an open_clip file, as is
    assert main(["weights", "convert-clip", str(openai_file["path"]), "--out", str(tmp_path / "x.pt")]) == 2
