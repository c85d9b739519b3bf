"""``zeroseg export --format onnx`` and ``zeroseg predict --onnx``: a checkpoint with a fixed vocabulary as one ONNX
graph, and the onnxruntime predictor that reads it back.

The graph (:mod:`zeroseg.export.graphs`) has one input ``images`` (ImageNet-normalised ``(B, 3, H, W)`` float32)
and two outputs ``scores`` ``(B, C, H, W)`` float32 and ``labels`` ``(B, H, W)`` int64. The file's
``metadata_props`` describe it (keys :data:`META_KEYS`, all prefixed ``zeroseg.``): the class names and which are
seen, the normalisation, the protocol, the source checkpoint and its sha256, the opset and the input size.

The TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) is used: it needs neither ``onnxscript`` nor
``torch.export``, and exports a tiny ZegFormer in seconds where the dynamo exporter took 40 s on 2 cores.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zeroseg import __version__
from zeroseg.data.io import IMAGENET_MEAN, IMAGENET_STD
from zeroseg.engine.checkpoint import checkpoint_path
from zeroseg.errors import ZeroSegError
from zeroseg.export.graphs import ZegFormerGraph, ZS3Graph
from zeroseg.files import atomic_write_bytes

FORMAT = "zeroseg-onnx/1"
#: ONNX opset of the exports (RoiAlign with half-pixel coordinates, used by the CLIP branch, needs >= 16).
OPSET = 17
#: Input size traced for a ``--dynamic`` export (any size works afterwards).
DYNAMIC_EXAMPLE = (96, 128)
META_KEYS = (
    "format", "zeroseg_version", "method", "variant", "class_names", "seen", "unseen", "protocol", "mean", "std",
    "input", "outputs", "input_size", "opset", "source_checkpoint", "source_sha256", "clip_image",
)  # fmt: skip


def _need(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise ZeroSegError(f"{module} is not installed; pip install 'zeroseg[export]'") from None


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def _tracing() -> Iterator[None]:
    """Inference mode for tracing: no grad, ``nn.MultiheadAttention``'s fused fast path off (its kernel has no ONNX
    form), and the tracer's notes about shape-dependent Python silenced (the graphs are written for them)."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _check_size(size: Sequence[int] | None, dynamic: bool) -> tuple[int, int] | None:
    if dynamic:
        if size is not None:
            raise ZeroSegError("give either --size H W or --dynamic, not both")
        return None
    h, w = (512, 512) if size is None else tuple(size)
    if h < 1 or w < 1:
        raise ZeroSegError(f"--size {h} {w}: sides must be positive numbers of pixels")
    return int(h), int(w)


def build_graph(predictor: Any, input_size: tuple[int, int] | None) -> torch.nn.Module:
    """The graph module of a loaded predictor (ZS3Net/ZS5Net/ZS-MMD or ZegFormer), in eval mode on the CPU."""
    from zeroseg.methods.zegformer import ZegFormerPredictor

    if isinstance(predictor, ZegFormerPredictor):
        return ZegFormerGraph(predictor, input_size).cpu().eval()
    return ZS3Graph(predictor.model).cpu().eval()


def trace_to_onnx(graph: torch.nn.Module, input_size: tuple[int, int] | None, *, opset: int = OPSET) -> bytes:
    """The serialised ONNX model of a graph module (``images -> (scores, labels)``), traced at ``input_size`` with
    the batch size free, or at :data:`DYNAMIC_EXAMPLE` with batch, height and width free when ``input_size`` is
    None. No metadata (see :func:`export_onnx`)."""
    example = torch.randn(1, 3, *(input_size or DYNAMIC_EXAMPLE))
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, "scores": {0: "batch", 2: "height", 3: "width"}}
    axes["labels"] = {0: "batch", 1: "height", 2: "width"}
    buffer = io.BytesIO()
    with _tracing():
        torch.onnx.export(
            graph,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=["images"],
            output_names=["scores", "labels"],
            # The batch size is free in a fixed-size export too.
            dynamic_axes=axes if input_size is None else {k: {0: "batch"} for k in axes},
            do_constant_folding=True,
        )
    return buffer.getvalue()


def onnx_session(model: str | Path | bytes, *, threads: int = 0) -> Any:
    """An onnxruntime CPU session with every graph optimisation on (``threads`` intra-op threads; 0: its default)."""
    ort = _need("onnxruntime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads > 0:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


def seen_unseen(predictor: Any) -> tuple[list[str], list[str]]:
    """The vocabulary's names that were seen classes in training, and the others."""
    trained_seen = set(getattr(predictor, "trained_seen", None) or getattr(predictor, "seen_names", ()))
    names = list(predictor.class_names)
    return [n for n in names if n in trained_seen], [n for n in names if n not in trained_seen]


def export_onnx(
    checkpoint: str | Path,
    out: str | Path,
    *,
    classes: Sequence[str] | None = None,
    size: Sequence[int] | None = None,
    dynamic: bool = False,
    opset: int = OPSET,
) -> Path:
    """Export a final checkpoint, with its own or another vocabulary, as an ONNX file.

    Args:
        checkpoint: a final checkpoint (``<run>/classifier``, ``<run>/selftrain``, ``<run>/zegformer``, ...).
        out: the ``.onnx`` file to write (atomically).
        classes: the vocabulary (None: the checkpoint's); ZS3Net refits its classifier for it, ZegFormer embeds it.
        size: ``(H, W)`` of the fixed input (default 512 x 512).
        dynamic: batch, height and width free instead.
        opset: the ONNX opset.

    Returns:
        the written path.

    Raises:
        ZeroSegError: a missing or non-final checkpoint, a bad vocabulary (empty, duplicates), both or a bad
            ``size``, a combination the graph cannot express (see :class:`~zeroseg.export.graphs.ZegFormerGraph`),
            onnx not installed.
    """
    onnx = _need("onnx")
    from zeroseg.methods import load_predictor

    input_size = _check_size(size, dynamic)
    out = Path(out)
    if out.is_dir():
        raise ZeroSegError(f"{out}: --out is a folder; give a file name")
    predictor = load_predictor(checkpoint)
    if classes is not None:
        predictor.set_classes(list(classes))
    graph = build_graph(predictor, input_size)
    model = onnx.load_from_string(trace_to_onnx(graph, input_size, opset=opset))
    seen, unseen = seen_unseen(predictor)
    meta = predictor.meta
    source = checkpoint_path(checkpoint)
    props = {
        "format": FORMAT,
        "zeroseg_version": __version__,
        "method": str(meta["method"]),
        "variant": str(meta.get("variant", meta["method"])),
        "class_names": json.dumps(list(predictor.class_names)),
        "seen": json.dumps(seen),
        "unseen": json.dumps(unseen),
        "protocol": str(meta.get("protocol", "inductive")),
        "mean": json.dumps(list(IMAGENET_MEAN)),
        "std": json.dumps(list(IMAGENET_STD)),
        "input": "images: (B, 3, H, W) float32 RGB, (x / 255 - mean) / std",
        "outputs": "scores: (B, C, H, W) float32 ("
        + ("DeepLabV3+ logits" if isinstance(graph, ZS3Graph) else "calibrated semantic scores")
        + "); labels: (B, H, W) int64 = argmax over C",
        "input_size": "dynamic" if input_size is None else json.dumps(list(input_size)),
        "opset": str(opset),
        "source_checkpoint": str(source.resolve()),
        "source_sha256": file_sha256(source),
        "clip_image": "yes" if getattr(graph, "clip", None) is not None else "no",
    }
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = f"zeroseg.{key}", value
    onnx.checker.check_model(model)
    return atomic_write_bytes(out, model.SerializeToString())


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The zeroseg metadata of an exported file, JSON values decoded (keys without the ``zeroseg.`` prefix).

    Raises:
        ZeroSegError: a missing file, a file that is not ONNX, or an ONNX file not written by zeroseg.
    """
    return _decode(_session(path)[1], path)


def _session(path: str | Path, threads: int = 0) -> tuple[Any, dict[str, str]]:
    p = Path(path)
    if not p.is_file():
        raise ZeroSegError(f"{p}: ONNX file not found")
    try:
        session = onnx_session(p, threads=threads)
    except Exception as e:  # onnxruntime raises its own classes (InvalidProtobuf, Fail, ...) for a bad file
        first = (str(e).splitlines() or [e.__class__.__name__])[0][:160]
        raise ZeroSegError(f"{p}: not a loadable ONNX model ({first})") from None
    return session, dict(session.get_modelmeta().custom_metadata_map)


def _decode(raw: dict[str, str], path: str | Path) -> dict[str, Any]:
    if raw.get("zeroseg.format") != FORMAT:
        raise ZeroSegError(f"{path}: not a zeroseg ONNX export (no {FORMAT} metadata)")
    meta: dict[str, Any] = {k.removeprefix("zeroseg."): v for k, v in raw.items() if k.startswith("zeroseg.")}
    for key in ("class_names", "seen", "unseen", "mean", "std"):
        meta[key] = json.loads(meta[key])
    meta["input_size"] = None if meta["input_size"] == "dynamic" else tuple(json.loads(meta["input_size"]))
    meta["opset"] = int(meta["opset"])
    return meta


class OnnxPredictor:
    """An exported model run by onnxruntime, with the interface of the torch predictors that
    :func:`zeroseg.methods.predict.predict_labels` uses.

    Args:
        path: the ``.onnx`` file.
        threads: onnxruntime intra-op threads (0: its default).

    Attributes:
        class_names: the baked vocabulary.
        meta: the decoded metadata (:func:`read_metadata`).
        input_size: ``(H, W)`` of a fixed-size export, None for a dynamic one.
    """

    def __init__(self, path: str | Path, *, threads: int = 0) -> None:
        self.session, raw = _session(path, threads)
        self.meta = _decode(raw, path)
        self.class_names: tuple[str, ...] = tuple(self.meta["class_names"])
        self.input_size: tuple[int, int] | None = self.meta["input_size"]

    def run(self, images: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(scores (B, C, H, W), labels (B, H, W))`` of ImageNet-normalised images ``(B, 3, H, W)``.

        Raises:
            ZeroSegError: images of another size than a fixed-size export's.
        """
        x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else images
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            raise ZeroSegError(
                f"images of {x.shape[-2]}x{x.shape[-1]} px; this export takes exactly "
                f"{self.input_size[0]}x{self.input_size[1]} (export with --dynamic for any size)"
            )
        scores, labels = self.session.run(["scores", "labels"], {"images": x})
        return scores, labels

    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels ``(B, H, W)`` and the winning scores ``(B, H, W)`` (logits for ZS3Net, calibrated scores for
        ZegFormer), as CPU tensors."""
        scores, labels = self.run(images)
        return torch.from_numpy(labels), torch.from_numpy(scores.max(1))
