"""SAM-DETR (Zhang et al., CVPR 2022) with a sigmoid (focal) classifier: backbone (last stage, as DETR) -> 1x1
projection -> SAM-DETR transformer -> class and box heads per decoder layer, boxes relative to the reference boxes.

The paper's third student (V2I-DETR Table I). Its queries are learned reference boxes, [Q, 4] logits of (cx, cy, w,
h); the decoder aligns each with the encoded features inside its box (see sam_transformer.py) and refines it layer
by layer. Cross-view queries for distillation are extra reference boxes, decoded in the same pass behind the
self-attention mask, as for DETR and Deformable DETR.
"""

from __future__ import annotations

from torch import Tensor, nn

from v2i_core.models.attention_mask import extra_query_mask
from v2i_core.models.backbone import Backbone
from v2i_core.models.heads import MLP, class_head, pack_outputs, with_extra_queries
from v2i_core.models.position_encoding import PositionEmbeddingSine
from v2i_core.models.sam_transformer import SAMTransformer


class SAMDETR(nn.Module):
    """SAM-DETR on the backbone's last level; one class head and one box head serve every decoder layer."""

    def __init__(self, backbone: Backbone, transformer: SAMTransformer, num_classes: int, num_queries: int):
        super().__init__()
        d_model = transformer.d_model
        self.backbone = backbone
        self.input_proj = nn.Conv2d(backbone.num_channels[-1], d_model, kernel_size=1)
        self.position = PositionEmbeddingSine(d_model // 2)
        self.transformer = transformer
        self.query_dim = 4
        self.query_embed = nn.Embedding(num_queries, 4)  # reference boxes, logits of (cx, cy, w, h)
        self.class_embed = class_head(d_model, num_classes)
        self.bbox_embed = MLP(d_model, d_model, 4, 3)
        # Each layer's boxes start at its reference boxes.
        nn.init.zeros_(self.bbox_embed.layers[-1].weight)
        nn.init.zeros_(self.bbox_embed.layers[-1].bias)

    def backbone_features(self, images: Tensor) -> list[Tensor]:
        """images: [B, 3, H, W] -> [[B, C, H/s, W/s]] (the last stage only)."""
        return self.backbone(images)

    def detect(self, features: list[Tensor], extra_queries: Tensor | None = None) -> dict:
        """features: [[B, C, h, w]]; extra_queries: [B, n, 4] reference-box logits or None -> outputs
        (see heads.pack_outputs)."""
        src = self.input_proj(features[-1])  # [B, d, h, w]
        num_queries = self.query_embed.num_embeddings
        query_boxes = with_extra_queries(self.query_embed.weight, src.shape[0], extra_queries)  # [B, Q+n, 4]
        mask = extra_query_mask(num_queries, query_boxes.shape[1] - num_queries, src.device)
        hs, boxes = self.transformer(src, self.position(src), query_boxes, self.bbox_embed, mask)  # [L, B, Q+n, .]
        own = hs[:, :, :num_queries]
        return pack_outputs(
            self.class_embed(own), boxes[:, :, :num_queries], hs, num_queries, extra_queries is not None
        )

    def forward(self, images: Tensor) -> dict:
        """images: [B, 3, H, W] -> outputs: pred_logits [B, Q, C], pred_boxes [B, Q, 4], aux_outputs, hs."""
        return self.detect(self.backbone_features(images))
