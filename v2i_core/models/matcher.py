"""Hungarian matching of predictions to ground truth (DETR), with Deformable DETR's focal class cost."""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from v2i_core.config import LossConfig
from v2i_core.models.box_ops import box_cxcywh_to_xyxy, generalized_box_iou


class HungarianMatcher(nn.Module):
    """One-to-one assignment per image minimising class, L1 and GIoU costs; unmatched queries are background."""

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ):
        super().__init__()
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma

    def cost_matrix(self, outputs: dict, targets: list[dict]) -> Tensor:
        """[B, Q, sum of n_i]: the cost of each query against every target box of the batch."""
        batch, num_queries = outputs["pred_logits"].shape[:2]
        prob = outputs["pred_logits"].flatten(0, 1).sigmoid()  # [B*Q, C]
        boxes = outputs["pred_boxes"].flatten(0, 1)  # [B*Q, 4]
        tgt_labels = torch.cat([t["labels"] for t in targets]).to(prob.device)
        tgt_boxes = torch.cat([t["boxes"] for t in targets]).to(boxes)
        # Focal cost: what labelling the query positive gains over leaving it negative (Deformable DETR).
        alpha, gamma = self.focal_alpha, self.focal_gamma
        neg = (1 - alpha) * prob**gamma * -(1 - prob + 1e-8).log()
        pos = alpha * (1 - prob) ** gamma * -(prob + 1e-8).log()
        cost_class = pos[:, tgt_labels] - neg[:, tgt_labels]
        cost_bbox = torch.cdist(boxes, tgt_boxes, p=1)
        cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(tgt_boxes))
        cost = self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou
        return cost.view(batch, num_queries, -1)

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> list[tuple[Tensor, Tensor]]:
        """outputs: pred_logits [B, Q, C], pred_boxes [B, Q, 4]; targets: B dicts of labels [n_i], boxes
        [n_i, 4] -> per image (query indices, target indices), each [min(Q, n_i)] int64."""
        cost = self.cost_matrix(outputs, targets).float().cpu()
        if not torch.isfinite(cost).all():  # diverged predictions: the engine reports it as a non-finite loss
            raise FloatingPointError("non-finite matching cost")
        sizes = [len(t["boxes"]) for t in targets]
        indices = []
        for i, block in enumerate(cost.split(sizes, dim=-1)):
            rows, cols = linear_sum_assignment(block[i].numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices


def build_matcher(loss_cfg: LossConfig) -> HungarianMatcher:
    return HungarianMatcher(loss_cfg.cls, loss_cfg.bbox, loss_cfg.giou, loss_cfg.focal_alpha, loss_cfg.focal_gamma)
