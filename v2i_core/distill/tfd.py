"""Target-guided Feature Distillation (TFD, paper II-C, Eqs. 2-3).

The student's last-stage backbone feature F_s^3 is pulled towards the teacher's Y_t^3 (its MSI-enhanced feature
of the current frame) with an L1 distance weighted by a mask M built from the ground-truth boxes:

    L_bk = 1/N * sum_{i,j,k} M^{ij} |F_s^{ijk} - Y_t^{ijk}|,     N = h * w (the feature map's pixel count),

summed over the channels k and averaged over the images of the batch. Three masks, for Table IV:
- "gaussian" (TFD): per box, H = exp(-(dx^2 / 2 sx^2 + dy^2 / 2 sy^2)) on the cells inside the box, sx and sy a
  fixed share (SIGMA_RATIO) of the box's width and height; element-wise maximum where boxes overlap; M = H/||H||_2.
- "gt": the hard ground-truth mask ([15]): 1 inside any box, 0 elsewhere, normalised the same way.
- "none": plain feature distillation (Eq. 2): every cell weighted alike, normalised the same way.

Choices where the paper is silent:
- sx = SIGMA_RATIO * box width (likewise sy), so a box edge lies at two sigmas and keeps ~14% of the peak weight:
  a soft rim around the target, as the paper's "balances the information around the target boundaries" asks.
  sigma is floored at half a feature cell, so a box smaller than a cell still gets a finite peak.
- A cell belongs to a box when its centre lies inside the box; the cell holding the box centre always does, so a
  box smaller than one cell is never lost. The mask is zero outside the boxes, per "(x, y) in B".
- All three masks go through the same L2 normalisation, so the Table IV rows differ only in where the weight
  falls. An image with no boxes has a zero mask under "gaussian" and "gt" (nothing to guide it) and a uniform
  one under "none".
- Where the student's and the teacher's channel counts differ, a learned 1x1 convolution maps the student's feature
  to the teacher's channels (FitNets' regressor, [14]). It lives here, in the distillation objective, never in the
  student, so inference pays nothing for it.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

SIGMA_RATIO = 0.25
MaskKind = Literal["gaussian", "gt", "none"]


def _cell_centres(size: tuple[int, int], device: torch.device) -> tuple[Tensor, Tensor]:
    """Normalised (x, y) of the cell centres of an h x w map: [1, w] and [h, 1]."""
    h, w = size
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
    return xs[None, :], ys[:, None]


def _inside(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """[n, 4] cxcywh boxes -> [n, h, w] bool: cells whose centre is inside the box, or that hold its centre."""
    h, w = size
    xs, ys = _cell_centres(size, boxes.device)
    cx, cy, bw, bh = (boxes[:, i, None, None] for i in range(4))
    inside = ((xs - cx).abs() <= bw / 2) & ((ys - cy).abs() <= bh / 2)
    col = (boxes[:, 0] * w).long().clamp(0, w - 1)
    row = (boxes[:, 1] * h).long().clamp(0, h - 1)
    inside[torch.arange(len(boxes), device=boxes.device), row, col] = True
    return inside


def gaussian_heatmap(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """H of II-C before normalisation: [n, 4] cxcywh (normalised) boxes -> [h, w], max over boxes, 0 outside."""
    h, w = size
    if len(boxes) == 0:
        return torch.zeros(size, device=boxes.device)
    boxes = boxes.float()
    xs, ys = _cell_centres(size, boxes.device)
    cx, cy, bw, bh = (boxes[:, i, None, None] for i in range(4))
    sx = (bw * SIGMA_RATIO).clamp(min=0.5 / w)
    sy = (bh * SIGMA_RATIO).clamp(min=0.5 / h)
    heat = torch.exp(-((xs - cx) ** 2 / (2 * sx**2) + (ys - cy) ** 2 / (2 * sy**2)))  # [n, h, w]
    return (heat * _inside(boxes, size)).amax(dim=0)


def hard_mask(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """The ground-truth mask before normalisation: [n, 4] cxcywh boxes -> [h, w], 1 inside any box."""
    if len(boxes) == 0:
        return torch.zeros(size, device=boxes.device)
    return _inside(boxes.float(), size).any(dim=0).float()


def distillation_masks(targets: list[dict], size: tuple[int, int], kind: MaskKind, device: torch.device) -> Tensor:
    """M for each image: [B, h, w], each image's mask scaled to unit L2 norm (all-zero masks stay zero)."""
    masks = []
    for target in targets:
        boxes = target["boxes"].to(device)
        if kind == "gaussian":
            masks.append(gaussian_heatmap(boxes, size))
        elif kind == "gt":
            masks.append(hard_mask(boxes, size))
        else:
            masks.append(torch.ones(size, device=device))
    stacked = torch.stack(masks)  # [B, h, w]
    norms = stacked.flatten(1).norm(dim=1).clamp(min=1e-12)
    return stacked / norms[:, None, None]


def masked_l1(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """Eq. 3: [B, C, h, w] x [B, C, h, w] x [B, h, w] -> scalar, 1/(h*w) * sum M|diff| per image, batch mean."""
    if student.shape != teacher.shape:
        raise ValueError(f"TFD: student feature {tuple(student.shape)} vs teacher {tuple(teacher.shape)}")
    h, w = student.shape[-2:]
    diff = (student.float() - teacher.float()).abs().sum(dim=1)  # [B, h, w]
    per_image = (mask * diff).sum(dim=(1, 2)) / (h * w)
    return per_image.mean()


class TFDLoss(nn.Module):
    """L_bk between the student's last-stage feature and the teacher's, with the mask of `kind`.

    Holds the student-to-teacher projection (a 1x1 convolution) when the channel counts differ.
    """

    def __init__(self, student_channels: int, teacher_channels: int, kind: MaskKind = "gaussian"):
        super().__init__()
        self.kind = kind
        self.proj = (
            nn.Conv2d(student_channels, teacher_channels, kernel_size=1)
            if student_channels != teacher_channels
            else nn.Identity()
        )

    def forward(self, student: Tensor, teacher: Tensor, targets: list[dict]) -> Tensor:
        # student: [B, C_s, h, w], teacher: [B, C_t, h, w] (no gradient wanted) -> scalar
        student = self.proj(student)
        mask = distillation_masks(targets, tuple(student.shape[-2:]), self.kind, student.device)
        return masked_l1(student, teacher.detach(), mask)
