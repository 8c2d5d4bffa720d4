"""Lesion-level metrics of a detector on videos: what a clinician reads rather than frame-level P/R/F1.

Each ground-truth box belongs to a lesion track (one polyp, through all the frames where it is in view, even
when it leaves the view and returns). A detection hits a box by the very rule of the frame-level protocol
(`v2i_core.eval.sun`: `sun` centre-in-box by default, or `iou`), matched once per video. The detections given
are those already kept by the score threshold. Figures, summed over the videos before dividing:

- lesion_sensitivity: lesions_found / lesions, where a track is found when at least `k` of its annotated
  frames are hit; missed_lesions = lesions - lesions_found.
- false_alarms_per_min: alarms / minutes of video. A false detection hits no ground-truth box; false
  detections in consecutive frames that overlap (IoU >= ALARM_LINK_IOU) are linked, and each connected group
  is one alarm (the box a clinician sees come and go). Minutes are frames / fps / 60 of every video, those
  without a lesion included.
- delay_{median,p90}_{frames,s}: for each found track, the frames from its first annotated frame to its first
  hit (0: hit on arrival), in seconds at its video's fps; median and 90th percentile (numpy's linear
  interpolation) over found tracks. Missed tracks have no delay; they count in missed_lesions only.
- flicker_per_lesion_min: flicker_switches / lesion_minutes. A switch is a hit frame followed by a missed frame
  of the same track, both annotated and adjacent (a track that leaves the view is not a switch); lesion minutes
  are each track's annotated frames / fps / 60.

A figure whose denominator is empty (no lesion, no found lesion, no video) is None.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np

from v2i_core.errors import V2IError
from v2i_core.eval.sun import MATCHERS, box_iou_pairs

# Figures where less is better (their `filtered_` twins too); a gate on one of them wants it lower
LOWER_IS_BETTER = frozenset(
    {"missed_lesions", "false_alarms", "false_alarms_per_min", "delay_median_frames", "delay_p90_frames",
     "delay_median_s", "delay_p90_s", "flicker_switches", "flicker_per_lesion_min"}
)  # fmt: skip
ALARM_LINK_IOU = 0.1  # false detections in consecutive frames overlapping this much are one alarm


@dataclass(frozen=True)
class Frame:
    """One frame of a video: its ground truth and the detections kept at the score threshold.

    gt_boxes (G, 4) and det_boxes (D, 4) are COCO [x, y, w, h]; gt_tracks (G,) the lesion track id of each
    box (any hashable, unique per lesion within the video); det_scores (D,), all ones when not given.
    Array-likes are accepted; `Video` checks and converts them.
    """

    gt_boxes: Sequence = ()
    gt_tracks: Sequence = ()
    det_boxes: Sequence = ()
    det_scores: Sequence | None = None


@dataclass(frozen=True)
class Video:
    """A video: its name (for messages), its frame rate and its frames in order, one per frame at `fps`.

    If the frames listed are a subsample of the recording, `fps` is the rate of the listed frames.
    """

    name: str
    fps: float
    frames: Sequence[Frame] = field(default_factory=tuple)

    def __post_init__(self):
        if not (isinstance(self.fps, int | float) and math.isfinite(self.fps) and self.fps > 0):
            raise V2IError(f"video {self.name!r}: fps must be a positive number, got {self.fps!r}")
        frames = tuple(_checked(frame, f"video {self.name!r} frame {i}") for i, frame in enumerate(self.frames))
        object.__setattr__(self, "frames", frames)


def _array(value, width: int | None, where: str, what: str) -> np.ndarray:
    """`value` as a finite float array of shape (N,) or (N, width); anything else is a V2IError."""
    shape = "(N,)" if width is None else f"(N, {width})"
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise V2IError(f"{where}: {what} must be an array of numbers of shape {shape}") from None
    if array.size == 0:
        array = array.reshape((0,) if width is None else (0, width))
    if array.shape[1:] != (() if width is None else (width,)) or not np.isfinite(array).all():
        raise V2IError(f"{where}: {what} must be finite numbers of shape {shape}, got shape {array.shape}")
    return array


def _checked(frame: Frame, where: str) -> Frame:
    """`frame` with its fields as arrays of consistent lengths."""
    if not isinstance(frame, Frame):
        raise V2IError(f"{where}: expected a Frame, got {type(frame).__name__}")
    gt_boxes = _array(frame.gt_boxes, 4, where, "gt_boxes")
    det_boxes = _array(frame.det_boxes, 4, where, "det_boxes")
    scores = np.ones(len(det_boxes)) if frame.det_scores is None else frame.det_scores
    scores = _array(scores, None, where, "det_scores")
    tracks = tuple(frame.gt_tracks)
    unhashable = next((t for t in tracks if not isinstance(t, Hashable)), None)
    if unhashable is not None:
        raise V2IError(f"{where}: track id {unhashable!r} must be a number or a string")
    if len(tracks) != len(gt_boxes):
        raise V2IError(f"{where}: {len(tracks)} gt_tracks for {len(gt_boxes)} gt_boxes")
    if len(scores) != len(det_boxes):
        raise V2IError(f"{where}: {len(scores)} det_scores for {len(det_boxes)} det_boxes")
    if (gt_boxes[:, 2:] < 0).any() or (det_boxes[:, 2:] < 0).any():
        raise V2IError(f"{where}: box width and height must be >= 0")
    return Frame(gt_boxes, tracks, det_boxes, scores)


@dataclass(frozen=True)
class Track:
    """One lesion in one video: the frames where it is annotated (ascending) and whether each was hit."""

    video: str
    track: Hashable
    frames: np.ndarray
    hits: np.ndarray


@dataclass(frozen=True)
class VideoOutcome:
    """What one video contributes: its tracks, its length in frames and fps, and its alarms."""

    video: str
    fps: float
    n_frames: int
    tracks: list[Track]
    alarms: int


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every [x, y, w, h] box of a (A, 4) with every box of b (B, 4): (A, B)."""
    return box_iou_pairs(np.repeat(a, len(b), axis=0), np.tile(b, (len(a), 1))).reshape(len(a), len(b))


def count_alarms(boxes: np.ndarray, frame: np.ndarray, n_frames: int) -> int:
    """Connected groups of false detections (boxes (F, 4) in frames (F,)) linked across consecutive frames."""
    parent = np.arange(len(boxes))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    order = np.argsort(frame, kind="stable")
    in_frame = np.split(order, np.searchsorted(frame[order], np.arange(1, n_frames)))  # detections per frame
    for previous, current in pairwise(in_frame):
        linked = iou_matrix(boxes[previous], boxes[current]) >= ALARM_LINK_IOU
        for p, c in zip(*np.nonzero(linked), strict=True):
            parent[root(current[c])] = root(previous[p])
    return sum(int(root(i) == i) for i in range(len(boxes)))


def match_video(video: Video, protocol: str = "sun") -> VideoOutcome:
    """Hit or miss of every lesion track in every annotated frame, and the alarms, of one video."""
    if protocol not in MATCHERS:
        raise V2IError(f"protocol '{protocol}': expected one of {', '.join(MATCHERS)}")
    frames = video.frames
    n_frames = len(frames)

    def stack(name: str, width: int | None) -> tuple[np.ndarray, np.ndarray]:
        parts = [getattr(f, name) for f in frames]
        image = np.repeat(np.arange(n_frames), [len(p) for p in parts]).astype(np.int64)
        empty = np.zeros((0,) if width is None else (0, width))
        return (np.concatenate(parts) if parts else empty), image

    gt_boxes, gt_image = stack("gt_boxes", 4)
    det_boxes, det_image = stack("det_boxes", 4)
    det_scores, _ = stack("det_scores", None)
    matches = MATCHERS[protocol](gt_boxes, gt_image, det_boxes, det_scores, det_image, n_frames)
    box_hit = matches.gt_best > -np.inf  # every detection given is kept

    box_track = [t for f in frames for t in f.gt_tracks]
    ids = {track: i for i, track in enumerate(dict.fromkeys(box_track))}  # first-seen order
    box_id = np.array([ids[t] for t in box_track], dtype=np.int64)
    tracks = []
    for track, i in ids.items():
        mine = box_id == i
        track_frames = np.unique(gt_image[mine])
        hit_frames = np.unique(gt_image[mine & box_hit])
        tracks.append(Track(video.name, track, track_frames, np.isin(track_frames, hit_frames)))

    false = ~matches.det_matched
    alarms = count_alarms(det_boxes[false], det_image[false], n_frames)
    return VideoOutcome(video.name, float(video.fps), n_frames, tracks, alarms)


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator / denominator) if denominator > 0 else None


def _quantile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _check_k(k) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise V2IError(f"lesion metrics: k must be an integer >= 1, got {k!r}")


def summarize(outcomes: Sequence[VideoOutcome], k: int = 1) -> dict:
    """The lesion-level figures (module docstring) over the videos' outcomes, as a flat dict."""
    _check_k(k)
    lesions = found = switches = 0
    delays_frames: list[float] = []
    delays_s: list[float] = []
    lesion_minutes = 0.0
    for outcome in outcomes:
        for track in outcome.tracks:
            lesions += 1
            lesion_minutes += len(track.frames) / outcome.fps / 60
            adjacent = np.diff(track.frames) == 1
            switches += int(np.count_nonzero(track.hits[:-1] & ~track.hits[1:] & adjacent))
            if np.count_nonzero(track.hits) >= k:
                found += 1
                delay = int(track.frames[np.argmax(track.hits)] - track.frames[0])
                delays_frames.append(delay)
                delays_s.append(delay / outcome.fps)
    alarms = sum(outcome.alarms for outcome in outcomes)
    minutes = sum(outcome.n_frames / outcome.fps / 60 for outcome in outcomes)
    return {
        "lesions": lesions,
        "lesions_found": found,
        "missed_lesions": lesions - found,
        "lesion_sensitivity": _ratio(found, lesions),
        "false_alarms": alarms,
        "minutes": float(minutes),
        "false_alarms_per_min": _ratio(alarms, minutes),
        "delay_median_frames": _quantile(delays_frames, 50),
        "delay_p90_frames": _quantile(delays_frames, 90),
        "delay_median_s": _quantile(delays_s, 50),
        "delay_p90_s": _quantile(delays_s, 90),
        "flicker_switches": switches,
        "lesion_minutes": float(lesion_minutes),
        "flicker_per_lesion_min": _ratio(switches, lesion_minutes),
    }


def lesion_metrics(videos: Sequence[Video], k: int = 1, protocol: str = "sun") -> dict:
    """Lesion-level figures of `videos` (see the module docstring), a track being found when >= k frames hit."""
    _check_k(k)  # before any matching
    return summarize([match_video(video, protocol) for video in videos], k)


def videos_from_coco(
    gt: dict, detections: list[dict], score_threshold: float, source: str = "ground truth"
) -> list[Video]:
    """The videos of a COCO-VID ground truth (images with video_id and frame_id, annotations with the lesion's
    instance_id, videos with their fps) with the COCO results `detections` kept at `score_threshold`.

    A ground truth without instance ids (written before lesion tracks) treats each box as its own lesion; one
    without a video's fps is refused, since minutes cannot be counted without it.
    """
    videos = {video["id"]: video for video in gt.get("videos", [])}
    frames: dict[int, dict[int, list]] = {vid: {} for vid in videos}  # video -> frame_id -> [boxes, tracks, dets]
    where: dict[int, tuple[int, int]] = {}
    for image in gt["images"]:
        if image.get("video_id") not in videos:
            raise V2IError(f"{source}: image {image.get('id')} names no listed video (a COCO-VID file is needed)")
        where[image["id"]] = (image["video_id"], image.get("frame_id", image.get("frame_idx", 0)))
        frames[image["video_id"]][where[image["id"]][1]] = [[], [], [], []]
    for ann in gt["annotations"]:
        entry = frames[where[ann["image_id"]][0]][where[ann["image_id"]][1]]
        entry[0].append(ann["bbox"])
        entry[1].append(ann.get("instance_id", f"box{ann['id']}"))
    for det in detections:
        if det["score"] >= score_threshold and det["image_id"] in where:
            entry = frames[where[det["image_id"]][0]][where[det["image_id"]][1]]
            entry[2].append(det["bbox"])
            entry[3].append(det["score"])
    out = []
    for vid, video in videos.items():
        if "fps" not in video:
            raise V2IError(f"{source}: video {video.get('name', vid)} has no fps (re-extract the frames)")
        ordered = [frames[vid][frame_id] for frame_id in sorted(frames[vid])]
        out.append(Video(str(video.get("name", vid)), float(video["fps"]), [Frame(*entry) for entry in ordered]))
    return out
