"""DETR's set loss with Deformable DETR's sigmoid focal classification: match, then score the matches."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from v2i_core.config import LossConfig
from v2i_core.errors import V2IError
from v2i_core.models.box_ops import box_cxcywh_to_xyxy
from v2i_core.models.matcher import HungarianMatcher, build_matcher


class SetCriterion(nn.Module):
    """Weighted focal, L1 and GIoU losses for the final decoder layer and, suffixed _0.._{L-2}, each earlier one.

    All terms are sums divided by the number of ground-truth boxes in the (global) batch, so frames without
    lesions still teach the classifier (every query is a negative) without diluting the box losses.
    """

    def __init__(self, num_classes: int, matcher: HungarianMatcher, loss_cfg: LossConfig):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.loss_cfg = loss_cfg

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        """outputs: pred_logits [B, Q, C], pred_boxes [B, Q, 4], aux_outputs; targets: B dicts of labels [n_i]
        (0-based) and boxes [n_i, 4] (cx, cy, w, h normalised) -> {loss name: weighted scalar}."""
        self.check_labels(targets)
        num_boxes = self.num_boxes(targets, outputs["pred_logits"].device)
        losses = self.layer_losses(outputs, targets, num_boxes)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            losses.update({f"{k}_{i}": v for k, v in self.layer_losses(aux, targets, num_boxes).items()})
        return losses

    def layer_losses(self, outputs: dict, targets: list[dict], num_boxes: float) -> dict[str, Tensor]:
        """The three weighted terms for one decoder layer's predictions."""
        logits, pred_boxes = outputs["pred_logits"], outputs["pred_boxes"]  # [B, Q, C], [B, Q, 4]
        indices = self.matcher(outputs, targets)
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)]).to(logits.device)
        query_idx = torch.cat([src for src, _ in indices]).to(logits.device)
        matched_labels = torch.cat([t["labels"][tgt] for t, (_, tgt) in zip(targets, indices, strict=True)])
        matched_boxes = torch.cat([t["boxes"][tgt] for t, (_, tgt) in zip(targets, indices, strict=True)])
        onehot = torch.zeros_like(logits)
        onehot[batch_idx, query_idx, matched_labels.to(logits.device)] = 1.0
        cfg = self.loss_cfg
        loss_ce = sigmoid_focal_loss(logits, onehot, cfg.focal_alpha, cfg.focal_gamma, reduction="sum") / num_boxes
        src_boxes = pred_boxes[batch_idx, query_idx]  # [N, 4]
        matched_boxes = matched_boxes.to(src_boxes)
        loss_bbox = (src_boxes - matched_boxes).abs().sum() / num_boxes
        loss_giou = (
            generalized_box_iou_loss(box_cxcywh_to_xyxy(src_boxes), box_cxcywh_to_xyxy(matched_boxes), reduction="sum")
            / num_boxes
        )
        return {"loss_ce": cfg.cls * loss_ce, "loss_bbox": cfg.bbox * loss_bbox, "loss_giou": cfg.giou * loss_giou}

    def check_labels(self, targets: list[dict]) -> None:
        """A label outside the model's classes would index past the one-hot (a device assert on GPU)."""
        for t in targets:
            labels = t["labels"]
            bad = labels[(labels < 0) | (labels >= self.num_classes)]
            if len(bad):
                raise V2IError(
                    f"targets of image {int(t.get('image_id', -1))}: label {int(bad[0])} is outside "
                    f"0..{self.num_classes - 1} (the model has {self.num_classes} classes)"
                )

    @staticmethod
    def num_boxes(targets: list[dict], device: torch.device) -> float:
        """Ground-truth boxes per process: averaged over torch.distributed when it runs, at least 1."""
        count = torch.tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(count)
            count = count / dist.get_world_size()
        return max(count.item(), 1.0)


def build_criterion(num_classes: int, loss_cfg: LossConfig) -> SetCriterion:
    return SetCriterion(num_classes, build_matcher(loss_cfg), loss_cfg)
