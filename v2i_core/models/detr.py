"""DETR (Carion et al. 2020) with a sigmoid (focal) classifier: backbone -> 1x1 projection -> transformer
-> class and box heads per decoder layer."""

from __future__ import annotations

from torch import Tensor, nn

from v2i_core.models.attention_mask import extra_query_mask
from v2i_core.models.backbone import Backbone
from v2i_core.models.detr_transformer import Transformer
from v2i_core.models.heads import MLP, class_head, pack_outputs, with_extra_queries
from v2i_core.models.position_encoding import PositionEmbeddingSine


class DETR(nn.Module):
    """DETR on the backbone's last level. Queries are learned positions; the decoder state starts at zero."""

    def __init__(self, backbone: Backbone, transformer: Transformer, num_classes: int, num_queries: int):
        super().__init__()
        d_model = transformer.d_model
        self.backbone = backbone
        self.input_proj = nn.Conv2d(backbone.num_channels[-1], d_model, kernel_size=1)
        self.position = PositionEmbeddingSine(d_model // 2)
        self.transformer = transformer
        self.query_dim = d_model
        self.query_embed = nn.Embedding(num_queries, d_model)
        self.class_embed = class_head(d_model, num_classes)
        self.bbox_embed = MLP(d_model, d_model, 4, 3)

    def backbone_features(self, images: Tensor) -> list[Tensor]:
        """images: [B, 3, H, W] -> [[B, C, H/s, W/s]] (the last stage only)."""
        return self.backbone(images)

    def detect(self, features: list[Tensor], extra_queries: Tensor | None = None) -> dict:
        """features: [[B, C, h, w]]; extra_queries: [B, n, d] or None -> outputs (see heads.pack_outputs)."""
        src = self.input_proj(features[-1])  # [B, d, h, w]
        num_queries = self.query_embed.num_embeddings
        query_pos = with_extra_queries(self.query_embed.weight, src.shape[0], extra_queries)  # [B, Q+n, d]
        mask = extra_query_mask(num_queries, query_pos.shape[1] - num_queries, src.device)
        hs = self.transformer(src, self.position(src), query_pos, mask)  # [L, B, Q+n, d]
        own = hs[:, :, :num_queries]
        boxes = self.bbox_embed(own).sigmoid()  # [L, B, Q, 4]
        return pack_outputs(self.class_embed(own), boxes, hs, num_queries, extra_queries is not None)

    def forward(self, images: Tensor) -> dict:
        """images: [B, 3, H, W] -> outputs: pred_logits [B, Q, C], pred_boxes [B, Q, 4], aux_outputs, hs."""
        return self.detect(self.backbone_features(images))
