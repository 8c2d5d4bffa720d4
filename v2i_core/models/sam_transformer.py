"""SAM-DETR's transformer (Zhang et al., CVPR 2022, "Accelerating DETR Convergence via Semantic-Aligned Matching"):
DETR's encoder, and a decoder whose every layer first aligns each object query with the encoded features.

Each query is a reference box plus a content embedding (zeros before the first layer). In every decoder layer:
1. self-attention between the queries, their positions the sine embedding of their box centres;
2. the Semantics Aligner: RoIAlign resamples the encoded map inside the query's box (7 x 7); a small ConvNet + MLP
   on that region predicts M salient points in it; their bilinearly sampled features become the query's new
   content, and the sine embeddings of their positions its new positions; both are reweighted by a sigmoid gate
   computed from the query's previous embedding;
3. cross-attention in which each of the M salient points is the query of one attention head (so M = nheads, the
   paper's 8), matched against the encoded map's features and positions: query and keys live in the same
   embedding space, which is what makes the matching "semantic-aligned";
4. the FFN; the layer's box head output then refines the reference box for the next layer (detached, as in the
   official code).

Choices where this code differs from the official one (ZhangGongjie/SAM-DETR, single scale, without SMCA):
- the self-attention adds one projected box-centre embedding to the content (nn.MultiheadAttention's own q/k
  projections), not separate content and position projections for q and k;
- the point MLP's hidden widths are d_model, 2 d_model, 2 d_model (the official 256, 512, 512 at d_model 256);
- the salient points sample the region with border padding, so a point on the box edge reads the edge feature
  rather than half of it;
- the decoder has no final norm (none in the official code either) and one box head serves every layer.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from v2i_core.models.box_ops import box_cxcywh_to_xyxy
from v2i_core.models.detr_transformer import FFN, EncoderLayer
from v2i_core.models.heads import MLP

ROI_SIZE = 7  # RoIAlign output per query, as in the paper


def sine_embedding(points: Tensor, num_feats: int, temperature: float = 10000.0) -> Tensor:
    """points: [..., 2] (x, y) in [0, 1] -> [..., 2 * num_feats]: (y, x) sine embeddings, the very values
    PositionEmbeddingSine gives the feature map at those positions, so query and key positions compare directly."""
    dim_t = torch.arange(num_feats, device=points.device, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    angles = points.float()[..., None] * (2 * math.pi) / dim_t  # [..., 2, F]
    embed = torch.stack([angles[..., 0::2].sin(), angles[..., 1::2].cos()], dim=-1).flatten(-2)  # [..., 2, F]
    return torch.cat([embed[..., 1, :], embed[..., 0, :]], dim=-1).to(points.dtype)


def resample_regions(feature_map: Tensor, boxes: Tensor, size: int = ROI_SIZE) -> Tensor:
    """RoIAlign of each query's box. feature_map: [B, d, h, w]; boxes: [B, Q, 4] (cx, cy, w, h) in [0, 1]
    -> [B, Q, d, size, size]. Cell (i, j) of the map is centred at ((j + 0.5) / w, (i + 0.5) / h) (aligned=True),
    the convention of the sine position encoding."""
    batch, num_queries = boxes.shape[:2]
    h, w = feature_map.shape[-2:]
    xyxy = box_cxcywh_to_xyxy(boxes) * boxes.new_tensor([w, h, w, h])  # map coordinates
    index = torch.arange(batch, device=boxes.device, dtype=boxes.dtype)[:, None, None].expand(-1, num_queries, 1)
    rois = torch.cat([index, xyxy], dim=-1).flatten(0, 1)  # [B*Q, 5]: (image, x1, y1, x2, y2)
    regions = roi_align(feature_map, rois.to(feature_map.dtype), size, spatial_scale=1.0, aligned=True)
    return regions.unflatten(0, (batch, num_queries))


def sample_points(regions: Tensor, offsets: Tensor) -> Tensor:
    """Bilinear features of the regions at the salient points. regions: [B, Q, d, s, s]; offsets: [B, Q, M, 2]
    (x, y) in [-1, 1] across the region (-1: the box's left / top edge) -> [B, Q, M, d]."""
    grid = offsets.flatten(0, 1)[:, None]  # [B*Q, 1, M, 2]
    sampled = F.grid_sample(regions.flatten(0, 1), grid, padding_mode="border", align_corners=False)
    return sampled[:, :, 0].transpose(1, 2).unflatten(0, offsets.shape[:2])  # [B, Q, M, d]


def point_positions(boxes: Tensor, offsets: Tensor) -> Tensor:
    """Where the salient points are in the image: boxes [B, Q, 4] (cx, cy, w, h); offsets [B, Q, M, 2]
    -> [B, Q, M, 2] (x, y) in [0, 1]-image coordinates."""
    return boxes[:, :, None, :2] + offsets * boxes[:, :, None, 2:] / 2


class SemanticsAligner(nn.Module):
    """A query's new content and positions from the encoded features inside its box (paper Sec. 3.2)."""

    def __init__(self, d_model: int, num_points: int):
        super().__init__()
        self.num_points = num_points
        self.point_conv = nn.Sequential(nn.Conv2d(d_model, d_model // 4, kernel_size=1), nn.ReLU())
        hidden = [d_model // 4 * ROI_SIZE**2, d_model, 2 * d_model, 2 * d_model]
        layers = []
        for i, o in zip(hidden[:-1], hidden[1:], strict=True):
            layers += [nn.Linear(i, o), nn.ReLU()]
        self.point_mlp = nn.Sequential(*layers, nn.Linear(hidden[-1], 2 * num_points))
        self.content_gate = nn.Linear(d_model, num_points * d_model)
        self.position_gate = nn.Linear(d_model, num_points * d_model)

    def salient_offsets(self, regions: Tensor) -> Tensor:
        """regions: [B, Q, d, s, s] -> M points per query, [B, Q, M, 2] (x, y) in [-1, 1] across its box."""
        points = self.point_mlp(self.point_conv(regions.flatten(0, 1)).flatten(1))  # [B*Q, 2M]
        return points.tanh().unflatten(-1, (self.num_points, 2)).unflatten(0, regions.shape[:2])

    def forward(self, tgt: Tensor, feature_map: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
        """tgt: [B, Q, d] the previous query embeddings; feature_map: [B, d, h, w] the encoded map; boxes:
        [B, Q, 4] reference boxes -> (content [B, Q, M, d], positions [B, Q, M, d]), both gated by tgt."""
        d = tgt.shape[-1]
        regions = resample_regions(feature_map, boxes)  # [B, Q, d, 7, 7]
        offsets = self.salient_offsets(regions)  # [B, Q, M, 2]
        content = sample_points(regions, offsets)  # [B, Q, M, d]
        positions = sine_embedding(point_positions(boxes, offsets), d // 2)  # [B, Q, M, d]
        content = content * self.content_gate(tgt).unflatten(-1, (self.num_points, d)).sigmoid()
        positions = positions * self.position_gate(tgt).unflatten(-1, (self.num_points, d)).sigmoid()
        return content, positions


class SemanticMatchingAttention(nn.Module):
    """Cross-attention with one salient point per head: head m matches point m's d-wide query against the
    encoded map's d-wide keys (content + position) and reads a d / M slice of the values."""

    def __init__(self, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.q_content, self.k_content = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
        self.q_pos, self.k_pos = MLP(d_model, d_model, d_model, 2), MLP(d_model, d_model, d_model, 2)
        self.value, self.out = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, content: Tensor, query_pos: Tensor, memory: Tensor, pos: Tensor) -> Tensor:
        """content, query_pos: [B, Q, M, d]; memory, pos: [B, S, d] -> [B, Q, d]."""
        d = memory.shape[-1]
        q = self.q_content(content) + self.q_pos(query_pos)  # [B, Q, M, d]
        k = self.k_content(memory) + self.k_pos(pos)  # [B, S, d], shared by the heads
        v = self.value(memory).unflatten(-1, (self.num_heads, d // self.num_heads))  # [B, S, M, d/M]
        weights = torch.einsum("bqmd,bsd->bmqs", q, k) / math.sqrt(d)
        weights = self.dropout(weights.softmax(dim=-1))  # [B, M, Q, S]
        return self.out(torch.einsum("bmqs,bsmc->bqmc", weights, v).flatten(2))


class SAMDecoderLayer(nn.Module):
    """Self-attention between the queries, the Semantics Aligner, semantic-matching cross-attention, the FFN."""

    def __init__(self, d_model: int, nheads: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nheads, dropout=dropout, batch_first=True)
        self.self_pos = nn.Linear(d_model, d_model)
        self.aligner = SemanticsAligner(d_model, nheads)
        self.cross_attn = SemanticMatchingAttention(d_model, nheads, dropout)
        self.ffn = FFN(d_model, dim_feedforward, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(
        self,
        tgt: Tensor,
        boxes: Tensor,
        memory: Tensor,
        pos: Tensor,
        feature_map: Tensor,
        self_attn_mask: Tensor | None = None,
    ) -> Tensor:
        """tgt: [B, Q, d]; boxes: [B, Q, 4] reference boxes; memory, pos: [B, S, d]; feature_map: memory as
        [B, d, h, w]; self_attn_mask: [Q, Q] bool or None -> [B, Q, d]."""
        q = k = tgt + self.self_pos(sine_embedding(boxes[..., :2], tgt.shape[-1] // 2))
        attn = self.self_attn(q, k, tgt, attn_mask=self_attn_mask, need_weights=False)[0]
        tgt = self.norm1(tgt + self.dropout1(attn))
        content, query_pos = self.aligner(tgt, feature_map, boxes)  # [B, Q, M, d] each
        tgt = self.norm2(tgt + self.dropout2(self.cross_attn(content, query_pos, memory, pos)))
        return self.ffn(tgt)


class SAMTransformer(nn.Module):
    """DETR's encoder over the flattened map, then SAM-DETR's decoder with reference boxes refined per layer."""

    def __init__(
        self,
        d_model: int = 256,
        nheads: int = 8,
        enc_layers: int = 6,
        dec_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.d_model = d_model
        self.encoder = _clones(EncoderLayer(d_model, nheads, dim_feedforward, dropout), enc_layers)
        self.decoder = _clones(SAMDecoderLayer(d_model, nheads, dim_feedforward, dropout), dec_layers)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(
        self,
        src: Tensor,
        pos: Tensor,
        query_boxes: Tensor,
        box_head: nn.Module,
        self_attn_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """src, pos: [B, d, h, w]; query_boxes: [B, Q, 4] the first reference boxes as logits (cx, cy, w, h before
        the sigmoid); box_head: decoded query [.., d] -> box logit deltas [.., 4]
        -> (decoded queries [dec_layers, B, Q, d], boxes [dec_layers, B, Q, 4] in [0, 1])."""
        h, w = src.shape[-2:]
        src, pos = src.flatten(2).transpose(1, 2), pos.flatten(2).transpose(1, 2)  # [B, h*w, d]
        memory = src
        for layer in self.encoder:
            memory = layer(memory, pos)
        feature_map = memory.transpose(1, 2).unflatten(-1, (h, w))  # [B, d, h, w]
        tgt = memory.new_zeros(*query_boxes.shape[:2], self.d_model)  # content starts empty, as in DETR
        reference = query_boxes  # logits; only the first layer's reference trains the query embedding
        hs, boxes = [], []
        for layer in self.decoder:
            tgt = layer(tgt, reference.sigmoid(), memory, pos, feature_map, self_attn_mask)
            refined = reference + box_head(tgt)  # [B, Q, 4]
            hs.append(tgt)
            boxes.append(refined.sigmoid())
            reference = refined.detach()
        return torch.stack(hs), torch.stack(boxes)


def _clones(module: nn.Module, n: int) -> nn.ModuleList:
    return nn.ModuleList(copy.deepcopy(module) for _ in range(n))
