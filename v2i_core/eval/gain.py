"""How far to trust the student's F1 gain over its baseline on one evaluation: a paired bootstrap over videos.

Frames of one video are not independent draws (a lesion missed in one frame is likely missed in the next), so
the unit of resampling is the video. Each draw picks as many test videos as there are, with replacement, sums
each model's SUN counts (TP, FP, FN at the score threshold) over the picked videos and takes the difference of
the two F1s; the 2.5th and 97.5th percentiles of those differences are the gain's 95% interval. An interval
that spans 0 says the gain is inside what another draw of test videos moves: one run cannot tell it from none.
"""

from __future__ import annotations

import numpy as np

from v2i_core.eval.score import match_detections, read_ground_truth

DRAWS = 2000
SEED = 0  # the interval is a property of the detections: the same detections give the same interval


def video_counts(truth, detections: list[dict], threshold: float) -> np.ndarray:
    """(V, 3) SUN TP, FP, FN per video (COCO-VID `video_id` of each image; an image without one is its own
    video), videos in order of first appearance among the ground truth's images."""
    images = {image["id"]: image for image in truth.data["images"]}
    units: dict = {}
    video = np.array(
        [units.setdefault(images[i].get("video_id", ("image", i)), len(units)) for i in truth.image_ids]
    )  # (n_images,) video index of each image
    per_frame = np.stack(match_detections(truth, detections, "sun").per_frame(threshold), axis=1)  # (n_images, 3)
    counts = np.zeros((len(units), 3), dtype=np.int64)
    np.add.at(counts, video, per_frame)
    return counts


def _f1(counts: np.ndarray) -> np.ndarray:
    """F1 = 2TP / (2TP + FP + FN) of (..., 3) counts; 0 where nothing was annotated or detected."""
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros(denominator.shape), where=denominator > 0)


def f1_gain_interval(
    gt: dict, student: list[dict], baseline: list[dict], threshold: float, draws: int = DRAWS
) -> dict | None:
    """{"f1_gain", "f1_gain_ci95": [low, high], "videos"} of the student's COCO detections against its
    baseline's on the same ground truth, F1 as a fraction; None with fewer than two videos to resample."""
    truth = read_ground_truth(gt)
    ours, theirs = (video_counts(truth, d, threshold) for d in (student, baseline))  # (V, 3) each
    if len(ours) < 2:
        return None
    picks = np.random.default_rng(SEED).integers(0, len(ours), size=(draws, len(ours)))  # (draws, V)
    gains = _f1(ours[picks].sum(axis=1)) - _f1(theirs[picks].sum(axis=1))  # (draws,)
    low, high = np.percentile(gains, [2.5, 97.5])
    return {
        "f1_gain": float(_f1(ours.sum(axis=0)) - _f1(theirs.sum(axis=0))),
        "f1_gain_ci95": [float(low), float(high)],
        "videos": len(ours),
    }
