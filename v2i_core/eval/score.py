"""`v2i score`: detections (COCO results JSON) against ground truth (COCO-VID JSON), one protocol.

Protocols (DESIGN.md): `sun` centre-in-box precision/recall/F1 with TP/FP/FN, `iou` the same with IoU >= 0.5
greedy matching, both class-agnostic (see `v2i_core.eval.sun`); `coco` AP/AP50/AP75 from pycocotools,
where the score threshold does not apply (AP integrates over all scores); `lesion` the lesion-level figures of
`v2i_core.eval.lesion` (per-lesion sensitivity, false alarms per minute, first-detection delay, flicker) on the
SUN hit rule, from the ground truth's lesion tracks (COCO-VID instance_id) and its videos' frame rates.

Library entry points: `score_detections` for one threshold, `sweep_thresholds` for PR / F1 curves,
`subset_recall` for the recall on chosen frames (e.g. the synthetic data's hard frames).
Inputs are validated up front, so bad input is one V2IError naming the file and nothing is written.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from v2i_core.errors import V2IError
from v2i_core.eval.coco_ap import coco_ap
from v2i_core.eval.lesion import lesion_metrics, videos_from_coco
from v2i_core.eval.sun import MATCHERS, Matches, precision_recall_f1
from v2i_core.storage import atomic_file, read_json

log = logging.getLogger(__name__)

PROTOCOLS = ("sun", "iou", "coco", "lesion")
# Rounded so that e.g. 0.7 is exactly the 0.7 a user passes as --score-threshold.
DEFAULT_THRESHOLDS = np.round(np.linspace(0, 1, 51), 6)


@dataclass(frozen=True)
class GroundTruth:
    """A validated COCO ground truth: the dict itself plus its boxes as arrays.

    image_ids: image ids in file order; index: image id -> position; boxes (G, 4) [x, y, w, h];
    box_image (G,) position of each box's image; category_ids: ids named in `categories`.
    """

    data: dict
    source: str
    image_ids: list
    index: dict
    boxes: np.ndarray
    box_image: np.ndarray
    category_ids: frozenset


@dataclass(frozen=True)
class DetectionArrays:
    """Validated detections: boxes (D, 4), scores (D,), image (D,) position of each detection's image."""

    boxes: np.ndarray
    scores: np.ndarray
    image: np.ndarray


def _field(items: list, key: str, source: str, what: str) -> list:
    """[item[key] for item in items], or a V2IError pointing at the first item without it."""
    try:
        return [item[key] for item in items]
    except (TypeError, KeyError, IndexError):
        bad = next(i for i, item in enumerate(items) if not isinstance(item, dict) or key not in item)
        raise V2IError(f"{source}: {what} {bad} has no '{key}'") from None


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _numbers(values: list, width: int | None, source: str, what: str, key: str) -> np.ndarray:
    """`values` (numbers, or lists of `width` numbers) as a float array; anything else is a V2IError."""
    shape = (-1,) if width is None else (-1, width)
    try:
        array = np.asarray(values)
        valid = array.dtype.kind in "iuf" and (array.size == 0 or array.shape[1:] == shape[1:])
    except ValueError:  # ragged nesting
        valid = False
    if not valid:
        expected = "a number" if width is None else f"a list of {width} numbers"
        bad = next(
            (
                i
                for i, value in enumerate(values)
                if not (
                    _is_number(value)
                    if width is None
                    else isinstance(value, list) and len(value) == width and all(map(_is_number, value))
                )
            ),
            0,
        )
        raise V2IError(f"{source}: {what} {bad}: '{key}' must be {expected}, got {values[bad]!r}")
    array = array.astype(float).reshape(shape)
    finite = np.isfinite(array) if width is None else np.isfinite(array).all(axis=1)
    if not finite.all():
        bad = int(np.argmin(finite))
        raise V2IError(f"{source}: {what} {bad}: '{key}' must be finite, got {values[bad]!r}")
    return array


def _boxes(values: list, source: str, what: str) -> np.ndarray:
    boxes = _numbers(values, 4, source, what, "bbox")
    negative = (boxes[:, 2:] < 0).any(axis=1)
    if negative.any():
        bad = int(np.argmax(negative))
        raise V2IError(f"{source}: {what} {bad}: bbox width and height must be >= 0, got {values[bad]!r}")
    return boxes


def parse_ground_truth(data, source: str) -> GroundTruth:
    """Validate a COCO ground-truth dict (images with unique ids, annotations on those images)."""
    if not isinstance(data, dict):
        raise V2IError(f"{source}: expected a COCO ground-truth object with 'images' and 'annotations'")
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise V2IError(f"{source}: '{key}' must be a list")
    image_ids = _field(data["images"], "id", source, "image")
    try:
        index = {image_id: position for position, image_id in enumerate(image_ids)}
    except TypeError:
        raise V2IError(f"{source}: image ids must be numbers or strings") from None
    if len(index) != len(image_ids):
        seen: set = set()
        duplicate = next(i for i in image_ids if i in seen or seen.add(i))
        raise V2IError(f"{source}: image id {duplicate!r} appears more than once")
    annotations = data["annotations"]
    box_image = _positions(_field(annotations, "image_id", source, "annotation"), index, source, "annotation")
    if (box_image < 0).any():
        bad = int(np.argmax(box_image < 0))
        missing = annotations[bad]["image_id"]
        raise V2IError(f"{source}: annotation {bad} refers to image id {missing!r}, which is not in 'images'")
    boxes = _boxes(_field(annotations, "bbox", source, "annotation"), source, "annotation")
    categories = data.get("categories", [])
    if not isinstance(categories, list):
        raise V2IError(f"{source}: 'categories' must be a list")
    category_ids = _field(categories, "id", source, "category")
    if not all(map(_is_number, category_ids)):
        raise V2IError(f"{source}: category ids must be numbers")
    return GroundTruth(data, source, image_ids, index, boxes, box_image, frozenset(category_ids))


def _positions(ids: list, index: dict, source: str, what: str) -> np.ndarray:
    """Image positions of `ids` (-1 where unknown); unhashable ids are a V2IError."""
    try:
        return np.fromiter((index.get(i, -1) for i in ids), dtype=np.int64, count=len(ids))
    except TypeError:
        bad = next(i for i, image_id in enumerate(ids) if not isinstance(image_id, int | float | str))
        raise V2IError(f"{source}: {what} {bad}: image_id must be a number or a string") from None


def read_ground_truth(gt: dict | str | Path | GroundTruth) -> GroundTruth:
    """A GroundTruth from a dict, a JSON file path, or one already read."""
    if isinstance(gt, GroundTruth):
        return gt
    if isinstance(gt, dict):
        return parse_ground_truth(gt, "ground truth")
    return parse_ground_truth(read_json(gt), str(gt))


def parse_detections(detections, truth: GroundTruth, source: str, need_category: bool = False) -> DetectionArrays:
    """Validate COCO results against `truth`: every image id must be one of its images.

    need_category: also require category ids named by the ground truth (the COCO protocol uses them).
    """
    if not isinstance(detections, list):
        raise V2IError(f"{source}: expected a JSON list of detections [{{image_id, category_id, bbox, score}}]")
    image_ids = _field(detections, "image_id", source, "detection")
    image = _positions(image_ids, truth.index, source, "detection")
    unknown = image < 0
    if unknown.any():
        examples = sorted({repr(image_ids[i]) for i in np.flatnonzero(unknown)[:3]})
        raise V2IError(
            f"{source}: {int(unknown.sum())} detection(s) have image ids not in the ground truth "
            f"{truth.source} (e.g. {', '.join(examples)})"
        )
    boxes = _boxes(_field(detections, "bbox", source, "detection"), source, "detection")
    scores = _numbers(_field(detections, "score", source, "detection"), None, source, "detection", "score")
    if need_category:
        categories = _field(detections, "category_id", source, "detection")
        bad = next((i for i, c in enumerate(categories) if not _is_number(c) or c not in truth.category_ids), None)
        if bad is not None:
            raise V2IError(
                f"{source}: detection {bad} has category_id {categories[bad]!r}, not a category of {truth.source}"
            )
    return DetectionArrays(boxes, scores, image)


def _check_protocol(protocol: str, allowed: tuple = PROTOCOLS) -> None:
    if protocol not in allowed:
        raise V2IError(f"protocol '{protocol}': expected one of {', '.join(allowed)}")


def match_detections(truth: GroundTruth, detections, protocol: str = "sun", source: str = "detections") -> Matches:
    """Validate `detections` and match them to `truth` under the `sun` or `iou` protocol (all thresholds)."""
    _check_protocol(protocol, ("sun", "iou"))
    arrays = parse_detections(detections, truth, source)
    return MATCHERS[protocol](
        truth.boxes, truth.box_image, arrays.boxes, arrays.scores, arrays.image, len(truth.image_ids)
    )


def _score(
    truth: GroundTruth, detections, source: str, protocol: str, score_threshold: float, min_hits: int = 1
) -> dict:
    _check_protocol(protocol)
    if protocol == "coco":
        parse_detections(detections, truth, source, need_category=True)
        return coco_ap(truth.data, detections)
    if not math.isfinite(score_threshold):
        raise V2IError(f"score threshold {score_threshold}: must be a finite number")
    if protocol == "lesion":
        parse_detections(detections, truth, source)
        videos = videos_from_coco(truth.data, detections, score_threshold, source="ground truth")
        return {"protocol": protocol, **lesion_metrics(videos, k=min_hits)}
    tp, fp, fn = match_detections(truth, detections, protocol, source).counts(score_threshold)
    precision, recall, f1 = precision_recall_f1(tp, fp, fn)
    return {"protocol": protocol, "precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def score_detections(
    gt: dict | str | Path, detections: list[dict], protocol: str, score_threshold: float, min_hits: int = 1
) -> dict:
    """Metrics of COCO results `detections` against ground truth `gt` (a COCO dict or a JSON file path).

    sun / iou (class-agnostic): {"protocol", "precision", "recall", "f1", "tp", "fp", "fn"} over detections
    with score >= score_threshold; coco: {"AP", "AP50", "AP75"} (threshold not used); lesion: the figures of
    `v2i_core.eval.lesion.lesion_metrics`, a lesion found when `min_hits` of its frames are hit.
    """
    return _score(read_ground_truth(gt), detections, "detections", protocol, score_threshold, min_hits)


def subset_recall(gt: dict, detections: list[dict], image_ids: set[int], score_threshold: float) -> float | None:
    """SUN recall over the ground-truth boxes of `image_ids` only; None when those frames hold no box."""
    images = [image for image in gt["images"] if image["id"] in image_ids]
    annotations = [a for a in gt["annotations"] if a["image_id"] in image_ids]
    if not annotations:
        return None
    subset = {**gt, "images": images, "annotations": annotations}
    kept = [d for d in detections if d["image_id"] in image_ids]
    return score_detections(subset, kept, "sun", score_threshold)["recall"]


def sweep_thresholds(
    gt: dict | str | Path, detections: list[dict], protocol: str = "sun", thresholds=DEFAULT_THRESHOLDS
) -> list[dict]:
    """[{"threshold", "precision", "recall", "f1", "tp", "fp", "fn"}] per threshold (sun or iou protocol).

    Matching is done once and the scores sorted once, so a sweep costs about as much as one score.
    """
    _check_protocol(protocol, ("sun", "iou"))
    thresholds = np.asarray(thresholds, dtype=float)
    tp, fp, fn = match_detections(read_ground_truth(gt), detections, protocol).sweep(thresholds)
    precision, recall, f1 = precision_recall_f1(tp, fp, fn)
    return [
        {
            "threshold": float(thresholds[i]),
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "tp": int(tp[i]),
            "fp": int(fp[i]),
            "fn": int(fn[i]),
        }
        for i in range(len(thresholds))
    ]


def format_table(metrics: dict) -> str:
    """The metrics as two aligned columns: name, value (floats to 4 decimals)."""
    width = max(len(name) for name in metrics)
    return "\n".join(
        f"{name:<{width}}  {value:.4f}" if isinstance(value, float) else f"{name:<{width}}  {value}"
        for name, value in metrics.items()
    )


def run(args, params) -> int:
    """`v2i score --gt --pred [--protocol] [--score-threshold] [--out]`; defaults from params.eval."""
    protocol = args.protocol or params.eval.protocol
    threshold = params.eval.score_threshold if args.score_threshold is None else args.score_threshold
    start = time.perf_counter()
    truth = read_ground_truth(args.gt)
    detections = read_json(args.pred)
    metrics = _score(truth, detections, str(args.pred), protocol, threshold, params.eval.lesion_min_hits)
    log.info(
        "scored %d detections on %d frames in %.2f s",
        len(detections),
        len(truth.image_ids),
        time.perf_counter() - start,
    )
    header = f"protocol {protocol}" + ("" if protocol == "coco" else f", score >= {threshold:g}")
    print(header)
    print(format_table({k: v for k, v in metrics.items() if k != "protocol"}))
    if args.out:
        with atomic_file(args.out) as handle:
            json.dump(metrics, handle, indent=2)
            handle.write("\n")
    return 0
