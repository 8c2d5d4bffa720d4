"""COCO AP, AP50 and AP75 (bbox) through pycocotools' COCOeval, unchanged, its printing silenced.

The numbers are summarize()'s first three stats: AP over IoU 0.50:0.95, AP at IoU 0.50 and at 0.75, all box
areas, at most 100 detections per image.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def _ground_truth(gt: dict) -> COCO:
    """A COCO API object over a copy of `gt`, with the fields COCOeval needs filled in where absent.

    Extraction writes annotations as image_id, category_id, bbox; COCOeval also reads `id`, `area` and
    `iscrowd`, whose COCO defaults (a running number, w*h, 0) are supplied without touching the caller's dict.
    """
    annotations = []
    for number, ann in enumerate(gt["annotations"], start=1):
        filled = {"id": number, "area": float(ann["bbox"][2]) * float(ann["bbox"][3]), "iscrowd": 0}
        filled.update(ann)
        annotations.append(filled)
    coco = COCO()
    coco.dataset = {**gt, "annotations": annotations}
    coco.createIndex()
    return coco


def coco_ap(gt: dict, detections: list[dict]) -> dict:
    """{"AP", "AP50", "AP75"} of `detections` (COCO results) against the COCO ground-truth dict `gt`.

    Inputs must already be validated (image ids and categories present in `gt`). No detections give 0;
    so does a ground truth without boxes, where pycocotools reports -1 ("undefined").
    """
    if not detections:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    # loadRes adds fields to each result dict: hand it fresh ones so the caller's list stays as it was.
    results = [
        {"image_id": d["image_id"], "category_id": d["category_id"], "bbox": list(d["bbox"]), "score": d["score"]}
        for d in detections
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = _ground_truth(gt)
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), iouType="bbox")
        # Evaluate only the setting the three numbers come from (all areas, 100 detections per image):
        # pycocotools scores each area range and cap independently, so the values are those of summarize()
        # (a test checks this), at a third of the time on tens of thousands of frames.
        evaluator.params.areaRng = [evaluator.params.areaRng[0]]
        evaluator.params.areaRngLbl = ["all"]
        evaluator.params.maxDets = [100]
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][:, :, :, 0, 0]  # (IoU thresholds, recall points, categories)
    iou_thresholds = evaluator.params.iouThrs
    return {
        "AP": _mean_defined(precision),
        "AP50": _mean_defined(precision[iou_thresholds == 0.5]),
        "AP75": _mean_defined(precision[iou_thresholds == 0.75]),
    }


def _mean_defined(precision: np.ndarray) -> float:
    """Mean over the entries pycocotools defines (-1 marks a category without ground truth), else 0."""
    defined = precision[precision > -1]
    return float(defined.mean()) if defined.size else 0.0
