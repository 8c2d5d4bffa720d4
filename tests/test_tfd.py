"""TFD: Gaussian masks (peak at centres, max on overlap, unit L2 norm), mask kinds, the masked L1 and projection."""

import pytest
import torch

from v2i_core.distill.tfd import TFDLoss, distillation_masks, gaussian_heatmap, hard_mask, masked_l1

SIZE = (16, 20)  # h, w of the feature map


def _cell_box(row, col, bh, bw, size=SIZE):
    """cxcywh box centred on cell (row, col), bh x bw cells."""
    h, w = size
    return [(col + 0.5) / w, (row + 0.5) / h, bw / w, bh / h]


def test_gaussian_peaks_at_each_box_centre_and_is_zero_outside_boxes():
    boxes = torch.tensor([_cell_box(4, 5, 5, 7), _cell_box(11, 14, 3, 3)])
    heat = gaussian_heatmap(boxes, SIZE)
    assert heat[4, 5] == pytest.approx(1.0) and heat[11, 14] == pytest.approx(1.0)
    # each box's own maximum is its centre cell, and the weight falls off away from it
    assert heat[2:7, 2:9].max() == heat[4, 5] and heat[4, 6] < heat[4, 5] and heat[4, 7] < heat[4, 6]
    inside = hard_mask(boxes, SIZE).bool()
    assert (heat[~inside] == 0).all() and (heat[inside] > 0).all()


def test_peak_is_the_cell_holding_an_off_grid_centre():
    box = torch.tensor([[0.43, 0.61, 0.3, 0.25]])
    heat = gaussian_heatmap(box, SIZE)
    row, col = divmod(int(heat.argmax()), SIZE[1])
    assert (row, col) == (int(0.61 * SIZE[0]), int(0.43 * SIZE[1]))


def test_sigma_adapts_to_box_size():
    small = gaussian_heatmap(torch.tensor([_cell_box(8, 10, 5, 5)]), SIZE)
    large = gaussian_heatmap(torch.tensor([_cell_box(8, 10, 11, 11)]), SIZE)
    assert large[8, 12] > small[8, 12]  # same offset, wider Gaussian for the larger box


def test_overlapping_boxes_take_the_elementwise_maximum():
    a, b = _cell_box(6, 6, 7, 7), _cell_box(8, 9, 7, 9)
    both = gaussian_heatmap(torch.tensor([a, b]), SIZE)
    expected = torch.maximum(gaussian_heatmap(torch.tensor([a]), SIZE), gaussian_heatmap(torch.tensor([b]), SIZE))
    assert torch.equal(both, expected)
    overlap = (gaussian_heatmap(torch.tensor([a]), SIZE) > 0) & (gaussian_heatmap(torch.tensor([b]), SIZE) > 0)
    assert overlap.any() and (both[overlap] <= 1.0).all()  # not the sum


def test_box_smaller_than_a_cell_still_has_a_peak():
    heat = gaussian_heatmap(torch.tensor([[0.51, 0.52, 0.005, 0.004]]), SIZE)
    assert heat.max() > 0.5 and int((heat > 0).sum()) == 1


@pytest.mark.parametrize("kind", ["gaussian", "gt", "none"])
def test_masks_have_unit_l2_norm_per_image(kind):
    targets = [
        {"boxes": torch.tensor([_cell_box(4, 5, 5, 7), _cell_box(5, 7, 5, 5)])},
        {"boxes": torch.tensor([[0.7, 0.3, 0.2, 0.3]])},
        {"boxes": torch.zeros(0, 4)},
    ]
    masks = distillation_masks(targets, SIZE, kind, torch.device("cpu"))
    norms = masks.flatten(1).norm(dim=1)
    assert torch.allclose(norms[:2], torch.ones(2))
    if kind == "none":
        assert torch.allclose(masks[2], torch.full(SIZE, 1 / (SIZE[0] * SIZE[1]) ** 0.5))
    else:  # an image without lesions gives no target guidance
        assert norms[2] == 0
    if kind == "gaussian":  # normalisation keeps the shape: peak still at the box centre
        assert int(masks[1].argmax()) == int(gaussian_heatmap(targets[1]["boxes"], SIZE).argmax())


def test_masked_l1_counts_only_masked_differences():
    torch.manual_seed(0)
    teacher = torch.randn(2, 4, *SIZE)
    targets = [{"boxes": torch.tensor([_cell_box(4, 5, 3, 3)])}, {"boxes": torch.zeros(0, 4)}]
    mask = distillation_masks(targets, SIZE, "gaussian", torch.device("cpu"))
    assert masked_l1(teacher, teacher, mask) == 0
    outside = teacher.clone()
    outside[0, :, 12:, 12:] += 3.0  # far from the box
    outside[1] += 3.0  # the image without boxes
    assert masked_l1(outside, teacher, mask) == 0
    inside = teacher.clone()
    inside[0, :, 4, 5] += 1.0  # the peak cell, all 4 channels
    expected = mask[0, 4, 5] * 4 / (SIZE[0] * SIZE[1]) / 2  # batch mean over 2 images
    assert masked_l1(inside, teacher, mask).item() == pytest.approx(expected.item(), rel=1e-5)


def test_projection_only_where_channels_differ_and_teacher_gets_no_gradient():
    assert not list(TFDLoss(8, 8).parameters())
    loss_fn = TFDLoss(8, 16, "gaussian")
    student = torch.randn(1, 8, *SIZE, requires_grad=True)
    teacher = torch.randn(1, 16, *SIZE, requires_grad=True)
    loss = loss_fn(student, teacher, [{"boxes": torch.tensor([_cell_box(8, 8, 5, 5)])}])
    loss.backward()
    assert loss > 0 and student.grad.abs().sum() > 0 and loss_fn.proj.weight.grad is not None
    assert teacher.grad is None
    with pytest.raises(ValueError, match="TFD"):
        TFDLoss(8, 8)(torch.randn(1, 8, 4, 4), torch.randn(1, 8, 5, 4), [{"boxes": torch.zeros(0, 4)}])
