"""DETR's encoder-decoder transformer (Carion et al. 2020): post-norm layers, positions added to q and k.

Inputs are batch-first and unpadded (every frame has the same size), so there are no key padding masks.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


class EncoderLayer(nn.Module):
    """Self-attention over the feature map, then the FFN."""

    def __init__(self, d_model: int, nheads: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nheads, dropout=dropout, batch_first=True)
        self.ffn = FFN(d_model, dim_feedforward, dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src: Tensor, pos: Tensor) -> Tensor:
        """src, pos: [B, S, d] -> [B, S, d]."""
        q = k = src + pos
        src = self.norm(src + self.dropout(self.self_attn(q, k, src, need_weights=False)[0]))
        return self.ffn(src)


class DecoderLayer(nn.Module):
    """Self-attention between the queries, cross-attention to the encoded map, then the FFN."""

    def __init__(self, d_model: int, nheads: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nheads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d_model, nheads, dropout=dropout, batch_first=True)
        self.ffn = FFN(d_model, dim_feedforward, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(
        self, tgt: Tensor, memory: Tensor, pos: Tensor, query_pos: Tensor, self_attn_mask: Tensor | None = None
    ) -> Tensor:
        """tgt, query_pos: [B, Q, d]; memory, pos: [B, S, d]; self_attn_mask: [Q, Q] bool or None -> [B, Q, d]."""
        q = k = tgt + query_pos
        attn = self.self_attn(q, k, tgt, attn_mask=self_attn_mask, need_weights=False)[0]
        tgt = self.norm1(tgt + self.dropout1(attn))
        attn = self.cross_attn(tgt + query_pos, memory + pos, memory, need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(attn))
        return self.ffn(tgt)


class FFN(nn.Module):
    """Position-wise feed-forward block with its residual and post-norm."""

    def __init__(self, d_model: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.linear1, self.linear2 = nn.Linear(d_model, dim_feedforward), nn.Linear(dim_feedforward, d_model)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor) -> Tensor:
        """x: [..., d] -> [..., d]."""
        return self.norm(x + self.dropout2(self.linear2(self.dropout1(self.linear1(x).relu()))))


class Transformer(nn.Module):
    """Encoder over the flattened feature map, decoder over the queries; every decoder layer's output is
    returned (after the shared final norm) for the auxiliary losses."""

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
        self.decoder = _clones(DecoderLayer(d_model, nheads, dim_feedforward, dropout), dec_layers)
        self.decoder_norm = nn.LayerNorm(d_model)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src: Tensor, pos: Tensor, query_pos: Tensor, self_attn_mask: Tensor | None = None) -> Tensor:
        """src, pos: [B, d, h, w]; query_pos: [B, Q, d] -> decoded queries [dec_layers, B, Q, d]."""
        src, pos = src.flatten(2).transpose(1, 2), pos.flatten(2).transpose(1, 2)  # [B, h*w, d]
        memory = src
        for layer in self.encoder:
            memory = layer(memory, pos)
        tgt = query_pos.new_zeros(query_pos.shape)  # DETR's decoder starts from zeros; queries are positions
        hs = []
        for layer in self.decoder:
            tgt = layer(tgt, memory, pos, query_pos, self_attn_mask)
            hs.append(self.decoder_norm(tgt))
        return torch.stack(hs)


def _clones(module: nn.Module, n: int) -> nn.ModuleList:
    return nn.ModuleList(copy.deepcopy(module) for _ in range(n))
