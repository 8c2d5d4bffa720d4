"""`build_detector(cfg)`: the image detector a ModelConfig describes (DETR, Deformable DETR or SAM-DETR)."""

from __future__ import annotations

from torch import nn

from v2i_core.config import ModelConfig
from v2i_core.errors import V2IError
from v2i_core.models.backbone import Backbone
from v2i_core.models.deformable_detr import DeformableDETR
from v2i_core.models.deformable_transformer import DeformableTransformer
from v2i_core.models.detr import DETR
from v2i_core.models.detr_transformer import Transformer
from v2i_core.models.sam_detr import SAMDETR
from v2i_core.models.sam_transformer import SAMTransformer


def deformable_stages(cfg: ModelConfig) -> list[int]:
    """The backbone stages Deformable DETR reads: the last num_feature_levels up to last_layer, never below
    layer2, as in the official code (levels beyond those come from extra stride-2 convolutions on the last)."""
    first = max(2, cfg.last_layer - cfg.num_feature_levels + 1)
    return list(range(first, cfg.last_layer + 1))


def check_config(cfg: ModelConfig) -> None:
    """Sizes the layers cannot take, named before anything is built."""
    if cfg.d_model % cfg.nheads:
        raise V2IError(f"model config: d_model {cfg.d_model} is not divisible by nheads {cfg.nheads}")
    if cfg.d_model % 4:
        raise V2IError(f"model config: d_model {cfg.d_model} must be a multiple of 4 (sine position encoding)")
    for key in ("enc_layers", "dec_layers", "num_queries", "dim_feedforward", "enc_n_points", "dec_n_points"):
        if getattr(cfg, key) < 1:
            raise V2IError(f"model config: {key} must be at least 1, got {getattr(cfg, key)}")
    if not 0 <= cfg.dropout < 1:
        raise V2IError(f"model config: dropout must be in [0, 1), got {cfg.dropout}")


def build_detector(cfg: ModelConfig) -> nn.Module:
    """DETR or SAM-DETR on stage `last_layer`, or Deformable DETR on `num_feature_levels` levels ending there."""
    check_config(cfg)
    if cfg.arch in ("detr", "sam_detr"):
        backbone = Backbone(cfg.backbone, [cfg.last_layer], cfg.backbone_norm, cfg.pretrained)
        sizes = (cfg.d_model, cfg.nheads, cfg.enc_layers, cfg.dec_layers, cfg.dim_feedforward, cfg.dropout)
        if cfg.arch == "sam_detr":  # one salient point per attention head: the paper's 8 with 8 heads
            return SAMDETR(backbone, SAMTransformer(*sizes), cfg.num_classes, cfg.num_queries)
        return DETR(backbone, Transformer(*sizes), cfg.num_classes, cfg.num_queries)
    backbone = Backbone(cfg.backbone, deformable_stages(cfg), cfg.backbone_norm, cfg.pretrained)
    transformer = DeformableTransformer(
        cfg.d_model,
        cfg.nheads,
        cfg.enc_layers,
        cfg.dec_layers,
        cfg.dim_feedforward,
        cfg.dropout,
        cfg.num_feature_levels,
        cfg.enc_n_points,
        cfg.dec_n_points,
    )
    return DeformableDETR(backbone, transformer, cfg.num_classes, cfg.num_queries, cfg.num_feature_levels)
