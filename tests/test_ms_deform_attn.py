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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_training_step_after_an_inference_pass_on_cuda():
    """On CUDA the per-level scale is made once and kept (a CUDA graph cannot copy it from the host): made first
    under inference_mode (validation, serving), it must still serve a training step's backward."""
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=8, n_levels=2, n_heads=2, n_points=2).cuda()
    shapes = [(4, 4), (2, 2)]
    src, query = torch.randn(1, 20, 8, device="cuda"), torch.randn(1, 3, 8, device="cuda")
    reference = torch.rand(1, 3, 1, 2, device="cuda").expand(-1, -1, 2, -1)
    with torch.inference_mode():
        attn(query, reference, src, shapes)
    attn(query, reference, src, shapes).square().sum().backward()
    assert attn.sampling_offsets.weight.grad.abs().sum() > 0


def reference_module_forward(attn: MSDeformAttn, query, reference_points, input_flatten, shapes):
    """MSDeformAttn.forward as first written (before issue 45): sampling locations in [0, 1] from offsets divided
    by each level's size, every level sampled, the samples of all levels stacked, then weighted and summed."""
    batch, n_query, _ = query.shape
    heads, levels, points = attn.n_heads, attn.n_levels, attn.n_points
    value = attn.value_proj(input_flatten).view(batch, input_flatten.shape[1], heads, -1)
    offsets = attn.sampling_offsets(query).view(batch, n_query, heads, levels, points, 2)
    weights = attn.attention_weights(query).view(batch, n_query, heads, levels * points).softmax(-1)
    normalizer = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype)
    locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
    dim = value.shape[-1]
    values = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * locations - 1
    sampled = []
    for level, (h, w) in enumerate(shapes):
        value_l = values[level].permute(0, 2, 3, 1).reshape(batch * heads, dim, h, w)
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(torch.nn.functional.grid_sample(value_l, grid_l, align_corners=False))
    stacked = torch.stack(sampled, dim=-2).flatten(-2)
    weights = weights.transpose(1, 2).reshape(batch * heads, 1, n_query, levels * points)
    out = (stacked * weights).sum(-1).view(batch, heads * dim, n_query).transpose(1, 2)
    return attn.output_proj(out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [1, 2])
def test_module_matches_the_stacking_reference_on_random_weights(batch, dtype):
    """The level-by-level sum, in grid_sample's layout, gives what the first implementation gave with the same
    parameters (so checkpoints trained before give the same outputs): random offsets and attention weights of a
    trained model's spread (offsets of several pixels, some samples outside the maps), levels of odd sizes. Within
    1e-5 in float32 (outputs of order 1; the two differ by rounding only) and to rounding in float64."""
    torch.manual_seed(0)
    shapes = [(9, 11), (5, 6), (3, 3), (1, 2)]
    attn = MSDeformAttn(d_model=32, n_levels=len(shapes), n_heads=4, n_points=3).to(dtype)
    for linear in (attn.sampling_offsets, attn.attention_weights):
        torch.nn.init.normal_(linear.weight, std=0.5)
        torch.nn.init.normal_(linear.bias, std=2.0)
    n_query = 7
    src = torch.randn(batch, sum(h * w for h, w in shapes), 32, dtype=dtype)
    query = torch.randn(batch, n_query, 32, dtype=dtype)
    reference = torch.rand(batch, n_query, len(shapes), 2, dtype=dtype) * 1.2 - 0.1
    with torch.no_grad():
        got = attn(query, reference, src, shapes)
        want = reference_module_forward(attn, query, reference, src, shapes)
    assert got.shape == (batch, n_query, 32)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-12)
