"""Hungarian matcher: optimal against brute force, costs as defined, empty and crowded images."""

from __future__ import annotations

import itertools

import pytest
import torch

from v2i_core.config import LossConfig
from v2i_core.models.matcher import HungarianMatcher, build_matcher


def random_case(g: torch.Generator, batch: int, queries: int, classes: int, sizes: list[int]):
    outputs = {
        "pred_logits": torch.randn(batch, queries, classes, generator=g),
        "pred_boxes": torch.cat(
            [
                torch.rand(batch, queries, 2, generator=g) * 0.6 + 0.2,
                torch.rand(batch, queries, 2, generator=g) * 0.3 + 0.05,
            ],
            -1,
        ),
    }
    targets = [
        {
            "labels": torch.randint(0, classes, (n,), generator=g),
            "boxes": torch.cat(
                [torch.rand(n, 2, generator=g) * 0.6 + 0.2, torch.rand(n, 2, generator=g) * 0.3 + 0.05], -1
            ),
        }
        for n in sizes
    ]
    return outputs, targets


def brute_force_min(cost: torch.Tensor) -> float:
    """Minimum total cost over every one-to-one assignment of min(Q, n) pairs of a [Q, n] cost matrix."""
    q, n = cost.shape
    if n <= q:
        return min(sum(cost[rows[j], j].item() for j in range(n)) for rows in itertools.permutations(range(q), n))
    return min(sum(cost[i, cols[i]].item() for i in range(q)) for cols in itertools.permutations(range(n), q))


@pytest.mark.parametrize("seed", range(6))
def test_assignment_is_optimal_against_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    sizes = [0, 1, 3, 5]  # includes an image with more boxes than the 4 queries
    outputs, targets = random_case(g, batch=4, queries=4, classes=2, sizes=sizes)
    matcher = HungarianMatcher()
    indices = matcher(outputs, targets)
    cost = matcher.cost_matrix(outputs, targets)
    for i, ((rows, cols), block) in enumerate(zip(indices, cost.split(sizes, dim=-1), strict=True)):
        assert len(rows) == len(cols) == min(4, sizes[i])
        assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
        if sizes[i]:
            total = block[i, rows, cols].sum().item()
            assert total == pytest.approx(brute_force_min(block[i]), abs=1e-5)


def test_cost_matrix_by_hand():
    """One query, one box: class, L1 and GIoU costs computed from their definitions."""
    logit, alpha, gamma = 0.3, 0.25, 2.0
    pred = torch.tensor([0.5, 0.5, 0.2, 0.4])  # x 0.4..0.6, y 0.3..0.7
    gt = torch.tensor([0.6, 0.5, 0.2, 0.2])  # x 0.5..0.7, y 0.4..0.6
    outputs = {"pred_logits": torch.tensor([[[-5.0, logit]]]), "pred_boxes": pred.view(1, 1, 4)}
    targets = [{"labels": torch.tensor([1]), "boxes": gt.view(1, 4)}]
    p = torch.sigmoid(torch.tensor(logit)).item()
    focal = alpha * (1 - p) ** gamma * -torch.log(torch.tensor(p)).item()
    focal -= (1 - alpha) * p**gamma * -torch.log(torch.tensor(1 - p)).item()
    l1 = 0.1 + 0 + 0 + 0.2
    inter, union, hull = 0.1 * 0.2, 0.2 * 0.4 + 0.2 * 0.2 - 0.1 * 0.2, 0.3 * 0.4
    giou = inter / union - (hull - union) / hull
    cost = HungarianMatcher(cost_class=2, cost_bbox=5, cost_giou=2).cost_matrix(outputs, targets)
    assert cost.shape == (1, 1, 1)
    assert cost.item() == pytest.approx(2 * focal + 5 * l1 - 2 * giou, rel=1e-5)


def test_prefers_the_overlapping_query():
    """Swapped boxes: query 0 sits on target 1 and query 1 on target 0."""
    boxes = torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.7, 0.6, 0.3, 0.2]])
    outputs = {
        "pred_logits": torch.zeros(1, 3, 1),
        "pred_boxes": torch.stack([boxes[1], boxes[0], boxes[0] * 0.5])[None],
    }
    rows, cols = HungarianMatcher()(outputs, [{"labels": torch.zeros(2, dtype=torch.long), "boxes": boxes}])[0]
    assert dict(zip(rows.tolist(), cols.tolist(), strict=True)) == {0: 1, 1: 0}


def test_batch_without_any_box():
    outputs, targets = random_case(torch.Generator().manual_seed(0), batch=2, queries=3, classes=1, sizes=[0, 0])
    for rows, cols in HungarianMatcher()(outputs, targets):
        assert rows.numel() == 0 and cols.numel() == 0 and rows.dtype == torch.int64


def test_build_matcher_uses_the_loss_weights_as_costs():
    matcher = build_matcher(LossConfig(cls=1.5, bbox=4.0, giou=3.0, focal_alpha=0.4, focal_gamma=1.0))
    assert (matcher.cost_class, matcher.cost_bbox, matcher.cost_giou) == (1.5, 4.0, 3.0)
    assert (matcher.focal_alpha, matcher.focal_gamma) == (0.4, 1.0)
