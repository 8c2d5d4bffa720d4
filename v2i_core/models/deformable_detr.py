"""Deformable DETR (Zhu et al. 2021), single-stage without box refinement: multi-scale input projection,
deformable transformer, box deltas relative to each query's reference point."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from v2i_core.models.attention_mask import extra_query_mask
from v2i_core.models.backbone import Backbone
from v2i_core.models.deformable_transformer import DeformableTransformer
from v2i_core.models.heads import MLP, class_head, inverse_sigmoid, pack_outputs, with_extra_queries
from v2i_core.models.position_encoding import PositionEmbeddingSine


class DeformableDETR(nn.Module):
    """Levels: the backbone's stages (1x1 conv + GroupNorm each), then `num_feature_levels - len(stages)` extra
    levels made by stride-2 3x3 convs, the first on the last stage, each next on the previous extra level."""

    def __init__(
        self,
        backbone: Backbone,
        transformer: DeformableTransformer,
        num_classes: int,
        num_queries: int,
        num_feature_levels: int,
    ):
        super().__init__()
        d_model = transformer.d_model
        self.backbone = backbone
        groups = math.gcd(32, d_model)  # GroupNorm(32) as in the paper, fewer groups for small models
        projections = [
            nn.Sequential(nn.Conv2d(c, d_model, 1), nn.GroupNorm(groups, d_model)) for c in backbone.num_channels
        ]
        channels = backbone.num_channels[-1]
        for _ in range(num_feature_levels - len(backbone.stages)):
            projections.append(
                nn.Sequential(nn.Conv2d(channels, d_model, 3, stride=2, padding=1), nn.GroupNorm(groups, d_model))
            )
            channels = d_model
        self.input_proj = nn.ModuleList(projections)
        self.position = PositionEmbeddingSine(d_model // 2)
        self.transformer = transformer
        self.query_dim = 2 * d_model
        self.query_embed = nn.Embedding(num_queries, 2 * d_model)
        self.class_embed = class_head(d_model, num_classes)
        self.bbox_embed = MLP(d_model, d_model, 4, 3)
        # Boxes start at the reference point, small (sigmoid(-2) = 0.12 of the image).
        nn.init.zeros_(self.bbox_embed.layers[-1].weight)
        nn.init.zeros_(self.bbox_embed.layers[-1].bias)
        nn.init.constant_(self.bbox_embed.layers[-1].bias[2:], -2.0)
        for projection in self.input_proj:
            nn.init.xavier_uniform_(projection[0].weight, gain=1)
            nn.init.zeros_(projection[0].bias)

    def backbone_features(self, images: Tensor) -> list[Tensor]:
        """images: [B, 3, H, W] -> the used stages, shallow to deep, each [B, C_l, H/s_l, W/s_l]."""
        return self.backbone(images)

    def detect(self, features: list[Tensor], extra_queries: Tensor | None = None) -> dict:
        """features: backbone levels [B, C_l, h_l, w_l]; extra_queries: [B, n, 2d] or None -> outputs
        (see heads.pack_outputs)."""
        srcs = [projection(f) for projection, f in zip(self.input_proj, features, strict=False)]  # [B, d, h, w]
        for projection in self.input_proj[len(features) :]:
            srcs.append(projection(features[-1] if len(srcs) == len(features) else srcs[-1]))
        num_queries = self.query_embed.num_embeddings
        query_embed = with_extra_queries(self.query_embed.weight, srcs[0].shape[0], extra_queries)  # [B, Q+n, 2d]
        mask = extra_query_mask(num_queries, query_embed.shape[1] - num_queries, srcs[0].device)
        pos = [self.position(src) for src in srcs]
        hs, reference = self.transformer(srcs, pos, query_embed, mask)  # [L, B, Q+n, d], [B, Q+n, 2]
        own = hs[:, :, :num_queries]
        deltas = self.bbox_embed(own)  # [L, B, Q, 4]
        centre = deltas[..., :2] + inverse_sigmoid(reference[:, :num_queries])
        boxes = torch.cat([centre, deltas[..., 2:]], dim=-1).sigmoid()
        return pack_outputs(self.class_embed(own), boxes, hs, num_queries, extra_queries is not None)

    def forward(self, images: Tensor) -> dict:
        """images: [B, 3, H, W] -> outputs: pred_logits [B, Q, C], pred_boxes [B, Q, 4], aux_outputs, hs."""
        return self.detect(self.backbone_features(images))
