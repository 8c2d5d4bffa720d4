"""Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021) in plain PyTorch.

`ms_deform_attn` is the one place that samples: it uses `grid_sample`, so it runs on any device; a fused CUDA
kernel with the same signature can replace it without touching `MSDeformAttn`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def ms_deform_attn(
    value: Tensor,
    spatial_shapes: Sequence[tuple[int, int]] | Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Attention-weighted sum of values bilinearly sampled at fractional locations on several levels.

    value: [B, S, M, D] (S = sum of h_l * w_l over levels, M heads of D channels);
    spatial_shapes: L pairs (h_l, w_l) in the order the levels are concatenated in S;
    sampling_locations: [B, Lq, M, L, P, 2] as (x, y) in [0, 1] of each level (0 and 1 are the outer edges);
    attention_weights: [B, Lq, M, L, P] -> [B, Lq, M * D].
    Sampling matches the official reference: align_corners=False, zeros outside the map.
    """
    if isinstance(spatial_shapes, Tensor):
        spatial_shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    batch, _, heads, dim = value.shape
    _, n_query, _, levels, points, _ = sampling_locations.shape
    values = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample wants [-1, 1]
    sampled = []
    for level, (h, w) in enumerate(spatial_shapes):
        # [B, h*w, M, D] -> [B*M, D, h, w]
        value_l = values[level].permute(0, 2, 3, 1).reshape(batch * heads, dim, h, w)
        # [B, Lq, M, P, 2] -> [B*M, Lq, P, 2]
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False))
    # [B*M, D, Lq, L*P] weighted by [B*M, 1, Lq, L*P]
    stacked = torch.stack(sampled, dim=-2).flatten(-2)
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, n_query, levels * points)
    out = (stacked * weights).sum(-1).view(batch, heads * dim, n_query)
    return out.transpose(1, 2).contiguous()


class MSDeformAttn(nn.Module):
    """Each query attends to `n_points` learned offsets around its reference point on each of `n_levels`."""

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As Deformable DETR: offsets start on a ring of directions (k-th point k steps out), uniform weights."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([angles.cos(), angles.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
        self, query: Tensor, reference_points: Tensor, input_flatten: Tensor, spatial_shapes: list[tuple[int, int]]
    ) -> Tensor:
        """query: [B, Lq, d]; reference_points: [B, Lq, L, 2] (x, y) in [0, 1]; input_flatten: [B, S, d]
        (levels concatenated, S = sum h_l * w_l) -> [B, Lq, d]."""
        batch, n_query, _ = query.shape
        heads, levels, points = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(input_flatten).view(batch, input_flatten.shape[1], heads, -1)  # [B, S, M, D]
        offsets = self.sampling_offsets(query).view(batch, n_query, heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, n_query, heads, levels * points).softmax(-1)
        weights = weights.view(batch, n_query, heads, levels, points)
        # Offsets are in pixels of each level: divide by (w_l, h_l) to move in normalised coordinates.
        normalizer = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        out = ms_deform_attn(value, spatial_shapes, locations, weights)  # [B, Lq, d]
        return self.output_proj(out)
