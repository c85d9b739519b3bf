"""ZS-MMD recursion on the embedded benchmark: GloVe vs the random-embedding control, 3 seeds, per round.

Each run is the packaged config ``synthetic_zs_mmd`` (``configs/synthetic_zs_mmd.yaml``) for one seed (the control:
``text.encoder=random:50:<seed>``).
With ``--from-demo DIR`` (the output of ``zeroseg demo --out DIR``) the segmenter, generator and classifier
checkpoints of the demo's ZS3Net / control runs of that seed are copied first, so round 0 *is* the demo's
ZS3Net and only the recursion is trained; without it every run trains ZS3Net from scratch.

    python benchmarks/zs_mmd_synthetic.py --out /tmp/zs_mmd_bench --from-demo /tmp/demo1 --jobs 2

writes ``OUT/report.json`` (one row per run and round) and ``OUT/report.md`` (mean +- std over seeds).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

CONFIG = "synthetic_zs_mmd"  # packaged config name (zeroseg/configs/synthetic_zs_mmd.yaml)
COPIED = ("segmenter", "generator", "classifier")


def run_one(out: str, seed: int, variant: str, demo: str | None, data_root: str | None, rounds: int) -> dict:
    import torch

    from zeroseg.config import load_config
    from zeroseg.methods.zs_mmd import round_name, train

    torch.set_num_threads(1)  # one run per core
    overrides = [f"seed={seed}", f"name={variant}_seed{seed}", f"out_dir={out}/runs", f"zs_mmd.rounds={rounds}"]
    if variant == "control":
        overrides.append(f"text.encoder=random:50:{seed}")
    if variant == "glove_no_zsmmd":
        # Ablation: the same rounds of generator + classifier retraining without the ZS-MMD term.
        overrides.append("zs_mmd.pseudo_weight=0.0")
    if data_root:
        overrides.append(f"data.root={data_root}")
    cfg = load_config(CONFIG, overrides)
    run = cfg.run_dir
    run.mkdir(parents=True, exist_ok=True)
    if demo and not (run / "classifier.json").exists():
        src = Path(demo) / "runs" / f"{'control' if variant == 'control' else 'zs3net'}_seed{seed}"
        for stage in COPIED:
            for suffix in (".safetensors", ".json"):
                shutil.copyfile(src / f"{stage}{suffix}", run / f"{stage}{suffix}")
        metrics = json.loads((src / "metrics.json").read_text())
        (run / "metrics.json").write_text(json.dumps({k: v for k, v in metrics.items() if k in COPIED}, indent=2))
    t0 = time.perf_counter()
    res = train(cfg, progress=False)
    wall = time.perf_counter() - t0
    rows = []
    for r in range(rounds + 1):
        m = res.stages[round_name(r)]
        rows.append(
            {
                "variant": variant,
                "seed": seed,
                "round": r,
                "seen_miou": round(m["seen_miou"], 2),
                "unseen_miou": round(m["unseen_miou"], 2),
                "hiou": round(m["hiou"], 2),
                "pseudo_counts": m.get("pseudo_counts"),
            }
        )
    return {"rows": rows, "wall_s": round(wall, 1)}


def _cell(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f}"


NAMES = {
    "glove": "ZS-MMD (GloVe)",
    "glove_no_zsmmd": "ablation: same rounds, ZS-MMD weight 0 (GloVe)",
    "control": "CONTROL: ZS-MMD, random class embeddings",
}


def markdown(rows: list[dict], walls: dict, total: float, command: str) -> str:
    lines = ["| run | round | seen mIoU | unseen mIoU | hIoU |", "|---|---|---|---|---|"]
    variants = [v for v in NAMES if any(row["variant"] == v for row in rows)]
    for variant in variants:
        for r in sorted({row["round"] for row in rows}):
            sel = [row for row in rows if row["round"] == r and row["variant"] == variant]
            cells = [_cell([row[k] for row in sel]) for k in ("seen_miou", "unseen_miou", "hiou")]
            name = "0 (= ZS3Net)" if r == 0 else str(r)
            lines.append(f"| {NAMES[variant]} | {name} | " + " | ".join(cells) + " |")
    lines += ["", "Per seed (hIoU by round; pseudo-features per unseen class in the last round; run wall time):", ""]
    for (variant, seed), wall in sorted(walls.items()):
        sel = sorted(
            (row for row in rows if row["variant"] == variant and row["seed"] == seed), key=lambda x: x["round"]
        )
        hious = ", ".join(f"{row['hiou']:.1f}" for row in sel)
        lines.append(f"- {variant} seed {seed}: hIoU {hious}; pseudo {sel[-1]['pseudo_counts']}; {wall:.0f} s")
    lines += ["", f"Command: `{command}`; total wall time {total:.0f} s.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--from-demo", dest="demo", help="zeroseg demo output dir to take round 0 from")
    ap.add_argument("--data-root", help="benchmark data (default: <from-demo>/synthetic, else the config's)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--variants", default="glove,control,glove_no_zsmmd")
    args = ap.parse_args()
    import sys

    data_root = args.data_root or (str(Path(args.demo) / "synthetic") if args.demo else None)
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.variants.split(",")
    tasks = [(s, v) for s in seeds for v in variants]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as ex:
        futures = {t: ex.submit(run_one, args.out, t[0], t[1], args.demo, data_root, args.rounds) for t in tasks}
        results = {t: f.result() for t, f in futures.items()}
    total = time.perf_counter() - t0
    rows = [row for res in results.values() for row in res["rows"]]
    walls = {(v, s): res["wall_s"] for (s, v), res in results.items()}
    out = Path(args.out)
    (out / "report.json").write_text(json.dumps({"rows": rows, "total_s": round(total, 1)}, indent=2) + "\n")
    command = "python " + " ".join(sys.argv)
    (out / "report.md").write_text(markdown(rows, walls, total, command))
    print((out / "report.md").read_text())


if __name__ == "__main__":
    main()
