"""The embedded benchmark: procedurally generated scenes whose classes have real English names.

Why it is a fair test of zero-shot transfer: every object class is a composition of a colour word and a
pattern word ("red striped", "blue dotted"), drawn as objects of random shape over "stuff" backgrounds
("sky", "grass", "sand", "road"). The pixels of a class are rendered from its *attributes* (the RGB value
that the colour word names, the texture that the pattern word names), never from any embedding vector. The
default split holds out four combinations ("red dotted", "green checkered", "blue striped", "yellow
checkered") whose colour and pattern each appear in other, seen classes. A model can therefore only label an
unseen class correctly by reading its name's embedding and composing what it learned about the words; a
control whose class embeddings are random vectors has nothing to compose and must fail.

On disk it uses the generic ``folder`` layout of :mod:`zeroseg.data.folder`, so everything downstream runs
the same code path as real data::

    root/
      classes.txt                  one class name per line, label id = line number
      split.json                   the default seen/unseen split (Split JSON with "classes")
      meta.json                    generator parameters (seed, image size, counts, vocabulary)
      images/{train,val}/NNNNN.png
      annotations/{train,val}/NNNNN.png   raw ids 0..C-1 (uint8, 255 = ignore)

Generation is deterministic for a seed: image ``i`` of split ``s`` is drawn from its own RNG seeded by
``(seed, s, i)``, so a partial tree can be completed and two runs with the same seed write identical files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from zeroseg.errors import ZeroSegError
from zeroseg.files import atomic_write_text

#: Nominal RGB of each colour word. Saturated and far apart, so colour alone is never ambiguous.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 190, 70),
    "blue": (40, 80, 225),
    "yellow": (235, 215, 40),
    "purple": (140, 50, 190),
    "orange": (240, 140, 30),
}
#: Pattern words; each is a local texture of the object's colour and white, readable at 1/4 resolution.
PATTERNS: tuple[str, ...] = ("striped", "dotted", "checkered", "plain")
#: Object outlines: a nuisance variable, not part of any class name.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
STUFF: tuple[str, ...] = ("sky", "grass", "sand", "road")

DEFAULT_COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
DEFAULT_PATTERNS: tuple[str, ...] = ("striped", "dotted", "checkered")
DEFAULT_UNSEEN: tuple[str, ...] = ("red dotted", "green checkered", "blue striped", "yellow checkered")
#: The tuning split's unseen classes: another transversal of colours x patterns (each colour and each pattern
#: still has seen examples), disjoint from :data:`DEFAULT_UNSEEN`. Settings are chosen on this split, with
#: images of another data seed, never on the default split's validation numbers.
HELDOUT_UNSEEN: tuple[str, ...] = ("red striped", "green dotted", "blue checkered", "yellow striped")
_SPLIT_SALT = {"train": 1, "val": 2, "test": 3}


@dataclass
class SynthConfig:
    """Parameters of one embedded benchmark.

    Attributes:
        seed: master seed; the same seed gives byte-identical files.
        image_size: side of the square images in pixels.
        num_train: training images.
        num_val: validation images.
        colours: colour words (keys of :data:`COLOURS`).
        patterns: pattern words (members of :data:`PATTERNS`).
        shapes: object outlines drawn at random (members of :data:`SHAPES`).
        stuff: background class names (members of :data:`STUFF`).
        unseen: object classes held out as unseen in the default split.
        objects_per_image: inclusive range of objects drawn per image.
    """

    seed: int = 0
    image_size: int = 64
    num_train: int = 1200
    num_val: int = 200
    colours: tuple[str, ...] = DEFAULT_COLOURS
    patterns: tuple[str, ...] = DEFAULT_PATTERNS
    shapes: tuple[str, ...] = ("circle", "square", "triangle")
    stuff: tuple[str, ...] = STUFF
    unseen: tuple[str, ...] = DEFAULT_UNSEEN
    objects_per_image: tuple[int, int] = (1, 3)
    name: str = field(default="synthetic")

    def __post_init__(self) -> None:
        for c in self.colours:
            if c not in COLOURS:
                raise ZeroSegError(f"synthetic: unknown colour '{c}'; known: {', '.join(COLOURS)}")
        for p in self.patterns:
            if p not in PATTERNS:
                raise ZeroSegError(f"synthetic: unknown pattern '{p}'; known: {', '.join(PATTERNS)}")
        for s in self.shapes:
            if s not in SHAPES:
                raise ZeroSegError(f"synthetic: unknown shape '{s}'; known: {', '.join(SHAPES)}")
        for s in self.stuff:
            if s not in STUFF:
                raise ZeroSegError(f"synthetic: unknown stuff class '{s}'; known: {', '.join(STUFF)}")
        if self.image_size < 16:
            raise ZeroSegError(f"synthetic: image size {self.image_size} is too small (minimum 16)")
        objects = set(self.object_classes)
        for u in self.unseen:
            if u not in objects:
                raise ZeroSegError(f"synthetic: unseen class '{u}' is not one of the object classes")
        lo, hi = self.objects_per_image
        if not 0 <= lo <= hi:
            raise ZeroSegError(f"synthetic: bad objects_per_image range {self.objects_per_image}")

    @property
    def object_classes(self) -> tuple[str, ...]:
        return tuple(f"{c} {p}" for c in self.colours for p in self.patterns)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.stuff) + self.object_classes


def _stuff_texture(name: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Render a background class as an (h, w, 3) float image in [0, 255]."""
    yy = np.linspace(0.0, 1.0, h)[:, None, None]
    if name == "sky":
        top, bottom = np.array([120, 170, 230]), np.array([200, 220, 245])
        img = top * (1 - yy) + bottom * yy + rng.normal(0, 3, (h, w, 1))
        return np.broadcast_to(img, (h, w, 3)).copy()
    if name == "grass":
        base = np.array([45, 105, 40], dtype=float)
        streaks = rng.normal(0, 18, (1, w, 1)) + rng.normal(0, 10, (h, w, 1))
        return base + streaks * np.array([0.5, 1.0, 0.4])
    if name == "sand":
        base = np.array([205, 185, 140], dtype=float)
        return base + rng.normal(0, 14, (h, w, 1))
    if name == "road":
        base = np.array([95, 95, 100], dtype=float)
        img = base + rng.normal(0, 8, (h, w, 1))
        lane = (np.arange(w) // 6) % 2 == 0
        row = int(rng.integers(h // 3, 2 * h // 3))
        img[row : row + 2, lane] = 225.0
        return img
    raise ZeroSegError(f"synthetic: no renderer for stuff class '{name}'")


def _shape_mask(shape: str, h: int, w: int, cy: float, cx: float, r: float, angle: float) -> np.ndarray:
    """Boolean (h, w) mask of one shape centred at (cy, cx) with radius r, rotated by angle (radians)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    dy, dx = yy - cy, xx - cx
    ca, sa = np.cos(angle), np.sin(angle)
    u, v = ca * dx + sa * dy, -sa * dx + ca * dy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        half = r * 0.85
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    if shape == "triangle":
        # An equilateral triangle: inside the three half-planes whose outward normals are 120 degrees apart.
        inside = np.ones((h, w), dtype=bool)
        for theta in (np.pi / 2, 7 * np.pi / 6, 11 * np.pi / 6):
            inside &= np.cos(theta) * u + np.sin(theta) * v <= r * 0.6
        return inside
    if shape == "cross":
        arm = r * 0.35
        return ((np.abs(u) <= arm) & (np.abs(v) <= r)) | ((np.abs(v) <= arm) & (np.abs(u) <= r))
    raise ZeroSegError(f"synthetic: no renderer for shape '{shape}'")


def _pattern_mask(pattern: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w) bool: where the pattern shows white over the object's colour (random phase and orientation)."""
    yy, xx = np.mgrid[0:h, 0:w]
    oy, ox = rng.integers(0, 4, size=2)
    if pattern == "striped":
        coord = yy if rng.random() < 0.5 else xx
        return (coord + oy) % 4 < 2
    if pattern == "dotted":
        return ((yy + oy) % 4 < 2) & ((xx + ox) % 4 < 2)
    if pattern == "checkered":
        return (((yy + oy) // 3) + ((xx + ox) // 3)) % 2 == 0
    if pattern == "plain":
        return np.zeros((h, w), dtype=bool)
    raise ZeroSegError(f"synthetic: no renderer for pattern '{pattern}'")


def render_scene(cfg: SynthConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw one scene.

    Args:
        cfg: benchmark parameters.
        rng: the scene's own random generator.

    Returns:
        image: (S, S, 3) uint8 RGB.
        label: (S, S) uint8 class ids into ``cfg.class_names``.
    """
    s = cfg.image_size
    names = cfg.class_names
    index = {n: i for i, n in enumerate(names)}
    image = np.zeros((s, s, 3), dtype=float)
    label = np.zeros((s, s), dtype=np.uint8)

    # Background: one stuff class, or two split by a horizon.
    stuff = list(cfg.stuff)
    first = stuff[int(rng.integers(len(stuff)))]
    image[:] = _stuff_texture(first, s, s, rng)
    label[:] = index[first]
    if len(stuff) > 1 and rng.random() < 0.6:
        second = stuff[int(rng.integers(len(stuff)))]
        if second != first:
            horizon = int(rng.integers(s // 4, 3 * s // 4))
            image[horizon:] = _stuff_texture(second, s, s, rng)[horizon:]
            label[horizon:] = index[second]

    lo, hi = cfg.objects_per_image
    for _ in range(int(rng.integers(lo, hi + 1))):
        colour = cfg.colours[int(rng.integers(len(cfg.colours)))]
        pattern = cfg.patterns[int(rng.integers(len(cfg.patterns)))]
        shape = cfg.shapes[int(rng.integers(len(cfg.shapes)))]
        r = float(rng.uniform(0.14, 0.26)) * s
        cy, cx = rng.uniform(r, s - r, size=2)
        mask = _shape_mask(shape, s, s, cy, cx, r, float(rng.uniform(0, 2 * np.pi)))
        rgb = np.array(COLOURS[colour], dtype=float) + rng.normal(0, 12, 3)
        shade = 1.0 + 0.15 * ((np.mgrid[0:s, 0:s][0] - cy) / max(r, 1.0))[..., None]
        obj = rgb * np.clip(shade, 0.75, 1.25) + rng.normal(0, 6, (s, s, 1))
        obj[_pattern_mask(pattern, s, s, rng)] = 245.0
        image[mask] = obj[mask]
        label[mask] = index[f"{colour} {pattern}"]

    return np.clip(image, 0, 255).astype(np.uint8), label


def split_json(cfg: SynthConfig) -> dict:
    """The default seen/unseen split of a benchmark, in the Split JSON format (with its class list)."""
    names = cfg.class_names
    return {
        "name": cfg.name,
        "dataset": "synthetic",
        "classes": list(names),
        "seen": [n for n in names if n not in cfg.unseen],
        "unseen": [n for n in names if n in cfg.unseen],
        "background": None,
    }


def write_benchmark(root: str | Path, cfg: SynthConfig, *, splits: Sequence[str] = ("train", "val")) -> Path:
    """Write (or complete) the benchmark under ``root`` in the ``folder`` layout.

    Existing image files with the right name are kept, so an interrupted run resumes; the class list and
    split files are rewritten only if they differ from what ``cfg`` implies, which would mean ``root``
    holds a different benchmark -- then it is an error rather than a silent overwrite.

    Returns:
        the root path.
    """
    root = Path(root)
    meta = {"generator": "zeroseg.data.synthetic", "version": 1, **asdict(cfg)}
    meta_path = root / "meta.json"
    if meta_path.exists():
        try:
            old = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise ZeroSegError(f"{meta_path}: not valid JSON ({e.msg})") from None
        if json.loads(json.dumps(meta)) != old:
            raise ZeroSegError(f"{root}: holds a different synthetic benchmark (meta.json differs); use another --out")
    root.mkdir(parents=True, exist_ok=True)
    _write_atomic(root / "classes.txt", "\n".join(cfg.class_names) + "\n")
    _write_atomic(root / "split.json", json.dumps(split_json(cfg), indent=2) + "\n")
    counts = {"train": cfg.num_train, "val": cfg.num_val, "test": cfg.num_val}
    for split in splits:
        img_dir, ann_dir = root / "images" / split, root / "annotations" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        ann_dir.mkdir(parents=True, exist_ok=True)
        for i in range(counts[split]):
            img_path, ann_path = img_dir / f"{i:05d}.png", ann_dir / f"{i:05d}.png"
            if img_path.exists() and ann_path.exists():
                continue
            rng = np.random.default_rng([cfg.seed, _SPLIT_SALT[split], i])
            image, label = render_scene(cfg, rng)
            # Write to temporary names first so a kill never leaves a half-written pair behind; the names are
            # per process, so two runs filling the same root at once (identical content) do not collide.
            tmp = f".{os.getpid()}.tmp.png"
            tmp_img, tmp_ann = img_path.with_suffix(tmp), ann_path.with_suffix(tmp)
            Image.fromarray(image).save(tmp_img)
            Image.fromarray(label).save(tmp_ann)
            tmp_img.replace(img_path)
            tmp_ann.replace(ann_path)
    _write_atomic(meta_path, json.dumps(meta, indent=2) + "\n")
    return root


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically unless it already holds exactly that (a complete benchmark on a
    read-only disk is read, never rewritten)."""
    try:
        if path.read_text() == text:
            return
    except (OSError, UnicodeDecodeError):
        pass
    atomic_write_text(path, text)
