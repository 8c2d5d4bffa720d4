"""Set criterion on hand-made cases: focal, L1 and GIoU terms, weights, aux layers, empty frames."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from v2i_core.config import LossConfig
from v2i_core.errors import V2IError
from v2i_core.models.criterion import SetCriterion, build_criterion


def focal(logit: float, positive: bool, alpha: float = 0.25, gamma: float = 2.0) -> float:
    """Sigmoid focal loss of one logit, from its definition (Lin et al. 2017)."""
    p = 1 / (1 + math.exp(-logit))
    if positive:
        return -alpha * (1 - p) ** gamma * math.log(p)
    return -(1 - alpha) * p**gamma * math.log(1 - p)


def one_box_case():
    """Two queries, two classes; query 1 overlaps the class-1 target, query 0 is far away."""
    logits = torch.tensor([[[0.5, -1.0], [-2.0, 1.5]]])
    pred = torch.tensor([[[0.1, 0.1, 0.1, 0.1], [0.5, 0.5, 0.2, 0.4]]])
    target = {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.6, 0.5, 0.2, 0.2]])}
    return {"pred_logits": logits, "pred_boxes": pred}, [target]


def test_terms_by_hand():
    outputs, targets = one_box_case()
    losses = build_criterion(2, LossConfig())(outputs, targets)
    expected_ce = focal(0.5, False) + focal(-1.0, False) + focal(-2.0, False) + focal(1.5, True)
    l1 = 0.1 + 0.0 + 0.0 + 0.2
    inter, union, hull = 0.1 * 0.2, 0.2 * 0.4 + 0.2 * 0.2 - 0.1 * 0.2, 0.3 * 0.4
    giou = inter / union - (hull - union) / hull
    assert set(losses) == {"loss_ce", "loss_bbox", "loss_giou"}
    assert losses["loss_ce"].item() == pytest.approx(2 * expected_ce, rel=1e-5)
    assert losses["loss_bbox"].item() == pytest.approx(5 * l1, rel=1e-5)
    assert losses["loss_giou"].item() == pytest.approx(2 * (1 - giou), rel=1e-5)


def test_weights_scale_each_term():
    outputs, targets = one_box_case()
    base = build_criterion(2, LossConfig(cls=1, bbox=1, giou=1))(outputs, targets)
    scaled = build_criterion(2, LossConfig(cls=3, bbox=0.5, giou=7))(outputs, targets)
    for key, weight in (("loss_ce", 3), ("loss_bbox", 0.5), ("loss_giou", 7)):
        assert scaled[key].item() == pytest.approx(weight * base[key].item(), rel=1e-6)


def test_frame_without_boxes_is_all_negative():
    logits = torch.tensor([[[0.5], [-1.0], [2.0]]], requires_grad=True)
    outputs = {"pred_logits": logits, "pred_boxes": torch.full((1, 3, 4), 0.3, requires_grad=True)}
    targets = [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}]
    losses = build_criterion(1, LossConfig())(outputs, targets)
    # No boxes: the count is clamped to 1, so the focal term is the plain sum over negatives.
    assert losses["loss_ce"].item() == pytest.approx(2 * sum(focal(v, False) for v in (0.5, -1.0, 2.0)), rel=1e-5)
    assert losses["loss_bbox"].item() == 0 and losses["loss_giou"].item() == 0
    sum(losses.values()).backward()
    assert (logits.grad > 0).all()  # every query is pushed towards "no lesion"


def test_mixed_batch_normalises_by_box_count():
    """Doubling the batch with a copy doubles the sums and the box count: the losses do not change."""
    outputs, targets = one_box_case()
    empty = {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}
    criterion = build_criterion(2, LossConfig())
    single = criterion(outputs, targets)
    doubled = criterion({k: torch.cat([v, v]) for k, v in outputs.items()}, targets + targets)
    for key in single:
        assert doubled[key].item() == pytest.approx(single[key].item(), rel=1e-6)
    # Adding an empty frame adds only its negatives to the focal term.
    with_empty = criterion({k: torch.cat([v, v]) for k, v in outputs.items()}, targets + [empty])
    assert with_empty["loss_bbox"].item() == pytest.approx(single["loss_bbox"].item(), rel=1e-6)
    extra_ce = 2 * (focal(0.5, False) + focal(-1.0, False) + focal(-2.0, False) + focal(1.5, False))
    assert with_empty["loss_ce"].item() == pytest.approx(single["loss_ce"].item() + extra_ce, rel=1e-5)


def test_aux_outputs_get_their_own_matching_and_suffix():
    outputs, targets = one_box_case()
    # An earlier layer whose queries are swapped: its own matching must pick query 0.
    aux = {"pred_logits": outputs["pred_logits"].flip(1), "pred_boxes": outputs["pred_boxes"].flip(1)}
    criterion = build_criterion(2, LossConfig())
    losses = criterion({**outputs, "aux_outputs": [aux, outputs]}, targets)
    assert set(losses) == {f"loss_{k}{s}" for k in ("ce", "bbox", "giou") for s in ("", "_0", "_1")}
    final = criterion(outputs, targets)
    for key in final:
        assert losses[f"{key}_0"].item() == pytest.approx(final[key].item(), rel=1e-6)
        assert losses[f"{key}_1"].item() == pytest.approx(final[key].item(), rel=1e-6)


def test_label_outside_the_classes_is_an_error():
    outputs, targets = one_box_case()
    targets[0]["labels"] = torch.tensor([2])
    targets[0]["image_id"] = 17
    with pytest.raises(V2IError, match="image 17: label 2 is outside 0..1"):
        build_criterion(2, LossConfig())(outputs, targets)


def _distributed_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        boxes = [1, 3][rank]  # 4 boxes in all: 2 per process after averaging
        targets = [{"labels": torch.zeros(boxes, dtype=torch.long), "boxes": torch.rand(boxes, 4)}]
        count = SetCriterion.num_boxes(targets, torch.device("cpu"))
        with open(os.path.join(out_dir, f"rank{rank}"), "w") as handle:
            handle.write(repr(count))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_box_count_is_averaged_over_processes(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # fork: the children inherit the imported modules instead of re-importing torch (no CUDA is involved).
    mp.start_processes(_distributed_worker, args=(port, str(tmp_path)), nprocs=2, start_method="fork")
    assert [float((tmp_path / f"rank{r}").read_text()) for r in (0, 1)] == [2.0, 2.0]
