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
    Sampling matches the official reference: align_corners=False, zeros outside the map. This is the layout of the
    official kernel's arguments; `MSDeformAttn` builds `sample_and_weigh`'s layout directly instead.
    """
    if isinstance(spatial_shapes, Tensor):
        spatial_shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    batch, size, heads, dim = value.shape
    _, n_query, _, levels, points, _ = sampling_locations.shape
    value = value.permute(0, 2, 3, 1).reshape(batch * heads, dim, size)
    grids = (2 * sampling_locations - 1).permute(0, 2, 3, 4, 1, 5).reshape(batch * heads, levels, points, n_query, 2)
    weights = attention_weights.permute(0, 2, 3, 4, 1).reshape(batch * heads, levels, points, n_query)
    out = sample_and_weigh(value, spatial_shapes, grids, weights)  # [B*M, D, Lq]
    return out.view(batch, heads * dim, n_query).transpose(1, 2).contiguous()


def sample_and_weigh(
    value: Tensor, spatial_shapes: Sequence[tuple[int, int]], grids: Tensor, weights: Tensor
) -> Tensor:
    """`ms_deform_attn` in the layout `grid_sample` works in, heads folded into the batch (N = B * M):

    value: [N, D, S]; grids: [N, L, P, Lq, 2] as (x, y) in [-1, 1] (grid_sample's); weights: [N, L, P, Lq]
    -> [N, D, Lq].
    Level by level, the values sampled at the level's P points ([N, D, P, Lq]) are weighted and summed over the
    points into one running sum: no tensor of all levels' samples is built (stacking them, a copy of [N, D, Lq, L*P]
    in chunks of P values, took 13-20% of the exported graph's time), and the sum runs over a middle axis of
    contiguous rows of Lq, which both torch and ONNX Runtime reduce several times faster than a last axis of P.
    """
    out, start = None, 0
    for level, (h, w) in enumerate(spatial_shapes):
        value_l = value[:, :, start : start + h * w].unflatten(2, (h, w))  # [N, D, h, w]
        start += h * w
        sampled = F.grid_sample(value_l, grids[:, level], mode="bilinear", padding_mode="zeros", align_corners=False)
        term = (sampled * weights[:, level, None]).sum(2)  # [N, D, P, Lq] x [N, 1, P, Lq] -> [N, D, Lq]
        out = term if out is None else out + term
    return out


class MSDeformAttn(nn.Module):
    """Each query attends to `n_points` learned offsets around its reference point on each of `n_levels`."""

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._scales: dict[tuple, Tensor] = {}  # grid_scale's, per levels' sizes and device
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

    def grid_scale(self, spatial_shapes: Sequence[tuple[int, int]]) -> Tensor:
        """2 / (w_l, h_l) for each output row of sampling_offsets ([M * L * P * 2], on its weights' device and in
        their dtype). On CUDA it is made once per levels' sizes and kept: a CUDA graph (cuda_graph.py) cannot
        capture a copy from the host, and the eager calls before its capture fill the cache. Elsewhere it is made per
        call, so that ONNX export records it as a constant of the graph rather than a tensor of an earlier call."""
        weight = self.sampling_offsets.weight
        if weight.device.type != "cuda":
            return self._make_scale(spatial_shapes, weight)
        key = (tuple(spatial_shapes), weight.device, weight.dtype)
        if key not in self._scales:
            # a normal tensor even when made under inference_mode: a later training step saves it for backward
            with torch.inference_mode(False):
                self._scales[key] = self._make_scale(spatial_shapes, weight)
        return self._scales[key]

    def _make_scale(self, spatial_shapes: Sequence[tuple[int, int]], like: Tensor) -> Tensor:
        scale = torch.tensor([[2.0 / w, 2.0 / h] for h, w in spatial_shapes], dtype=like.dtype, device=like.device)
        return scale[None, :, None].expand(self.n_heads, self.n_levels, self.n_points, 2).reshape(-1)

    def forward(
        self, query: Tensor, reference_points: Tensor, input_flatten: Tensor, spatial_shapes: list[tuple[int, int]]
    ) -> Tensor:
        """query: [B, Lq, d]; reference_points: [B, Lq, L, 2] (x, y) in [0, 1]; input_flatten: [B, S, d]
        (levels concatenated, S = sum h_l * w_l) -> [B, Lq, d]."""
        (batch, n_query, _), size = query.shape, input_flatten.shape[1]
        heads, levels, points = self.n_heads, self.n_levels, self.n_points
        # value_proj(input)^T = W @ input^T: [B, d, S] = [B*M, D, S], grid_sample's channels-first layout, without
        # a transpose of its output (ONNX Runtime folds the input's into the MatMul).
        proj = self.value_proj
        value = (proj.weight @ input_flatten.transpose(1, 2) + proj.bias[:, None]).view(batch * heads, -1, size)
        # Offsets are in pixels of each level: grid = 2 * (reference + offset / (w_l, h_l)) - 1 in grid_sample's
        # [-1, 1]. The scale 2 / (w_l, h_l) is folded into the projection's rows (a constant of the exported graph),
        # and the centre 2 * reference - 1 added after the transpose, where it broadcasts over rows of Lq points.
        scale = self.grid_scale(spatial_shapes)  # [M * L * P * 2], one per output row of the projection
        offsets = F.linear(query, self.sampling_offsets.weight * scale[:, None], self.sampling_offsets.bias * scale)
        # [B, Lq, M, L, P, 2] -> [B, M, L, P, Lq, 2]
        offsets = offsets.view(batch, n_query, heads, levels, points, 2).permute(0, 2, 3, 4, 1, 5)
        centre = (2 * reference_points - 1).transpose(1, 2)[:, None, :, None]  # [B, 1, L, 1, Lq, 2]
        grids = (offsets + centre).reshape(batch * heads, levels, points, n_query, 2)
        weights = self.attention_weights(query).view(batch, n_query, heads, levels * points).softmax(-1)
        weights = weights.permute(0, 2, 3, 1).reshape(batch * heads, levels, points, n_query)
        out = sample_and_weigh(value, spatial_shapes, grids, weights)  # [B*M, D, Lq]
        return self.output_proj(out.view(batch, -1, n_query).transpose(1, 2))
