"""Sine position encoding of a feature map (DETR, "Attention is all you need" generalised to 2-D).

Batches are fixed-size, so there is no padding mask: the encoding depends on the map's shape only.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class PositionEmbeddingSine(nn.Module):
    """Half the channels encode y, half encode x, each as interleaved sin/cos at geometric frequencies."""

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0, scale: float = 2 * math.pi):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, C, h, w] (only its shape, device and dtype are used) -> [B, 2*num_pos_feats, h, w]."""
        batch, _, h, w = x.shape
        # Pixel centres normalised to (0, scale), as Deformable DETR does, so the map size does not matter.
        y = (torch.arange(h, device=x.device, dtype=torch.float32) + 0.5) / h * self.scale
        x_pos = (torch.arange(w, device=x.device, dtype=torch.float32) + 0.5) / w * self.scale
        dim_t = torch.arange(self.num_pos_feats, device=x.device, dtype=torch.float32)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_y = _interleave(y[:, None] / dim_t)  # [h, F]
        pos_x = _interleave(x_pos[:, None] / dim_t)  # [w, F]
        pos = torch.cat([pos_y[:, None, :].expand(h, w, -1), pos_x[None, :, :].expand(h, w, -1)], dim=-1)  # [h, w, 2F]
        return pos.permute(2, 0, 1).unsqueeze(0).expand(batch, -1, -1, -1).to(x.dtype)


def _interleave(angles: Tensor) -> Tensor:
    """[n, F] angles -> [n, F]: sin of the even columns and cos of the odd ones, interleaved as in DETR."""
    return torch.stack([angles[:, 0::2].sin(), angles[:, 1::2].cos()], dim=2).flatten(1)


def build_position_encoding(d_model: int) -> PositionEmbeddingSine:
    return PositionEmbeddingSine(num_pos_feats=d_model // 2)
