"""Box format conversions and generalised IoU (torchvision.ops does the arithmetic)."""

from __future__ import annotations

from torch import Tensor
from torchvision.ops import box_convert
from torchvision.ops import generalized_box_iou as _pairwise_giou


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """[..., 4] (cx, cy, w, h) -> [..., 4] (x1, y1, x2, y2)."""
    return box_convert(boxes, "cxcywh", "xyxy")


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """[..., 4] (x1, y1, x2, y2) -> [..., 4] (cx, cy, w, h)."""
    return box_convert(boxes, "xyxy", "cxcywh")


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise GIoU of xyxy boxes: [N, 4] x [M, 4] -> [N, M], in [-1, 1]."""
    return _pairwise_giou(boxes1, boxes2)
