"""Label and image decoders, the :class:`Sample` file pair and :class:`SegmentationDataset`.

The lowest layer of :mod:`zeroseg.data`: every dataset-layout module (:mod:`~zeroseg.data.voc`,
:mod:`~zeroseg.data.context`, :mod:`~zeroseg.data.coco_stuff`, :mod:`~zeroseg.data.ade20k`,
:mod:`~zeroseg.data.folder`) imports its decoders and folder helpers from here and exposes
``list_samples(root, split) -> list[Sample]`` and ``read_label(path) -> (H, W) uint8`` in its dataset's class
space (:data:`IGNORE` = 255). :class:`SegmentationDataset` turns those into tensors and guards every file against
bad user data: a missing or undecodable file, a label whose size differs from its image, or a label id outside
the class list raises :class:`ZeroSegError` naming the file. The name -> layout table is
:mod:`zeroseg.data.readers`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from zeroseg.errors import ZeroSegError

IGNORE = 255
"""Label value meaning "not annotated / do not train on / do not score", in every 8-bit label space."""

IGNORE_WIDE = 65535
"""The ignore value of the *wide* label spaces (more than 255 classes: PASCAL-Context 459, ADE20K-847).

Their labels are stored as 16-bit grayscale PNGs (ids 0..N-1, 65535 = ignore, the uint16 convention of
MaskFormer/CAT-Seg's ``.tif`` files) and read as (H, W) uint16 by ``read_label_png(path, wide=True)``; their
readers declare ``ignore_index = IGNORE_WIDE`` and their label tables are (65536,). Every other label space
stays uint8 with :data:`IGNORE` = 255.
"""

# The RGB mean/std of the ImageNet-pretrained backbones; the one copy (transforms, visualisation, the CLIP
# branch's un-normalisation and the benchmarks import it).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# PIL raises a zoo of exception types on damaged files; all mean "this file is not a usable image".
_DECODE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError)
#: PIL modes whose pixel values are class ids. RGB(A) images are colour renderings, not label maps.
_LABEL_MODES = frozenset({"P", "L", "I", "I;16", "I;16L", "I;16B", "I;16N"})

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


#: Pillow modes of 16-bit (and 32-bit integer) grayscale images; their values span 0..65535.
_WIDE_GREY = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


def load_image(path: str | Path) -> np.ndarray:
    """Decode an image file to RGB -- the one image decoder (datasets, ``data check``, ``predict``).

    16-bit grayscale images are scaled to 8 bits (``round(v / 257)``, so 65535 -> 255; Pillow's own conversion
    would clip every value above 255 to white); 32-bit float images are refused.

    Returns:
        image: (H, W, 3) uint8.

    Raises:
        ZeroSegError: missing, undecodable or unsupported file (including a decompression bomb), naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise ZeroSegError(f"{path}: image file not found")
    try:
        with Image.open(path) as img:
            if img.mode in _WIDE_GREY:
                wide = np.asarray(img).astype(np.float64)
                grey = np.clip(np.round(wide / 257.0), 0, 255).astype(np.uint8)
                return np.repeat(grey[..., None], 3, axis=2)
            if img.mode == "F":
                raise ZeroSegError(f"{path}: floating-point image; save it as an 8- or 16-bit image")
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except ZeroSegError:
        raise
    except _DECODE_ERRORS as err:
        raise ZeroSegError(f"{path}: cannot decode image ({_short(err)})") from None


def read_label_png(path: str | Path, *, wide: bool = False) -> np.ndarray:
    """Read a single-channel label PNG as its stored class ids -- the one label-file decoder.

    Palette (``P``) PNGs give their palette indices (the VOC convention, never the colours), grayscale (``L``)
    PNGs their grey values. By default labels are (H, W) uint8 with :data:`IGNORE` = 255: 16/32-bit integer
    PNGs (``I;16*``, ``I``) are accepted when every value is an id in 0..255, and a value outside 0..255 is an
    error (never truncated to 8 bits). With ``wide=True`` (label spaces of more than 255 classes) the file must
    be a 16-bit PNG and is returned as stored, (H, W) uint16 with :data:`IGNORE_WIDE` = 65535; an 8-bit file is
    refused there because its 255 would be ambiguous (class 255 or ignore).

    Returns:
        label: (H, W) uint8, or uint16 when ``wide``.

    Raises:
        ZeroSegError: missing or undecodable file, a colour/alpha mode that does not store ids, or a value that
            does not fit the label width; one line naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ZeroSegError(f"{path}: label file not found")
    try:
        with Image.open(path) as img:
            mode = img.mode
            # np.asarray of a P image gives the palette indices, which is exactly what a label is.
            arr = np.asarray(img) if mode in _LABEL_MODES else None
    except _DECODE_ERRORS as err:  # ZeroSegError is a ValueError: none is raised inside this block
        raise ZeroSegError(f"{path}: cannot read image ({_short(err)})") from None
    if arr is None:
        raise ZeroSegError(
            f"{path}: image mode {mode} is not a label map; save class ids as a palette (P) or grayscale (L) PNG"
        )
    if arr.ndim != 2:
        raise ZeroSegError(f"{path}: expected a single-channel label map, got array shape {arr.shape}")
    if wide:
        if arr.dtype == np.uint8:
            raise ZeroSegError(f"{path}: expected a 16-bit label PNG (ids 0..65534, {IGNORE_WIDE} = ignore), got 8-bit")
        top = IGNORE_WIDE
    else:
        if arr.dtype == np.uint8:
            return arr.copy()
        top = IGNORE
    outside = (arr < 0) | (arr > top)
    if outside.any():
        raise ZeroSegError(
            f"{path}: label id {int(arr[outside].max())} does not fit in 0..{top} (16/32-bit label PNGs may only "
            f"hold ids 0..{top} here)"
        )
    return arr.astype(np.uint16 if wide else np.uint8)


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


def check_label_ids(
    label: np.ndarray, num_classes: int, path: Path, class_desc: str = "", ignore_index: int = IGNORE
) -> None:
    """Raise if a label map holds an id outside ``0..num_classes-1`` that is not ``ignore_index``."""
    bad = (label >= num_classes) & (label != ignore_index)
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
        label_lut: optional table applied after validation (e.g. from :func:`zeroseg.data.zero_shot.label_lut`):
            (256,) uint8, or (65536,) uint16 for a wide label space.
        transform: optional paired transform ``(image01, label, generator) -> (image01, label)`` working on
            the [0, 1] image before normalisation (see :mod:`zeroseg.data.transforms`).
        normalize: apply the ImageNet normalisation after the transform.
        seed: when set, each sample's random transform uses a generator seeded from
            ``(seed, epoch, index)`` so results do not depend on worker count or order.
        name: dataset name used in error messages.
        ignore_index: the reader's ignore value: :data:`IGNORE` for uint8 labels, :data:`IGNORE_WIDE` for the
            uint16 labels of a wide label space (then the label tensor's ignored pixels hold 65535).
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
        ignore_index: int = IGNORE,
    ) -> None:
        if len(class_names) == 0:
            raise ZeroSegError(f"dataset '{name or '?'}': empty class list")
        if ignore_index not in (IGNORE, IGNORE_WIDE):
            raise ZeroSegError(f"ignore_index must be {IGNORE} or {IGNORE_WIDE}, got {ignore_index}")
        if label_lut is not None:
            label_lut = np.asarray(label_lut)
            size = ignore_index + 1
            if label_lut.shape != (size,):
                raise ZeroSegError(f"label_lut must have shape ({size},), got {tuple(label_lut.shape)}")
            label_lut = label_lut.astype(np.uint8 if ignore_index == IGNORE else np.uint16)
        self.samples = list(samples)
        self.read_label = read_label
        self.class_names = tuple(class_names)
        self.label_lut = label_lut
        self.transform = transform
        self.normalize = normalize
        self.seed = seed
        self.epoch = 0
        self.name = name
        self.ignore_index = ignore_index

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
            image: (H, W, 3) uint8; label: (H, W) uint8 (uint16 for a wide label space) in the dataset class space.
        """
        sample = self.samples[index]
        image = load_image(sample.image_path)
        label = self.read_label(sample.label_path)
        if label.shape != image.shape[:2]:
            raise ZeroSegError(
                f"{sample.label_path}: label size {label.shape[1]}x{label.shape[0]} differs from image "
                f"size {image.shape[1]}x{image.shape[0]} ({sample.image_path.name})"
            )
        check_label_ids(label, self.num_classes, sample.label_path, self._class_desc(), self.ignore_index)
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


def collate(batch: list) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Stack ``(image, label, stem)`` samples of equal size.

    Returns:
        images: (B, 3, H, W) float32; labels: (B, H, W) int64; stems: B names.
    """
    images = torch.stack([b[0] for b in batch])
    labels = torch.stack([b[1] for b in batch])
    return images, labels, [b[2] for b in batch]
