"""CQD: cross-view query counts per mode, random selection, cosine consistency, and isolation of the student's own
queries from the cross-view ones inside a real decoder."""

import pytest
import torch

from v2i_core.config import ModelConfig
from v2i_core.distill.cqd import CQDLoss, cross_view_count, query_consistency, select_queries
from v2i_core.errors import V2IError
from v2i_core.models.build import build_detector


@pytest.mark.parametrize(
    ("n_queries", "frames", "expected"),
    [(100, 3, {"sq": 33, "half": 49, "all": 99}), (10, 3, {"sq": 3, "half": 4, "all": 9}), (8, 1, {"sq": 8})],
)
def test_cross_view_count_per_mode(n_queries, frames, expected):
    assert {mode: cross_view_count(n_queries, frames, mode) for mode in expected} == expected


def test_sample_appends_n_distinct_teacher_queries_per_mode():
    embed = torch.randn(12, 8)
    for mode, n in (("sq", 4), ("half", 6), ("all", 12)):
        loss = CQDLoss(12, 3, mode, query_dims=(8, 8), decoder_dims=(4, 4))
        idx, queries = loss.sample(embed, batch=2)
        assert queries.shape == (2, n, 8) and len(set(idx.tolist())) == n
        assert torch.equal(queries[1], embed[idx])  # the teacher's own embeddings, same for every image


def test_selection_uses_the_global_rng():
    torch.manual_seed(5)
    a = select_queries(30, 10, torch.device("cpu"))
    torch.manual_seed(5)
    b = select_queries(30, 10, torch.device("cpu"))
    c = select_queries(30, 10, torch.device("cpu"))
    assert torch.equal(a, b) and not torch.equal(b, c)
    assert a.min() >= 0 and a.max() < 30


def test_too_few_teacher_queries_is_a_config_error():
    with pytest.raises(V2IError, match="distill.cqd.mode"):
        CQDLoss(2, 3, "sq", query_dims=(8, 8), decoder_dims=(4, 4))


def test_query_consistency_is_one_minus_cosine():
    x = torch.randn(2, 5, 16)
    assert query_consistency(x, 3.0 * x).item() == pytest.approx(0.0, abs=1e-6)
    assert query_consistency(x, -x).item() == pytest.approx(2.0)
    y = torch.randn(2, 5, 16)
    expected = 1 - (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1))
    assert query_consistency(x, y).item() == pytest.approx(expected.mean().item(), rel=1e-5)


def test_loss_compares_the_selected_teacher_queries_and_projects_widths():
    loss = CQDLoss(6, 3, "sq", query_dims=(16, 8), decoder_dims=(4, 12))
    assert loss.query_proj.in_features == 16 and loss.query_proj.out_features == 8
    teacher_hs = torch.randn(1, 6, 12)
    idx = torch.tensor([4, 1])
    extra_hs = torch.randn(1, 2, 4, requires_grad=True)
    value = loss(extra_hs, teacher_hs, idx)
    expected = query_consistency(loss.hs_proj(extra_hs), teacher_hs[:, [4, 1]])
    assert value.item() == pytest.approx(expected.item())
    value.backward()
    assert extra_hs.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ["detr", "deformable_detr", "sam_detr"])
def test_cross_view_queries_do_not_change_the_students_own_outputs(arch):
    torch.manual_seed(0)
    cfg = ModelConfig(
        arch=arch, input_size=(64, 64), d_model=32, nheads=4, enc_layers=1, dec_layers=2, dim_feedforward=64,
        num_queries=5, num_classes=2,
    )
    student = build_detector(cfg).eval()
    features = student.backbone_features(torch.randn(2, 3, 64, 64))
    extra = torch.randn(2, 3, student.query_dim, requires_grad=True)
    alone = student.detect(features)
    joint = student.detect(features, extra)
    assert "extra_hs" not in alone and joint["extra_hs"].shape == (2, 3, 32)
    for key in ("pred_logits", "pred_boxes", "hs"):
        assert joint[key].shape == alone[key].shape
        assert torch.allclose(joint[key], alone[key], atol=1e-5)
    for a, b in zip(joint["aux_outputs"], alone["aux_outputs"], strict=True):
        assert torch.allclose(a["pred_logits"], b["pred_logits"], atol=1e-5)
    # no gradient path from the cross-view queries into the student's own predictions ...
    own = joint["pred_logits"].sum() + joint["pred_boxes"].sum()
    (grad,) = torch.autograd.grad(own, extra, allow_unused=True, retain_graph=True)
    assert grad is None or grad.abs().max() == 0
    # ... while their own decoding does depend on them
    (grad,) = torch.autograd.grad(joint["extra_hs"].sum(), extra)
    assert grad.abs().sum() > 0
