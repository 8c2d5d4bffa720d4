"""Deformable DETR's transformer (single-stage, no box refinement): multi-scale deformable attention in the
encoder and in the decoder's cross-attention, standard self-attention between the queries."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from v2i_core.models.detr_transformer import FFN
from v2i_core.models.ms_deform_attn import MSDeformAttn


class DeformableEncoderLayer(nn.Module):
    """Deformable self-attention: every pixel of every level samples around itself on all levels; then the FFN."""

    def __init__(self, d_model: int, nheads: int, dim_feedforward: int, dropout: float, n_levels: int, n_points: int):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, nheads, n_points)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)
        self.ffn = FFN(d_model, dim_feedforward, dropout)

    def forward(self, src: Tensor, pos: Tensor, reference_points: Tensor, shapes: list[tuple[int, int]]) -> Tensor:
        """src, pos: [B, S, d]; reference_points: [B or 1, S, L, 2] -> [B, S, d]."""
        attn = self.self_attn(src + pos, reference_points, src, shapes)
        return self.ffn(self.norm(src + self.dropout(attn)))


class DeformableDecoderLayer(nn.Module):
    """Self-attention between the queries, deformable cross-attention around their reference points, the FFN."""

    def __init__(self, d_model: int, nheads: int, dim_feedforward: int, dropout: float, n_levels: int, n_points: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nheads, dropout=dropout, batch_first=True)
        self.cross_attn = MSDeformAttn(d_model, n_levels, nheads, n_points)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.ffn = FFN(d_model, dim_feedforward, dropout)

    def forward(
        self,
        tgt: Tensor,
        query_pos: Tensor,
        reference_points: Tensor,
        memory: Tensor,
        shapes: list[tuple[int, int]],
        self_attn_mask: Tensor | None = None,
    ) -> Tensor:
        """tgt, query_pos: [B, Q, d]; reference_points: [B, Q, L, 2]; memory: [B, S, d];
        self_attn_mask: [Q, Q] bool or None -> [B, Q, d]."""
        q = k = tgt + query_pos
        attn = self.self_attn(q, k, tgt, attn_mask=self_attn_mask, need_weights=False)[0]
        tgt = self.norm1(tgt + self.dropout1(attn))
        attn = self.cross_attn(tgt + query_pos, reference_points, memory, shapes)
        tgt = self.norm2(tgt + self.dropout2(attn))
        return self.ffn(tgt)


class DeformableTransformer(nn.Module):
    """Encoder over all levels at once (a learned level embedding tells them apart), decoder whose queries
    sample around a reference point predicted from their positional half."""

    def __init__(
        self,
        d_model: int = 256,
        nheads: int = 8,
        enc_layers: int = 6,
        dec_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        num_feature_levels: int = 4,
        enc_n_points: int = 4,
        dec_n_points: int = 4,
    ):
        super().__init__()
        self.d_model = d_model
        args = (d_model, nheads, dim_feedforward, dropout, num_feature_levels)
        self.encoder = _clones(DeformableEncoderLayer(*args, enc_n_points), enc_layers)
        self.decoder = _clones(DeformableDecoderLayer(*args, dec_n_points), dec_layers)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self.reference_points = nn.Linear(d_model, 2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()
        nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
        nn.init.zeros_(self.reference_points.bias)
        nn.init.normal_(self.level_embed)

    def forward(
        self, srcs: list[Tensor], pos: list[Tensor], query_embed: Tensor, self_attn_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """srcs, pos: L maps [B, d, h_l, w_l]; query_embed: [B, Q, 2d] (query_pos, then tgt) ->
        decoded queries [dec_layers, B, Q, d] and their reference points [B, Q, 2] (x, y) in [0, 1]."""
        shapes = [(src.shape[2], src.shape[3]) for src in srcs]
        memory = torch.cat([src.flatten(2).transpose(1, 2) for src in srcs], dim=1)  # [B, S, d]
        pos_flat = torch.cat(
            [p.flatten(2).transpose(1, 2) + self.level_embed[level] for level, p in enumerate(pos)], dim=1
        )  # [B, S, d]
        enc_reference = encoder_reference_points(shapes, memory.device)  # [1, S, L, 2]
        for layer in self.encoder:
            memory = layer(memory, pos_flat, enc_reference, shapes)
        query_pos, tgt = query_embed.split(self.d_model, dim=-1)
        reference = self.reference_points(query_pos).sigmoid()  # [B, Q, 2]
        # No padding, so every level covers the whole image and a query samples the same point on each.
        dec_reference = reference[:, :, None].expand(-1, -1, len(srcs), -1)  # [B, Q, L, 2]
        hs = []
        for layer in self.decoder:
            tgt = layer(tgt, query_pos, dec_reference, memory, shapes, self_attn_mask)
            hs.append(tgt)
        return torch.stack(hs), reference


def encoder_reference_points(shapes: list[tuple[int, int]], device: torch.device) -> Tensor:
    """The centre of every pixel of every level, as (x, y) in [0, 1]: [1, S, L, 2] (the same on each level)."""
    points = []
    for h, w in shapes:
        y, x = torch.meshgrid(
            (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h,
            (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w,
            indexing="ij",
        )
        points.append(torch.stack([x.flatten(), y.flatten()], dim=-1))
    return torch.cat(points)[None, :, None].expand(-1, -1, len(shapes), -1)


def _clones(module: nn.Module, n: int) -> nn.ModuleList:
    return nn.ModuleList(copy.deepcopy(module) for _ in range(n))
