"""SUN centre-in-box protocol (Bernal et al. 2017) and its IoU >= 0.5 variant, class-agnostic.

Both protocols ignore categories: every ground-truth box is "a lesion" and every detection is "a lesion
found", so a multi-class model is scored on whether it finds lesions, not on which class it names.

Matching is done once on all detections, independent of the score threshold; what a threshold keeps is
then a matter of comparing scores. That holds for the centre protocol because a hit is pure geometry, and
for the IoU protocol because greedy matching in descending score order decides each detection from the
higher-scored ones only, so the detections kept at any threshold are a prefix of that order and get the
very same matches. Hence one matching serves every threshold (`Matches.counts`, `Matches.sweep`).

Boxes are COCO [x, y, w, h] in pixels; arrays are grouped by image index (0..n_images-1), not by a Python
loop over frames, so tens of thousands of frames take well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Matches:
    """The outcome of matching, valid for every score threshold.

    det_scores / det_image: each detection's score and image index.
    det_matched: the detection hits (centre) or is matched to (IoU) a ground-truth box; an unmatched kept
        detection is a false positive.
    gt_image: each ground-truth box's image index.
    gt_best: the highest score among detections that hit it (centre), or the score of its matched detection
        (IoU); -inf when none. A box is a true positive at threshold t when gt_best >= t.
    """

    n_images: int
    det_scores: np.ndarray
    det_image: np.ndarray
    det_matched: np.ndarray
    gt_image: np.ndarray
    gt_best: np.ndarray

    def counts(self, threshold: float) -> tuple[int, int, int]:
        """(TP, FP, FN) summed over all frames, keeping detections with score >= threshold."""
        tp = int(np.count_nonzero(self.gt_best >= threshold))
        fp = int(np.count_nonzero(~self.det_matched & (self.det_scores >= threshold)))
        return tp, fp, len(self.gt_best) - tp

    def sweep(self, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(TP, FP, FN) arrays, one entry per threshold, from one sort of the scores."""
        thresholds = np.asarray(thresholds, dtype=float)
        best = np.sort(self.gt_best)
        unmatched = np.sort(self.det_scores[~self.det_matched])
        # Count of values >= t is the length minus the insertion point of t on the left.
        tp = len(best) - np.searchsorted(best, thresholds, side="left")
        fp = len(unmatched) - np.searchsorted(unmatched, thresholds, side="left")
        return tp, fp, len(best) - tp

    def per_frame(self, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(TP, FP, FN) per image index, each of shape (n_images,)."""
        hit = self.gt_best >= threshold
        tp = np.bincount(self.gt_image[hit], minlength=self.n_images)
        fn = np.bincount(self.gt_image[~hit], minlength=self.n_images)
        false_alarm = ~self.det_matched & (self.det_scores >= threshold)
        fp = np.bincount(self.det_image[false_alarm], minlength=self.n_images)
        return tp, fp, fn


def precision_recall_f1(tp, fp, fn):
    """P = TP/(TP+FP), R = TP/(TP+FN), F1 = 2PR/(P+R), each 0 where its denominator is 0.

    Works on scalars and on arrays alike (returns floats or float arrays).
    """
    tp, fp, fn = (np.asarray(v, dtype=float) for v in (tp, fp, fn))
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    if precision.ndim == 0:
        return float(precision), float(recall), float(f1)
    return precision, recall, f1


def _pairs(gt_image: np.ndarray, det_image: np.ndarray, n_images: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (detection, ground-truth box) pair within the same image, as two index arrays of equal length."""
    order = np.argsort(gt_image, kind="stable")
    per_image = np.bincount(gt_image, minlength=n_images)
    first = np.concatenate([[0], np.cumsum(per_image)[:-1]])
    n_pairs = per_image[det_image]  # (D,) boxes in each detection's image
    det_idx = np.repeat(np.arange(len(det_image)), n_pairs)
    # Position of each pair inside its detection's run of pairs: 0, 1, ... n_pairs-1.
    run_start = np.repeat(np.cumsum(n_pairs) - n_pairs, n_pairs)
    within = np.arange(len(det_idx)) - run_start
    gt_idx = order[first[det_image][det_idx] + within]
    return det_idx, gt_idx


def match_centre(
    gt_boxes: np.ndarray,
    gt_image: np.ndarray,
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    det_image: np.ndarray,
    n_images: int,
) -> Matches:
    """SUN protocol: a detection hits a box when its centre lies inside the box (edges included).

    gt_boxes (G, 4), gt_image (G,), det_boxes (D, 4), det_scores (D,), det_image (D,); image indices < n_images.
    """
    det_idx, gt_idx = _pairs(gt_image, det_image, n_images)
    centre = det_boxes[:, :2] + det_boxes[:, 2:] / 2  # (D, 2)
    cx, cy = centre[det_idx, 0], centre[det_idx, 1]
    x, y, w, h = gt_boxes[gt_idx].T
    hit = (cx >= x) & (cx <= x + w) & (cy >= y) & (cy <= y + h)
    det_matched = np.bincount(det_idx[hit], minlength=len(det_scores)) > 0
    gt_best = np.full(len(gt_boxes), -np.inf)
    np.maximum.at(gt_best, gt_idx[hit], det_scores[det_idx[hit]])
    return Matches(n_images, det_scores, det_image, det_matched, gt_image, gt_best)


def box_iou_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of row-aligned [x, y, w, h] boxes: a (P, 4), b (P, 4) -> (P,); 0 where the union is empty."""
    x1 = np.maximum(a[:, 0], b[:, 0])
    y1 = np.maximum(a[:, 1], b[:, 1])
    x2 = np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2])
    y2 = np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def match_iou(
    gt_boxes: np.ndarray,
    gt_image: np.ndarray,
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    det_image: np.ndarray,
    n_images: int,
    iou_threshold: float = 0.5,
) -> Matches:
    """IoU variant: detections in descending score order (ties: input order) each take the unmatched box
    of their image with the highest IoU >= iou_threshold; at most one box per detection and vice versa.

    Shapes as in `match_centre`.
    """
    det_idx, gt_idx = _pairs(gt_image, det_image, n_images)
    iou = box_iou_pairs(det_boxes[det_idx], gt_boxes[gt_idx])
    keep = iou >= iou_threshold
    det_idx, gt_idx, iou = det_idx[keep], gt_idx[keep], iou[keep]
    rank = np.empty(len(det_scores), dtype=np.int64)
    rank[np.argsort(-det_scores, kind="stable")] = np.arange(len(det_scores))
    # Candidate pairs grouped by detection in score order, best IoU first within a detection: the first
    # free box a detection meets is its greedy match. Only candidates (IoU >= threshold) are looped over.
    order = np.lexsort((-iou, rank[det_idx]))
    taken_det: set[int] = set()
    taken_gt: set[int] = set()
    pairs = []
    for d, g in zip(det_idx[order].tolist(), gt_idx[order].tolist(), strict=True):
        if d not in taken_det and g not in taken_gt:
            taken_det.add(d)
            taken_gt.add(g)
            pairs.append((d, g))
    matched_det, matched_gt = np.array(pairs, dtype=np.int64).reshape(-1, 2).T
    det_matched = np.zeros(len(det_scores), dtype=bool)
    det_matched[matched_det] = True
    gt_best = np.full(len(gt_boxes), -np.inf)
    gt_best[matched_gt] = det_scores[matched_det]
    return Matches(n_images, det_scores, det_image, det_matched, gt_image, gt_best)


MATCHERS = {"sun": match_centre, "iou": match_iou}
