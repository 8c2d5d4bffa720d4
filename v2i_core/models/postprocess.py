"""Detector outputs -> COCO results (`[{image_id, category_id, bbox: [x, y, w, h], score}]`)."""

from __future__ import annotations

import torch
from torch import Tensor

from v2i_core.models.box_ops import box_cxcywh_to_xyxy


@torch.no_grad()
def postprocess(outputs: dict, orig_sizes: Tensor, image_ids: list[int], top_k: int = 100) -> list[dict]:
    """outputs: pred_logits [B, Q, C], pred_boxes [B, Q, 4] (cx, cy, w, h in [0, 1]); orig_sizes: [B, 2] (h, w)
    -> the k = min(top_k, Q*C) best (query, class) pairs per image by sigmoid score, in pixels of the original
    frame, clamped to it; category_id is the 0-based label + 1."""
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    batch, num_queries, num_classes = logits.shape
    scores, flat = logits.sigmoid().flatten(1).topk(min(top_k, num_queries * num_classes), dim=1)  # [B, k]
    query, label = flat // num_classes, flat % num_classes
    xyxy = torch.gather(box_cxcywh_to_xyxy(boxes.float()), 1, query[..., None].expand(-1, -1, 4))  # [B, k, 4]
    h, w = orig_sizes.to(xyxy).unbind(1)
    scale = torch.stack([w, h, w, h], dim=1)[:, None, :]  # [B, 1, 4]
    xyxy = torch.minimum((xyxy * scale).clamp(min=0), scale)
    xywh = torch.cat([xyxy[..., :2], xyxy[..., 2:] - xyxy[..., :2]], dim=-1)
    results = []
    for image_id, s, lb, bx in zip(image_ids, scores.tolist(), label.tolist(), xywh.tolist(), strict=True):
        results.extend(
            {"image_id": int(image_id), "category_id": c + 1, "bbox": b, "score": v}
            for v, c, b in zip(s, lb, bx, strict=True)
        )
    return results
