"""A map-style segmentation dataset over (image, label) file pairs, and the dataset-name dispatch.

Every reader module (:mod:`~zeroseg.data.voc`, :mod:`~zeroseg.data.context`,
:mod:`~zeroseg.data.coco_stuff`, :mod:`~zeroseg.data.ade20k`, :mod:`~zeroseg.data.folder`) knows one
folder layout and exposes ``list_samples(root, split) -> list[Sample]`` and
``read_label(path) -> (H, W) uint8`` in its dataset's class space (255 = ignore). This module turns those
into tensors and guards every file against bad user data: a missing or undecodable file, a label whose size
differs from its image, or a label id outside the class list raises :class:`ZeroSegError` naming the file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from zeroseg.data.classes import IGNORE_INDEX
from zeroseg.data.splits import Split, check_policy, image_has_unseen, train_label_map
from zeroseg.errors import ZeroSegError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# PIL raises a zoo of exception types on damaged files; all mean "this file is not a usable image".
_DECODE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError)

PairedTransform = Callable[[torch.Tensor, torch.Tensor, torch.Generator | None], tuple[torch.Tensor, torch.Tensor]]
LabelReader = Callable[[Path], np.ndarray]


@dataclass(frozen=True)
class Sample:
    """One image and its label map.

    Attributes:
        image_path: RGB image file.
        label_path: label PNG file.
    """

    image_path: Path
    label_path: Path

    @property
    def stem(self) -> str:
        """File name of the image without extension, used as the sample id."""
        return self.image_path.stem


def load_image(path: Path) -> np.ndarray:
    """Decode an image file to RGB.

    Returns:
        image: (H, W, 3) uint8.

    Raises:
        ZeroSegError: missing or undecodable file.
    """
    path = Path(path)
    if not path.is_file():
        raise ZeroSegError(f"{path}: image file not found")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except _DECODE_ERRORS as err:
        raise ZeroSegError(f"{path}: cannot decode image ({_short(err)})") from None


def load_png_indices(path: Path) -> np.ndarray:
    """Read a single-channel label PNG as its stored integer values.

    Palette ("P") PNGs give their palette indices (the VOC convention), grayscale PNGs their grey values.

    Returns:
        label: (H, W) uint8.

    Raises:
        ZeroSegError: missing file, undecodable file, or a multi-channel / >8-bit image.
    """
    path = Path(path)
    if not path.is_file():
        raise ZeroSegError(f"{path}: label file not found")
    try:
        with Image.open(path) as img:
            mode = img.mode
            if mode in ("P", "L"):
                arr = np.asarray(img, dtype=np.uint8).copy()
            elif mode in ("I", "I;16", "I;16B", "I;16L"):
                wide = np.asarray(img)
                if wide.size and int(wide.max()) > 255:
                    raise ZeroSegError(f"{path}: label value {int(wide.max())} does not fit in 0..255")
                arr = wide.astype(np.uint8)
            else:
                raise ZeroSegError(f"{path}: label PNG has mode {mode}; expected a single-channel (P or L) id map")
    except _DECODE_ERRORS as err:
        raise ZeroSegError(f"{path}: cannot decode label ({_short(err)})") from None
    return arr


def _short(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else err.__class__.__name__
    return text[:120]


def find_dataset_dir(root: str | Path, required: Sequence[str], nested: Sequence[str], what: str) -> Path:
    """Locate the folder that holds a dataset's sub-folders.

    Users point ``root`` at the dataset folder itself or at a parent of it (e.g. ``VOCdevkit`` or
    ``data/``), so ``root`` and each ``root / n`` for ``n`` in ``nested`` are tried in turn.

    Args:
        root: user-given root.
        required: sub-folders that must all exist, e.g. ``("JPEGImages",)``.
        nested: relative paths to try below ``root``, e.g. ``("VOC2012", "VOCdevkit/VOC2012")``.
        what: dataset description for the error message.

    Raises:
        ZeroSegError: root missing, or no candidate holds all ``required`` folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise ZeroSegError(f"{root}: dataset root not found ({what})")
    for cand in [root, *(root / n for n in nested)]:
        if all((cand / r).is_dir() for r in required):
            return cand
    missing = next(r for r in required if not (root / r).is_dir())
    raise ZeroSegError(f"{root}: not a {what} tree (no {missing}/ here or under {', '.join(nested) or '-'})")


def image_folder_pair(base: Path, sub: str, suffixes: Sequence[str] = (".jpg",)) -> tuple[Path, list[Path]]:
    """The ``images/<sub>`` files of ``base`` (sorted) and the ``annotations/<sub>`` folder beside them.

    The layout shared by ADE20K, COCO-Stuff and the generic folder reader.

    Raises:
        ZeroSegError: a missing folder or no image in it, naming the folder.
    """
    img_dir, ann_dir = base / "images" / sub, base / "annotations" / sub
    for d in (img_dir, ann_dir):
        if not d.is_dir():
            raise ZeroSegError(f"{d}: folder not found")
    images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in suffixes and p.is_file())
    if not images:
        raise ZeroSegError(f"{img_dir}: no {'/'.join(suffixes)} images")
    return ann_dir, images


def read_id_list(path: Path) -> list[str]:
    """Read an image-id list file: one id per line; blank lines skipped.

    Lines like ``/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png`` (the DeepLab list
    format) are reduced to the id ``2007_000032``.

    Raises:
        ZeroSegError: missing or unreadable file, or a list with no ids.
    """
    path = Path(path)
    if not path.is_file():
        raise ZeroSegError(f"{path}: list file not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ZeroSegError(f"{path}: cannot read list file ({err.__class__.__name__})") from None
    ids = []
    for line in lines:
        token = line.strip().split()[0] if line.strip() else ""
        if token:
            ids.append(Path(token).stem)
    if not ids:
        raise ZeroSegError(f"{path}: list file is empty")
    return ids


def check_label_ids(label: np.ndarray, num_classes: int, path: Path, class_desc: str = "") -> None:
    """Raise if a label map holds an id outside ``0..num_classes-1`` that is not 255."""
    bad = (label >= num_classes) & (label != IGNORE_INDEX)
    if bad.any():
        value = int(label[bad].max())
        desc = f" ({class_desc})" if class_desc else ""
        raise ZeroSegError(f"{path}: label id {value} outside 0..{num_classes - 1}{desc}")


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def normalize_image(image: torch.Tensor) -> torch.Tensor:
    """ImageNet mean/std normalisation of a (3, H, W) [0, 1] image."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype).view(3, 1, 1)
    return (image - mean) / std


class SegmentationDataset(torch.utils.data.Dataset):
    """Image/label pairs as tensors.

    ``dataset[i]`` returns ``(image, label, stem)``: image (3, H, W) float32 normalised with the ImageNet
    mean/std, label (H, W) int64 (255 = ignore), stem the image file name without extension.

    Args:
        samples: the (image, label) file pairs.
        read_label: reader turning a label file into (H, W) uint8 ids in the dataset class space.
        class_names: the dataset's classes in id order; ids >= len(class_names) (other than 255) are errors.
        label_lut: optional (256,) uint8 table applied after validation (e.g. from
            :func:`zeroseg.data.splits.train_label_map`).
        transform: optional paired transform ``(image01, label, generator) -> (image01, label)`` working on
            the [0, 1] image before normalisation (see :mod:`zeroseg.data.transforms`).
        normalize: apply the ImageNet normalisation after the transform.
        seed: when set, each sample's random transform uses a generator seeded from
            ``(seed, epoch, index)`` so results do not depend on worker count or order.
        name: dataset name used in error messages.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        read_label: LabelReader,
        class_names: Sequence[str],
        *,
        label_lut: np.ndarray | None = None,
        transform: PairedTransform | None = None,
        normalize: bool = True,
        seed: int | None = None,
        name: str = "",
    ) -> None:
        if len(class_names) == 0:
            raise ZeroSegError(f"dataset '{name or '?'}': empty class list")
        if label_lut is not None:
            label_lut = np.asarray(label_lut)
            if label_lut.shape != (256,):
                raise ZeroSegError(f"label_lut must have shape (256,), got {tuple(label_lut.shape)}")
            label_lut = label_lut.astype(np.uint8)
        self.samples = list(samples)
        self.read_label = read_label
        self.class_names = tuple(class_names)
        self.label_lut = label_lut
        self.transform = transform
        self.normalize = normalize
        self.seed = seed
        self.epoch = 0
        self.name = name

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_classes(self) -> int:
        """Number of classes in the dataset label space."""
        return len(self.class_names)

    def set_epoch(self, epoch: int) -> None:
        """Change the seeded augmentation stream (only used when ``seed`` is set)."""
        self.epoch = int(epoch)

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Decode and validate sample ``index`` without LUT or transform.

        Returns:
            image: (H, W, 3) uint8; label: (H, W) uint8 in the dataset class space.
        """
        sample = self.samples[index]
        image = load_image(sample.image_path)
        label = self.read_label(sample.label_path)
        if label.shape != image.shape[:2]:
            raise ZeroSegError(
                f"{sample.label_path}: label size {label.shape[1]}x{label.shape[0]} differs from image "
                f"size {image.shape[1]}x{image.shape[0]} ({sample.image_path.name})"
            )
        check_label_ids(label, self.num_classes, sample.label_path, self._class_desc())
        return image, label

    def _class_desc(self) -> str:
        return f"{self.name} {self.num_classes} classes" if self.name else f"{self.num_classes} classes"

    def _generator(self, index: int) -> torch.Generator | None:
        if self.seed is None:
            return None
        # Large odd multipliers keep (seed, epoch, index) triples from colliding for realistic sizes.
        mixed = (self.seed * 1_000_003 + self.epoch * 7_919 + index) % (2**63 - 1)
        return torch.Generator().manual_seed(mixed)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        image_np, label_np = self.load_pair(index)
        if self.label_lut is not None:
            label_np = self.label_lut[label_np]
        image = image_to_tensor(image_np)
        label = torch.from_numpy(label_np.astype(np.int64))
        if self.transform is not None:
            image, label = self.transform(image, label, self._generator(index))
        if self.normalize:
            image = normalize_image(image)
        return image, label, self.samples[index].stem


@dataclass(frozen=True)
class DatasetReader:
    """How to list, read and name the classes of one dataset layout.

    Attributes:
        list_samples: ``(root, split) -> list[Sample]``.
        read_label: ``path -> (H, W) uint8`` in the dataset class space.
        class_names: ``root -> class names``; most datasets ignore the root, the folder layout reads it.
    """

    list_samples: Callable[[Path, str], list[Sample]]
    read_label: LabelReader
    class_names: Callable[[Path], tuple[str, ...]]


def dataset_readers() -> dict[str, DatasetReader]:
    """The plain dataset-name -> reader table used by :func:`build_dataset` and ``check_dataset``."""
    # Imported here because the reader modules import Sample and the decoders from this module.
    from zeroseg.data import ade20k, coco_stuff, context, folder, voc
    from zeroseg.data.classes import (
        ADE150_CLASSES,
        COCO_STUFF_171_CLASSES,
        CONTEXT59_CLASSES,
        CONTEXT60_CLASSES,
        VOC_CLASSES,
    )

    def fixed(names: tuple[str, ...]) -> Callable[[Path], tuple[str, ...]]:
        return lambda root: names

    return {
        "voc": DatasetReader(voc.list_samples, voc.read_label, fixed(VOC_CLASSES)),
        "context60": DatasetReader(context.list_samples, context.read_label_60, fixed(CONTEXT60_CLASSES)),
        "context59": DatasetReader(context.list_samples, context.read_label_59, fixed(CONTEXT59_CLASSES)),
        "coco-stuff-171": DatasetReader(coco_stuff.list_samples, coco_stuff.read_label, fixed(COCO_STUFF_171_CLASSES)),
        "ade20k-150": DatasetReader(ade20k.list_samples, ade20k.read_label, fixed(ADE150_CLASSES)),
        "folder": DatasetReader(folder.list_samples, folder.read_label, folder.read_classes),
        "synthetic": DatasetReader(folder.list_samples, folder.read_label, folder.synthetic_classes),
    }


def get_reader(dataset: str) -> DatasetReader:
    """Look up a dataset layout by name; ZeroSegError listing the known names otherwise."""
    readers = dataset_readers()
    if dataset not in readers:
        raise ZeroSegError(f"unknown dataset '{dataset}'; known datasets: {', '.join(readers)}")
    return readers[dataset]


def build_dataset(
    dataset: str,
    root: str | Path,
    split: str,
    *,
    transform: PairedTransform | None = None,
    label_lut: np.ndarray | None = None,
    seed: int | None = None,
    class_names: Sequence[str] | None = None,
) -> SegmentationDataset:
    """Build a :class:`SegmentationDataset` for a named dataset layout.

    Args:
        dataset: ``"voc"``, ``"context59"``, ``"context60"``, ``"coco-stuff-171"``, ``"ade20k-150"``,
            ``"folder"`` or ``"synthetic"`` (the embedded benchmark, stored in the folder layout).
        root: dataset root folder (see each reader's docstring for the tree it expects).
        split: data split, e.g. ``"train"``, ``"val"``, ``"train_aug"`` (VOC).
        transform: paired transform from :mod:`zeroseg.data.transforms`.
        label_lut: (256,) uint8 table applied to validated labels.
        seed: seeds the per-sample augmentation generators.
        class_names: override the class list (checked for length against the reader's list).
    """
    reader = get_reader(dataset)
    root = Path(root)
    names = reader.class_names(root)
    if class_names is not None:
        if tuple(class_names) != tuple(names):
            raise ZeroSegError(f"{root}: given class names differ from the {len(names)} classes of '{dataset}'")
    samples = reader.list_samples(root, split)
    return SegmentationDataset(
        samples,
        reader.read_label,
        names,
        label_lut=label_lut,
        transform=transform,
        seed=seed,
        name=dataset,
    )


def drop_unseen_samples(samples: Sequence[Sample], read_label: LabelReader, zs_split: Split) -> list[Sample]:
    """Keep only samples whose label has no unseen-class pixel (the ZS3Net ``"drop"`` policy).

    Reads every label once; a label that cannot be read raises ZeroSegError naming it.
    """
    return [s for s in samples if not image_has_unseen(read_label(s.label_path), zs_split)]


def build_train_dataset(
    dataset: str,
    root: str | Path,
    split: str,
    zs_split: Split,
    *,
    policy: str = "ignore",
    transform: PairedTransform | None = None,
    seed: int | None = None,
    compact: bool = False,
) -> SegmentationDataset:
    """Training dataset for a zero-shot split: unseen pixels -> 255, and for ``policy="drop"`` images with
    any unseen pixel removed.

    Args:
        dataset, root, split, transform, seed: as in :func:`build_dataset`.
        zs_split: the seen/unseen split; its class list must equal the dataset's.
        policy: ``"ignore"`` (ZegFormer/SPNet) or ``"drop"`` (ZS3Net).
        compact: renumber seen ids to 0..S-1 (see :func:`zeroseg.data.splits.train_label_map`).
    """
    policy = check_policy(policy)
    ds = build_dataset(dataset, root, split, transform=transform, seed=seed)
    if ds.class_names != zs_split.dataset_class_names:
        raise ZeroSegError(
            f"split '{zs_split.name}' (dataset '{zs_split.dataset}') does not match the classes of '{dataset}'"
        )
    ds.label_lut = train_label_map(zs_split, ds.num_classes, compact=compact)
    if policy == "drop":
        ds.samples = drop_unseen_samples(ds.samples, ds.read_label, zs_split)
    return ds
