"""`v2i bench params`: our detectors' parameter counts at ResNet-50 and the paper's settings, beside Table I.

Counts are of trainable parameters with frozen batch norm and a frozen stem and layer1, which is how the
DETR, Deformable DETR and SAM-DETR code count the figures the paper's Table I repeats. Models are built on the meta
device (shapes only, no memory), so this runs anywhere in seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from v2i_core.config import ModelConfig
from v2i_core.models.build import build_detector

# V2I-DETR Table I, "Params (M)", image-based rows at ResNet-50.
PAPER_MILLIONS = {"detr": 41, "deformable_detr": 40, "sam_detr": 58}
# The feed-forward width of each reference code's default: DETR's and SAM-DETR's 2048, Deformable DETR's 1024.
DIM_FEEDFORWARD = {"detr": 2048, "deformable_detr": 1024, "sam_detr": 2048}
COCO_CLASSES = 91


@dataclass
class Row:
    model: str
    ours: int  # at the paper's settings and our class count
    paper_millions: int
    reference: int  # the reference code's layout and COCO heads, counted the same way
    why: str


def paper_config(arch: str, num_classes: int, num_queries: int = 100) -> ModelConfig:
    """The paper's settings (its Sec. III and the DETR / Deformable DETR / SAM-DETR defaults it builds on)."""
    return ModelConfig(
        arch=arch,
        backbone="resnet50",
        backbone_norm="frozen_bn",
        last_layer=4,
        num_feature_levels=4,
        d_model=256,
        nheads=8,
        enc_layers=6,
        dec_layers=6,
        dim_feedforward=DIM_FEEDFORWARD[arch],
        dropout=0.1,
        num_queries=num_queries,
        num_classes=num_classes,
    )


def count(build: Callable[[], nn.Module]) -> int:
    """Trainable parameters of the detector `build()` makes, with the stem and layer1 frozen as on ImageNet."""
    return _trainable(_meta(build))


def _meta(build: Callable[[], nn.Module]) -> nn.Module:
    with torch.device("meta"):
        model = build()
    model.backbone.freeze_stem()
    return model


def _trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def sam_detr_layout(model: nn.Module) -> tuple[int, int]:
    """What the official SAM-DETR code (ZhangGongjie/SAM-DETR) has beyond ours of the same size: (a class head and a
    box head cloned for every decoder layer where ours shares one pair, its self-attention's five projections
    (query and key content and position, value) where ours has nn.MultiheadAttention's three and one for the box
    centres' embedding: one d x d layer more per decoder layer)."""
    heads = _trainable(model.class_embed) + _trainable(model.bbox_embed)
    d_model, layers = model.transformer.d_model, len(model.transformer.decoder)
    return (layers - 1) * heads, layers * (d_model * d_model + d_model)


def rows(num_classes: int) -> list[Row]:
    """One row per detector, with the difference to the reference figure split into its causes."""
    m = 1e6
    detr = count(lambda: build_detector(paper_config("detr", num_classes)))
    # DETR's reference head is a softmax over COCO's 91 classes plus "no object".
    detr_coco = count(lambda: build_detector(paper_config("detr", COCO_CLASSES + 1)))
    deform = count(lambda: build_detector(paper_config("deformable_detr", num_classes)))
    # Deformable DETR's reference heads: COCO's 91 classes and 300 queries.
    deform_coco = count(lambda: build_detector(paper_config("deformable_detr", COCO_CLASSES, num_queries=300)))
    sam = count(lambda: build_detector(paper_config("sam_detr", num_classes)))
    # SAM-DETR's reference: COCO's 91 classes (sigmoid, as Deformable DETR), 300 queries, and its own layout.
    sam_ours_coco = _meta(lambda: build_detector(paper_config("sam_detr", COCO_CLASSES, num_queries=300)))
    heads, self_attn = sam_detr_layout(sam_ours_coco)
    sam_coco = _trainable(sam_ours_coco) + heads + self_attn
    return [
        Row(
            "DETR",
            detr,
            PAPER_MILLIONS["detr"],
            detr_coco,
            f"class head for {num_classes} lesion class(es) vs COCO's {COCO_CLASSES} + no-object: "
            f"{(detr - detr_coco) / m:+.2f}M",
        ),
        Row(
            "Deformable DETR",
            deform,
            PAPER_MILLIONS["deformable_detr"],
            deform_coco,
            f"{num_classes} vs {COCO_CLASSES} classes and 100 vs 300 queries: {(deform - deform_coco) / m:+.2f}M",
        ),
        Row(
            "SAM-DETR",
            sam,
            PAPER_MILLIONS["sam_detr"],
            sam_coco,
            f"{num_classes} vs {COCO_CLASSES} classes and 100 vs 300 queries: "
            f"{(sam - _trainable(sam_ours_coco)) / m:+.2f}M; its heads per decoder layer: {-heads / m:+.2f}M; "
            f"its self-attention projections: {-self_attn / m:+.2f}M",
        ),
    ]


def format_table(table: list[Row]) -> str:
    head = f"{'model':<16} {'ours (M)':>8} {'paper (M)':>9} {'ref. COCO (M)':>13}  difference to the reference"
    lines = [head, "-" * len(head)]
    lines += [
        f"{r.model:<16} {r.ours / 1e6:>8.2f} {r.paper_millions:>9d} {r.reference / 1e6:>13.2f}  {r.why}" for r in table
    ]
    return "\n".join(lines)


def run(args, params, cfg=None) -> int:
    """Print the table for the baseline's class count (params: baseline.model.num_classes)."""
    num_classes = params.baseline.model.num_classes
    print(
        "Trainable parameters at ResNet-50 (frozen BN, stem and layer1 frozen, as the reference code counts), "
        f"d_model 256, 8 heads, 6+6 layers, feed-forward {DIM_FEEDFORWARD['detr']} (Deformable DETR "
        f"{DIM_FEEDFORWARD['deformable_detr']}), 100 queries, {num_classes} class(es); ref.: the reference code's "
        "layout with its COCO heads"
    )
    print(format_table(rows(num_classes)))
    return 0
