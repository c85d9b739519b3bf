"""``zeroseg serve``: a small web page around any final checkpoint, served by the standard library.

Pick an example image (synthetic validation images of the checkpoint's run, ``skimage.data`` pictures) or
upload one, type comma-separated class names, and get the overlay with a legend, the label PNG (raw ids; to
download) and per-class pixel shares. The page is one HTML document with inline CSS and script: it loads
nothing from anywhere but the server, so it works with no internet. The server binds 127.0.0.1 unless told
otherwise, refuses uploads over ``max_upload_bytes`` and images over ``max_pixels`` with a message, and runs one
prediction at a time per model (a lock: ``set_classes`` + ``predict`` change the predictor's state).

Why no Gradio: it is the field's convention (SAN, CAT-Seg), but its wheel pulls in ~30 packages (FastAPI,
uvicorn, pandas, huggingface_hub, ...) that an offline machine must carry, and its page bundle references Google
Fonts; this page needs nothing beyond the toolkit's own dependencies.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from zeroseg.data.io import IMAGENET_MEAN, IMAGENET_STD
from zeroseg.errors import ZeroSegError

MAX_UPLOAD_BYTES = 8 * 1024 * 1024
MAX_PIXELS = 1024 * 1024
MAX_CLASSES = 100


@dataclass(frozen=True)
class Prediction:
    """One answer of the app.

    Attributes:
        overlay_png: the image with the colour label map blended over it and a legend (PNG bytes).
        label_png: the ``(H, W)`` label map, pixel value = index into ``classes`` (palette PNG bytes).
        shares: ``(class name, percent of the image's pixels, colour)`` for every class, largest first.
        size: ``(width, height)`` of the image.
    """

    overlay_png: bytes
    label_png: bytes
    shares: list[tuple[str, float, str]]
    size: tuple[int, int]


def parse_classes(text: str) -> list[str]:
    """``"cat, dog , sky"`` -> ``["cat", "dog", "sky"]``.

    Raises:
        ZeroSegError: no class name, a repeated one, or more than :data:`MAX_CLASSES`.
    """
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    if not names:
        raise ZeroSegError("empty class list: type class names separated by commas, e.g. 'red dotted, green'")
    if len(set(names)) != len(names):
        raise ZeroSegError(f"class list repeats a name: {sorted({n for n in names if names.count(n) > 1})}")
    if len(names) > MAX_CLASSES:
        raise ZeroSegError(f"{len(names)} classes: at most {MAX_CLASSES}")
    return names


def decode_image(data: bytes, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Uploaded bytes -> ``(H, W, 3)`` uint8 RGB.

    Raises:
        ZeroSegError: not an image PIL can read, or more than ``max_pixels`` pixels (checked from the header,
            before the pixels are decoded).
    """
    if not data:
        raise ZeroSegError("no image: upload a file or pick an example")
    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise ZeroSegError(f"not an image this server can read ({e.__class__.__name__})") from None
    if w * h > max_pixels:
        raise ZeroSegError(f"image is {w}x{h} = {w * h} pixels; the limit is {max_pixels} (resize it first)")
    try:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ZeroSegError(f"not an image this server can read ({e.__class__.__name__})") from None


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(1, 3, H, W)`` float, ImageNet-normalised (what the models were trained on)."""
    x = torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return ((x - mean) / std)[None]


def pixel_shares(label: np.ndarray, classes: Sequence[str]) -> list[tuple[str, float]]:
    """Percent of the pixels of ``label: (H, W)`` given to each class, largest first (ties in class order)."""
    counts = np.bincount(label.reshape(-1).astype(np.int64), minlength=len(classes))[: len(classes)]
    total = max(int(label.size), 1)
    shares = [(name, 100.0 * int(counts[i]) / total) for i, name in enumerate(classes)]
    return sorted(shares, key=lambda s: -s[1])


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def render_overlay(image: np.ndarray, label: np.ndarray) -> bytes:
    """The overlay PNG: the image, of its own size, with the colour label map blended in (the page's share table
    is the legend: it shows each class's colour)."""
    from zeroseg.visualize import overlay

    return _png(Image.fromarray(overlay(image, label)))


def class_colours(num_classes: int) -> list[str]:
    """The overlay's colour of each class index, as ``#rrggbb``."""
    from zeroseg.data.classes import palette

    return ["#" + "".join(f"{int(v):02x}" for v in c) for c in palette(256)[:num_classes]]


def label_png(label: np.ndarray) -> bytes:
    """``(H, W)`` ids as a palette PNG (pixel value = class index; the palette is for viewing)."""
    from zeroseg.data.classes import palette

    img = Image.fromarray(label.astype(np.uint8), mode="P")
    img.putpalette(palette(256).astype(np.uint8).reshape(-1).tolist())
    return _png(img)


class SegmentApp:
    """The app's logic, without HTTP: examples, and one locked prediction at a time.

    Args:
        predictor: a loaded predictor (:func:`zeroseg.methods.load_predictor`): ``set_classes``, ``predict``.
        examples: example images by name, ``(H, W, 3)`` uint8.
        max_pixels: the largest image accepted.
    """

    def __init__(self, predictor: Any, examples: dict[str, np.ndarray], *, max_pixels: int = MAX_PIXELS) -> None:
        self.predictor = predictor
        self.examples = examples
        self.max_pixels = max_pixels
        self.lock = threading.Lock()
        self.default_classes = list(predictor.class_names)

    def image(self, *, upload: bytes | None = None, example: str | None = None) -> np.ndarray:
        """The uploaded image (preferred) or the named example.

        Raises:
            ZeroSegError: neither given, an unknown example, or a bad upload (:func:`decode_image`).
        """
        if upload:
            return decode_image(upload, max_pixels=self.max_pixels)
        if example:
            if example not in self.examples:
                raise ZeroSegError(f"unknown example {example!r}")
            return self.examples[example]
        raise ZeroSegError("no image: upload a file or pick an example")

    def predict(self, image: np.ndarray, classes_text: str) -> Prediction:
        """Segment ``image: (H, W, 3)`` uint8 into the comma-separated classes of ``classes_text``.

        Raises:
            ZeroSegError: a bad class list, or one the model cannot embed.
        """
        classes = parse_classes(classes_text)
        h, w = image.shape[:2]
        if h * w > self.max_pixels:
            raise ZeroSegError(f"image is {w}x{h}; the limit is {self.max_pixels} pixels")
        with self.lock:
            if list(self.predictor.class_names) != classes:
                self.predictor.set_classes(classes)
            labels, _ = self.predictor.predict(to_tensor(image))
        label = labels[0].cpu().numpy().astype(np.int64)
        colour = dict(zip(classes, class_colours(len(classes)), strict=True))
        shares = [(n, v, colour[n]) for n, v in pixel_shares(label, classes)]
        return Prediction(render_overlay(image, label), label_png(label), shares, (w, h))

    def answer(self, body: dict) -> dict:
        """The JSON answer to a ``/predict`` request ``{"image": base64 or "", "example": name, "classes": text}``:
        ``{"overlay", "label"}`` data URLs, ``"shares"``, ``"size"``; or ``{"error": message}``."""
        try:
            raw = body.get("image") or ""
            try:
                upload = base64.b64decode(raw.split(",", 1)[-1], validate=True) if raw else None
            except (ValueError, TypeError):
                raise ZeroSegError("the upload is not valid base64 data") from None
            image = self.image(upload=upload, example=body.get("example") or None)
            p = self.predict(image, str(body.get("classes", "")))
        except ZeroSegError as e:
            return {"error": str(e)}
        url = "data:image/png;base64,"
        return {
            "overlay": url + base64.b64encode(p.overlay_png).decode(),
            "label": url + base64.b64encode(p.label_png).decode(),
            "shares": [[n, round(v, 2), c] for n, v, c in p.shares],
            "size": list(p.size),
        }

    def page(self) -> str:
        """The whole HTML page (inline CSS and script; nothing loaded from elsewhere)."""
        options = "".join(f'<option value="{_esc(n)}">{_esc(n)}</option>' for n in self.examples)
        return PAGE.replace("{{OPTIONS}}", options).replace("{{CLASSES}}", _esc(", ".join(self.default_classes)))


def _esc(text: str) -> str:
    import html

    return html.escape(text, quote=True)


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>zeroseg</title>
<style>
body{font-family:sans-serif;max-width:1000px;margin:1.5em auto;padding:0 1em;color:#222}
label{display:block;margin:.6em 0 .2em;font-weight:bold}input[type=text]{width:100%;padding:4px}
#error{color:#b00020;font-weight:bold;margin:.8em 0}.row{display:flex;gap:1.5em;flex-wrap:wrap}
table{border-collapse:collapse}td{border:1px solid #ccc;padding:2px 8px}td:last-child{text-align:right}
button{margin-top:.8em;padding:.4em 1.2em}.sw{display:inline-block;width:14px;height:14px}
#overlay{width:384px;image-rendering:pixelated;border:1px solid #ccc}
</style></head><body>
<h1>zeroseg: zero-shot segmentation</h1>
<form id="form">
<label for="example">Example image</label><select id="example">{{OPTIONS}}</select>
<label for="file">or upload an image</label><input type="file" id="file" accept="image/*">
<label for="classes">Class names (comma-separated)</label><input type="text" id="classes" value="{{CLASSES}}">
<button type="submit" id="run">Segment</button>
</form>
<div id="error"></div><div id="status"></div>
<div class="row"><div><h3>Overlay</h3><img id="overlay" alt="overlay">
<p><a id="download" download="labels.png" href="#">download the label PNG</a> (pixel value = class index)</p></div>
<div><h3>Pixel shares (legend)</h3><table id="shares"></table></div></div>
<script>
const $ = (id) => document.getElementById(id);
function readFile(f) {
  return new Promise((ok, bad) => { const r = new FileReader(); r.onload = () => ok(r.result);
    r.onerror = () => bad(r.error); r.readAsDataURL(f); });
}
$("form").addEventListener("submit", async (ev) => {
  ev.preventDefault(); $("error").textContent = ""; $("status").textContent = "segmenting...";
  try {
    const f = $("file").files[0];
    const body = {example: $("example").value, classes: $("classes").value, image: f ? await readFile(f) : ""};
    const res = await fetch("predict", {method: "POST", headers: {"Content-Type": "application/json"},
                                          body: JSON.stringify(body)});
    const out = await res.json();
    $("status").textContent = "";
    if (out.error) { $("error").textContent = out.error; return; }
    $("overlay").src = out.overlay; $("download").href = out.label;
    $("shares").innerHTML = "";
    for (const [name, pct, colour] of out.shares) {
      const tr = document.createElement("tr"); const c = document.createElement("td");
      const a = document.createElement("td"); const b = document.createElement("td");
      c.innerHTML = '<span class="sw"></span>'; c.firstChild.style.background = colour;
      a.textContent = name; b.textContent = pct.toFixed(1) + " %"; tr.append(c, a, b); $("shares").append(tr);
    }
    $("status").textContent = "done: " + out.size[0] + "x" + out.size[1] + " px";
  } catch (e) { $("status").textContent = ""; $("error").textContent = "request failed: " + e; }
});
</script></body></html>
"""


def make_handler(app: SegmentApp, *, max_upload_bytes: int = MAX_UPLOAD_BYTES) -> type[BaseHTTPRequestHandler]:
    """The request handler class of ``app``: ``GET /`` (the page), ``POST /predict`` (JSON in and out)."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "zeroseg"

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, data: dict) -> None:
            self._send(status, json.dumps(data).encode(), "application/json")

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, app.page().encode(), "text/html; charset=utf-8")
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no page {self.path}"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/predict":
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no endpoint {self.path}"})
                return
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                length = -1
            # Base64 makes an upload 4/3 larger; the cap is on the request, checked before reading it.
            if length < 0 or length > max_upload_bytes * 4 // 3 + 4096:
                self.close_connection = True
                mb = max_upload_bytes / 2**20
                self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"upload too large (limit {mb:.0f} MB)"})
                return
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(body, dict):
                    raise ValueError
            except (ValueError, UnicodeDecodeError):
                self._json(HTTPStatus.BAD_REQUEST, {"error": "the request is not a JSON object"})
                return
            answer = app.answer(body)
            self._json(HTTPStatus.BAD_REQUEST if "error" in answer else HTTPStatus.OK, answer)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # one line per request would drown the terminal; errors reach the page

    return Handler


def resolve_checkpoint(path: str | Path) -> Path:
    """A final checkpoint path from a stage path (``run/classifier``, with or without ``.safetensors``) or a run
    directory (its last final stage: ``selftrain`` over ``classifier``, the last ZS-MMD round, ``zegformer``).

    Raises:
        ZeroSegError: nothing servable there.
    """
    p = Path(path)
    if p.with_suffix(".safetensors").is_file() if p.suffix != ".safetensors" else p.is_file():
        return p.with_suffix("")
    if p.is_dir():
        stages = sorted(p.glob("*.safetensors"), key=lambda s: s.stat().st_mtime)
        finals = [s for s in stages if s.stem in ("classifier", "selftrain", "zegformer") or "zs_mmd_round" in s.stem]
        if finals:
            return finals[-1].with_suffix("")
    raise ZeroSegError(f"{path}: no final checkpoint (give e.g. demo_out/runs/zs3net_seed0/classifier)")


def example_images(checkpoint: Path, *, limit: int = 4) -> dict[str, np.ndarray]:
    """Examples: the first validation images of the checkpoint's run data (when its config names a folder that
    holds them) and a few ``skimage.data`` pictures (when scikit-image is installed)."""
    import yaml

    examples: dict[str, np.ndarray] = {}
    cfg_path = checkpoint.parent / "config.yaml"
    if cfg_path.is_file():
        root = Path(str((yaml.safe_load(cfg_path.read_text()) or {}).get("data", {}).get("root", "")))
        for f in sorted((root / "images" / "val").glob("*.png"))[:limit] if root.is_dir() else []:
            examples[f"validation {f.stem}"] = np.asarray(Image.open(f).convert("RGB"))
    try:
        from skimage import data as skdata

        for name in ("coffee", "chelsea", "astronaut"):
            examples[f"skimage {name}"] = np.asarray(getattr(skdata, name)())[..., :3]
    except Exception:  # noqa: BLE001 (scikit-image absent, or its data files missing: no such examples)
        pass
    return examples


def build_app(checkpoint: str | Path, *, device: str = "cpu", max_pixels: int = MAX_PIXELS) -> SegmentApp:
    """Load the predictor of ``checkpoint`` (see :func:`resolve_checkpoint`) and its examples."""
    from zeroseg.methods import load_predictor

    path = resolve_checkpoint(checkpoint)
    return SegmentApp(load_predictor(path, device=device), example_images(path), max_pixels=max_pixels)


def make_server(
    app: SegmentApp, *, host: str = "127.0.0.1", port: int = 7860, max_upload_bytes: int = MAX_UPLOAD_BYTES
) -> ThreadingHTTPServer:
    """A threaded HTTP server for ``app`` (pages load while a prediction runs; predictions take the lock)."""
    try:
        return ThreadingHTTPServer((host, port), make_handler(app, max_upload_bytes=max_upload_bytes))
    except OSError as e:
        raise ZeroSegError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
