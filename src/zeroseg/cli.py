"""The ``zeroseg`` command line. ``main(argv)`` is callable from tests and returns the exit status.

User errors (:class:`~zeroseg.errors.ZeroSegError`) print one line, ``zeroseg: error: ...``, and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from zeroseg import __version__
from zeroseg.errors import ZeroSegError


# --------------------------------------------------------------------------------------------- commands
def cmd_synth(args: argparse.Namespace) -> int:
    from zeroseg.data.synthetic import SynthConfig, write_benchmark

    def words(text: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
        return default if text is None else tuple(w.strip() for w in text.split(",") if w.strip())

    defaults = SynthConfig()
    cfg = SynthConfig(
        seed=args.seed,
        image_size=args.image_size,
        num_train=args.train,
        num_val=args.val,
        colours=words(args.colours, defaults.colours),
        patterns=words(args.patterns, defaults.patterns),
        unseen=words(args.unseen, defaults.unseen),
    )
    root = write_benchmark(args.out, cfg)
    print(
        f"wrote the embedded benchmark to {root}: {args.train} train + {args.val} val images, "
        f"{len(cfg.class_names)} classes, {len(cfg.unseen)} unseen ({', '.join(cfg.unseen)})"
    )
    return 0


def cmd_splits(args: argparse.Namespace) -> int:
    from zeroseg.data.splits import get_split, list_splits

    if args.name is None:
        rows = [get_split(n) for n in list_splits()]
        if args.json:
            print(json.dumps([s.to_json() for s in rows], indent=2))
            return 0
        width = max(len(s.name) for s in rows)
        print(f"{'name':<{width}}  {'dataset':<15} seen unseen  unseen classes")
        for s in rows:
            unseen = ", ".join(s.unseen) if len(s.unseen) <= 6 else f"{', '.join(s.unseen[:6])}, ..."
            print(f"{s.name:<{width}}  {s.dataset:<15} {len(s.seen):>4} {len(s.unseen):>6}  {unseen}")
        return 0
    split = get_split(args.name)
    if args.json:
        print(json.dumps(split.to_json(), indent=2))
    else:
        d = split.to_json()
        print(f"{d['name']} ({d['dataset']}), background: {d['background']}")
        print(f"seen ({len(d['seen'])}): {', '.join(d['seen'])}")
        print(f"unseen ({len(d['unseen'])}): {', '.join(d['unseen'])}")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from zeroseg.data.check import check_dataset, format_check_report

    report = check_dataset(args.dataset, args.root, args.split)
    print(json.dumps(report, indent=2) if args.json else format_check_report(report))
    return 1 if report.get("problems") else 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from zeroseg.data.prepare import format_summary, prepare

    summaries = prepare(
        args.dataset,
        args.raw,
        args.out,
        workers=args.workers,
        skip_bad=args.skip_bad,
        progress=not args.quiet,
        split=args.split,
        subset=args.subset,
    )
    for summary in summaries:
        print(format_summary(summary))
    return 1 if any(s.problems for s in summaries) else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from zeroseg.data.io import read_label_png
    from zeroseg.data.readers import get_reader
    from zeroseg.data.splits import load_split
    from zeroseg.data.zero_shot import label_lut
    from zeroseg.engine.evaluation import evaluate_label_folders, format_metrics_table

    split = load_split(args.split)
    names = tuple(split.dataset_class_names)
    # Scores are kept in the dataset's own label ids, the ones other codebases write predictions in; a
    # background that the split ignores (SPNet/ZegFormer VOC) becomes 255 in the ground truth.
    lut = label_lut(names, names, drop=[names[i] for i in split.ignored_label_ids])
    reader = get_reader(split.dataset if args.gt_format == "dataset" else "folder")
    read_gt = read_label_png if args.gt_format == "raw" else reader.read_label

    result = evaluate_label_folders(
        args.pred,
        args.gt,
        names,
        split.seen_label_ids,
        split.unseen_label_ids,
        gt_reader=lambda p: lut[read_gt(p)],
    )
    print(format_metrics_table(result, title=f"{args.pred} vs {args.gt} ({split.name})"))
    if args.json:
        _write_json(args.json, {"split": split.name, **result})
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from zeroseg.text import cosine_similarity_matrix, format_similarity, get_encoder

    names = [n.strip() for n in args.classes.split(",") if n.strip()]
    if not names:
        raise ZeroSegError('empty class list (give --classes "a,b,c")')
    emb = get_encoder(args.encoder).embed(names)
    print(f"encoder {args.encoder}: {emb.shape[1]}-d, cosine similarity")
    print(format_similarity(names, cosine_similarity_matrix(emb)))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from zeroseg.config import load_config
    from zeroseg.methods import run_method

    cfg = load_config(args.config, args.overrides)
    result = run_method(cfg, progress=not args.quiet, allow_changed=args.allow_changed_config)
    print(f"run directory: {cfg.run_dir}")
    print(f"final checkpoint: {result.checkpoint}")
    for stage, m in result.stages.items():
        if "hiou" in m:
            print(
                f"{stage:>11}: seen mIoU {m['seen_miou']:.2f}  unseen mIoU {m['unseen_miou']:.2f}  hIoU {m['hiou']:.2f}"
            )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from zeroseg.config import load_config
    from zeroseg.engine.evaluation import format_metrics_table
    from zeroseg.methods import evaluate_checkpoint

    cfg = load_config(args.config, args.overrides)
    out = args.json or str(Path(args.checkpoint).with_suffix("")) + ".eval.json"
    if Path(out).is_dir():  # refused before the evaluation, not after it
        raise ZeroSegError(f"{out}: --json names a folder; give a file name")
    result = evaluate_checkpoint(cfg, args.checkpoint, progress=not args.quiet)
    transductive = ", transductive" if result["transductive"] else ""
    title = f"{result.get('variant', result['method'])} ({result['protocol']} protocol{transductive})"
    print(format_metrics_table(result["metrics"], title=title))
    _write_json(out, result)
    print(f"wrote {out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from zeroseg.methods.predict import predict_images

    classes = None if args.classes is None else parse_class_list(args.classes)
    written = predict_images(
        args.checkpoint,
        args.images,
        args.out,
        classes=classes,
        size=args.size,
        max_pixels=args.max_pixels,
        onnx=args.onnx,
    )
    for path in written:
        print(path)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from zeroseg.export import export_onnx

    classes = None if args.classes is None else parse_class_list(args.classes)
    path = export_onnx(args.checkpoint, args.out, classes=classes, size=args.size, dynamic=args.dynamic)
    print(f"wrote {path}; run it with `zeroseg predict --onnx {path} IMAGES --out DIR`")
    return 0


def parse_class_list(text: str) -> list[str]:
    """``--classes``: comma-separated names (synonyms joined by ``|``), or the path of a text file with one
    class per line (blank lines and ``#`` comments skipped)."""
    path = Path(text)
    if path.suffix in (".txt", ".csv", ".names") or (len(text) < 4096 and "," not in text and path.is_file()):
        if not path.is_file():
            raise ZeroSegError(f"{path}: class list file not found")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ZeroSegError(f"{path}: cannot read class list ({e.__class__.__name__})") from None
        classes = [ln.split("#", 1)[0].strip() for ln in lines]
        classes = [c for c in classes if c]
        if not classes:
            raise ZeroSegError(f"{path}: empty class list")
        return classes
    classes = [c.strip() for c in text.split(",")]
    if not any(classes):
        raise ZeroSegError('empty class list (give --classes "a, b, c" or a file with one class per line)')
    return [c for c in classes if c]


def cmd_demo(args: argparse.Namespace) -> int:
    from zeroseg.demo import run_demo

    report = run_demo(out=args.out, method=args.method, seeds=args.seeds, quick=args.quick, progress=not args.quiet)
    print(f"report: {report}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from zeroseg.serve import build_app, make_server

    app = build_app(args.checkpoint, device=args.device, max_pixels=args.max_pixels)
    server = make_server(app, host=args.host, port=args.port, max_upload_bytes=int(args.max_upload_mb * 2**20))
    host, port = server.server_address[:2]
    print(f"serving {args.checkpoint} on http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def cmd_weights_import(args: argparse.Namespace) -> int:
    if args.method == "zs3net":
        from zeroseg.weights.zs3 import import_zs3net

        path = import_zs3net(
            args.checkpoint,
            split=args.split,
            out=args.out,
            generator=args.generator,
            encoder=args.encoder,
            embeddings=args.embeddings,
        )
    else:
        from zeroseg.weights.zegformer import import_zegformer

        if args.clip is None:
            raise ZeroSegError("zegformer import needs --clip FILE (the CLIP ViT-B/16 weights)")
        path = import_zegformer(
            args.checkpoint,
            clip=args.clip,
            split=args.split,
            out=args.out,
            clip_model=args.clip_model,
            test_templates=args.test_templates,
            train_templates=args.train_templates,
            clip_image=not args.no_clip_image,
        )
    from zeroseg.engine.checkpoint import load_checkpoint_meta

    meta = load_checkpoint_meta(path)
    for f in meta["imported"]["files"]:
        print(f"{f['role']:>10}: {f['name']}  sha256 {f['sha256']}")
    print(f"wrote {path}; use it with `zeroseg predict --checkpoint {path.with_suffix('')}`")
    return 0


def cmd_weights_convert_clip(args: argparse.Namespace) -> int:
    from zeroseg.weights.clip import write_clip_safetensors

    out, layout, count = write_clip_safetensors(args.input, args.out)
    print(f"read {args.input} ({layout}); wrote {out} ({count} tensors, open_clip names)")
    return 0


def cmd_weights_list(args: argparse.Namespace) -> int:
    from zeroseg.weights.registry import RELEASES

    rows = list(RELEASES.values())
    if args.json:
        import dataclasses

        print(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
        return 0
    width = max(len(r.name) for r in rows)
    for r in rows:
        paper = ""
        if r.paper:
            paper = "paper " + " ".join(f"{k.removesuffix('_miou')} {v:.1f}" for k, v in r.paper.items())
        size = f"{r.size} B" if r.size else "size ?"
        sha = f"sha256 {r.sha256[:12]}..." if r.sha256 else "sha256 ?"
        print(f"{r.name:<{width}}  {r.method:<9} {r.split or '-':<18} {paper}")
        print(f"{'':<{width}}  {r.filename}  {size}  {sha}")
        print(f"{'':<{width}}  {r.url or r.note}")
    return 0


def cmd_weights_download(args: argparse.Namespace) -> int:
    from zeroseg.weights.download import download
    from zeroseg.weights.registry import get_release

    release = get_release(args.name)
    url = args.url or release.url
    if url is None:
        raise ZeroSegError(f"{release.name} has no direct download link: {release.note}")
    path, digest = download(url, Path(args.to) / release.filename, size=release.size, sha256=release.sha256)
    verified = " (verified)" if release.sha256 else " (no recorded sha256 to compare with)"
    print(f"{path}  sha256 {digest}{verified}")
    return 0


def _write_json(path: str | Path, data: object) -> None:
    from zeroseg.files import atomic_write_json

    if Path(path).is_dir():
        raise ZeroSegError(f"{path}: --json names a folder; give a file name")
    atomic_write_json(path, data)


# --------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="zeroseg",
        description="Zero-shot semantic segmentation: ZS3Net, ZS5Net, ZS3Net-GC, ZS-MMD and ZegFormer "
        "on the standard splits.",
    )
    p.add_argument("--version", action="version", version=f"zeroseg {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("demo", help="train and evaluate on the embedded benchmark; write report.md/json")
    s.add_argument(
        "--method",
        default="zs3net",
        help="zs3net (default): ZS3Net + ZS5Net + both controls of ZS3Net; zs5net: also ZS5Net on both controls; "
        "zs_mmd (or zs-mmd): ZS-MMD from the same seeds' ZS3Net runs; zegformer; all: every method, one comparison "
        "report (zeroseg.demo.DEMOS)",
    )
    s.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    s.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds to average over")
    s.add_argument("--quick", action="store_true", help="a much shorter schedule (smoke test, not a result)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("serve", help="a local web page: upload an image, type class names, get the segmentation")
    s.add_argument("--checkpoint", required=True, help="final checkpoint or run dir, e.g. demo_out/runs/zs3net_seed0")
    s.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 = any free port)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--device", default="cpu")
    s.add_argument("--max-upload-mb", type=float, default=8.0, help="largest upload accepted (default 8 MB)")
    s.add_argument("--max-pixels", type=int, default=1024 * 1024, help="largest image accepted (default 1024x1024)")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("train", help="run every stage of an experiment config (resumes after a kill)")
    s.add_argument("config", help="packaged config name (voc_zs3net, ...; see configs/) or YAML experiment file")
    s.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. segmenter.epochs=2")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.add_argument(
        "--allow-changed-config",
        action="store_true",
        help="resume a run whose saved config.yaml differs from this config (refused by default)",
    )
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("eval", help="evaluate a checkpoint on the config's validation set")
    s.add_argument("config", help="packaged config name or YAML experiment file")
    s.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    s.add_argument("--checkpoint", required=True, help="checkpoint path (<run>/classifier.safetensors, ...)")
    s.add_argument("--json", help="where to write the metrics JSON (default: beside the checkpoint)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("predict", help="segment images with the checkpoint's or any other class names")
    s.add_argument("images", nargs="+", help="image files")
    source = s.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="final checkpoint of a run")
    source.add_argument("--onnx", help="a model written by zeroseg export, run with onnxruntime")
    s.add_argument(
        "--classes",
        help="class names, comma-separated with '|' between synonyms (\"cat, tv|monitor\"), or a .txt file with "
        "one class per line (default: the checkpoint's classes)",
    )
    s.add_argument("--out", required=True, help="output directory for label PNGs and overlays")
    s.add_argument(
        "--size", type=int, default=None, help="resize the shorter side to this first (default: the image's own size)"
    )
    s.add_argument(
        "--max-pixels",
        type=int,
        default=2048 * 2048,
        help="larger images are labelled on a downscaled copy, labels resized back (bounds memory; default 2048^2)",
    )
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("export", help="export a checkpoint with a fixed vocabulary (ONNX; see docs/export.md)")
    s.add_argument("--checkpoint", required=True, help="final checkpoint of a run (<run>/classifier, ...)")
    s.add_argument(
        "--classes",
        help="the vocabulary baked into the graph: comma-separated names or a .txt file (default: the checkpoint's)",
    )
    s.add_argument("--format", default="onnx", choices=["onnx"], help="export format (onnx)")
    s.add_argument("--out", required=True, help="the file to write (model.onnx)")
    shape = s.add_mutually_exclusive_group()
    shape.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="fixed input size (default 512 512)")
    shape.add_argument("--dynamic", action="store_true", help="any batch size and image size")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("evaluate", help="evaluate a folder of label PNGs against ground truth PNGs")
    s.add_argument("--pred", required=True, help="folder of predicted label PNGs (ids of the split's dataset)")
    s.add_argument("--gt", required=True, help="folder of ground-truth label PNGs (matched by file stem)")
    s.add_argument("--split", required=True, help="split name (zeroseg splits) or split JSON file")
    s.add_argument(
        "--gt-format",
        choices=["dataset", "raw"],
        default="dataset",
        help="'dataset': decode GT as the split's dataset stores it (e.g. ADE20K 0=other); "
        "'raw': GT PNG values are class ids already",
    )
    s.add_argument("--json", help="write the metrics to this JSON file")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("splits", help="list the zero-shot splits, or print one")
    s.add_argument("name", nargs="?", help="split name")
    s.add_argument("--json", action="store_true", help="JSON output")
    s.set_defaults(func=cmd_splits)

    s = sub.add_parser("data", help="dataset tools")
    dsub = s.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    c = dsub.add_parser("check", help="count images, verify image/label pairs, per-class pixel counts")
    c.add_argument("--dataset", required=True, help="voc, context59, context60, coco-stuff-171, ade20k-150, folder")
    c.add_argument("--root", required=True, help="dataset root directory")
    c.add_argument("--split", default="train", help="file list: train, val, train_aug, ...")
    c.add_argument("--json", action="store_true", help="JSON output")
    c.set_defaults(func=cmd_data_check)
    c = dsub.add_parser(
        "prepare",
        help="convert the publishers' downloads (VOC+SBD, Context .mat, COCO-Stuff, ADE20K, ADE20K-full) "
        "to the layouts zeroseg reads; 'seen' writes a split's seen-only training labels",
    )
    c.add_argument("dataset", help="voc, context, coco-stuff, ade20k-150, ade20k-847 or seen")
    c.add_argument("--raw", required=True, help="folder holding the unpacked downloads (seen: a prepared dataset)")
    c.add_argument("--out", required=True, help="output root (pass it as --root to zeroseg data check / configs)")
    c.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    c.add_argument("--skip-bad", action="store_true", help="list corrupt/missing inputs in the summary, go on")
    c.add_argument("--split", help="seen only: split name (zeroseg splits) or split JSON")
    c.add_argument("--subset", help="seen only: file list to convert (default train_aug for voc, else train)")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=cmd_data_prepare)

    s = sub.add_parser("weights", help="released weights: import official checkpoints, list, download")
    wsub = s.add_subparsers(dest="weights_command", required=True, metavar="SUBCOMMAND")
    c = wsub.add_parser("import", help="convert an official checkpoint into a zeroseg checkpoint")
    c.add_argument("method", choices=["zs3net", "zegformer"])
    c.add_argument("--checkpoint", required=True, help="official file (.pth.tar / model_final.pth)")
    c.add_argument("--split", required=True, help="zeroseg split the model was trained on (voc-zs3-k2, ...)")
    c.add_argument("--out", required=True, help="output directory")
    c.add_argument("--generator", help="zs3net: official generator_* file (GMMN, + GCN for -GC models)")
    c.add_argument("--encoder", help="zs3net: text encoder for new class names (word2vec:<GoogleNews .bin>)")
    c.add_argument("--embeddings", help="zs3net: official class embeddings (.pkl / .npy)")
    c.add_argument("--clip", help="zegformer: CLIP ViT-B/16 weights (open_clip, OpenAI .pt or Hugging Face)")
    c.add_argument(
        "--clip-model",
        default="ViT-B-16-quickgelu",
        help="zegformer: open_clip model name or config .json (OpenAI CLIP uses QuickGELU)",
    )
    c.add_argument("--test-templates", default="single", help="zegformer: prompt templates at inference")
    c.add_argument("--train-templates", help="zegformer: prompt templates of training (COCO: imagenet_select)")
    c.add_argument("--no-clip-image", action="store_true", help="zegformer: no CLIP image branch at inference")
    c.set_defaults(func=cmd_weights_import)
    c = wsub.add_parser("convert-clip", help="CLIP weights (OpenAI .pt / Hugging Face) -> open_clip safetensors")
    c.add_argument("input", help="OpenAI .pt, Hugging Face model.safetensors / pytorch_model.bin / folder")
    c.add_argument("--out", required=True, help="output .safetensors file")
    c.set_defaults(func=cmd_weights_convert_clip)
    c = wsub.add_parser("list", help="the released weights zeroseg knows, with the paper numbers")
    c.add_argument("--json", action="store_true", help="JSON output")
    c.set_defaults(func=cmd_weights_list)
    c = wsub.add_parser("download", help="download released weights (resumable, sha256 printed and verified)")
    c.add_argument("name", help="registry name (zeroseg weights list)")
    c.add_argument("--to", default="weights", help="directory (default: weights/)")
    c.add_argument("--url", help="another URL (a mirror) for the same file")
    c.set_defaults(func=cmd_weights_download)

    s = sub.add_parser("embed", help="print the cosine-similarity matrix of class-name embeddings")
    s.add_argument("--encoder", default="glove-6b-50d", help="encoder spec (default glove-6b-50d)")
    s.add_argument("--classes", required=True, help="comma-separated class names")
    s.set_defaults(func=cmd_embed)

    s = sub.add_parser("synth", help="write the embedded synthetic benchmark")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--image-size", type=int, default=64)
    s.add_argument("--train", type=int, default=1200, help="training images")
    s.add_argument("--val", type=int, default=200, help="validation images")
    s.add_argument("--colours", help="comma-separated colour words (default: red,green,blue,yellow)")
    s.add_argument("--patterns", help="comma-separated pattern words (default: striped,dotted,checkered)")
    s.add_argument("--unseen", help='comma-separated unseen classes, e.g. "red dotted,blue striped"')
    s.set_defaults(func=cmd_synth)
    return p


def one_line(message: str) -> str:
    """The user's line of an error message: a ZeroSegError raised in a DataLoader worker arrives wrapped in the
    worker's traceback, whose last line is the original message."""
    if "Original Traceback" in message:
        last = [line for line in message.splitlines() if line.strip()][-1]
        return last.split("ZeroSegError: ", 1)[-1]
    return message.splitlines()[0] if message else message


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ZeroSegError as e:
        print(f"zeroseg: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:
        # A file-system problem in the user's paths (read-only, full disk, a file where a folder should be).
        where = e.filename or "?"
        print(f"zeroseg: error: {where}: {e.strerror or e.__class__.__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zeroseg: interrupted (completed checkpoints are kept; re-run to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
