"""Inference speed of the zeroseg networks: eager fp32 vs an optimised path, with FLOPs and fraction of peak.

Every model runs with RANDOM weights (nothing is downloaded; speed does not depend on the weights) on random
ImageNet-normalised images of ``--size`` px, ``--batch`` images per forward. Per model and variant: ``--warmup``
untimed batches, then ``--images`` timed images (rounded up to whole batches); reported: ms/image, images/s, peak
memory, GFLOPs per image, achieved GFLOP/s and the fraction of this machine's peak measured in the same run.

Models (``--models``):

* ``deeplab`` -- DeepLabv3+ ResNet-101, output stride 16, 21 classes: ZS3Net inference = forward + argmax.
* ``zegformer`` -- the ZegFormer segment branch alone (ResNet-101, ``--queries`` 100, 6 decoder layers, 512-d
  text space, ``--classes`` 171 random normalised text embeddings): forward + mask upsampling +
  ``semantic_inference`` + seen-class calibration + argmax (``ZegFormerPredictor.scores`` without CLIP).
* ``zegformer_clip`` -- the same plus the CLIP image branch (``--clip-model`` ViT-B-16, random weights) in
  three modes: ``per_image`` (official: the Q crops of one image per ``encode_image`` call), ``batched+skip``
  (all crops of the batch together, queries with an empty mask or a no-object probability above
  ``--skip-no-object`` 0.5 not encoded) and ``pool`` (each image encoded once, patch tokens averaged under each
  mask; an approximation). A randomly initialised segment head predicts no-object with probability ~0 for every
  query, so nothing would be skipped; to mimic a trained model, a fixed random ``--no-object-frac`` (0.6) of the
  queries of each image get their no-object logit raised to 12 above their largest class logit (no-object
  probability > 0.99) after the segment forward, in every mode (0 disables this). Speed-ups are also reported
  relative to ``per_image``.

Variants, measured in the same process one after the other:

* ``eager fp32`` -- ``model.eval()``, ``torch.no_grad()``, NCHW, fp32: the baseline.
* ``optimised`` -- ``torch.inference_mode()``, channels_last model and input, ``cudnn.benchmark`` on CUDA, bf16
  autocast on CUDA only (CPU stays fp32), and with ``--compile`` the segmentation network (DeepLab or the
  ZegFormer segment network; not the CLIP tower, whose batch size varies) wrapped in ``torch.compile``. The
  first call of the compiled network (compilation + one forward) is reported as ``compile_s`` and excluded from
  ms/image. ``--compile`` defaults to on with ``--device cuda`` and off on CPU (compilation takes minutes there).
  ``--cpu-bf16`` (opt-in) runs the optimised variant under bf16 autocast on CPU too (fast on CPUs with AMX or
  AVX512-BF16).

Agreement: the optimised variant's label maps are compared with the eager variant's on the same images (fraction of
equal pixels); channels_last and compilation should give ~1, bf16 a little less (random weights give many
near-ties, so this is a lower bound on what trained weights would give).

FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over one forward of the whole pipeline, divided by the batch
size (the first warm-up batch of the eager variant is the counting run; with ``--warmup 0`` an extra untimed run).
It counts matrix products and convolutions only (mm/addmm/bmm/baddbmm/convolution and scaled-dot-product
attention kernels; the fused CPU attention kernel is added here, and ``nn.MultiheadAttention``'s fused fast path
is turned off while counting so that its projections are seen) -- not element-wise work, normalisation,
interpolation, softmax, ``roi_align`` or argmax. A FLOP is one multiply or one add (a multiply-add counts 2).

Peak: the best of ``--peak-repeats`` runs of two dense kernels, a ``--peak-size`` square fp32 matmul and a 3x3
256-channel convolution (``measure_peak_kernels``; bf16 too with bf16 autocast), the faster kernel -> GFLOP/s,
measured at the start and at the end of the run (the higher is used). Achieved GFLOP/s = counted FLOPs per image /
time per image; the fraction of peak uses the fp32 peak, except the optimised variant under bf16 autocast (CUDA, or
``--cpu-bf16``) which uses the bf16 peak.

CPU time: each row also reports the process's CPU time per image (all threads) and the CPU utilisation = CPU time /
(wall time x threads). On a machine shared with other jobs, a utilisation well below 1 means the benchmark did not
get its cores and the row's wall time is unreliable (the table warns below 0.8); with several threads,
oversubscription can then inflate small-op-heavy paths many times over. ``--threads 1`` is far less sensitive.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (reset before each variant). On CPU, with psutil
installed, the process RSS sampled every 5 ms; else, on Linux, the kernel's peak-RSS counter (``VmHWM``), reset
before each variant through ``/proc/self/clear_refs``; else ``resource.getrusage().ru_maxrss`` (the process's
lifetime peak, which cannot be reset). Reported: the peak (MiB) over the variant's warm-up and timed runs and
the delta over the memory in use just before the variant. The table says which method was used.

Usage::

    python benchmarks/bench_inference.py [--device cpu|cuda] [--threads N] [--size 512] [--batch 1]
        [--images 2] [--warmup 1] [--models deeplab,zegformer,zegformer_clip] [--compile|--no-compile]
        [--cpu-bf16] [--out results.json] [--quick]

Full CPU run (the CLIP ``per_image`` mode encodes 100 ViT-B/16 crops per image): about 3.5 minutes on an idle
2-core machine with 2 threads, 5.5 minutes with ``--threads 1``; longer when other jobs share the CPU::

    python benchmarks/bench_inference.py --device cpu --images 2 --out bench_inference_cpu.json

``--quick`` (128 px, 1 image, no warm-up, a small peak matmul) is a smoke test; add ``--backbone resnet18
--queries 4 --clip-model ViT-S-32`` to make it take seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from zeroseg.methods.zegformer import InferenceOptions, ZegFormerPredictor
from zeroseg.modules.deeplab import DeepLabV3Plus
from zeroseg.modules.zegformer import ZegFormer

MODELS = ("deeplab", "zegformer", "zegformer_clip")
EAGER = "eager fp32"
OPTIMISED = "optimised"
VARIANTS = (EAGER, OPTIMISED)
CLIP_MODES = ("per_image", "batched+skip", "pool")
DEEPLAB_CLASSES = 21
TEXT_DIM = 512
#: option -> (default, default under --quick)
QUICK_DEFAULTS = {
    "size": (512, 128),
    "images": (2, 1),
    "warmup": (1, 0),
    "peak_size": (4096, 512),
    "peak_repeats": (3, 1),
}


# --------------------------------------------------------------------------------------------- measuring
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_flash_attention_flops(q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """FLOPs of ``aten._scaled_dot_product_flash_attention_for_cpu`` (the formula of the GPU SDPA kernels)."""
    return sdpa_flop_count(q, k, v)


def _extra_flop_formulas() -> dict[Any, Callable[..., int]]:
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {op: _cpu_flash_attention_flops} if op is not None else {}


def count_flops(fn: Callable[[], Any]) -> int:
    """Matmul/conv FLOPs of ``fn()`` (see the module docstring); the models must not require gradients.

    Args:
        fn: the computation to count; run once.

    Returns:
        total FLOPs.
    """
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        counter = FlopCounterMode(display=False, custom_mapping=_extra_flop_formulas())
        with counter:
            fn()
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return int(counter.get_total_flops())


def measure_peak_kernels(device: torch.device, dtype: torch.dtype, size: int, repeats: int) -> dict[str, float]:
    """This machine's dense-kernel throughput: the best of ``repeats`` runs of each of two kernels.

    * ``matmul``: ``size x size @ size x size`` (the BLAS: MKL on CPU, cuBLAS on CUDA);
    * ``conv3x3``: a 256 -> 256 channel 3x3 convolution (stride 1, padding 1) on a ``size/32`` square map (oneDNN on
      CPU, cuDNN on CUDA). The networks benchmarked here are mostly such convolutions, and on some CPUs (e.g. AMD
      EPYC with MKL) the BLAS GEMM runs well below the convolution kernels, so a GEMM-only "peak" would be beaten
      by the networks themselves.

    Returns:
        ``{"matmul": GFLOP/s, "conv3x3": GFLOP/s}`` (a multiply-add counts 2 FLOPs).
    """
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=g)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=g)
    side = max(8, size // 32)
    x = torch.randn(1, 256, side, side, device=device, dtype=dtype, generator=g)
    w = torch.randn(256, 256, 3, 3, device=device, dtype=dtype, generator=g)
    kernels = {
        "matmul": (lambda: torch.mm(a, b), 2.0 * size**3),
        "conv3x3": (lambda: F.conv2d(x, w, padding=1), 2.0 * 256 * 256 * 9 * side * side),
    }
    out = {}
    with torch.no_grad():
        for name, (fn, flops) in kernels.items():
            fn()  # warm-up
            best = math.inf
            for _ in range(max(1, repeats)):
                _sync(device)
                t0 = time.perf_counter()
                fn()
                _sync(device)
                best = min(best, time.perf_counter() - t0)
            out[name] = flops / best / 1e9
    return out


def measure_peak_gflops(device: torch.device, dtype: torch.dtype, size: int, repeats: int) -> float:
    """The peak used for "% of peak": the faster of the two dense kernels of :func:`measure_peak_kernels`."""
    return max(measure_peak_kernels(device, dtype, size, repeats).values())


def _proc_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak memory of a region of code (see the module docstring for the methods).

    Args:
        device: CUDA uses the caching allocator's statistics; CPU the process's resident set.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._base = 0.0
        self._peak = 0.0
        if device.type == "cuda":
            self.method = "cuda max_memory_allocated"
            return
        try:
            import psutil

            self._proc = psutil.Process()
            self.method = "psutil RSS sampled every 5 ms"
            return
        except ImportError:
            pass
        if self._reset_hwm() and _proc_status_kib("VmHWM") is not None:
            self.method = "Linux VmHWM (peak RSS), reset per variant"
        else:
            self.method = "resource ru_maxrss (lifetime peak RSS, not resettable)"

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, self._proc.memory_info().rss / 2**20)

    def start(self) -> None:
        """Begin a region: remember the memory in use now and reset the peak."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device) / 2**20
        elif self.method.startswith("psutil"):
            self._base = self._peak = self._proc.memory_info().rss / 2**20
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        elif self.method.startswith("Linux"):
            self._reset_hwm()
            self._base = (_proc_status_kib("VmRSS") or 0) / 1024.0
        else:
            self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux

    def stop(self) -> tuple[float, float]:
        """End the region.

        Returns:
            ``(peak MiB, peak minus the memory in use at start() in MiB)``; with ru_maxrss the delta is how
            much the lifetime peak grew.
        """
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self.method.startswith("psutil"):
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            peak = max(self._peak, self._proc.memory_info().rss / 2**20)
        elif self.method.startswith("Linux"):
            peak = (_proc_status_kib("VmHWM") or 0) / 1024.0
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        return peak, max(0.0, peak - self._base)


@contextlib.contextmanager
def variant_context(variant: str, device: torch.device, bf16: bool) -> Iterator[None]:
    """Gradient mode, autocast (bf16 in the optimised variant when ``bf16``) and cuDNN autotuning of a variant
    (restored afterwards)."""
    optimised = variant == OPTIMISED
    grad = torch.inference_mode() if optimised else torch.no_grad()
    cuda = device.type == "cuda"
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if optimised and bf16 else contextlib.nullcontext()
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = optimised and cuda
    try:
        with grad, amp:
            yield
    finally:
        torch.backends.cudnn.benchmark = previous


def time_variant(
    pipeline: Callable[[torch.Tensor], torch.Tensor],
    batches: list[torch.Tensor],
    *,
    variant: str,
    device: torch.device,
    warmup: int,
    memory: PeakMemory,
    count: bool,
    bf16: bool = False,
) -> dict[str, Any]:
    """Warm up, then time ``pipeline`` on every batch.

    Args:
        pipeline: images ``(B, 3, H, W)`` -> label map.
        batches: the timed batches (already in the variant's memory format and on ``device``).
        variant: ``EAGER`` or ``OPTIMISED``.
        device: where it runs.
        warmup: untimed runs on ``batches[0]`` before timing.
        memory: the peak-memory meter.
        count: count FLOPs (on the first warm-up run, or an extra untimed run when ``warmup == 0``).
        bf16: bf16 autocast in the optimised variant.

    Returns:
        ``{"ms_per_image", "cpu_ms_per_image", "images_per_s", "images", "peak_mem_mb", "mem_delta_mb",
        "flops_per_batch", "predictions"}`` (``flops_per_batch`` None unless counted; ``cpu_ms_per_image``: this
        process's CPU time over all threads; ``predictions``: the label maps of the timed batches, on the CPU).
    """
    flops = None
    predictions = []
    with variant_context(variant, device, bf16):
        memory.start()
        for i in range(max(warmup, 1 if count else 0)):
            if count and i == 0:
                flops = count_flops(lambda: pipeline(batches[0]))
            else:
                pipeline(batches[0])
        _sync(device)
        elapsed = cpu = 0.0
        for x in batches:
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            pred = pipeline(x)
            _sync(device)
            elapsed += time.perf_counter() - t0
            cpu += time.process_time() - c0
            predictions.append(pred.cpu())
        peak, delta = memory.stop()
    n = sum(len(x) for x in batches)
    return {
        "ms_per_image": 1000.0 * elapsed / n,
        "cpu_ms_per_image": 1000.0 * cpu / n,
        "images_per_s": n / elapsed,
        "images": n,
        "peak_mem_mb": peak,
        "mem_delta_mb": delta,
        "flops_per_batch": flops,
        "predictions": predictions,
    }


# --------------------------------------------------------------------------------------------- pipelines
def deeplab_pipeline(net: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """ZS3Net inference: DeepLabv3+ logits at image size, argmax."""

    def run(x: torch.Tensor) -> torch.Tensor:
        return net(x).argmax(1)

    return run


def no_object_flags(batch: int, queries: int, frac: float, seed: int) -> torch.Tensor:
    """``(batch, queries)`` bool: a fixed random ``round(frac * queries)`` queries per image."""
    g = torch.Generator().manual_seed(seed)
    k = round(frac * queries)
    flags = torch.zeros(batch, queries, dtype=torch.bool)
    for b in range(batch):
        flags[b, torch.randperm(queries, generator=g)[:k]] = True
    return flags


class _ForcedNoObject(nn.Module):
    """The segment network with chosen queries made no-object (logit 12 above their top class logit), as a trained
    model predicts for most queries; the untrained benchmark network would otherwise keep every query."""

    def __init__(self, net: nn.Module, flags: torch.Tensor) -> None:
        super().__init__()
        self.net, self.flags = net, flags

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> dict[str, Any]:
        out = dict(self.net(x, text))
        logits = out["pred_logits"]
        flags = self.flags[: len(x)].to(logits.device)
        raised = logits[..., :-1].amax(-1) + 12.0
        out["pred_logits"] = torch.cat([logits[..., :-1], torch.where(flags, raised, logits[..., -1])[..., None]], -1)
        return out


class _CountingBranch:
    """A CLIP image branch that counts the crops it encodes."""

    def __init__(self, branch: Any) -> None:
        self.branch, self.encoded = branch, 0

    def classify(self, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        logits, encoded = self.branch.classify(*args)
        self.encoded += int(encoded.sum())
        return logits, encoded


def zegformer_pipeline(
    net: nn.Module,
    text: torch.Tensor,
    seen: list[int],
    unseen: list[int],
    clip: Any = None,
    clip_text: torch.Tensor | None = None,
    no_object: torch.Tensor | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """ZegFormer inference exactly as the toolkit runs it: :meth:`ZegFormerPredictor.labels` (padding, semantic
    inference, CLIP fusion, official calibration 0.1, argmax) around ``net``.

    Args:
        net: the segment network (or its ``torch.compile`` wrapper).
        text: ``(C, 512)`` class embeddings of the segment branch.
        seen / unseen: class ids (calibration; fusion).
        clip: a ``ClipImageBranch`` (None: segment branch alone).
        clip_text: ``(C, D)`` CLIP text embeddings of the classes.
        no_object: ``(B, Q)`` bool, queries made no-object (see :class:`_ForcedNoObject`).

    Returns:
        ``images -> labels``; with ``clip``, its attribute ``encoded`` counts the CLIP crops encoded so far.
    """
    model = _ForcedNoObject(net, no_object) if no_object is not None else net
    names = [f"class{i}" for i in range(text.shape[0])]
    meta = {
        "class_names": names,
        "seen_ids": list(seen),
        "unseen_ids": list(unseen),
        "encoder": "benchmark",
        "embed_dim": int(text.shape[1]),
        "inference": {},
    }
    predictor = ZegFormerPredictor(model, meta, text, device=str(text.device), options=InferenceOptions())
    counter = None
    if clip is not None:
        counter = _CountingBranch(clip)
        predictor.use_clip_branch(counter, clip_text)

    def run(x: torch.Tensor) -> torch.Tensor:
        out = predictor.labels(x)
        if counter is not None:
            run.encoded = counter.encoded  # type: ignore[attr-defined]
        return out

    if clip is not None:
        run.encoded = 0  # type: ignore[attr-defined]
    return run


def clip_pipelines(
    args: argparse.Namespace,
    clip_model: nn.Module,
    text: torch.Tensor,
    clip_text: torch.Tensor,
    seen: list[int],
    unseen: list[int],
    no_object: torch.Tensor,
) -> dict[str, Callable[[Any], Callable[[torch.Tensor], torch.Tensor]]]:
    """For each CLIP mode, ``make(net) -> pipeline`` of ZegFormer + the CLIP image branch in that mode."""
    from zeroseg.modules.clip_branch import ClipImageBranch

    mode_kwargs = {
        "per_image": {"mode": "per_image"},
        "batched+skip": {
            "mode": "batched",
            "max_batch": args.max_batch,
            "skip_empty": True,
            "skip_no_object": args.skip_no_object,
        },
        "pool": {"mode": "pool", "max_batch": args.max_batch},
    }
    pipelines = {}
    for mode in CLIP_MODES:
        branch = ClipImageBranch(clip_model, style="cropmask", **mode_kwargs[mode])

        def make(net: Any, branch: ClipImageBranch = branch) -> Callable[[torch.Tensor], torch.Tensor]:
            return zegformer_pipeline(net, text, seen, unseen, clip=branch, clip_text=clip_text, no_object=no_object)

        pipelines[mode] = make
    return pipelines


# --------------------------------------------------------------------------------------------- driver
def _to_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


def _compile(net: nn.Module, device: torch.device, bf16: bool, first_input: Callable[[Any], Any]) -> tuple[Any, float]:
    """``torch.compile(net)`` and the time of its first call (compilation + one forward)."""
    compiled = torch.compile(net)
    with variant_context(OPTIMISED, device, bf16):
        _sync(device)
        t0 = time.perf_counter()
        first_input(compiled)
        _sync(device)
    return compiled, time.perf_counter() - t0


def _row(model: str, mode: str | None, variant: str, res: dict[str, Any], batch: int) -> dict[str, Any]:
    row = {"model": model, "mode": mode, "variant": variant, "batch": batch}
    row.update({k: v for k, v in res.items() if k not in ("flops_per_batch", "predictions")})
    return row


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the benchmark described by parsed ``args``; returns the report (see ``main`` for the JSON)."""
    device = torch.device(args.device)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    report: dict[str, Any] = {
        "args": vars(args),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    memory = PeakMemory(device)
    report["memory_method"] = memory.method
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16} if args.bf16 else {"fp32": torch.float32}

    def peaks() -> dict[str, float]:
        return {k: measure_peak_gflops(device, dt, args.peak_size, args.peak_repeats) for k, dt in dtypes.items()}

    peak_start = peaks()
    print(f"  peak matmul: {', '.join(f'{k} {v:.1f} GFLOP/s' for k, v in peak_start.items())}", file=sys.stderr)

    g = torch.Generator().manual_seed(args.seed)
    n_batches = max(1, math.ceil(args.images / args.batch))
    images = [torch.randn(args.batch, 3, args.size, args.size, generator=g).to(device) for _ in range(n_batches)]
    seen = [c for c in range(args.classes) if c % 4 != 3]  # 3/4 seen, 1/4 unseen (as bench_zegformer_clip)
    unseen = [c for c in range(args.classes) if c % 4 == 3]
    rows: list[dict[str, Any]] = []
    flops: dict[tuple[str, str | None], float] = {}
    compile_s: dict[str, float | None] = {}

    def run_variants(model: str, net: nn.Module, extra: list[nn.Module], pipelines: dict[str | None, Any]) -> None:
        """Both variants of one model; ``pipelines`` maps a mode to ``make(net) -> pipeline``."""
        compiled = None
        eager_predictions: dict[str | None, list[torch.Tensor]] = {}
        for variant in VARIANTS:
            channels_last = variant == OPTIMISED
            if channels_last:
                for m in (net, *extra):
                    m.to(memory_format=torch.channels_last)
            batches = [_to_format(x, channels_last) for x in images]
            target: Any = net
            if variant == OPTIMISED and args.compile:
                if compiled is None:
                    first = next(iter(pipelines.values()))
                    compiled, compile_s[model] = _compile(
                        net, device, args.bf16, lambda c, mk=first, x=batches[0]: mk(c)(x)
                    )
                target = compiled
            for mode, make in pipelines.items():
                pipeline = make(target)
                res = time_variant(
                    pipeline,
                    batches,
                    variant=variant,
                    device=device,
                    warmup=args.warmup,
                    memory=memory,
                    count=variant == EAGER,
                    bf16=args.bf16,
                )
                if res["flops_per_batch"] is not None:
                    flops[(model, mode)] = res["flops_per_batch"] / args.batch
                row = _row(model, mode, variant, res, args.batch)
                if variant == EAGER:
                    eager_predictions[mode] = res["predictions"]
                    row["agreement_with_eager"] = None
                else:
                    same = sum(
                        int((a == b).sum()) for a, b in zip(res["predictions"], eager_predictions[mode], strict=True)
                    )
                    row["agreement_with_eager"] = same / sum(p.numel() for p in res["predictions"])
                if hasattr(pipeline, "encoded"):
                    runs = max(args.warmup, 1 if variant == EAGER else 0) + n_batches
                    row["clip_queries_per_image"] = pipeline.encoded / (runs * args.batch)
                rows.append(row)
                label = f"{model}" + (f" {mode}" if mode else "")
                print(f"  {label} [{variant}]: {row['ms_per_image']:.1f} ms/image", file=sys.stderr, flush=True)

    for model in [m for m in MODELS if m in models]:
        torch.manual_seed(args.seed)
        if model == "deeplab":
            net = DeepLabV3Plus(num_classes=DEEPLAB_CLASSES, backbone=args.backbone, output_stride=16)
            net = net.to(device).eval().requires_grad_(False)
            run_variants(model, net, [], {None: deeplab_pipeline})
            continue
        net = ZegFormer(text_dim=TEXT_DIM, backbone=args.backbone, num_queries=args.queries)
        net = net.to(device).eval().requires_grad_(False)
        text = F.normalize(torch.randn(args.classes, TEXT_DIM, generator=g), dim=-1).to(device)
        if model == "zegformer":
            run_variants(model, net, [], {None: lambda n, text=text: zegformer_pipeline(n, text, seen, unseen)})
            continue
        import open_clip

        clip_model = open_clip.create_model(args.clip_model, pretrained=None, device=device)
        clip_model = clip_model.eval().requires_grad_(False)
        embed_dim = int(clip_model.text_projection.shape[1]) if clip_model.text_projection is not None else TEXT_DIM
        clip_text = F.normalize(torch.randn(args.classes, embed_dim, generator=g), dim=-1).to(device)
        no_object = no_object_flags(args.batch, args.queries, args.no_object_frac, args.seed)
        pipelines = clip_pipelines(args, clip_model, text, clip_text, seen, unseen, no_object)
        run_variants(model, net, [clip_model], pipelines)

    # Peak again at the end (the better of the two is used: on a shared machine one may be depressed).
    peak_end = peaks()
    peak = {k: max(peak_start[k], peak_end[k]) for k in dtypes}
    report["peak_gflops"] = peak
    report["peak_gflops_start_end"] = {k: [peak_start[k], peak_end[k]] for k in dtypes}
    for row in rows:
        f = flops.get((row["model"], row["mode"]))
        row["gflops_per_image"] = f / 1e9 if f is not None else None
        peak_key = "bf16" if row["variant"] == OPTIMISED and args.bf16 else "fp32"
        row["achieved_gflops"] = row["gflops_per_image"] / (row["ms_per_image"] / 1000.0) if f is not None else None
        row["peak_used"] = peak_key
        row["fraction_of_peak"] = row["achieved_gflops"] / peak[peak_key] if f is not None else None
        row["compile_s"] = compile_s.get(row["model"]) if row["variant"] == OPTIMISED else None
        row["cpu_utilisation"] = cpu_utilisation(row["cpu_ms_per_image"], row["ms_per_image"], device)
    report["results"] = rows
    report["ratios"] = _ratios(rows)
    report["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return report


def _ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Speed-ups (the reference's ms / this row's ms) of optimised vs eager per model/mode and of each CLIP mode
    vs per_image; and the cost of each CLIP mode as a multiple of the segment branch's time alone."""
    ms = {(r["model"], r["mode"], r["variant"]): r["ms_per_image"] for r in rows}
    out = []
    for model, mode, variant in ms:
        if variant == OPTIMISED and (model, mode, EAGER) in ms:
            out.append(
                {
                    "model": model,
                    "mode": mode,
                    "ratio": "speed-up optimised vs eager fp32",
                    "value": ms[(model, mode, EAGER)] / ms[(model, mode, OPTIMISED)],
                }
            )
    for model, mode, variant in ms:
        if model != "zegformer_clip":
            continue
        if mode != "per_image" and (model, "per_image", variant) in ms:
            out.append(
                {
                    "model": model,
                    "mode": mode,
                    "ratio": f"speed-up vs per_image ({variant})",
                    "value": ms[(model, "per_image", variant)] / ms[(model, mode, variant)],
                }
            )
        if ("zegformer", None, variant) in ms:
            out.append(
                {
                    "model": model,
                    "mode": mode,
                    "ratio": f"time / segment branch alone ({variant})",
                    "value": ms[(model, mode, variant)] / ms[("zegformer", None, variant)],
                }
            )
    return out


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def cpu_utilisation(cpu_ms: float, wall_ms: float, device: torch.device) -> float | None:
    """CPU time / (wall time x torch threads) on CPU (None on CUDA): well below 1 means the process did not get
    its cores -- other processes shared the CPU and the timing is unreliable."""
    if device.type != "cpu" or wall_ms <= 0:
        return None
    return cpu_ms / (wall_ms * torch.get_num_threads())


#: Rows whose CPU utilisation is below this are flagged as probably sharing the CPU.
SHARED_CPU_THRESHOLD = 0.8


def print_report(report: dict[str, Any]) -> None:
    """The results table and the ratios."""
    a = report["args"]
    peak = ", ".join(f"{k} {v:.1f}" for k, v in report["peak_gflops"].items())
    print(
        f"\nInference (random weights): device {report['device']}, torch {report['torch']}, threads "
        f"{report['threads']}, {a['size']} px, batch {a['batch']}, {a['images']} timed image(s) after "
        f"{a['warmup']} warm-up batch(es); backbone {a['backbone']}; optimised: "
        f"{'bf16 autocast' if a['bf16'] else 'fp32'}{', torch.compile' if a['compile'] else ''}; "
        f"peak matmul GFLOP/s: {peak}"
    )
    print(f"memory: {report['memory_method']}")
    header = (
        f"{'model':<16}{'mode':<14}{'variant':<12}{'ms/img':>10}{'cpu ms/img':>11}{'img/s':>9}"
        f"{'GFLOP/img':>11}{'GFLOP/s':>9}"
        f"{'%peak':>7}{'peak MiB':>10}{'+MiB':>8}{'CLIPq/img':>10}{'compile s':>10}{'cpu util':>9}{'agree':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in report["results"]:
        frac = r["fraction_of_peak"]
        print(
            f"{r['model']:<16}{r['mode'] or '-':<14}{r['variant']:<12}{r['ms_per_image']:>10.1f}"
            f"{r['cpu_ms_per_image']:>11.1f}"
            f"{r['images_per_s']:>9.3f}{_fmt(r['gflops_per_image'], '.1f'):>11}{_fmt(r['achieved_gflops'], '.1f'):>9}"
            f"{_fmt(None if frac is None else 100 * frac, '.1f'):>7}{r['peak_mem_mb']:>10.0f}{r['mem_delta_mb']:>8.0f}"
            f"{_fmt(r.get('clip_queries_per_image'), '.1f'):>10}{_fmt(r['compile_s'], '.1f'):>10}"
            f"{_fmt(r['cpu_utilisation'], '.2f'):>9}{_fmt(r['agreement_with_eager'], '.3f'):>7}"
        )
    shared = [r for r in report["results"] if (r["cpu_utilisation"] or 1.0) < SHARED_CPU_THRESHOLD]
    if shared:
        print(
            f"WARNING: {len(shared)} row(s) got less than {SHARED_CPU_THRESHOLD:.0%} of the threads' CPU time "
            "(cpu util): other processes were probably running; their times are unreliable."
        )
    print("\nratios (speed-up = reference ms / ms):")
    for q in report["ratios"]:
        where = q["model"] + (f" {q['mode']}" if q["mode"] else "")
        print(f"  {where:<30}{q['ratio']:<44}{q['value']:>7.2f}x")


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--size", type=int, default=None, help="image side in pixels (default 512; --quick 128)")
    ap.add_argument("--batch", type=int, default=1, help="images per forward (default 1)")
    ap.add_argument("--images", type=int, default=None, help="timed images per variant (default 2; --quick 1)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed batches per variant (default 1; --quick 0)")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
    ap.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the segmentation network in the optimised variant (default: on for cuda, off on cpu)",
    )
    ap.add_argument("--backbone", default="resnet101", help="ResNet of both networks (default resnet101)")
    ap.add_argument("--queries", type=int, default=100, help="ZegFormer queries (default 100)")
    ap.add_argument("--classes", type=int, default=171, help="ZegFormer vocabulary size (default 171)")
    ap.add_argument("--clip-model", default="ViT-B-16", help="open_clip built-in model (random weights)")
    ap.add_argument("--max-batch", type=int, default=128, help="crops per encode call (batched/pool modes)")
    ap.add_argument("--skip-no-object", type=float, default=0.5, help="no-object threshold of batched+skip")
    ap.add_argument("--no-object-frac", type=float, default=0.6, help="queries made no-object (trained-like)")
    ap.add_argument(
        "--cpu-bf16",
        action="store_true",
        help="on CPU, also run the optimised variant under bf16 autocast (always so on cuda; default: CPU stays fp32)",
    )
    ap.add_argument("--peak-size", type=int, default=None, help="side of the peak matmul (default 4096; --quick 512)")
    ap.add_argument("--peak-repeats", type=int, default=None, help="peak matmuls, best kept (default 3; --quick 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke-test defaults (explicit options still win)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark, prints a table and optionally writes JSON; returns a process exit code."""
    args = build_parser().parse_args(argv)
    for name, (normal, quick) in QUICK_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else normal)
    if args.compile is None:
        args.compile = args.device == "cuda"
    args.bf16 = args.device == "cuda" or args.cpu_bf16
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_inference: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    unknown = sorted({m.strip() for m in args.models.split(",") if m.strip()} - set(MODELS))
    if unknown:
        print(f"bench_inference: --models: unknown {unknown}; choose from {','.join(MODELS)}", file=sys.stderr)
        return 2
    for name in ("size", "batch", "images", "queries", "classes", "peak_size", "peak_repeats", "max_batch"):
        if getattr(args, name) < 1:
            print(f"bench_inference: --{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    if args.warmup < 0 or not 0.0 <= args.no_object_frac <= 1.0:
        print("bench_inference: --warmup must be >= 0 and --no-object-frac in [0, 1]", file=sys.stderr)
        return 2
    if "zegformer_clip" in args.models:
        try:
            import open_clip
        except ImportError:
            print(
                "bench_inference: model zegformer_clip needs open_clip (pip install open-clip-torch)", file=sys.stderr
            )
            return 2
        if args.clip_model not in open_clip.list_models():
            print(f"bench_inference: --clip-model {args.clip_model!r} is not an open_clip model name", file=sys.stderr)
            return 2
    report = run_benchmark(args)
    print_report(report)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
