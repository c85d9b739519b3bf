"""Class lists, aliases, palette and zero-shot splits (zeroseg.data.classes / zeroseg.data.splits)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from zeroseg.data.classes import (
    ADE150_CLASSES,
    ALIASES,
    COCO_STUFF_171_CLASSES,
    COCO_STUFF_RAW_TO_171,
    CONTEXT59_CLASSES,
    CONTEXT60_CLASSES,
    DATASET_CLASSES,
    SYNTHETIC_CLASSES,
    VOC_CLASSES,
    coco_stuff_lut,
    dataset_classes,
    natural_name,
    palette,
    resolve_class_name,
)
from zeroseg.data.splits import (
    SPLITS,
    Split,
    get_split,
    list_splits,
    load_split,
    make_split,
)
from zeroseg.errors import ZeroSegError

# ---------------------------------------------------------------------------------------------- classes


def test_class_list_lengths_and_official_spellings():
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[0] == "background"
    assert (VOC_CLASSES[1], VOC_CLASSES[11], VOC_CLASSES[14], VOC_CLASSES[16], VOC_CLASSES[20]) == (
        "aeroplane",
        "diningtable",
        "motorbike",
        "pottedplant",
        "tvmonitor",
    )
    assert len(CONTEXT59_CLASSES) == 59 and len(CONTEXT60_CLASSES) == 60
    assert CONTEXT60_CLASSES == ("background",) + CONTEXT59_CLASSES
    # The mmseg converter sorts the Detail ids, which makes the 59 names alphabetical.
    assert list(CONTEXT59_CLASSES) == sorted(CONTEXT59_CLASSES)
    assert CONTEXT59_CLASSES[49] == "table" and CONTEXT59_CLASSES[-1] == "wood"
    assert len(COCO_STUFF_171_CLASSES) == 171
    assert COCO_STUFF_171_CLASSES[0] == "person" and COCO_STUFF_171_CLASSES[170] == "wood"
    assert COCO_STUFF_171_CLASSES[160] == "wall-concrete"
    assert len(ADE150_CLASSES) == 150
    assert (ADE150_CLASSES[0], ADE150_CLASSES[7], ADE150_CLASSES[149]) == ("wall", "bed", "flag")
    assert len(SYNTHETIC_CLASSES) == 16 and SYNTHETIC_CLASSES[4] == "red striped"
    assert set(DATASET_CLASSES) == {
        "voc",
        "context59",
        "context60",
        "coco-stuff-171",
        "ade20k-150",
        "context459",
        "ade20k-847",
        "synthetic",
    }


def test_coco_stuff_raw_to_171_mapping_golden():
    # Values from mmseg tools/dataset_converters/coco_stuff164k.py (clsID_to_trID).
    golden = {0: 0, 10: 10, 12: 11, 26: 24, 30: 26, 45: 40, 66: 60, 69: 61, 71: 62, 83: 73, 91: 80, 181: 170}
    for raw, train_id in golden.items():
        assert COCO_STUFF_RAW_TO_171[raw] == train_id
    lut = coco_stuff_lut()
    assert lut.shape == (256,) and lut.dtype == np.uint8
    # raw 20 = cow, raw 171 = wall-concrete (cocostuff labels.txt minus one)
    assert COCO_STUFF_171_CLASSES[lut[20]] == "cow"
    assert COCO_STUFF_171_CLASSES[lut[171]] == "wall-concrete"
    for unused in (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90, 182, 200, 255):
        assert lut[unused] == 255
    assert sorted(set(lut[:182].tolist()) - {255}) == list(range(171))


def test_palette_is_voc_colormap():
    pal = palette(256)
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    assert pal[0].tolist() == [0, 0, 0]
    assert pal[1].tolist() == [128, 0, 0]
    assert pal[2].tolist() == [0, 128, 0]
    assert pal[15].tolist() == [192, 128, 128]
    assert pal[20].tolist() == [0, 64, 128]
    assert pal[255].tolist() == [224, 224, 192]
    assert palette(3).tolist() == pal[:3].tolist()
    with pytest.raises(ZeroSegError):
        palette(0)


def test_resolve_class_name_aliases_and_normalisation():
    assert resolve_class_name("voc", "airplane") == "aeroplane"
    assert resolve_class_name("voc", "tv") == "tvmonitor"
    assert resolve_class_name("voc", "tv/monitor") == "tvmonitor"
    assert resolve_class_name("voc", "potted plant") == "pottedplant"
    assert resolve_class_name("voc", "Potted_Plant") == "pottedplant"
    assert resolve_class_name("voc", "dining table") == "diningtable"
    assert resolve_class_name("voc", "motorcycle") == "motorbike"
    assert resolve_class_name("voc", "cow") == "cow"
    assert resolve_class_name("context60", "diningtable") == "table"
    assert resolve_class_name("context59", "bedcloth") == "bedclothes"
    assert resolve_class_name("coco-stuff-171", "aeroplane") == "airplane"
    assert resolve_class_name("coco-stuff-171", "wall concrete") == "wall-concrete"
    assert resolve_class_name("coco-stuff-171", "playing field") == "playingfield"
    assert resolve_class_name("custom", "Big Cat", classes=("big cat", "dog")) == "big cat"


def test_resolve_class_name_unknown_suggests():
    with pytest.raises(ZeroSegError) as err:
        resolve_class_name("voc", "cattle")
    msg = str(err.value)
    assert msg.startswith("unknown class 'cattle' for dataset 'voc'")
    assert "did you mean" in msg and "'cat'" in msg
    assert "\n" not in msg


def test_every_alias_points_to_a_canonical_name():
    for dataset, table in ALIASES.items():
        names = set(dataset_classes(dataset))
        for alias, target in table.items():
            assert target in names, (dataset, alias, target)


def test_dataset_classes_unknown_lists_known():
    with pytest.raises(ZeroSegError, match="unknown dataset 'pascal'.*voc.*ade20k-150"):
        dataset_classes("pascal")


def test_natural_name():
    assert natural_name("pottedplant") == "potted plant"
    assert natural_name("tvmonitor") == "tv monitor"
    assert natural_name("diningtable") == "dining table"
    assert natural_name("wall-concrete") == "wall concrete"
    assert natural_name("potted_plant") == "potted plant"
    assert natural_name("red circle") == "red circle"
    assert natural_name("cow") == "cow"


# ---------------------------------------------------------------------------------------------- splits


@pytest.mark.parametrize("name", sorted(SPLITS))
def test_every_declared_split_covers_its_dataset(name):
    s = get_split(name)
    assert s.name == name
    assert not set(s.seen) & set(s.unseen)
    assert set(s.seen) | set(s.unseen) == set(s.class_names)
    assert len(s.seen) + len(s.unseen) == len(s.class_names)
    assert sorted(s.seen_label_ids + s.unseen_label_ids + s.ignored_label_ids) == list(range(s.num_labels))
    assert s.unseen  # every declared split has something to generalise to


def test_zs3_voc_splits_match_official_ids():
    # valeoai/ZS3 zs3/train_pascal.py: --unseen_classes_idx [10, 14, 1, 18, 8, 20, 19, 5, 9, 16]
    official = [10, 14, 1, 18, 8, 20, 19, 5, 9, 16]
    for k in (2, 4, 6, 8, 10):
        s = get_split(f"voc-zs3-k{k}")
        assert s.dataset == "voc" and s.background == "background" and not s.ignore_background
        assert s.unseen_label_ids == tuple(sorted(official[:k]))
        assert "background" in s.seen
        assert len(s.seen) == 21 - k
    assert get_split("voc-zs3-k2").unseen == ("cow", "motorbike")
    assert set(get_split("voc-zs3-k4").unseen) < set(get_split("voc-zs3-k6").unseen)


def test_zs3_context_splits():
    s2, s10 = get_split("context-zs3-k2"), get_split("context-zs3-k10")
    assert s2.dataset == "context60" and s2.num_labels == 60
    assert s2.unseen == ("cow", "motorbike")
    assert set(s10.unseen) == {
        "cow", "motorbike", "sofa", "cat", "boat", "fence", "bird", "tvmonitor", "keyboard", "aeroplane"
    }  # fmt: skip
    assert "background" in s10.seen
    # alphabetical context60 ids: cow=20, motorbike=34
    assert s2.unseen_label_ids == (20, 34)


def test_spnet_voc_and_coco_stuff_splits():
    s = get_split("voc-spnet-15-5")
    assert s.ignore_background and s.background == "background"
    assert s.unseen_label_ids == (16, 17, 18, 19, 20)
    assert s.seen_label_ids == tuple(range(1, 16))
    assert len(s.class_names) == 20 and "background" not in s.class_names
    assert s.ignored_label_ids == (0,)
    c = get_split("coco-stuff-156-15")
    assert len(c.seen) == 156 and len(c.unseen) == 15
    assert c.unseen_label_ids == (19, 23, 28, 29, 36, 51, 76, 88, 94, 112, 133, 136, 137, 157, 160)


def test_open_and_synthetic_splits():
    for dataset in DATASET_CLASSES:
        s = get_split(f"{dataset}-open")
        assert s.seen == ()
    assert len(get_split("voc-open").unseen) == 20
    assert len(get_split("context60-open").unseen) == 60
    syn = get_split("synthetic")
    assert syn.unseen_label_ids == (5, 9, 10, 15)
    assert len(syn.seen) == 12
    assert "synthetic" in list_splits() and list_splits() == sorted(list_splits())


def test_get_split_unknown_suggests_close_names():
    with pytest.raises(ZeroSegError, match="unknown split 'voc-zs3-k3'.*did you mean"):
        get_split("voc-zs3-k3")


def test_make_split_resolves_aliases():
    s = make_split("mine", "voc", ["airplane", "tv"], background="background")
    assert s.unseen == ("aeroplane", "tvmonitor")
    assert s.unseen_label_ids == (1, 20)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (dict(seen=("cow",), unseen=("cow",)), "both seen and unseen"),
        (dict(seen=("cow",), unseen=("dog",)), "neither seen nor unseen"),
        (dict(seen=("cattle",), unseen=("dog",)), "'cattle' is not a class"),
        (dict(seen=("cow", "cow"), unseen=("dog",)), "repeats"),
    ],
)
def test_split_validation_errors(kwargs, pattern):
    with pytest.raises(ZeroSegError, match=pattern):
        Split(name="bad", dataset="voc", **kwargs)


def test_split_validation_background_and_dataset():
    voc_rest = tuple(c for c in VOC_CLASSES if c not in ("background", "cow"))
    with pytest.raises(ZeroSegError, match="ignored, so it must be neither"):
        Split("bad", "voc", ("background",) + voc_rest, ("cow",), "background", True)
    with pytest.raises(ZeroSegError, match="unknown dataset 'pascal'"):
        Split("bad", "pascal", ("a",), ("b",))
    with pytest.raises(ZeroSegError, match="no unseen classes"):
        make_split("sup", "voc", [])
    sup = make_split("sup", "voc", [], allow_empty_unseen=True)
    assert len(sup.seen) == 21 and sup.unseen == ()


def test_split_json_round_trip(tmp_path):
    s = get_split("voc-spnet-15-5")
    path = tmp_path / "s.json"
    path.write_text(json.dumps(s.to_json()))
    assert load_split(path) == s
    assert load_split("voc-zs3-k4") == get_split("voc-zs3-k4")


def test_load_split_custom_dataset(tmp_path):
    data = {
        "name": "shapes",
        "dataset": "my-shapes",
        "classes": ["bg", "circle", "square"],
        "unseen": ["square"],
    }
    path = tmp_path / "shapes.json"
    path.write_text(json.dumps(data))
    s = load_split(path)
    assert s.seen == ("bg", "circle") and s.unseen_label_ids == (2,)
    assert s.to_json()["classes"] == ["bg", "circle", "square"]
    # Without "classes" the class list must come from the caller.
    del data["classes"]
    path.write_text(json.dumps(data))
    with pytest.raises(ZeroSegError, match="needs a 'classes' list"):
        load_split(path)
    assert load_split(path, class_names=["bg", "circle", "square"]).unseen == ("square",)


def test_load_split_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ZeroSegError, match=r"bad\.json: invalid JSON at line 1"):
        load_split(bad)
    with pytest.raises(ZeroSegError, match="missing.json: split file not found"):
        load_split(tmp_path / "missing.json")
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"dataset": "voc", "unseen": ["unicorn"]}))
    with pytest.raises(ZeroSegError, match=r"wrong\.json: unknown class 'unicorn'"):
        load_split(wrong)
    with pytest.raises(ZeroSegError, match="class list differs"):
        load_split("synthetic", class_names=["a", "b"])


def test_synthetic_heldout_split_is_a_disjoint_transversal():
    """The tuning split holds out other classes than the reported one, and every colour and pattern word keeps
    seen examples (so transfer is possible on both)."""
    from zeroseg.data.splits import load_split

    reported, heldout = load_split("synthetic"), load_split("synthetic-heldout")
    assert reported.dataset == heldout.dataset == "synthetic"
    assert not set(reported.unseen) & set(heldout.unseen)
    assert set(heldout.unseen) == {"red striped", "green dotted", "blue checkered", "yellow striped"}
    for split in (reported, heldout):
        seen_objects = [c for c in split.seen if " " in c]
        for word in ("red", "green", "blue", "yellow", "striped", "dotted", "checkered"):
            assert any(word in c.split() for c in seen_objects), (split.name, word)
        assert sorted(c.split()[0] for c in split.unseen) == ["blue", "green", "red", "yellow"]
