"""``zeroseg demo``: a method end to end on the embedded benchmark, with the random-embedding control.

``--method zegformer`` trains, per seed, ZegFormer with GloVe class embeddings and the same model with random
class embeddings (the control). The default, ``--method zs3net``, trains per seed on the synthetic benchmark
(generated on first use):

- ZS3Net with GloVe class-name embeddings (the segmenter stage doubles as the *seen-only baseline*),
- ZS5Net self-training on top of it (transductive),
- the **control**: the same generator + classifier stages with the class embeddings replaced by random unit
  vectors. It shares the segmenter checkpoint of the seed (stage 1 never reads embeddings), so the only
  difference from ZS3Net is whether the class names carry meaning.

It writes ``DIR/report.json`` (a list of runs: name, seed, seen_miou, unseen_miou, hiou in percent, wall_s)
and ``DIR/report.md`` (mean +- std over seeds, the command, qualitative panels).
"""

from __future__ import annotations

import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from zeroseg.config import ExperimentConfig, from_dict, save_config
from zeroseg.errors import ZeroSegError
from zeroseg.files import atomic_write_json, atomic_write_text
from zeroseg.methods import METHODS

GLOVE_DIM = 50  # the control's random vectors have the dimension of the embeddings they replace

QUICK_DATA = ["data.synthetic.num_train=64", "data.synthetic.num_val=16"]


@dataclass(frozen=True)
class Demo:
    """What ``zeroseg demo --method NAME`` trains per seed and reports.

    Attributes:
        method: the :data:`~zeroseg.methods.METHODS` entry it trains.
        config: the packaged config it runs (``zeroseg/configs/<config>.yaml``); :func:`demo_config` changes only
            the seed, run name, output and data directories, and the control's embeddings.
        title: the report's title.
        protocol: the report's sentence on which training data the runs read.
        quick: the ``--quick`` overrides (a smoke-test schedule).
        seed_runs: ``(out, seed, quick, progress) -> report rows`` of one seed (models and their controls).
        panel_models: ``(out, seed, quick) -> [(title, final checkpoint), ...]`` for the qualitative panel.
    """

    method: str
    config: str
    title: str
    protocol: str
    quick: tuple[str, ...]
    seed_runs: Callable[[Path, int, bool, bool], list[dict]]
    panel_models: Callable[[Path, int, bool], list[tuple[str, Path]]]


def demo_config(
    out: Path, seed: int, *, quick: bool, control: bool = False, method: str = "zs3net"
) -> ExperimentConfig:
    """The demo experiment of ``method`` for one seed (and its control variant)."""
    from zeroseg.config import apply_overrides, packaged_config, read_config_mapping

    demo = get_demo(method)
    data = read_config_mapping(packaged_config(demo.config))
    data["seed"] = seed
    data["out_dir"] = str(out / "runs")
    run = "control" if control else method
    data["name"] = f"zegformer_{run}_seed{seed}" if method == "zegformer" and control else f"{run}_seed{seed}"
    data["data"]["root"] = str(out / ("synthetic_quick" if quick else "synthetic"))
    if control:
        data["text"]["encoder"] = f"random:{GLOVE_DIM}:{seed}"
        if "selftrain" in data:
            data["selftrain"]["enabled"] = False
    return from_dict(apply_overrides(data, list(demo.quick) if quick else []))


def _row(name: str, seed: int, m: dict, wall: float) -> dict:
    return {
        "name": name,
        "seed": seed,
        "seen_miou": round(m["seen_miou"], 2),
        "unseen_miou": round(m["unseen_miou"], 2),
        "hiou": round(m["hiou"], 2),
        "wall_s": round(wall, 1),
    }


def _zs3net_seed(out: Path, seed: int, quick: bool, progress: bool) -> list[dict]:
    """ZS3Net + ZS5Net, then the control on a copy of the seed's segmenter (stage 1 never reads embeddings)."""
    train = METHODS["zs3net"].train
    cfg = demo_config(out, seed, quick=quick)
    res = train(cfg, progress=progress)
    rows = [
        _row("seen-only baseline (DeepLabv3+, stage 1)", seed, res.stages["segmenter"], res.wall_s),
        _row("ZS3Net (GloVe)", seed, res.stages["classifier"], res.wall_s),
        _row("ZS5Net (GloVe, transductive self-training)", seed, res.stages["selftrain"], res.wall_s),
    ]
    ctrl = demo_config(out, seed, quick=quick, control=True)
    ctrl.run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cfg.run_dir / "segmenter.safetensors", ctrl.run_dir / "segmenter.safetensors")
    save_config(ctrl, ctrl.run_dir / "config.yaml")
    cres = train(ctrl, progress=progress)
    rows.append(_row("CONTROL: ZS3Net with random class embeddings", seed, cres.stages["classifier"], cres.wall_s))
    return rows


def _zs3net_panels(out: Path, seed: int, quick: bool) -> list[tuple[str, Path]]:
    run, ctrl = demo_config(out, seed, quick=quick).run_dir, demo_config(out, seed, quick=quick, control=True).run_dir
    return [("ZS3Net", run / "classifier"), ("ZS5Net", run / "selftrain"), ("control", ctrl / "classifier")]


def _zegformer_seed(out: Path, seed: int, quick: bool, progress: bool) -> list[dict]:
    """ZegFormer and its control, trained separately (the text embeddings are used in training)."""
    rows = []
    for control, name in ((False, "ZegFormer (GloVe)"), (True, "CONTROL: ZegFormer with random class embeddings")):
        cfg = demo_config(out, seed, quick=quick, control=control, method="zegformer")
        res = METHODS["zegformer"].train(cfg, progress=progress)
        rows.append(_row(name, seed, res.stages["zegformer"], res.wall_s))
    return rows


def _zegformer_panels(out: Path, seed: int, quick: bool) -> list[tuple[str, Path]]:
    run = demo_config(out, seed, quick=quick, method="zegformer").run_dir
    ctrl = demo_config(out, seed, quick=quick, control=True, method="zegformer").run_dir
    return [("ZegFormer", run / "zegformer"), ("control", ctrl / "zegformer")]


DEMOS: dict[str, Demo] = {
    "zs3net": Demo(
        method="zs3net",
        config="synthetic_zs3net",
        title="ZS3Net / ZS5Net",
        protocol="Protocol: **strict** (no unseen pixel or mask of any training image is used by ZS3Net; ZS5Net is "
        "transductive: it pseudo-labels unlabelled training images).",
        quick=("segmenter.epochs=1", "generator.epochs=1", "classifier.epochs=1", "selftrain.epochs=1", *QUICK_DATA),
        seed_runs=_zs3net_seed,
        panel_models=_zs3net_panels,
    ),
    "zegformer": Demo(
        method="zegformer",
        config="synthetic_zegformer",
        title="ZegFormer",
        protocol="Protocol: **inductive** (training images keep their unseen pixels, labelled 'ignore': they "
        "belong to no target mask, and no unseen class name is embedded before evaluation).",
        quick=("zegformer.iters=4", *QUICK_DATA),
        seed_runs=_zegformer_seed,
        panel_models=_zegformer_panels,
    ),
}


def get_demo(method: str) -> Demo:
    """The :class:`Demo` of ``method``; a one-line error listing the available ones otherwise."""
    if method not in DEMOS:
        raise ZeroSegError(f"demo method '{method}' is not available; choose from {', '.join(DEMOS)}")
    return DEMOS[method]


def run_demo(
    *,
    out: str | Path = "demo_out",
    method: str = "zs3net",
    seeds: list[int] | None = None,
    quick: bool = False,
    progress: bool = True,
) -> Path:
    """Train and evaluate every run of the demo; returns the path of report.md."""
    demo = get_demo(method)
    seeds = seeds or [0, 1, 2]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs: list[dict] = []
    t_start = time.perf_counter()
    for seed in seeds:
        runs += demo.seed_runs(out, seed, quick, progress)
    total = time.perf_counter() - t_start
    atomic_write_json(out / "report.json", runs)
    report = atomic_write_text(out / "report.md", _markdown(runs, seeds, total, quick, demo))
    _panels(out, seeds[0], quick, demo)
    return report


def summarize(runs: list[dict]) -> list[dict]:
    """Mean and (population) std over seeds of each run name, in first-seen order."""
    names = list(dict.fromkeys(r["name"] for r in runs))
    rows = []
    for n in names:
        rs = [r for r in runs if r["name"] == n]
        row = {"name": n, "seeds": len(rs)}
        for k in ("seen_miou", "unseen_miou", "hiou"):
            vals = [r[k] for r in rs]
            row[k] = statistics.fmean(vals)
            row[k + "_std"] = statistics.pstdev(vals) if len(vals) > 1 else 0.0
        rows.append(row)
    return rows


def _markdown(runs: list[dict], seeds: list[int], total: float, quick: bool, demo: Demo) -> str:
    title = demo.title
    command = (
        "Command: `zeroseg demo " + " ".join(sys.argv[2:]) + "`" if len(sys.argv) > 1 else "Command: `zeroseg demo`"
    )
    lines = [
        f"# zeroseg demo: {title} on the embedded benchmark",
        "",
        command,
        "",
        f"Seeds: {', '.join(map(str, seeds))}. {demo.protocol} "
        f"Total wall time: {total:.0f} s on {torch.get_num_threads()} CPU threads.",
        "",
    ]
    if quick:
        lines += ["**--quick: a smoke-test schedule; these numbers are not results.**", ""]
    lines += [
        "| run | seen mIoU | unseen mIoU | hIoU |",
        "|---|---|---|---|",
    ]
    for r in summarize(runs):
        lines.append(
            f"| {r['name']} | {r['seen_miou']:.1f} ± {r['seen_miou_std']:.1f} | "
            f"{r['unseen_miou']:.1f} ± {r['unseen_miou_std']:.1f} | {r['hiou']:.1f} ± {r['hiou_std']:.1f} |"
        )
    lines += [
        "",
        f"Mean ± std over seeds, percent. The control differs from {title.split(' ')[0]} only in its class "
        "embeddings (random unit vectors instead of GloVe): unseen mIoU far above the control's is zero-shot "
        "transfer through the class names.",
        "",
        "## Per-seed runs",
        "",
        "| run | seed | seen mIoU | unseen mIoU | hIoU | wall s |",
        "|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['name']} | {r['seed']} | {r['seen_miou']:.1f} | {r['unseen_miou']:.1f} | {r['hiou']:.1f} | "
            f"{r['wall_s']:.0f} |"
        )
    lines += ["", f"## Predictions on validation images (seed {seeds[0]})", "", "![panel](panel.png)", ""]
    return "\n".join(lines) + "\n"


def _panels(out: Path, seed: int, quick: bool, demo: Demo) -> None:
    """Image | ground truth | each model | control on a few validation images with unseen classes."""
    from zeroseg.data.zero_shot import build_zero_shot_data
    from zeroseg.methods import load_predictor
    from zeroseg.visualize import denormalize, save_panel

    cfg = demo_config(out, seed, quick=quick, method=demo.method)
    data = build_zero_shot_data(cfg.data, progress=False)
    named = demo.panel_models(out, seed, quick)
    models = [load_predictor(path) for _, path in named]
    titles = ["image", "ground truth", *(title for title, _ in named)]
    unseen = np.array(data.unseen_ids)
    rows = []
    for i in range(len(data.val)):
        image, label, _ = data.val[i]
        if not np.isin(label.numpy(), unseen).any():
            continue
        preds = [m.predict(image[None])[0][0].numpy() for m in models]
        rows.append((denormalize(image.numpy()), [label.numpy()] + preds))
        if len(rows) == 4:
            break
    if rows:
        save_panel(rows, titles, data.class_names, out / "panel.png")
