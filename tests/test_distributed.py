"""torch.distributed on CPU (gloo, 2 processes): sharded evaluation is exact, DDP training keeps ranks equal."""

import json
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from zeroseg.config import load_config
from zeroseg.engine.distributed import ShardSampler
from zeroseg.methods import zs3net


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(tmp: Path, *extra: str):
    (tmp / "tiny.yaml").write_text(
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
    return load_config(tmp / "tiny.yaml", list(extra))


def _worker(rank: int, world: int, port: int, tmp: str, task: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    tmp_path = Path(tmp)
    try:
        if task == "eval":
            cfg = _config(tmp_path)
            result = zs3net.evaluate_checkpoint(cfg, cfg.run_dir / "classifier", progress=False)
            (tmp_path / f"eval_rank{rank}.json").write_text(json.dumps(result))
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


def test_sharded_evaluation_equals_single_process(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "selftrain.enabled=false")
    zs3net.train(cfg, progress=False)
    single = zs3net.evaluate_checkpoint(cfg, cfg.run_dir / "classifier", progress=False)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), "eval"), nprocs=2, join=True)
    for rank in (0, 1):
        sharded = json.loads((tmp_path / f"eval_rank{rank}.json").read_text())
        assert sharded["world_size"] == 2
        assert sharded["metrics"] == json.loads(json.dumps(single["metrics"]))  # exact, every class


def test_ddp_training_two_ranks(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), "train"), nprocs=2, join=True)
    run = tmp_path / "runs" / "ddp"
    for stage in ("segmenter", "generator", "classifier"):
        assert (run / f"{stage}.json").is_file()
    assert not list(run.glob("*.tmp"))
    w0 = load_file(str(tmp_path / "weights_rank0.safetensors"))["w"]
    w1 = load_file(str(tmp_path / "weights_rank1.safetensors"))["w"]
    torch.testing.assert_close(w0, w1)  # DDP kept the two replicas identical through training
    metrics = json.loads((run / "metrics.json").read_text())
    assert "hiou" in metrics["classifier"]
