"""MSI: shapes per level, locality of the local interactor, reach of the global one, config errors."""

import pytest
import torch

from v2i_core.config import MSIConfig
from v2i_core.errors import V2IError
from v2i_core.models.msi import MSI

# The wiring tests need branches that already carry signal, as after training: identity_init off.
CFG = MSIConfig(frames=3, local_kernel=3, global_heads=4, ffn_ratio=2, identity_init=False)


def _features(channels, sizes, b=2, t=3):
    return [torch.randn(b, t, c, h, w) for c, (h, w) in zip(channels, sizes, strict=True)]


def test_output_is_current_frame_shape_on_every_level():
    torch.manual_seed(0)
    channels, sizes = [8, 16, 32, 64], [(16, 20), (8, 10), (4, 5), (2, 3)]
    msi = MSI(channels, [1, 2, 3, 4], CFG)
    out = msi(_features(channels, sizes))
    assert [tuple(y.shape) for y in out] == [(2, c, h, w) for c, (h, w) in zip(channels, sizes, strict=True)]
    assert [layer.local for layer in msi.layers] == [True, True, False, False]


def test_local_interactor_sees_only_its_spatiotemporal_neighbourhood():
    torch.manual_seed(0)
    msi = MSI([8], [2], CFG).eval()
    x = torch.randn(1, 7, 8, 12, 12, requires_grad=True)
    y = msi([x])[0]  # current frame: index 3
    y[0, :, 6, 6].sum().backward()
    touched = x.grad.abs().sum(dim=2)[0] > 0  # [T, h, w]
    # reach = PE's 3x3x3 (radius 1) + the 3x3x3 interactor (radius 1) = 2 in t, y and x
    idx = torch.nonzero(touched)
    assert idx[:, 0].min() == 1 and idx[:, 0].max() == 5
    assert idx[:, 1].min() == 4 and idx[:, 1].max() == 8
    assert idx[:, 2].min() == 4 and idx[:, 2].max() == 8


def test_local_output_unchanged_by_far_away_perturbation_but_changed_by_near_one():
    torch.manual_seed(0)
    msi = MSI([8], [1], CFG).train()  # per-token norms: locality holds in train mode too
    x = torch.randn(2, 3, 8, 12, 12)
    base = msi([x])[0]
    far = x.clone()
    far[:, 0, :, 0, 0] += 10.0  # a reference frame, far corner
    near = x.clone()
    near[:, 0, :, 7, 7] += 10.0  # a reference frame, one step from the probed pixel
    assert torch.allclose(msi([far])[0][:, :, 8, 8], base[:, :, 8, 8])
    assert not torch.allclose(msi([near])[0][:, :, 8, 8], base[:, :, 8, 8])


def test_global_interactor_reaches_far_tokens_of_other_frames():
    torch.manual_seed(0)
    msi = MSI([16], [3], CFG)
    x = torch.randn(1, 3, 16, 6, 6)
    base = msi([x])[0]
    far = x.clone()
    far[:, 0, :, 0, 0] += 5.0  # reference frame, far corner; PE's reach is one token
    assert not torch.allclose(msi([far])[0][:, :, 5, 5], base[:, :, 5, 5])


def test_global_path_equals_full_self_attention_on_current_rows():
    torch.manual_seed(0)
    msi = MSI([16], [4], CFG).eval()
    layer = msi.layers[0]
    x = torch.randn(2, 3, 16, 3, 4)
    attn = layer.interact
    emb = layer.embed(x.transpose(1, 2))  # [B, C, T, h, w]
    tokens = emb.flatten(2).transpose(1, 2)  # [B, T*h*w, C]
    full = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    with torch.no_grad():
        full.in_proj_weight.copy_(torch.cat([attn.q.weight, attn.kv.weight]))
        full.in_proj_bias.copy_(torch.cat([attn.q.bias, attn.kv.bias]))
        full.out_proj.weight.copy_(attn.proj.weight)
        full.out_proj.bias.copy_(attn.proj.bias)
    expected = full(tokens, tokens, tokens, need_weights=False)[0][:, 12:24]  # frame 1 of 3, 12 tokens each
    got = attn(emb, current=1).flatten(2).transpose(1, 2)
    assert torch.allclose(got, expected, atol=1e-5)


def test_identity_init_returns_the_current_frame_until_training_grows_the_branches():
    torch.manual_seed(0)
    msi = MSI([8, 16], [2, 3], CFG.model_copy(update={"identity_init": True}))
    x = _features([8, 16], [(6, 6), (3, 3)])
    assert all(torch.equal(y, f[:, 1]) for y, f in zip(msi(x), x, strict=True))
    optimizer = torch.optim.SGD(msi.parameters(), lr=0.1)
    for _ in range(2):  # the first step moves only the zeroed last layers, the second reaches the rest
        optimizer.zero_grad()
        sum((y - 1).square().mean() for y in msi(x)).backward()
        optimizer.step()
    other = [f.clone() for f in x]
    for f in other:
        f[:, 0] += 1.0  # a reference frame changes, the current frame does not
    assert all(not torch.allclose(a, b) for a, b in zip(msi(x), msi(other), strict=True))


def test_config_errors_name_the_key():
    with pytest.raises(V2IError, match="global_heads"):
        MSI([30], [3], MSIConfig(global_heads=8))
    with pytest.raises(V2IError, match="local_kernel"):
        MSI([8], [1], MSIConfig(local_kernel=4))
