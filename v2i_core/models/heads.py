"""Prediction heads shared by DETR and Deformable DETR, and the packing of their outputs."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

# Focal-loss prior (RetinaNet): every query starts out predicting "no object" with probability 0.99.
PRIOR_PROB = 0.01


class MLP(nn.Module):
    """`num_layers` linear layers with ReLU between them (DETR's box head)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, dims[1:] + [output_dim], strict=True))

    def forward(self, x: Tensor) -> Tensor:
        """x: [..., input_dim] -> [..., output_dim]."""
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else layer(x).relu()
        return x


def class_head(d_model: int, num_classes: int) -> nn.Linear:
    """Sigmoid class logits, biased to the focal prior so the loss starts small and stable."""
    head = nn.Linear(d_model, num_classes)
    nn.init.constant_(head.bias, -math.log((1 - PRIOR_PROB) / PRIOR_PROB))
    return head


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """logit(x), clamped away from 0 and 1."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def pack_outputs(logits: Tensor, boxes: Tensor, hs: Tensor, num_queries: int, with_extra: bool) -> dict:
    """The detector's output dict from per-decoder-layer predictions. logits: [L, B, Q, C] and boxes: [L, B, Q, 4]
    of the model's own queries; hs: [L, B, Q+n, d] with the n extra queries after the Q own ones ->
    {"pred_logits": [B, Q, C], "pred_boxes": [B, Q, 4], "aux_outputs": L-1 dicts of those two for the earlier
    layers, "hs": [B, Q, d], and "extra_hs": [B, n, d] when extra queries were given}."""
    out = {
        "pred_logits": logits[-1],
        "pred_boxes": boxes[-1],
        "aux_outputs": [{"pred_logits": lg, "pred_boxes": bx} for lg, bx in zip(logits[:-1], boxes[:-1], strict=True)],
        "hs": hs[-1, :, :num_queries],
    }
    if with_extra:
        out["extra_hs"] = hs[-1, :, num_queries:]
    return out


def with_extra_queries(queries: Tensor, batch: int, extra_queries: Tensor | None) -> Tensor:
    """query_embed weight [Q, q] -> [B, Q+n, q]: the model's queries for each image, then the extra ones."""
    queries = queries.unsqueeze(0).expand(batch, -1, -1)
    if extra_queries is None:
        return queries
    return torch.cat([queries, extra_queries.to(queries.dtype)], dim=1)
