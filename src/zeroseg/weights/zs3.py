"""Import valeoai/ZS3's released DeepLabv3+ / GMMN / GCN checkpoints as a zeroseg ``zs3net`` checkpoint.

Official format (``zs3/utils/saver.py``): ``torch.save({"epoch", "state_dict", "optimizer", "best_pred"})``
where ``state_dict`` is ``zs3/modeling/deeplab.py``'s ``DeepLab`` (ResNet-101 with torchvision names, then
``aspp.aspp{1..4}``, ``aspp.global_avg_pool``, ``aspp.conv1/bn1``, ``decoder.conv1/bn1``, ``decoder.last_conv``,
``decoder.pred_conv``), and ``generator_<name>`` with the GMMN's (``model.0``, ``model.3``) under ``state_dict``
and, for the graph-context model, the GCN's (``gcn1``, ``gcn2``) under ``state_dict_GCN``.

The ``*_GMMN_final`` segmenters carry the classifier that the official retraining fitted on real seen + generated
unseen features: the imported checkpoint uses it as is for its own classes (the split's). The released files hold
no real seen features, which :meth:`~zeroseg.methods.zs3net.ZS3Predictor.set_classes` needs to refit for another
vocabulary; with a generator file, the importer stores in their place features *generated* for the seen classes
by the released GMMN (which was trained to match the real seen features' distribution, by MMD) and says so in the
metadata (``imported.bank``). Without a generator file the checkpoint serves its own classes only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zeroseg.data.splits import load_split
from zeroseg.engine.checkpoint import prefixed, save_checkpoint
from zeroseg.errors import ZeroSegError
from zeroseg.modules.deeplab import DeepLabV3Plus
from zeroseg.modules.gcn import GCNGenerator
from zeroseg.modules.gmmn import GMMNGenerator
from zeroseg.weights.readers import map_state, read_array_pickle, read_torch_file, sha256_file, tensor_dict

#: Official GMMN noise size (``--noise_dim 300`` in every training script).
OFFICIAL_NOISE_DIM = 300
#: Seen-class features generated per class when a generator file stands in for the missing real feature bank.
BANK_SAMPLES = 256

# DeepLab head: official module path -> zeroseg module path (the ResNet trunk keeps torchvision's names).
_HEAD = {
    "aspp.aspp1.atrous_conv": "aspp.branches.0.0",
    "aspp.aspp1.bn": "aspp.branches.0.1",
    "aspp.aspp2.atrous_conv": "aspp.branches.1.0",
    "aspp.aspp2.bn": "aspp.branches.1.1",
    "aspp.aspp3.atrous_conv": "aspp.branches.2.0",
    "aspp.aspp3.bn": "aspp.branches.2.1",
    "aspp.aspp4.atrous_conv": "aspp.branches.3.0",
    "aspp.aspp4.bn": "aspp.branches.3.1",
    "aspp.global_avg_pool.1": "aspp.image_pool.1.0",
    "aspp.global_avg_pool.2": "aspp.image_pool.1.1",
    "aspp.conv1": "aspp.project.0.0",
    "aspp.bn1": "aspp.project.0.1",
    "decoder.conv1": "decoder.low_proj.0",
    "decoder.bn1": "decoder.low_proj.1",
    "decoder.last_conv.0": "decoder.refine.0.0",
    "decoder.last_conv.1": "decoder.refine.0.1",
    "decoder.last_conv.4": "decoder.refine.2.0",
    "decoder.last_conv.5": "decoder.refine.2.1",
    "decoder.pred_conv": "classifier",
}
_PARAM = re.compile(r"^(.*)\.(weight|bias|running_mean|running_var|num_batches_tracked)$")


def deeplab_key(key: str) -> str | None:
    """zeroseg ``DeepLabV3Plus`` key of an official ``DeepLab`` key (``None`` if it is not one)."""
    key = key.removeprefix("module.")
    if key.startswith("backbone."):
        return key
    m = _PARAM.match(key)
    if m is None or m.group(1) not in _HEAD:
        return None
    return f"{_HEAD[m.group(1)]}.{m.group(2)}"


def _batchnorm_counters(target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Files saved before BatchNorm had the counter: it only drives momentum=None averaging, never inference.
    return {k: torch.zeros((), dtype=torch.long) for k in target if k.endswith("num_batches_tracked")}


def _state_dict(obj: Any, path: Path, key: str = "state_dict") -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and key in obj:
        obj = obj[key]
    elif isinstance(obj, dict) and key != "state_dict":
        raise ZeroSegError(f"{path}: no {key!r} entry (has {', '.join(map(str, obj))})")
    return tensor_dict(obj, str(path))


def _info(obj: Any, path: Path, role: str) -> dict[str, Any]:
    info: dict[str, Any] = {"role": role, "file": str(path), "name": path.name, "sha256": sha256_file(path)}
    if isinstance(obj, dict):
        for k in ("epoch", "best_pred"):
            if isinstance(obj.get(k), (int, float)):
                info[k] = obj[k]
    return info


def read_embeddings(path: str | Path) -> torch.Tensor:
    """Class embeddings ``(C, E)`` from an official ZS3 file: ``.npy`` (Pascal-Context) or ``.pkl`` (VOC,
    ``norm_embed_arr_300.pkl``, read with the restricted array unpickler)."""
    p = Path(path)
    if p.suffix == ".npy":
        if not p.is_file():
            raise ZeroSegError(f"{p}: file not found")
        try:
            arr = np.load(p, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise ZeroSegError(f"{p}: cannot read .npy ({e})") from None
    else:
        arr = read_array_pickle(p)
    if not isinstance(arr, np.ndarray) or arr.ndim != 2:
        raise ZeroSegError(f"{p}: expected a (classes, dim) array of class embeddings")
    return torch.from_numpy(arr.astype(np.float32))


def import_zs3net(
    checkpoint: str | Path,
    *,
    split: str,
    out: str | Path,
    generator: str | Path | None = None,
    encoder: str | None = None,
    embeddings: str | Path | None = None,
    output_stride: int = 16,
    seed: int = 0,
) -> Path:
    """Write ``<out>/classifier`` (a zeroseg ZS3Net final checkpoint) from the official files.

    Args:
        checkpoint: official segmenter file (``deeplab_*_GMMN_final.pth.tar``, or a ``deeplab_pretrained_*`` one).
        split: zeroseg split whose classes the file was trained on (``voc-zs3-k2``, ``context-zs3-k4``, ...).
        out: output directory.
        generator: official ``generator_*`` file (GMMN, plus GCN for the graph-context models); needed to refit
            the classifier for other classes.
        encoder: text-encoder spec used to embed new class names (the official models use 300-d word2vec,
            e.g. ``word2vec:GoogleNews-vectors-negative300.bin``).
        embeddings: the official class-embedding file of the split's dataset (``.pkl``/``.npy``, one row per class
            in label order); otherwise the embeddings of the split's classes are computed with ``encoder``.
        output_stride: the network's output stride (16 in every official script).
        seed: seed of the generated seen-feature bank.

    Returns:
        the written ``.safetensors`` path.

    Raises:
        ZeroSegError: unreadable files, keys or shapes that do not match, or a split with another class count.
    """
    ckpt_path = Path(checkpoint)
    raw = read_torch_file(ckpt_path)
    source = _state_dict(raw, ckpt_path)
    sp = load_split(split)
    names = tuple(sp.class_names)
    pred = source.get("decoder.pred_conv.weight", source.get("module.decoder.pred_conv.weight"))
    if pred is None:
        raise ZeroSegError(f"{ckpt_path}: no decoder.pred_conv.weight; not a valeoai/ZS3 DeepLab checkpoint")
    if pred.shape[0] != len(names):
        raise ZeroSegError(f"{ckpt_path}: the classifier has {pred.shape[0]} classes, split {sp.name} has {len(names)}")
    layer3 = {int(k.split(".")[2]) for k in source if k.startswith("backbone.layer3.")}
    depth = {23: "resnet101", 6: "resnet50"}.get(len(layer3))
    if depth is None:
        raise ZeroSegError(f"{ckpt_path}: backbone layer3 has {len(layer3)} blocks; expected ResNet-101 (23)")
    seg_kwargs = {"num_classes": len(names), "backbone": depth, "output_stride": output_stride}
    model = DeepLabV3Plus(**seg_kwargs)
    target = model.state_dict()
    seg_state, _ = map_state(source, deeplab_key, target, where=str(ckpt_path), fill=_batchnorm_counters(target))
    model.load_state_dict(seg_state)
    files = [_info(raw, ckpt_path, "segmenter")]
    tensors = prefixed(seg_state, "segmenter.")
    unseen = set(sp.unseen)
    seen_ids = [i for i, n in enumerate(names) if n not in unseen]
    unseen_ids = [i for i, n in enumerate(names) if n in unseen]

    emb = None
    if embeddings is not None:
        emb = read_embeddings(embeddings)
        if emb.shape[0] != len(names):
            raise ZeroSegError(f"{embeddings}: {emb.shape[0]} class embeddings, split {sp.name} has {len(names)}")
        files.append(
            {
                "role": "embeddings",
                "file": str(embeddings),
                "name": Path(embeddings).name,
                "sha256": sha256_file(embeddings),
            }
        )
    elif encoder is not None:
        from zeroseg.methods.zs3net import class_embeddings

        emb = class_embeddings(encoder, names)

    gen_kwargs = None
    graph = False
    bank_note = "none: the released files hold no real seen features; this checkpoint serves its own classes"
    if generator is not None:
        gen_path = Path(generator)
        graw = read_torch_file(gen_path)
        gsource = _state_dict(graw, gen_path)
        w0, w3 = gsource.get("model.0.weight"), gsource.get("model.3.weight")
        if w0 is None or w3 is None:
            raise ZeroSegError(f"{gen_path}: no model.0.weight / model.3.weight; not a valeoai/ZS3 GMMN state dict")
        embed_dim = int(w0.shape[1]) - OFFICIAL_NOISE_DIM
        gen_kwargs = {
            "embed_dim": embed_dim,
            "noise_dim": OFFICIAL_NOISE_DIM,
            "hidden_dim": int(w0.shape[0]),
            "feature_dim": int(w3.shape[0]),
            "dropout": 0.5,
            "noise": "uniform",
        }
        if gen_kwargs["feature_dim"] != model.feature_dim:
            raise ZeroSegError(
                f"{gen_path}: the GMMN makes {gen_kwargs['feature_dim']}-d features, the segmenter's are "
                f"{model.feature_dim}-d"
            )
        gen = GMMNGenerator(**gen_kwargs)
        gstate, _ = map_state(gsource, lambda k: k, gen.state_dict(), where=f"{gen_path} (state_dict)")
        gen.load_state_dict(gstate)
        tensors.update(prefixed(gstate, "generator."))
        files.append(_info(graw, gen_path, "generator"))
        if isinstance(graw, dict) and "state_dict_GCN" in graw:
            gcn_rename = {"gcn1": "gc1", "gcn2": "gc2"}

            def gcn_key(k: str) -> str | None:
                head, _, leaf = k.partition(".")
                return f"{gcn_rename[head]}.{leaf}" if head in gcn_rename else None

            gcn = GCNGenerator(**gen_kwargs)
            gcn_state, _ = map_state(
                _state_dict(graw, gen_path, "state_dict_GCN"),
                gcn_key,
                gcn.state_dict(),
                where=f"{gen_path} (state_dict_GCN)",
            )
            tensors.update(prefixed(gcn_state, "gcn."))
            graph = True
        if emb is None:
            raise ZeroSegError(
                "the generator needs the class embeddings it was trained with: give --embeddings (the official "
                "file) or --encoder"
            )
        if emb.shape[1] != embed_dim:
            raise ZeroSegError(f"class embeddings are {emb.shape[1]}-d, the GMMN takes {embed_dim}-d")
        torch.manual_seed(seed)
        gen.train()  # dropout on while generating, as the official retraining does
        with torch.no_grad():
            bank_x, bank_y = gen.generate(emb[seen_ids], BANK_SAMPLES, class_ids=torch.tensor(seen_ids))
        tensors.update({"bank.features": bank_x, "bank.labels": bank_y})
        bank_note = f"generated: {BANK_SAMPLES} GMMN features per seen class (seed {seed}), not real features"
    if emb is not None:
        tensors["embeddings"] = emb

    meta = {
        "method": "zs3net",
        "variant": "zs3net-gc" if graph else "zs3net",
        "stage": "classifier",
        "protocol": "official",
        "transductive": False,
        "graph_context": graph,
        "split": sp.to_json(),
        "class_names": list(names),
        "seen_ids": seen_ids,
        "unseen_ids": unseen_ids,
        "encoder": encoder,
        "embed_dim": None if emb is None else int(emb.shape[1]),
        "segmenter": seg_kwargs,
        "generator": gen_kwargs,
        "config": None,
        "imported": {"format": "valeoai/ZS3", "files": files, "bank": bank_note},
    }
    return save_checkpoint(Path(out) / "classifier", tensors, meta)
