"""Canonical class lists, aliases, display names and colour palettes.

Every tuple below is in label-id order, i.e. ``CLASSES[k]`` is the name of the pixels whose value is ``k``
in the label maps that the matching reader in :mod:`zeroseg.data` returns. Spellings are the official
ones, checked against these sources:

* ``VOC_CLASSES`` -- open-mmlab/mmsegmentation ``mmseg/datasets/voc.py`` (``VOCDataset.CLASSES``);
  identical ids in valeoai/ZS3 ``zs3/dataloaders/datasets/pascal.py`` and
  dingjiansw101/ZegFormer ``datasets/pascal/class_split.py``.
* ``CONTEXT59_CLASSES`` / ``CONTEXT60_CLASSES`` -- mmsegmentation ``mmseg/datasets/pascal_context.py``
  (``PascalContextDataset59`` / ``PascalContextDataset``, 1.x). The order is alphabetical because
  ``tools/dataset_converters/pascal_context.py`` maps the 59 Detail-API ids through ``np.sort`` of the
  459-class ids (which are alphabetical). Older mmseg releases and ZS3 (``zs3/exp_data.py``) list the same
  names in a VOC-first order; names, not ids, are what carry over between the two.
* ``COCO_STUFF_171_CLASSES`` and ``COCO_STUFF_RAW_TO_171`` -- mmsegmentation
  ``mmseg/datasets/coco_stuff.py`` and ``tools/dataset_converters/coco_stuff164k.py`` (``clsID_to_trID``);
  raw ids are nightrome/cocostuff ``labels.txt`` minus one (0 = person ... 181 = wood, 255 = unlabeled),
  the same ids ZegFormer uses in ``datasets/coco-stuff/prepare_coco_stuff_sem_seg_seen.py``.
* ``ADE150_CLASSES`` -- mmsegmentation ``mmseg/datasets/ade.py`` (``ADE20KDataset``), with the trailing space
  of its ``'bed '`` entry removed.
* ``CONTEXT459_CLASSES``, ``ADE847_CLASSES`` (and ``ADE847_RAW_IDS``) -- the wide label spaces, listed with
  their sources in :mod:`zeroseg.data.large_vocab`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

import numpy as np

from zeroseg.data.io import IGNORE
from zeroseg.data.large_vocab import ADE847_CLASSES, ADE847_RAW_IDS, CONTEXT459_CLASSES
from zeroseg.data.synthetic import SynthConfig
from zeroseg.errors import ZeroSegError

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip

CONTEXT59_CLASSES: tuple[str, ...] = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup",
    "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground", "horse", "keyboard",
    "light", "motorbike", "mountain", "mouse", "person", "plate", "platform", "pottedplant", "road", "rock",
    "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train", "tree",
    "truck", "tvmonitor", "wall", "water", "window", "wood",
)  # fmt: skip

CONTEXT60_CLASSES: tuple[str, ...] = ("background",) + CONTEXT59_CLASSES

COCO_STUFF_171_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush", "banner", "blanket", "branch", "bridge",
    "building-other", "bush", "cabinet", "cage", "cardboard", "carpet", "ceiling-other", "ceiling-tile",
    "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff",
    "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog",
    "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves",
    "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement",
    "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river", "road",
    "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other",
    "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree",
    "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)  # fmt: skip

# The 11 raw stuffthingmaps ids that have no 171-class entry: COCO "thing" ids that were never annotated
# (street sign, hat, shoe, eye glasses, plate, mirror, window, desk, door, blender, hair brush).
COCO_STUFF_UNUSED_RAW_IDS: tuple[int, ...] = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)

COCO_STUFF_RAW_TO_171: dict[int, int] = {
    raw: train_id for train_id, raw in enumerate(r for r in range(182) if r not in COCO_STUFF_UNUSED_RAW_IDS)
}
"""Raw stuffthingmaps id (0..181) -> 171-class id (0..170); raw 255 (unlabeled) and unused ids map to 255."""


def coco_stuff_lut() -> np.ndarray:
    """Lookup table from raw COCO-Stuff stuffthingmaps values to the 171-class label space.

    Returns:
        lut: (256,) uint8; ``lut[raw]`` is the 171-class id, 255 for unlabeled and unused raw ids.
    """
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for raw, train_id in COCO_STUFF_RAW_TO_171.items():
        lut[raw] = train_id
    return lut


ADE150_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence",
    "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column",
    "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator",
    "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land",
    "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

#: The embedded benchmark's default vocabulary (defined in one place: :mod:`zeroseg.data.synthetic`).
SYNTHETIC_CLASSES: tuple[str, ...] = SynthConfig().class_names

DATASET_CLASSES: dict[str, tuple[str, ...]] = {
    "voc": VOC_CLASSES,
    "context59": CONTEXT59_CLASSES,
    "context60": CONTEXT60_CLASSES,
    "coco-stuff-171": COCO_STUFF_171_CLASSES,
    "ade20k-150": ADE150_CLASSES,
    "context459": CONTEXT459_CLASSES,
    "ade20k-847": ADE847_CLASSES,
    "synthetic": SYNTHETIC_CLASSES,
}

#: Datasets whose label space has more than 255 classes: 16-bit label PNGs, ignore = ``io.IGNORE_WIDE``.
WIDE_DATASETS: frozenset[str] = frozenset({"context459", "ade20k-847"})

_VOC_ALIASES = {
    "airplane": "aeroplane",
    "plane": "aeroplane",
    "tv": "tvmonitor",
    "tv monitor": "tvmonitor",
    "tv/monitor": "tvmonitor",
    "television": "tvmonitor",
    "monitor": "tvmonitor",
    "potted plant": "pottedplant",
    "plant": "pottedplant",
    "dining table": "diningtable",
    "table": "diningtable",
    "motorcycle": "motorbike",
    "motor bike": "motorbike",
    "bike": "bicycle",
}
_CONTEXT_ALIASES = {
    "airplane": "aeroplane",
    "plane": "aeroplane",
    "tv": "tvmonitor",
    "tv monitor": "tvmonitor",
    "television": "tvmonitor",
    "potted plant": "pottedplant",
    "diningtable": "table",
    "dining table": "table",
    "motorcycle": "motorbike",
    "bedcloth": "bedclothes",
    "clothes": "cloth",
    "shelf": "shelves",
}
_COCO_ALIASES = {
    "aeroplane": "airplane",
    "motorbike": "motorcycle",
    "tvmonitor": "tv",
    "tv monitor": "tv",
    "pottedplant": "potted plant",
    "diningtable": "dining table",
    "sofa": "couch",
    "playing field": "playingfield",
}

#: Alternative spellings used by papers and codebases, per dataset: alias (lower case) -> canonical.
ALIASES: dict[str, dict[str, str]] = {
    "voc": _VOC_ALIASES,
    "context59": _CONTEXT_ALIASES,
    "context60": _CONTEXT_ALIASES,
    "coco-stuff-171": _COCO_ALIASES,
}

_NATURAL_NAMES = {
    "pottedplant": "potted plant",
    "tvmonitor": "tv monitor",
    "diningtable": "dining table",
    "aeroplane": "aeroplane",
    "bedclothes": "bed clothes",
    "playingfield": "playing field",
}


def dataset_classes(dataset: str) -> tuple[str, ...]:
    """The canonical class tuple of a dataset key (see :data:`DATASET_CLASSES`).

    Raises:
        ZeroSegError: an unknown dataset key, listing the known ones.
    """
    try:
        return DATASET_CLASSES[dataset]
    except KeyError:
        known = ", ".join(DATASET_CLASSES)
        raise ZeroSegError(f"unknown dataset '{dataset}'; known datasets: {known}") from None


def _squash(name: str) -> str:
    # "Potted_Plant", "potted-plant" and "potted plant" all compare equal to "pottedplant".
    return re.sub(r"[\s_\-/]+", "", name.strip().lower())


def resolve_class_name(dataset: str, name: str, classes: Sequence[str] | None = None) -> str:
    """Map a class name or alias to the dataset's canonical spelling.

    Matching order: exact canonical name, the dataset's alias table, then a case/space/underscore/hyphen
    insensitive comparison against the canonical names and aliases.

    Args:
        dataset: dataset key (see :func:`dataset_classes`); for a custom dataset pass ``classes``.
        name: the name to resolve, e.g. ``"airplane"``.
        classes: class list of a custom dataset; when given it replaces ``dataset_classes(dataset)``.

    Returns:
        The canonical class name.

    Raises:
        ZeroSegError: ``unknown class 'x' for dataset 'voc'; did you mean ...``.
    """
    canonical = tuple(classes) if classes is not None else dataset_classes(dataset)
    if name in canonical:
        return name
    aliases = ALIASES.get(dataset, {}) if classes is None else {}
    key = name.strip().lower()
    if key in aliases:
        return aliases[key]
    squashed = _squash(name)
    for cand in canonical:
        if _squash(cand) == squashed:
            return cand
    for alias, target in aliases.items():
        if _squash(alias) == squashed:
            return target
    pool = list(canonical) + list(aliases)
    close = difflib.get_close_matches(key, pool, n=3, cutoff=0.6)
    hint = "; did you mean " + " or ".join(f"'{c}'" for c in close) + "?" if close else ""
    raise ZeroSegError(f"unknown class '{name}' for dataset '{dataset}'{hint}")


#: How class names reach a text encoder (``text.class_name_style``): ``natural`` words (:func:`natural_name`) or
#: the official ZegFormer strings ``verbatim`` (:func:`official_prompt_name`).
CLASS_NAME_STYLES: tuple[str, ...] = ("natural", "verbatim")

#: zeroseg spellings that differ from the strings ZegFormer's class JSONs hold (and embeds verbatim). VOC: zeroseg
#: follows mmsegmentation's ``pottedplant``; ZegFormer's ``datasets/pascal/create_voc_class_names_json.py:20``
#: (= ``register_pascal_voc.py:24``) writes ``"potted plant"``. Every other VOC name (``aeroplane``,
#: ``diningtable``, ``motorbike``, ``tvmonitor``, ...) and all 171 COCO-Stuff names
#: (``datasets/coco-stuff/create_cocostuff_class_names_json.py:6-178``) are spelled identically.
OFFICIAL_PROMPT_NAMES: dict[str, str] = {"pottedplant": "potted plant"}


def official_prompt_name(name: str) -> str:
    """The string ZegFormer's official code puts into its prompt templates for a zeroseg class name.

    ``"tvmonitor"`` -> ``"tvmonitor"``, ``"wall-concrete"`` -> ``"wall-concrete"``, ``"pottedplant"`` ->
    ``"potted plant"`` (:data:`OFFICIAL_PROMPT_NAMES`); any other name is returned unchanged.
    """
    return OFFICIAL_PROMPT_NAMES.get(name, name)


def natural_name(name: str) -> str:
    """Turn a dataset class name into plain words for a text encoder.

    ``"pottedplant"`` -> ``"potted plant"``, ``"tvmonitor"`` -> ``"tv monitor"``,
    ``"wall-concrete"`` -> ``"wall concrete"``, ``"potted_plant"`` -> ``"potted plant"``.
    """
    if name in _NATURAL_NAMES:
        return _NATURAL_NAMES[name]
    return re.sub(r"\s+", " ", re.sub(r"[_\-]+", " ", name)).strip()


def palette(num_classes: int) -> np.ndarray:
    """The PASCAL VOC colour map (bit-interleaved RGB), extended to any number of classes.

    Args:
        num_classes: number of colours, 1..256.

    Returns:
        colours: (num_classes, 3) uint8; row 0 is black, row 1 (128, 0, 0), row 15 (192, 128, 128).
    """
    if not 1 <= num_classes <= 256:
        raise ZeroSegError(f"palette: num_classes {num_classes} outside 1..256")
    out = np.zeros((num_classes, 3), dtype=np.uint8)
    for k in range(num_classes):
        r = g = b = 0
        c = k
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        out[k] = (r, g, b)
    return out


def _check_lengths() -> None:
    # Cheap import-time guard against an accidental edit of the long tuples above.
    expected = {
        "voc": 21, "context59": 59, "context60": 60, "coco-stuff-171": 171, "ade20k-150": 150,
        "context459": 459, "ade20k-847": 847,
    }  # fmt: skip
    for key, n in expected.items():
        got = DATASET_CLASSES[key]
        if len(got) != n or len(set(got)) != n:
            raise AssertionError(f"{key}: expected {n} distinct class names, got {len(set(got))}")
    if len(set(ADE847_RAW_IDS)) != 847:
        raise AssertionError("ADE-847 raw class-mask ids must be 847 distinct values")
    if len(COCO_STUFF_RAW_TO_171) != 171:
        raise AssertionError("COCO-Stuff raw->171 mapping must have 171 entries")


_check_lengths()
