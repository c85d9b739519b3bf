"""``zeroseg demo``: every method end to end on the embedded benchmark, each with two controls.

Per seed, on the synthetic benchmark (generated on first use):

- ``--method zs3net`` (default, README command 1): ZS3Net with GloVe class-name embeddings (its segmenter stage
  doubles as the *seen-only baseline*), ZS5Net self-training on top of it (transductive), and the two controls of
  ZS3Net, which share the seed's segmenter checkpoint (stage 1 never reads embeddings):

  - the **all-random control** (``random:50:<seed>``): every class name replaced by a random unit vector
    (generator and classifier retrained);
  - the **unseen-only control** (``unseen-matched:<seed>:<unseen names>:<seen names>:glove-6b-50d``): seen
    classes keep their GloVe embeddings, only the unseen names get random vectors, drawn from the Gaussian of the
    seen embeddings' mean and covariance and scaled to the same norm
    (:class:`~zeroseg.text.MatchedUnseenEncoder`: unlike an isotropic random vector, which a cosine classifier can
    single out on every pixel, such a row looks like a real class embedding). The seen pipeline is the real one,
    so the gap between ZS3Net and this control is transfer through the unseen names alone. Under
    the strict protocol the generator reads only seen embeddings, so this control also shares the real run's
    generator checkpoint (bit-identical to retraining it) and trains only the classifier.
- ``--method zs5net``: the same runs plus ZS5Net self-training on top of each control's classifier.
- ``--method zs_mmd`` (or ``zs-mmd``): the ZS3Net runs of the same seeds (reused when ``OUT`` already holds them,
  trained otherwise), then the ZS-MMD recursion on ZS3Net and on each control, starting from copies of their
  segmenter, generator and classifier checkpoints (round 0 *is* that ZS3Net run).
- ``--method zegformer``: ZegFormer with GloVe and its all-random control (two trainings: the seen names'
  embeddings are used in training), and the unseen-only control: the real run's network evaluated with random
  unseen names (inductive training embeds only the seen names, so training that control would recompute the
  real run bit for bit; :func:`zeroseg.methods.zegformer.train_from` checks it).
- ``--method all``: all of the above, one comparison report.

New runs are appended after the existing ones of each seed, so the numbers of earlier runs do not move.
It writes ``OUT/report.json`` (one row per run and seed), ``OUT/report.md`` and a self-contained
``OUT/report.html`` with PNG figures next to them: per-class IoU bars, row-normalised confusion matrices, learning
curves (from ``<run>/losses.json``: the per-epoch losses the stages log) and qualitative panels.
"""

from __future__ import annotations

import html
import io
import json
import re
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
ZS3_QUICK = ("segmenter.epochs=1", "generator.epochs=1", "classifier.epochs=1", "selftrain.epochs=1", *QUICK_DATA)

#: Control variants: key -> (run-name prefix, row-name text). ``None`` is the real run.
CONTROLS = {
    "random": "random class embeddings",
    "unseen": "random unseen-class embeddings drawn like the seen ones (seen GloVe kept)",
}


@dataclass(frozen=True)
class Family:
    """A packaged config the demo runs, and its ``--quick`` overrides (a smoke-test schedule)."""

    config: str
    quick: tuple[str, ...]


FAMILIES: dict[str, Family] = {
    "zs3net": Family("synthetic_zs3net", ZS3_QUICK),
    "zs_mmd": Family("synthetic_zs_mmd", (*ZS3_QUICK[:3], "zs_mmd.rounds=1", "zs_mmd.generator_epochs=1", *QUICK_DATA)),
    "zegformer": Family("synthetic_zegformer", ("zegformer.iters=4", *QUICK_DATA)),
}


@dataclass(frozen=True)
class Demo:
    """What ``zeroseg demo --method NAME`` trains per seed and reports.

    Attributes:
        method: the demo's name on the command line.
        families: the :data:`FAMILIES` (packaged configs) it runs; :func:`demo_config` changes only the seed, run
            name, output and data directories, and the controls' embeddings (and ``selftrain.enabled``).
        title: the report's title.
        protocol: the report's sentences on which training data the runs read.
        seed_runs: ``(out, seed, quick, progress) -> report rows`` of one seed (models and their controls).
        panel_models: ``(out, seed, quick) -> [(title, final checkpoint), ...]`` for the panels and confusions.
    """

    method: str
    families: tuple[str, ...]
    title: str
    protocol: str
    seed_runs: Callable[[Path, int, bool, bool], list[dict]]
    panel_models: Callable[[Path, int, bool], list[tuple[str, Path]]]

    @property
    def config(self) -> str:
        """The packaged config of the demo's first family (the one its panels read the data of)."""
        return FAMILIES[self.families[0]].config

    @property
    def quick(self) -> tuple[str, ...]:
        """The ``--quick`` overrides of the first family."""
        return FAMILIES[self.families[0]].quick


def _control_key(control: bool | str) -> str | None:
    if control is True:
        return "random"
    if control in (False, None):
        return None
    if control not in CONTROLS:
        raise ZeroSegError(f"unknown control {control!r}; choose from {', '.join(CONTROLS)}")
    return str(control)


def run_name(family: str, seed: int, control: bool | str = False, *, zs5net: bool = False) -> str:
    """The run directory name of ``family``'s real run or control for ``seed`` (README's names are kept:
    ``zs3net_seed0``, ``control_seed0``, ``zegformer_control_seed0``)."""
    key = _control_key(control)
    if key is None:
        return f"{family}_seed{seed}"
    prefix = "" if family == "zs3net" else f"{family}_"
    return f"{prefix}control{'_unseen' if key == 'unseen' else ''}{'_zs5net' if zs5net else ''}_seed{seed}"


def demo_config(
    out: Path, seed: int, *, quick: bool, control: bool | str = False, method: str = "zs3net", zs5net: bool = False
) -> ExperimentConfig:
    """The demo experiment of config family ``method`` (``zs3net``, ``zs_mmd``, ``zegformer``) for one seed.

    Args:
        out: the demo's output directory (runs in ``out/runs``, data in ``out/synthetic[_quick]``).
        seed: the run's seed (and the controls' random-vector seed).
        quick: apply the family's ``--quick`` overrides.
        control: ``False`` (the real run), ``"random"`` (or ``True``: ``random:50:<seed>``) or ``"unseen"``
            (``unseen-matched:<seed>:<the split's unseen names>:<its seen names>:<the config's encoder>``).
        method: the config family.
        zs5net: a control with ZS5Net self-training on top of its classifier (zs3net family only).
    """
    from zeroseg.config import apply_overrides, packaged_config, read_config_mapping
    from zeroseg.data.splits import load_split
    from zeroseg.text import unseen_matched_spec

    if method not in FAMILIES:
        raise ZeroSegError(f"demo config family '{method}' is unknown; choose from {', '.join(FAMILIES)}")
    family = FAMILIES[method]
    key = _control_key(control)
    data = read_config_mapping(packaged_config(family.config))
    data["seed"] = seed
    data["out_dir"] = str(out / "runs")
    data["name"] = run_name(method, seed, key or False, zs5net=zs5net)
    data["data"]["root"] = str(out / ("synthetic_quick" if quick else "synthetic"))
    if key == "random":
        data["text"]["encoder"] = f"random:{GLOVE_DIM}:{seed}"
    elif key == "unseen":
        split = load_split(data["data"]["split"])
        data["text"]["encoder"] = unseen_matched_spec(data["text"]["encoder"], split.unseen, split.seen, seed)
    if key is not None and "selftrain" in data:
        data["selftrain"]["enabled"] = zs5net
    return from_dict(apply_overrides(data, list(family.quick) if quick else []))


# ------------------------------------------------------------------------------------------------- runs
_EPOCH_LINE = re.compile(r"^\[([^\]]+)\] epoch (\d+)/(\d+) \w+ (\S+)$")


class _Tee(io.TextIOBase):
    """Writes through to ``stream`` and keeps every complete line."""

    def __init__(self, stream: io.TextIOBase) -> None:
        self.stream, self.lines, self._part = stream, [], ""

    def write(self, s: str) -> int:
        self.stream.write(s)
        text = self._part + s
        *done, self._part = text.split("\n")
        self.lines += done
        return len(s)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()


def parse_epoch_losses(lines: list[str]) -> dict[str, list[float]]:
    """``{stage: [loss per epoch, ...]}`` from the stages' log lines ``"[stage] epoch i/n <name> <value>"``
    (segmenter, generator, classifier, selftrain, the ZS-MMD generator), in the order they were logged."""
    losses: dict[str, list[float]] = {}
    for line in lines:
        m = _EPOCH_LINE.match(line.strip())
        if m:
            try:
                losses.setdefault(m.group(1), []).append(float(m.group(4)))
            except ValueError:
                continue
    return losses


@contextmanager
def recorded_losses(run_dir: Path) -> Iterator[None]:
    """Records the per-epoch losses a training logs into ``run_dir/losses.json`` (stages trained now replace
    their earlier entry; stages skipped on a resume keep it). The methods log every epoch's loss but store only
    some of them (``mmd_history``, ZegFormer's ``loss_history``); this keeps all of them at no training cost."""
    tee = _Tee(sys.stdout)
    old, sys.stdout = sys.stdout, tee
    try:
        yield
    finally:
        sys.stdout = old
        new = parse_epoch_losses(tee.lines + [tee._part])
        path = run_dir / "losses.json"
        saved = json.loads(path.read_text()) if path.is_file() else {}
        if new and run_dir.is_dir():
            atomic_write_json(path, {**saved, **new})


def _train(cfg: ExperimentConfig, progress: bool):
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    with recorded_losses(cfg.run_dir):
        return METHODS[cfg.method].train(cfg, progress=progress)


def _seed_from(src: Path, dst: ExperimentConfig, stages: tuple[str, ...]) -> None:
    """Start run ``dst`` from copies of ``src``'s stage checkpoints (and their metrics), unless it has them."""
    run = dst.run_dir
    run.mkdir(parents=True, exist_ok=True)
    if not (run / f"{stages[-1]}.safetensors").is_file():
        for stage in stages:
            shutil.copyfile(src / f"{stage}.safetensors", run / f"{stage}.safetensors")
        metrics = json.loads((src / "metrics.json").read_text()) if (src / "metrics.json").is_file() else {}
        atomic_write_json(run / "metrics.json", {k: v for k, v in metrics.items() if k in stages})
        if (src / "losses.json").is_file():
            losses = json.loads((src / "losses.json").read_text())
            atomic_write_json(run / "losses.json", {k: v for k, v in losses.items() if k in stages})
    save_config(dst, run / "config.yaml")


def _row(name: str, seed: int, m: dict, wall: float, *, model: str, variant: str, run: Path, stage: str) -> dict:
    return {
        "name": name,
        "model": model,
        "variant": variant,
        "seed": seed,
        "seen_miou": round(m["seen_miou"], 2),
        "unseen_miou": round(m["unseen_miou"], 2),
        "hiou": round(m["hiou"], 2),
        "wall_s": round(wall, 1),
        "run": f"{run.name}/{stage}",
        "per_class": [{"name": c["name"], "split": c["split"], "iou": c["iou"]} for c in m.get("per_class", [])],
    }


def control_name(model: str, key: str) -> str:
    """The report name of ``model``'s control ``key`` (README's name of ZS3Net's all-random control is kept)."""
    return f"CONTROL: {model} with {CONTROLS[key]}"


def _zs3net_rows(out: Path, seed: int, quick: bool, progress: bool, *, zs5net_controls: bool) -> list[dict]:
    """ZS3Net + ZS5Net, then each control on a copy of the seed's segmenter (stage 1 never reads embeddings),
    then (``zs5net_controls``) ZS5Net self-training on each control's classifier."""
    cfg = demo_config(out, seed, quick=quick)
    res = _train(cfg, progress)
    run = cfg.run_dir
    rows = [
        _row("seen-only baseline (DeepLabv3+, stage 1)", seed, res.stages["segmenter"], res.wall_s,
             model="seen-only baseline", variant="real", run=run, stage="segmenter"),
        _row("ZS3Net (GloVe)", seed, res.stages["classifier"], res.wall_s,
             model="ZS3Net", variant="real", run=run, stage="classifier"),
        _row("ZS5Net (GloVe, transductive self-training)", seed, res.stages["selftrain"], res.wall_s,
             model="ZS5Net", variant="real", run=run, stage="selftrain"),
    ]  # fmt: skip
    for key in CONTROLS:
        ctrl = demo_config(out, seed, quick=quick, control=key)
        # Under the strict protocol the generator reads only seen classes' embeddings, which the unseen-only
        # control keeps: its generator stage would recompute the real run's bit for bit, so it is copied too.
        shared = (
            ("segmenter", "generator") if key == "unseen" and ctrl.classifier.protocol == "strict" else ("segmenter",)
        )
        _seed_from(run, ctrl, shared)
        cres = _train(ctrl, progress)
        rows.append(_row(control_name("ZS3Net", key), seed, cres.stages["classifier"], cres.wall_s,
                         model="ZS3Net", variant=key, run=ctrl.run_dir, stage="classifier"))  # fmt: skip
    if zs5net_controls:
        for key in CONTROLS:
            src = demo_config(out, seed, quick=quick, control=key).run_dir
            ctrl = demo_config(out, seed, quick=quick, control=key, zs5net=True)
            _seed_from(src, ctrl, ("segmenter", "generator", "classifier"))
            cres = _train(ctrl, progress)
            rows.append(_row(control_name("ZS5Net", key), seed, cres.stages["selftrain"], cres.wall_s,
                             model="ZS5Net", variant=key, run=ctrl.run_dir, stage="selftrain"))  # fmt: skip
    return rows


def _zs3net_seed(out: Path, seed: int, quick: bool, progress: bool) -> list[dict]:
    return _zs3net_rows(out, seed, quick, progress, zs5net_controls=False)


def _zs5net_seed(out: Path, seed: int, quick: bool, progress: bool) -> list[dict]:
    return _zs3net_rows(out, seed, quick, progress, zs5net_controls=True)


def _zs_mmd_seed(out: Path, seed: int, quick: bool, progress: bool) -> list[dict]:
    """The seed's ZS3Net runs (reused when done), then ZS-MMD from copies of each one's first three stages."""
    rows = [r for r in _zs3net_seed(out, seed, quick, progress) if r["model"] == "ZS3Net"]
    for key in (None, *CONTROLS):
        src = demo_config(out, seed, quick=quick, control=key or False).run_dir
        cfg = demo_config(out, seed, quick=quick, control=key or False, method="zs_mmd")
        _seed_from(src, cfg, ("segmenter", "generator", "classifier"))
        res = _train(cfg, progress)
        final = f"zs_mmd_round{cfg.zs_mmd.rounds}"
        name = "ZS-MMD (GloVe, transductive)" if key is None else control_name("ZS-MMD", key)
        rows.append(_row(name, seed, res.stages[final], res.wall_s,
                         model="ZS-MMD", variant=key or "real", run=cfg.run_dir, stage=final))  # fmt: skip
    return rows


def _zegformer_seed(out: Path, seed: int, quick: bool, progress: bool) -> list[dict]:
    """ZegFormer and its all-random control, each trained (training embeds the seen names, which that control
    replaces), and the unseen-only control: the real run's network with random unseen names. Training embeds only
    the seen names, which that control keeps, so training it would recompute the real run bit for bit
    (:func:`zeroseg.methods.zegformer.train_from` checks that and evaluates the trained network instead)."""
    from zeroseg.methods.zegformer import train_from

    rows = []
    real = demo_config(out, seed, quick=quick, method="zegformer")
    for key in (None, *CONTROLS):
        cfg = demo_config(out, seed, quick=quick, control=key or False, method="zegformer")
        if key == "unseen":
            cfg.run_dir.mkdir(parents=True, exist_ok=True)
            with recorded_losses(cfg.run_dir):
                res = train_from(cfg, real.run_dir / "zegformer", progress=progress)
        else:
            res = _train(cfg, progress)
        name = "ZegFormer (GloVe)" if key is None else control_name("ZegFormer", key)
        rows.append(_row(name, seed, res.stages["zegformer"], res.wall_s,
                         model="ZegFormer", variant=key or "real", run=cfg.run_dir, stage="zegformer"))  # fmt: skip
    return rows


def _all_seed(out: Path, seed: int, quick: bool, progress: bool) -> list[dict]:
    rows = _zs5net_seed(out, seed, quick, progress)
    rows += [r for r in _zs_mmd_seed(out, seed, quick, progress) if r["model"] == "ZS-MMD"]
    return rows + _zegformer_seed(out, seed, quick, progress)


def _panel_list(out: Path, seed: int, quick: bool, family: str, model: str, stage: str, **kw) -> list:
    named = [(model, demo_config(out, seed, quick=quick, method=family, **kw).run_dir / stage)]
    for key in CONTROLS:
        run = demo_config(out, seed, quick=quick, method=family, control=key, **kw).run_dir
        named.append((f"{model} {key}-ctrl", run / stage))
    return named


def _zs3net_panels(out: Path, seed: int, quick: bool) -> list[tuple[str, Path]]:
    run = demo_config(out, seed, quick=quick).run_dir
    named = _panel_list(out, seed, quick, "zs3net", "ZS3Net", "classifier")
    return [named[0], ("ZS5Net", run / "selftrain"), *named[1:]]


def _zs5net_panels(out: Path, seed: int, quick: bool) -> list[tuple[str, Path]]:
    named = [("ZS5Net", demo_config(out, seed, quick=quick).run_dir / "selftrain")]
    for key in CONTROLS:
        named.append((f"ZS5Net {key}-ctrl", demo_config(out, seed, quick=quick, control=key, zs5net=True).run_dir
                      / "selftrain"))  # fmt: skip
    return _zs3net_panels(out, seed, quick)[:1] + named


def _zs_mmd_panels(out: Path, seed: int, quick: bool) -> list[tuple[str, Path]]:
    rounds = demo_config(out, seed, quick=quick, method="zs_mmd").zs_mmd.rounds
    return _panel_list(out, seed, quick, "zs3net", "ZS3Net", "classifier")[:1] + _panel_list(
        out, seed, quick, "zs_mmd", "ZS-MMD", f"zs_mmd_round{rounds}"
    )


def _zegformer_panels(out: Path, seed: int, quick: bool) -> list[tuple[str, Path]]:
    return _panel_list(out, seed, quick, "zegformer", "ZegFormer", "zegformer")


def _all_panels(out: Path, seed: int, quick: bool) -> list[tuple[str, Path]]:
    rounds = demo_config(out, seed, quick=quick, method="zs_mmd").zs_mmd.rounds
    run = demo_config(out, seed, quick=quick).run_dir
    return [
        ("ZS3Net", run / "classifier"),
        ("ZS5Net", run / "selftrain"),
        ("ZS-MMD", demo_config(out, seed, quick=quick, method="zs_mmd").run_dir / f"zs_mmd_round{rounds}"),
        ("ZegFormer", demo_config(out, seed, quick=quick, method="zegformer").run_dir / "zegformer"),
        ("ZS3Net unseen-ctrl", demo_config(out, seed, quick=quick, control="unseen").run_dir / "classifier"),
    ]


_ZS3_PROTOCOL = (
    "Protocol: **strict** (no unseen pixel or mask of any training image is used by ZS3Net; ZS5Net is "
    "transductive: it pseudo-labels unlabelled training images)."
)
_ZS_MMD_PROTOCOL = (
    "ZS-MMD is **transductive**: its pseudo-features come from the unlabelled training images that contain unseen "
    "classes (validation images are never read for training); round 0 is the seed's ZS3Net run."
)
_ZEGFORMER_PROTOCOL = (
    "ZegFormer: **inductive** (training images keep their unseen pixels, labelled 'ignore': they belong to no "
    "target mask, and no unseen class name is embedded before evaluation). Its unseen-only control is therefore "
    "the real run's network evaluated with random unseen names (training it would give the same network)."
)

#: ``zeroseg demo --method NAME``: the demos in the order ``--help`` lists them.
DEMOS: dict[str, Demo] = {
    "zs3net": Demo("zs3net", ("zs3net",), "ZS3Net / ZS5Net", _ZS3_PROTOCOL, _zs3net_seed, _zs3net_panels),
    "zs5net": Demo("zs5net", ("zs3net",), "ZS5Net", _ZS3_PROTOCOL, _zs5net_seed, _zs5net_panels),
    "zs_mmd": Demo(
        "zs_mmd", ("zs3net", "zs_mmd"), "ZS-MMD", f"{_ZS3_PROTOCOL} {_ZS_MMD_PROTOCOL}", _zs_mmd_seed, _zs_mmd_panels
    ),
    "zegformer": Demo(
        "zegformer", ("zegformer",), "ZegFormer", _ZEGFORMER_PROTOCOL, _zegformer_seed, _zegformer_panels
    ),  # fmt: skip
    "all": Demo(
        "all",
        ("zs3net", "zs_mmd", "zegformer"),
        "all methods",
        f"{_ZS3_PROTOCOL} {_ZS_MMD_PROTOCOL} {_ZEGFORMER_PROTOCOL}",
        _all_seed,
        _all_panels,
    ),
}


def get_demo(method: str) -> Demo:
    """The :class:`Demo` of ``method`` (``zs-mmd`` is accepted for ``zs_mmd``); a one-line error otherwise."""
    key = method.replace("-", "_")
    if key not in DEMOS:
        raise ZeroSegError(f"demo method '{method}' is not available; choose from {', '.join(DEMOS)}")
    return DEMOS[key]


# ------------------------------------------------------------------------------------------------- report
def demo_command(method: str, out: Path, seeds: list[int], quick: bool) -> str:
    """The exact command line that reproduces a demo run."""
    cmd = f"zeroseg demo --method {method} --out {out} --seeds {' '.join(map(str, seeds))}"
    return cmd + (" --quick" if quick else "")


def run_demo(
    *,
    out: str | Path = "demo_out",
    method: str = "zs3net",
    seeds: list[int] | None = None,
    quick: bool = False,
    progress: bool = True,
) -> Path:
    """Train and evaluate every run of the demo, write the reports; returns the path of report.md."""
    demo = get_demo(method)
    seeds = seeds or [0, 1, 2]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs: list[dict] = []
    t_start = time.perf_counter()
    for i, seed in enumerate(seeds):
        if progress:
            print(f"[demo] seed {seed} ({i + 1}/{len(seeds)}) of --method {demo.method}", flush=True)
        runs += demo.seed_runs(out, seed, quick, progress)
        if progress:
            done = time.perf_counter() - t_start
            eta = done / (i + 1) * (len(seeds) - i - 1)
            print(f"[demo] {done:.0f} s so far, about {eta:.0f} s to go", flush=True)
    total = time.perf_counter() - t_start
    atomic_write_json(out / "report.json", runs)
    figures = _figures(out, seeds[0], quick, demo, runs)
    sections = report_sections(runs, seeds, total, quick, demo, demo_command(demo.method, out, seeds, quick), figures)
    report = atomic_write_text(out / "report.md", render_markdown(sections))
    atomic_write_text(out / "report.html", render_html(sections, f"zeroseg demo: {demo.title}"))
    if progress:
        print(f"[demo] reports: {report} and {out / 'report.html'}; runs in {out / 'runs'}", flush=True)
    return report


def summarize(runs: list[dict]) -> list[dict]:
    """Mean and (population) std over seeds of each run name, in first-seen order."""
    names = list(dict.fromkeys(r["name"] for r in runs))
    rows = []
    for n in names:
        rs = [r for r in runs if r["name"] == n]
        row = {"name": n, "seeds": len(rs), "model": rs[0].get("model"), "variant": rs[0].get("variant")}
        for k in ("seen_miou", "unseen_miou", "hiou"):
            vals = [r[k] for r in rs]
            row[k] = statistics.fmean(vals)
            row[k + "_std"] = statistics.pstdev(vals) if len(vals) > 1 else 0.0
        rows.append(row)
    return rows


def transfer_rows(runs: list[dict]) -> list[dict]:
    """Per model with both controls: unseen mIoU of the real run and each control (mean, std over seeds), and
    the per-seed gap to the unseen-only control; ``goal`` is issue 18's bar (>= 2x and >= +10 points)."""
    out = []
    for model in dict.fromkeys(r.get("model") for r in runs):
        by = {v: {r["seed"]: r["unseen_miou"] for r in runs if r.get("model") == model and r.get("variant") == v}
              for v in ("real", *CONTROLS)}  # fmt: skip
        seeds = sorted(set(by["real"]) & set(by["unseen"]))
        if not seeds:
            continue
        cells = {v: [by[v][s] for s in seeds if s in by[v]] for v in by}
        gaps = [by["real"][s] - by["unseen"][s] for s in seeds]
        real, sharp = statistics.fmean(cells["real"]), statistics.fmean(cells["unseen"])
        row = {"model": model, "seeds": len(seeds), "gap": statistics.fmean(gaps), "gap_std": _std(gaps)}
        for v, vals in cells.items():
            row[v] = statistics.fmean(vals) if vals else None
            row[v + "_std"] = _std(vals)
        row["goal"] = real >= 2 * sharp and real - sharp >= 10
        out.append(row)
    return out


def _std(values: list[float]) -> float:
    return statistics.pstdev(values) if len(values) > 1 else 0.0


def _pm(mean: float | None, std: float) -> str:
    return "-" if mean is None else f"{mean:.1f} ± {std:.1f}"


def report_sections(
    runs: list[dict], seeds: list[int], total: float, quick: bool, demo: Demo, command: str, figures: dict[str, str]
) -> list[tuple]:
    """The report as blocks ``("h1"|"h2"|"p", text)``, ``("table", header, rows)``, ``("img", file, caption)``:
    one content, rendered to Markdown and HTML."""
    s: list[tuple] = [
        ("h1", f"zeroseg demo: {demo.title} on the embedded benchmark"),
        ("p", f"Command: `{command}`"),
        ("p", f"Seeds: {', '.join(map(str, seeds))}. {demo.protocol} Classifier protocol of ZS3Net-family runs: "
              f"**strict**. Total wall time: {total:.0f} s on {torch.get_num_threads()} CPU threads."),
    ]  # fmt: skip
    if quick:
        s.append(("p", "**--quick: a smoke-test schedule; these numbers are not results.**"))
    s.append(("table", ["run", "seen mIoU", "unseen mIoU", "hIoU"], [
        [r["name"], _pm(r["seen_miou"], r["seen_miou_std"]), _pm(r["unseen_miou"], r["unseen_miou_std"]),
         _pm(r["hiou"], r["hiou_std"])] for r in summarize(runs)
    ]))  # fmt: skip
    s.append(("p", "Mean ± std (population) over seeds, percent. Two controls per model: the **all-random** "
                   "control replaces every class embedding by a random unit vector; the **unseen-only** control "
                   "keeps the seen classes' GloVe embeddings and replaces only the unseen names by random vectors "
                   "drawn from the Gaussian of the seen embeddings' mean and covariance (unit norm, like every real "
                   "row), so the seen pipeline is the real one, the random rows look like class embeddings to "
                   "the model, and the gap to it is transfer through the unseen class names alone. Random "
                   "vectors: seed = run seed."))  # fmt: skip
    transfer = transfer_rows(runs)
    if transfer:
        s.append(("h2", "Transfer through the unseen names (unseen mIoU)"))
        s.append(("table", ["model", "real", "all-random control", "unseen-only control", "real - unseen-only",
                            "≥ 2× and ≥ +10?"], [
            [t["model"], _pm(t["real"], t["real_std"]), _pm(t["random"], t["random_std"]),
             _pm(t["unseen"], t["unseen_std"]), _pm(t["gap"], t["gap_std"]), "yes" if t["goal"] else "no"]
            for t in transfer
        ]))  # fmt: skip
    s.append(("h2", "Per-seed runs"))
    s.append(("table", ["run", "seed", "seen mIoU", "unseen mIoU", "hIoU", "wall s"], [
        [r["name"], str(r["seed"]), f"{r['seen_miou']:.1f}", f"{r['unseen_miou']:.1f}", f"{r['hiou']:.1f}",
         f"{r['wall_s']:.0f}"] for r in runs
    ]))  # fmt: skip
    captions = {
        "iou_bars.png": "Per-class IoU, mean over seeds (error bars: std); seen classes blue, unseen orange.",
        "confusion.png": f"Row-normalised confusion matrices on the validation set (seed {seeds[0]}); unseen class "
        "names in orange.",
        "curves.png": f"Learning curves (seed {seeds[0]}): the per-epoch losses each stage logs (ZegFormer: mean "
        "loss per logging window).",
        "panel.png": f"Validation images with unseen classes (seed {seeds[0]}): image, ground truth, predictions; "
        "the legend names the colours.",
    }
    for name, title in figures.items():
        s += [("h2", title), ("img", name, captions.get(name, ""))]
    return s


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def render_markdown(sections: list[tuple]) -> str:
    """The report blocks of :func:`report_sections` as Markdown."""
    lines: list[str] = []
    for block in sections:
        kind = block[0]
        if kind == "h1":
            lines += [f"# {block[1]}", ""]
        elif kind == "h2":
            lines += [f"## {block[1]}", ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "table":
            lines += [*_md_table(block[1], block[2]), ""]
        elif kind == "img":
            lines += [f"![{block[2]}]({block[1]})", "", block[2], ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _inline_html(text: str) -> str:
    text = html.escape(text, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


_CSS = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}"
    "td:first-child,th:first-child{text-align:left}th{background:#eee}img{max-width:100%}"
    "code{background:#f3f3f3;padding:1px 4px}figcaption{color:#555;font-size:90%}"
)


def render_html(sections: list[tuple], title: str) -> str:
    """The report blocks as one self-contained HTML page (inline CSS, images as relative PNG paths, no script)."""
    body: list[str] = []
    for block in sections:
        kind = block[0]
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{_inline_html(block[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{_inline_html(block[1])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{_inline_html(h)}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>" for r in block[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            src, cap = html.escape(block[1]), _inline_html(block[2])
            body.append(
                f'<figure><img src="{src}" alt="{html.escape(block[2])}"><figcaption>{cap}</figcaption></figure>'
            )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _figures(out: Path, seed: int, quick: bool, demo: Demo, runs: list[dict]) -> dict[str, str]:
    """Writes the report's PNGs next to it; returns ``{file name: section title}`` of those written."""
    from zeroseg.data.zero_shot import build_zero_shot_data
    from zeroseg.methods import load_predictor
    from zeroseg.visualize import denormalize, save_confusions, save_iou_bars, save_learning_curves, save_panel

    figures: dict[str, str] = {}
    shown = [r for r in summarize(runs) if demo.method != "all" or r["variant"] in ("real", "unseen")]
    bars, errs = [], []
    for r in shown:
        per_seed = [x["per_class"] for x in runs if x["name"] == r["name"] and x.get("per_class")]
        if not per_seed:
            continue
        mean = [dict(c, iou=_mean_or_none([p[i]["iou"] for p in per_seed])) for i, c in enumerate(per_seed[0])]
        bars.append((r["name"], mean))
        errs.append([_std([p[i]["iou"] for p in per_seed if p[i]["iou"] is not None]) for i in range(len(mean))])
    if bars:
        save_iou_bars(bars, out / "iou_bars.png", errors=errs)
        figures["iou_bars.png"] = "Per-class IoU"

    curves: dict[str, dict[str, list[float]]] = {}
    for r in runs:
        if r["seed"] != seed or r.get("model") == "seen-only baseline":
            continue
        run_dir = out / "runs" / r["run"].split("/")[0]
        losses = json.loads((run_dir / "losses.json").read_text()) if (run_dir / "losses.json").is_file() else {}
        metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
        if "zegformer" in metrics and metrics["zegformer"].get("loss_history"):
            losses["zegformer"] = metrics["zegformer"]["loss_history"]
        if losses:
            curves[f"{r['model']} ({r['variant']})"] = losses
    if curves:
        save_learning_curves(curves, out / "curves.png")
        figures["curves.png"] = "Learning curves"

    cfg = demo_config(out, seed, quick=quick, method=demo.families[0])
    data = build_zero_shot_data(cfg.data, progress=False)
    named = [(t, p) for t, p in demo.panel_models(out, seed, quick) if p.with_suffix(".safetensors").is_file()]
    if not named:
        return figures
    models = [load_predictor(p) for _, p in named]
    c = len(data.class_names)
    counts = [np.zeros((c, c), dtype=np.int64) for _ in models]
    unseen = np.array(data.unseen_ids)
    rows = []
    batch = 32
    for start in range(0, len(data.val), batch):
        items = [data.val[i] for i in range(start, min(start + batch, len(data.val)))]
        images = torch.stack([it[0] for it in items])
        labels = torch.stack([it[1] for it in items]).numpy()
        preds = [m.predict(images)[0].numpy() for m in models]
        valid = labels != 255
        for k, p in enumerate(preds):
            counts[k] += np.bincount(labels[valid] * c + p[valid], minlength=c * c).reshape(c, c)
        for j, lab in enumerate(labels):
            if len(rows) < 4 and np.isin(lab, unseen).any():
                rows.append((denormalize(images[j].numpy()), [lab, *(p[j] for p in preds)]))
    save_confusions([(t, m) for (t, _), m in zip(named, counts, strict=True)], data.class_names, data.unseen_ids,
                    out / "confusion.png")  # fmt: skip
    figures["confusion.png"] = "Confusion matrices"
    if rows:
        save_panel(rows, ["image", "ground truth", *(t for t, _ in named)], data.class_names, out / "panel.png")
        figures["panel.png"] = "Predictions on validation images"
    return figures


def _mean_or_none(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None
