"""Multi-scale deformable attention: the grid_sample path against a hand-written bilinear sampling loop."""

from __future__ import annotations

import math

import pytest
import torch

from v2i_core.models.ms_deform_attn import MSDeformAttn, ms_deform_attn


def bilinear(plane: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """Sample plane [h, w, D] at normalised (x, y): pixel centres at (i + 0.5) / size, zeros outside."""
    h, w, _ = plane.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(plane.shape[-1], dtype=plane.dtype)
    for yi, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xi, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yi < h and 0 <= xi < w:
                out += wy * wx * plane[yi, xi]
    return out


def reference_loop(value, shapes, locations, weights):
    """The definition: for every query and head, sum over levels and points of weight * sampled value."""
    batch, _, heads, dim = value.shape
    n_query = locations.shape[1]
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(batch, n_query, heads, dim, dtype=value.dtype)
    for b in range(batch):
        for q in range(n_query):
            for m in range(heads):
                for lvl, (h, w) in enumerate(shapes):
                    plane = value[b, starts[lvl] : starts[lvl + 1], m].reshape(h, w, dim)
                    for p in range(locations.shape[4]):
                        x, y = locations[b, q, m, lvl, p].tolist()
                        out[b, q, m] += weights[b, q, m, lvl, p] * bilinear(plane, x, y)
    return out.flatten(2)


@pytest.mark.parametrize("shapes", [[(3, 4)], [(5, 3), (2, 2), (1, 3)]])
def test_matches_direct_sampling_loop(shapes):
    g = torch.Generator().manual_seed(len(shapes))
    batch, heads, dim, n_query, points = 2, 2, 3, 4, 3
    value = torch.randn(batch, sum(h * w for h, w in shapes), heads, dim, generator=g, dtype=torch.float64)
    # Some points fall outside [0, 1] to exercise zero padding.
    locations = torch.rand(batch, n_query, heads, len(shapes), points, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(batch, n_query, heads, len(shapes), points, generator=g, dtype=torch.float64)
    got = ms_deform_attn(value, shapes, locations, weights)
    assert got.shape == (batch, n_query, heads * dim)
    torch.testing.assert_close(got, reference_loop(value, shapes, locations, weights))
    # The same with the shapes as a tensor, as a fused kernel would take them.
    torch.testing.assert_close(ms_deform_attn(value, torch.tensor(shapes), locations, weights), got)


def test_module_samples_the_reference_pixel_when_offsets_are_zero():
    """One level, one point, no offsets: each query reads exactly the pixel under its reference point, so the
    output is output_proj(value_proj(that pixel)) whatever the heads do."""
    torch.manual_seed(0)
    h, w, d = 3, 5, 8
    attn = MSDeformAttn(d_model=d, n_levels=1, n_heads=2, n_points=1)
    torch.nn.init.zeros_(attn.sampling_offsets.weight)
    torch.nn.init.zeros_(attn.sampling_offsets.bias)
    src = torch.randn(2, h * w, d)
    pixels = [(1, 4), (2, 0), (0, 2)]  # (row, col)
    reference = torch.tensor([[(c + 0.5) / w, (r + 0.5) / h] for r, c in pixels]).expand(2, -1, -1)[:, :, None]
    query = torch.randn(2, len(pixels), d)
    out = attn(query, reference, src, [(h, w)])
    rows = torch.tensor([r * w + c for r, c in pixels])
    torch.testing.assert_close(out, attn.output_proj(attn.value_proj(src[:, rows])))


def test_offsets_are_in_pixels_of_each_level():
    """An offset of +1 in x moves the sample one pixel right on every level, whatever its width."""
    torch.manual_seed(0)
    d, shapes = 4, [(2, 6), (2, 3)]
    attn = MSDeformAttn(d_model=d, n_levels=2, n_heads=1, n_points=1)
    torch.nn.init.zeros_(attn.sampling_offsets.weight)
    with torch.no_grad():
        attn.sampling_offsets.bias.copy_(torch.tensor([1.0, 0.0, 1.0, 0.0]))  # (x, y) per level
        attn.attention_weights.bias.copy_(torch.tensor([0.0, -1e4]))  # level 0 only, then level 1 only
    src = torch.randn(1, 12 + 6, d)
    reference = torch.tensor([[[0.5 / 6, 0.25], [0.5 / 3, 0.25]]])[:, None].expand(1, 1, 2, 2)
    out_level0 = attn(torch.zeros(1, 1, d), reference, src, shapes)
    torch.testing.assert_close(out_level0[0, 0], attn.output_proj(attn.value_proj(src[0, 1])))
    with torch.no_grad():
        attn.attention_weights.bias.copy_(torch.tensor([-1e4, 0.0]))
    out_level1 = attn(torch.zeros(1, 1, d), reference, src, shapes)
    torch.testing.assert_close(out_level1[0, 0], attn.output_proj(attn.value_proj(src[0, 12 + 1])))


def test_gradients_reach_values_offsets_and_weights():
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=8, n_levels=2, n_heads=2, n_points=2)
    shapes = [(4, 4), (2, 2)]
    src = torch.randn(1, 20, 8, requires_grad=True)
    query = torch.randn(1, 3, 8)
    reference = torch.rand(1, 3, 1, 2).expand(-1, -1, 2, -1)
    attn(query, reference, src, shapes).square().sum().backward()
    assert src.grad.abs().sum() > 0
    assert attn.sampling_offsets.weight.grad.abs().sum() > 0
    assert attn.attention_weights.weight.grad.abs().sum() > 0
