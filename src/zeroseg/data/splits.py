"""Zero-shot seen/unseen class splits, by class name.

Declared splits and where their class lists come from:

* ``voc-zs3-k2`` ... ``voc-zs3-k10`` -- ZS3Net (Bucher et al., NeurIPS 2019), valeoai/ZS3
  ``ZS3/data/pascal_voc_unseen_classes.txt`` and the ``--unseen_classes_idx`` defaults
  ``[10, 14, 1, 18, 8, 20, 19, 5, 9, 16]`` in ``zs3/train_pascal.py``: nested unseen sets
  cow, motorbike | + aeroplane, sofa | + cat, tvmonitor | + train, bottle | + chair, pottedplant.
  Background is an ordinary seen class (21-way output).
* ``context-zs3-k2`` ... ``context-zs3-k10`` -- ZS3Net on Pascal-Context, valeoai/ZS3
  ``pascal_context_unseen_classes.txt`` and ``zs3/train_context.py``: cow, motorbike | + sofa, cat |
  + boat, fence | + bird, tvmonitor | + keyboard, aeroplane. ZS3 uses 60 classes
  (``ContextSegmentation.NUM_CLASSES = 60``, background = 0, trained as a class), hence ``context60``.
* ``voc-spnet-15-5`` -- SPNet (Xian et al., CVPR 2019) / ZegFormer (Ding et al., CVPR 2022),
  dingjiansw101/ZegFormer ``datasets/pascal/class_split.py``: the last five VOC classes
  (pottedplant, sheep, sofa, train, tvmonitor) are unseen; background (id 0) is mapped to 255 in
  ``prepare_pascal_voc_seen.py``, i.e. ignored in training and evaluation.
* ``coco-stuff-156-15`` -- SPNet / ZegFormer, ``datasets/coco-stuff/prepare_coco_stuff_sem_seg_unseen.py``
  (``COCO_CATEGORIES_Unseen``): cow, giraffe, suitcase, frisbee, skateboard, carrot, scissors, cardboard,
  clouds, grass, playingfield, river, road, tree, wall-concrete.
* ``<dataset>-open`` -- cross-dataset open-vocabulary protocol: nothing seen, every class unseen.
  ``voc-open`` ignores background (the 20-class "VOC-20" protocol); ``context60-open`` keeps background
  as a class (the "PC-60" protocol).
* ``synthetic`` -- the embedded benchmark: unseen red dotted, green checkered, blue striped, yellow checkered
  (:data:`zeroseg.data.synthetic.DEFAULT_UNSEEN`).
* ``synthetic-heldout`` -- the tuning split of the embedded benchmark: unseen red striped, green dotted, blue
  checkered, yellow striped (:data:`zeroseg.data.synthetic.HELDOUT_UNSEEN`, disjoint from ``synthetic``'s);
  settings are chosen on it (with another data seed), so the ``synthetic`` numbers stay held out.

A split speaks in *dataset label ids* (``Split.seen_label_ids`` / ``unseen_label_ids`` / ``ignored_label_ids``,
indices of ``dataset_class_names``). How its unseen classes are kept out of training labels (the ``drop`` and
``ignore`` policies) and the map into the model's class indices are :mod:`zeroseg.data.zero_shot`.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zeroseg.data.classes import DATASET_CLASSES, dataset_classes, resolve_class_name
from zeroseg.data.synthetic import DEFAULT_UNSEEN, HELDOUT_UNSEEN
from zeroseg.errors import ZeroSegError


@dataclass(frozen=True)
class Split:
    """A seen/unseen partition of a dataset's classes.

    Attributes:
        name: split name, e.g. ``"voc-zs3-k4"``.
        dataset: dataset key (see :func:`zeroseg.data.classes.dataset_classes`) or any name when
            ``classes`` is given.
        seen: canonical names of classes with training labels.
        unseen: canonical names of classes without training labels.
        background: name of the dataset's background class, or None.
        ignore_background: True when background is neither trained nor scored (SPNet/ZegFormer VOC 15/5).
        classes: the full class list of a custom dataset (label-id order); None for known datasets.
    """

    name: str
    dataset: str
    seen: tuple[str, ...]
    unseen: tuple[str, ...]
    background: str | None = None
    ignore_background: bool = False
    classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        # Coerce lists (e.g. from JSON) so the frozen instance stays hashable.
        for field in ("seen", "unseen", "classes"):
            value = getattr(self, field)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, field, tuple(value))
        if self.classes is None and self.dataset not in DATASET_CLASSES:
            known = ", ".join(DATASET_CLASSES)
            raise ZeroSegError(
                f"split '{self.name}': unknown dataset '{self.dataset}' (known: {known}); "
                "give a 'classes' list for a custom dataset"
            )
        all_classes = self.dataset_class_names
        if len(all_classes) == 0:
            raise ZeroSegError(f"split '{self.name}': empty class list")
        if len(set(all_classes)) != len(all_classes):
            dupes = sorted({c for c in all_classes if all_classes.count(c) > 1})
            raise ZeroSegError(f"split '{self.name}': duplicate class names {dupes}")
        known = set(all_classes)
        for group in ("seen", "unseen"):
            names = getattr(self, group)
            bad = [n for n in names if n not in known]
            if bad:
                raise ZeroSegError(
                    f"split '{self.name}': {group} class '{bad[0]}' is not a class of dataset "
                    f"'{self.dataset}' (use make_split to resolve aliases)"
                )
            if len(set(names)) != len(names):
                raise ZeroSegError(f"split '{self.name}': {group} list repeats a class")
        both = set(self.seen) & set(self.unseen)
        if both:
            raise ZeroSegError(f"split '{self.name}': classes both seen and unseen: {sorted(both)}")
        if self.background is not None and self.background not in known:
            raise ZeroSegError(
                f"split '{self.name}': background '{self.background}' is not a class of '{self.dataset}'"
            )
        if self.ignore_background:
            if self.background is None:
                raise ZeroSegError(f"split '{self.name}': ignore_background needs a background class")
            if self.background in self.seen or self.background in self.unseen:
                raise ZeroSegError(
                    f"split '{self.name}': background '{self.background}' is ignored, "
                    "so it must be neither seen nor unseen"
                )
        missing = [c for c in self.class_names if c not in set(self.seen) | set(self.unseen)]
        if missing:
            raise ZeroSegError(
                f"split '{self.name}': {len(missing)} class(es) neither seen nor unseen, e.g. '{missing[0]}'"
            )
        if not self.seen and not self.unseen:
            raise ZeroSegError(f"split '{self.name}': no classes")

    @property
    def dataset_class_names(self) -> tuple[str, ...]:
        """Every class of the dataset label space (including an ignored background), in id order."""
        return self.classes if self.classes is not None else dataset_classes(self.dataset)

    @property
    def class_names(self) -> tuple[str, ...]:
        """All evaluated classes in dataset order (without the background when it is ignored)."""
        if self.ignore_background:
            return tuple(c for c in self.dataset_class_names if c != self.background)
        return self.dataset_class_names

    @property
    def num_labels(self) -> int:
        """Size of the dataset label space (ids 0..num_labels-1, plus 255 = ignore)."""
        return len(self.dataset_class_names)

    @property
    def seen_label_ids(self) -> tuple[int, ...]:
        """Dataset label ids of the seen classes, ascending (not model class indices, see ``zero_shot``)."""
        seen = set(self.seen)
        return tuple(i for i, c in enumerate(self.dataset_class_names) if c in seen)

    @property
    def unseen_label_ids(self) -> tuple[int, ...]:
        """Dataset label ids of the unseen classes, ascending."""
        unseen = set(self.unseen)
        return tuple(i for i, c in enumerate(self.dataset_class_names) if c in unseen)

    @property
    def ignored_label_ids(self) -> tuple[int, ...]:
        """Dataset label ids that are neither trained nor scored (the ignored background, if any)."""
        if not self.ignore_background:
            return ()
        return (self.dataset_class_names.index(self.background),)  # type: ignore[arg-type]

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict; :func:`load_split` reads it back."""
        out: dict[str, Any] = {
            "name": self.name,
            "dataset": self.dataset,
            "seen": list(self.seen),
            "unseen": list(self.unseen),
            "background": self.background,
            "ignore_background": self.ignore_background,
        }
        if self.classes is not None:
            out["classes"] = list(self.classes)
        return out


def make_split(
    name: str,
    dataset: str,
    unseen: Sequence[str],
    seen: Sequence[str] | None = None,
    *,
    background: str | None = None,
    ignore_background: bool = False,
    classes: Sequence[str] | None = None,
    allow_empty_unseen: bool = False,
) -> Split:
    """Build a validated :class:`Split`, resolving aliases (``"airplane"`` -> ``"aeroplane"``).

    Args:
        name: split name.
        dataset: dataset key, or any name together with ``classes``.
        unseen: unseen class names or aliases.
        seen: seen names; None means "every other class" (minus an ignored background).
        background: background class name (or alias), or None.
        ignore_background: drop the background from training and evaluation.
        classes: full class list of a custom dataset, in label-id order.
        allow_empty_unseen: permit a fully supervised split (no unseen class).

    Raises:
        ZeroSegError: on unknown names, overlaps, incomplete coverage or an empty unseen set.
    """
    cls = tuple(classes) if classes is not None else None

    def resolve(n: str) -> str:
        return resolve_class_name(dataset, n, cls)

    unseen_r = tuple(resolve(n) for n in unseen)
    bg = resolve(background) if background is not None else None
    all_classes = cls if cls is not None else dataset_classes(dataset)
    if seen is None:
        skip = set(unseen_r) | ({bg} if ignore_background else set())
        seen_r = tuple(c for c in all_classes if c not in skip)
    else:
        seen_r = tuple(resolve(n) for n in seen)
    if not unseen_r and not allow_empty_unseen:
        raise ZeroSegError(f"split '{name}': no unseen classes (pass allow_empty_unseen for a supervised split)")
    return Split(
        name=name,
        dataset=dataset,
        seen=seen_r,
        unseen=unseen_r,
        background=bg,
        ignore_background=ignore_background,
        classes=cls,
    )


_VOC_ZS3_ORDER = ("cow", "motorbike", "aeroplane", "sofa", "cat", "tvmonitor", "train", "bottle", "chair",
                  "pottedplant")  # fmt: skip
_CONTEXT_ZS3_ORDER = ("cow", "motorbike", "sofa", "cat", "boat", "fence", "bird", "tvmonitor", "keyboard",
                      "aeroplane")  # fmt: skip
_COCO_STUFF_UNSEEN_15 = ("cow", "giraffe", "suitcase", "frisbee", "skateboard", "carrot", "scissors",
                         "cardboard", "clouds", "grass", "playingfield", "river", "road", "tree",
                         "wall-concrete")  # fmt: skip
_SYNTHETIC_UNSEEN = DEFAULT_UNSEEN

_BACKGROUND = {"voc": "background", "context60": "background"}


def _declare() -> dict[str, Split]:
    splits: list[Split] = []
    for k in (2, 4, 6, 8, 10):
        splits.append(make_split(f"voc-zs3-k{k}", "voc", _VOC_ZS3_ORDER[:k], background="background"))
        splits.append(make_split(f"context-zs3-k{k}", "context60", _CONTEXT_ZS3_ORDER[:k], background="background"))
    splits.append(
        make_split(
            "voc-spnet-15-5",
            "voc",
            ("pottedplant", "sheep", "sofa", "train", "tvmonitor"),
            background="background",
            ignore_background=True,
        )
    )
    splits.append(make_split("coco-stuff-156-15", "coco-stuff-171", _COCO_STUFF_UNSEEN_15))
    splits.append(make_split("synthetic", "synthetic", _SYNTHETIC_UNSEEN))
    splits.append(make_split("synthetic-heldout", "synthetic", HELDOUT_UNSEEN))
    for dataset, names in DATASET_CLASSES.items():
        bg = _BACKGROUND.get(dataset)
        ignore = dataset == "voc"
        unseen = tuple(c for c in names if not (ignore and c == bg))
        splits.append(Split(f"{dataset}-open", dataset, (), unseen, background=bg, ignore_background=ignore))
    return {s.name: s for s in splits}


SPLITS: dict[str, Split] = _declare()
"""Every declared split by name."""


def list_splits() -> list[str]:
    """Names of all declared splits, sorted."""
    return sorted(SPLITS)


def get_split(name: str) -> Split:
    """Return a declared split by name.

    Raises:
        ZeroSegError: unknown name, with the closest declared names.
    """
    try:
        return SPLITS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(SPLITS), n=3, cutoff=0.5)
        hint = "; did you mean " + " or ".join(f"'{c}'" for c in close) + "?" if close else ""
        raise ZeroSegError(f"unknown split '{name}'{hint} (see list_splits())") from None


def split_from_json(data: dict[str, Any], source: str = "<json>", class_names: Sequence[str] | None = None) -> Split:
    """Build a :class:`Split` from the dict form written by :meth:`Split.to_json`.

    Args:
        data: dict with ``dataset``, ``unseen`` and optionally ``name``, ``seen``, ``background``,
            ``ignore_background`` and ``classes`` (required for datasets outside the canonical ones
            unless ``class_names`` is given).
        source: file name used in error messages.
        class_names: class list of a custom dataset (e.g. from ``classes.txt``); must agree with
            ``data["classes"]`` when both are present.
    """
    if not isinstance(data, dict):
        raise ZeroSegError(f"{source}: a split must be a JSON object")
    for key in ("dataset", "unseen"):
        if key not in data:
            raise ZeroSegError(f"{source}: missing key '{key}'")
    unknown = set(data) - {"name", "dataset", "seen", "unseen", "background", "ignore_background", "classes"}
    if unknown:
        raise ZeroSegError(f"{source}: unknown key(s) {sorted(unknown)}")
    for key in ("seen", "unseen", "classes"):
        value = data.get(key)
        if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
            raise ZeroSegError(f"{source}: '{key}' must be a list of class-name strings")
    classes = data.get("classes")
    if classes is not None and class_names is not None and list(classes) != list(class_names):
        raise ZeroSegError(f"{source}: 'classes' does not match the dataset's class list")
    if classes is None:
        classes = class_names
    dataset = str(data["dataset"])
    if classes is None and dataset not in DATASET_CLASSES:
        raise ZeroSegError(f"{source}: dataset '{dataset}' is not a known dataset, so the file needs a 'classes' list")
    try:
        split = make_split(
            name=str(data.get("name") or Path(source).stem),
            dataset=dataset,
            unseen=data["unseen"],
            seen=data.get("seen"),
            background=data.get("background"),
            ignore_background=bool(data.get("ignore_background", False)),
            classes=classes,
            allow_empty_unseen=True,
        )
    except ZeroSegError as err:
        raise ZeroSegError(f"{source}: {err}") from None
    if not split.seen and not split.unseen:
        raise ZeroSegError(f"{source}: split has no classes")
    return split


def load_split(path_or_name: str | Path, class_names: Sequence[str] | None = None) -> Split:
    """Load a split from a JSON file, or look up a declared split by name.

    Args:
        path_or_name: a ``.json`` path (format of :meth:`Split.to_json`, optional ``"classes"`` list) or a
            name from :func:`list_splits`.
        class_names: the class list of the data it will be used with; checked against the split's
            own class list (and used as the class list of a custom-dataset file without ``"classes"``).

    Raises:
        ZeroSegError: unreadable file, bad JSON, invalid split, class-list mismatch or unknown name.
    """
    path = Path(path_or_name)
    looks_like_file = path.suffix.lower() == ".json" or path.is_file()
    if looks_like_file:
        if not path.is_file():
            raise ZeroSegError(f"{path}: split file not found")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as err:
            raise ZeroSegError(f"{path}: cannot read split file ({err.__class__.__name__})") from None
        except json.JSONDecodeError as err:
            raise ZeroSegError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from None
        return split_from_json(data, source=str(path), class_names=class_names)
    split = get_split(str(path_or_name))
    if class_names is not None and tuple(class_names) != split.dataset_class_names:
        raise ZeroSegError(
            f"split '{split.name}' is defined on dataset '{split.dataset}' whose class list differs from "
            f"the given {len(class_names)} class names"
        )
    return split
