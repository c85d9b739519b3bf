"""torch.distributed on CPU (gloo, 2 processes): sharded evaluation is exact, DDP training keeps ranks equal, and a
2-rank run trains exactly like a single process on the same global batches.

Every test that starts processes is marked ``slow`` (``pytest -m slow``; CI runs them); the sampler tests are fast."""

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch import nn

from zeroseg.config import load_config
from zeroseg.engine.distributed import ShardSampler, maybe_sync_batchnorm
from zeroseg.engine.train import train_one_epoch
from zeroseg.methods import zegformer, zs3net
from zeroseg.modules.deeplab import DeepLabV3Plus

# The single-process vs 2-rank pipeline comparison: a global batch of 8 (4 per rank) in 2 micro-batches,
# SyncBatchNorm, and augmentation / shuffle order that do not depend on the process (data.augmentation_seed).
# Float rounding differs between the runs (sums over ranks, BatchNorm statistics computed another way), so
# the weights agree to ~1e-7, not bit for bit. Two settings keep that from being amplified into different
# results: 48 images (24 kept, 3 full steps) so that no BatchNorm sees a micro-batch of only 2 images (the
# pooled ASPP branch then normalises 2 values per channel), and a small self-training lr (ZS5Net starts
# from the re-initialised U[0, 1) classifier, whose huge logits make 6 steps at lr 0.007 amplify rounding
# by ~1e5; in float64 the two runs of that stage agree to 1e-12).
EXACT = (
    "data.batch_size=8",
    "data.synthetic.num_train=48",
    "engine.grad_accum=2",
    "engine.sync_bn=true",
    "data.augmentation_seed=0",
    "segmenter.epochs=1",
    "selftrain.enabled=true",
    "selftrain.epochs=1",
    "selftrain.lr=0.0001",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(tmp: Path, *extra: str):
    # Every rank writes the same file: write a private copy and rename it, so that no rank reads a half-written
    # one (a truncated YAML would silently fall back to the default config).
    part = tmp / f"tiny.yaml.{os.getpid()}"
    part.write_text(
        f"""
name: tiny
out_dir: {tmp / "runs"}
data:
  root: {tmp / "synth"}
  batch_size: 8
  eval_batch_size: 4
  crop_size: 32
  synthetic: {{num_train: 24, num_val: 7, image_size: 32}}
segmenter: {{backbone: tiny, epochs: 2}}
generator: {{epochs: 1, pixels_per_class: 16}}
classifier: {{epochs: 1}}
"""
    )
    os.replace(part, tmp / "tiny.yaml")
    return load_config(tmp / "tiny.yaml", list(extra))


def _without_dropout() -> None:
    """Build segmenters without their dropout layers (in this process).

    Dropout masks come from each process's own RNG stream: a rank drawing masks for its 2 images cannot draw
    what one process draws for all 4, so no data-parallel run reproduces a single process with dropout on.
    Everything else in the pipeline is a function of the data and the seeds.
    """
    build = zs3net.build_segmenter

    def patched(cfg, num_classes):
        model = build(cfg, num_classes)
        for module in list(model.modules()):
            for name, child in module.named_children():
                if isinstance(child, nn.Dropout):
                    setattr(module, name, nn.Identity())
        return model

    zs3net.build_segmenter = patched


def _bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 3, 1))


def _bn_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two global batches of 8 images; images 0 and 2 (rank 0's first micro-batch) have 3 labelled pixels."""
    g = torch.Generator().manual_seed(3)
    out = []
    for _ in range(2):
        images = torch.randn(8, 3, 6, 6, generator=g)
        labels = torch.randint(0, 3, (8, 6, 6), generator=g)
        labels[[0, 2]] = 255
        labels[0, 1, 1], labels[2, 0, 4], labels[2, 5, 5] = 0, 1, 2
        out.append((images, labels))
    return out


def _train_bn(rank: int, world: int) -> nn.Module:
    """Two SGD steps (grad_accum 2) on :func:`_bn_batches`; rank r of w reads images r, r + w, ..."""
    net = maybe_sync_batchnorm(_bn_net(), True)
    model = nn.parallel.DistributedDataParallel(net) if world > 1 else net
    opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
    loader = [(x[rank::world], y[rank::world], []) for x, y in _bn_batches()]
    train_one_epoch(
        model,
        loader,
        opt,
        None,
        criterion=nn.CrossEntropyLoss(ignore_index=255),
        device=torch.device("cpu"),
        progress=False,
        grad_accum=2,
    )
    return net


def _worker(rank: int, world: int, port: int, tmp: str, task: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    tmp_path = Path(tmp)
    try:
        if task == "eval":
            cfg = _config(tmp_path)
            result = zs3net.evaluate_checkpoint(cfg, cfg.run_dir / "classifier", progress=False)
            (tmp_path / f"eval_rank{rank}.json").write_text(json.dumps(result))
        elif task == "zegformer":
            cfg = load_config(tmp_path / "zf.yaml")
            zegformer.train(cfg, progress=False)
            result = zegformer.evaluate_checkpoint(cfg, cfg.run_dir / "zegformer", progress=False)
            (tmp_path / f"zf_eval_rank{rank}.json").write_text(json.dumps(result))
        elif task == "exact":
            _without_dropout()
            zs3net.train(_config(tmp_path, "name=ddp", *EXACT), progress=False)  # joins the process group
            save_file(_train_bn(rank, world).state_dict(), str(tmp_path / f"bn_rank{rank}.safetensors"))
        else:
            cfg = _config(tmp_path, "name=ddp")
            real_bank = zs3net.feature_bank

            def spy(model, *args, **kwargs):
                # Every rank reaches this with its own in-memory model: record its weights.
                flat = torch.cat([v.flatten().float() for _, v in sorted(model.state_dict().items())])
                save_file({"w": flat}, str(tmp_path / f"weights_rank{rank}.safetensors"))
                return real_bank(model, *args, **kwargs)

            zs3net.feature_bank = spy
            zs3net.train(cfg, progress=False)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_shard_sampler_covers_every_index_once() -> None:
    a, b = ShardSampler(7, shuffle=False), ShardSampler(7, shuffle=False)
    a.rank, a.world, b.rank, b.world = 0, 2, 1, 2
    assert sorted(list(a) + list(b)) == list(range(7)) and len(a) == 4 and len(b) == 3


def test_shard_sampler_for_training_gives_every_rank_the_same_count() -> None:
    # 7 samples on 2 ranks: training drops the 7th position of the epoch's order, so both ranks take 3
    # samples (the same number of steps, which DDP needs); their union is that order's first 6 positions.
    a, b = (ShardSampler(7, shuffle=True, seed=5, drop_remainder=True) for _ in range(2))
    a.rank, a.world, b.rank, b.world = 0, 2, 1, 2
    order = torch.randperm(7, generator=torch.Generator().manual_seed(5)).tolist()
    assert len(a) == len(b) == 3
    assert list(a) == order[0:6:2] and list(b) == order[1:6:2]


@pytest.mark.slow
def test_sharded_evaluation_equals_single_process(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "selftrain.enabled=false")
    zs3net.train(cfg, progress=False)
    single = zs3net.evaluate_checkpoint(cfg, cfg.run_dir / "classifier", progress=False)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), "eval"), nprocs=2, join=True)
    for rank in (0, 1):
        sharded = json.loads((tmp_path / f"eval_rank{rank}.json").read_text())
        assert sharded["world_size"] == 2
        assert sharded["metrics"] == json.loads(json.dumps(single["metrics"]))  # exact, every class


@pytest.mark.slow
def test_ddp_training_two_ranks(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), "train"), nprocs=2, join=True)
    run = tmp_path / "runs" / "ddp"
    for stage in ("segmenter", "generator", "classifier"):
        assert (run / f"{stage}.safetensors").is_file()
    assert not list(run.glob("*.tmp"))
    w0 = load_file(str(tmp_path / "weights_rank0.safetensors"))["w"]
    w1 = load_file(str(tmp_path / "weights_rank1.safetensors"))["w"]
    torch.testing.assert_close(w0, w1)  # DDP kept the two replicas identical through training
    metrics = json.loads((run / "metrics.json").read_text())
    assert "hiou" in metrics["classifier"]


@pytest.fixture(scope="module")
def exact_runs(tmp_path_factory) -> Path:
    """The EXACT pipeline once in this process ("single") and once on 2 gloo ranks ("ddp"), whose workers then
    also run :func:`_train_bn`; one spawn serves both tests below."""
    tmp = tmp_path_factory.mktemp("exact")
    build, threads = zs3net.build_segmenter, torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks (module fixtures run before conftest's per-test one)
    try:
        _without_dropout()
        zs3net.train(_config(tmp, "name=single", *EXACT), progress=False)
    finally:
        zs3net.build_segmenter = build
        torch.set_num_threads(threads)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp), "exact"), nprocs=2, join=True)
    return tmp


@pytest.mark.slow
def test_ddp_sync_bn_grad_accum_equals_single_process(exact_runs: Path) -> None:
    # Ranks hold different numbers of labelled pixels (rank 0's first micro-batch almost none): the loss is
    # normalised by the global count, so the averaged DDP gradient is the full batch's; SyncBatchNorm (CPU)
    # normalises each micro-batch over both ranks' images, as BatchNorm does over the single process's.
    single = _train_bn(0, 1).state_dict()
    for rank in (0, 1):
        ddp = load_file(str(exact_runs / f"bn_rank{rank}.safetensors"))
        assert ddp.keys() == single.keys()
        for key, value in single.items():
            torch.testing.assert_close(ddp[key], value, atol=1e-5, rtol=1e-5, msg=key)


@pytest.mark.slow
def test_distributed_run_matches_single_process(exact_runs: Path) -> None:
    """A distributed run gives the same weights and metrics as a single-process run on the same global batches."""
    runs = exact_runs / "runs"

    # Segmenter stage: the SyncBatchNorm model's checkpoint loads into a plain (single-process) model and its
    # weights and BatchNorm statistics equal the single-process ones up to float rounding.
    ddp_seg = zs3net.unprefixed(load_file(str(runs / "ddp" / "segmenter_last.safetensors")), "model.")
    single_seg = zs3net.unprefixed(load_file(str(runs / "single" / "segmenter_last.safetensors")), "model.")
    plain = DeepLabV3Plus(num_classes=int(single_seg["classifier.bias"].numel()), backbone="tiny")
    plain.load_state_dict(ddp_seg)
    assert ddp_seg.keys() == single_seg.keys()
    for key, value in single_seg.items():
        torch.testing.assert_close(ddp_seg[key], value, atol=2e-5, rtol=1e-4, msg=key)

    # Every later stage reads the same data with the same seeds on every rank, and the global RNG stream is
    # consumed identically, so the whole pipeline (ZS5Net self-training included) gives the same metrics.
    single = json.loads((runs / "single" / "metrics.json").read_text())
    ddp = json.loads((runs / "ddp" / "metrics.json").read_text())
    assert single.keys() == ddp.keys() == {"segmenter", "generator", "classifier", "selftrain"}
    for stage in ("segmenter", "classifier", "selftrain"):
        assert ddp[stage] == single[stage], stage  # every metric and per-class IoU (rounded to 0.01 %)
    assert ddp["generator"]["mmd_history"] == pytest.approx(single["generator"]["mmd_history"], rel=1e-5)
    ddp_st = load_file(str(runs / "ddp" / "selftrain.safetensors"))
    single_st = load_file(str(runs / "single" / "selftrain.safetensors"))
    for key, value in single_st.items():
        torch.testing.assert_close(ddp_st[key], value, atol=2e-5, rtol=1e-4, msg=key)


@pytest.mark.slow
def test_zegformer_trains_and_evaluates_on_two_ranks(tmp_path: Path) -> None:
    (tmp_path / "zf.yaml").write_text(
        f"""
name: zf
method: zegformer
out_dir: {tmp_path / "runs"}
data:
  root: {tmp_path / "synth"}
  unseen_policy: ignore
  batch_size: 8
  eval_batch_size: 4
  crop_size: 32
  synthetic: {{num_train: 16, num_val: 7, image_size: 32}}
zegformer: {{backbone: resnet18, backbone_norm: bn, hidden_dim: 32, mask_dim: 32, num_queries: 4, dec_layers: 2,
            nheads: 4, dim_feedforward: 32, iters: 3, checkpoint_every: 2}}
engine: {{sync_bn: true}}
"""
    )
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), "zegformer"), nprocs=2, join=True)
    run = tmp_path / "runs" / "zf"
    assert (run / "zegformer.safetensors").is_file() and not (run / "zegformer_last.safetensors").exists()
    r0, r1 = (json.loads((tmp_path / f"zf_eval_rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world_size"] == 2 and r0["metrics"] == r1["metrics"]
    # The sharded evaluation equals a single-process evaluation of the same checkpoint.
    single = zegformer.evaluate_checkpoint(load_config(tmp_path / "zf.yaml"), run / "zegformer", progress=False)
    assert r0["metrics"] == json.loads(json.dumps(single["metrics"]))
