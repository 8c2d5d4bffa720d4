"""A causal temporal filter for live video: each frame's boxes decided from the current and past frames only.

A detector run frame by frame shows one-frame false boxes and drops a polyp for a frame now and then. The filter
follows objects from frame to frame and shows an object's box once overlapping detections were seen in at least
`k` of the last `n` frames (this one included), then keeps showing its last box for up to `hold` frames after
the detector last saw it. It never looks ahead, so it can run on a live stream; what it costs is latency,
stated by `CausalFilter.latency_frames`.

Objects are followed by greedy IoU association: the pairs (detection, object) are taken in descending IoU
order, each detection and object at most once, down to `iou_threshold`; a detection left over starts an
object. Detections are COCO-style dicts with a "bbox" [x, y, w, h]; other keys are passed through untouched.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from v2i_core.errors import V2IError
from v2i_core.eval.lesion import iou_matrix


@dataclass(eq=False)  # compared and hashed by identity
class _Object:
    """An object followed over frames: its last detection, when it was last seen, and its recent sightings."""

    detection: dict
    last_seen: int
    seen: deque  # one bool per frame for the last n frames, True where a detection was associated
    shown: bool = False  # shown at its last sighting


class CausalFilter:
    """Show an object once seen in >= k of the last n frames; keep its last box for `hold` frames after.

    Once shown, an object stays shown while the detector sees it again within `hold` frames of its last
    sighting (the gap is bridged, not re-counted); after a longer gap it must again be seen in k of n frames.
    Feed the frames in order to `update`; one filter per video.
    """

    def __init__(self, k: int, n: int, hold: int, iou_threshold: float = 0.3):
        for name, value, low in (("k", k, 1), ("n", n, 1), ("hold", hold, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise V2IError(f"temporal filter: {name} must be an integer >= {low}, got {value!r}")
        if k > n:
            raise V2IError(f"temporal filter: k ({k}) must be <= n ({n}): k of the last n frames")
        if not 0 < iou_threshold <= 1:
            raise V2IError(f"temporal filter: iou_threshold must be in (0, 1], got {iou_threshold!r}")
        self.k, self.n, self.hold, self.iou_threshold = k, n, hold, iou_threshold
        self.frame = -1
        self.objects: list[_Object] = []

    @property
    def latency_frames(self) -> int:
        """Frames by which the filter delays a new object: k - 1.

        An object detected in every frame from frame t on is first shown at frame t + k - 1 (the detector alone
        shows it at t). One detected intermittently is shown at its k-th sighting within n frames, so later; the
        filter never shows an object earlier than the detector. Disappearing objects are the other way round:
        their box stays up to `hold` frames longer than the detector's.
        """
        return self.k - 1

    def _associate(self, boxes: np.ndarray) -> dict[int, _Object]:
        """Detection index -> the object it continues, by greedy IoU >= iou_threshold."""
        if not self.objects or not len(boxes):
            return {}
        iou = iou_matrix(boxes, np.array([o.detection["bbox"] for o in self.objects], dtype=float))
        rows, cols = np.nonzero(iou >= self.iou_threshold)
        pairs = sorted(zip(rows.tolist(), cols.tolist(), strict=True), key=lambda p: -iou[p])
        matched: dict[int, _Object] = {}
        taken: set[int] = set()
        for d, o in pairs:
            if d not in matched and o not in taken:
                matched[d] = self.objects[o]
                taken.add(o)
        return matched

    def update(self, detections: list[dict]) -> list[dict]:
        """The detections to show for the next frame, given its detections: the shown ones among them (in
        their order), then the held last boxes of shown objects not seen in this frame."""
        self.frame += 1
        boxes = np.array([d["bbox"] for d in detections], dtype=float).reshape(-1, 4)
        matched = self._associate(boxes)
        continued = set(matched.values())
        for obj in self.objects:
            obj.seen.append(obj in continued)
        shown = []
        for i, detection in enumerate(detections):
            obj = matched.get(i)
            if obj is None:
                obj = _Object(detection, self.frame, deque([True], maxlen=self.n))
                self.objects.append(obj)
            bridged = obj.shown and self.frame - obj.last_seen <= self.hold + 1
            obj.detection, obj.last_seen = detection, self.frame
            obj.shown = bridged or sum(obj.seen) >= self.k
            if obj.shown:
                shown.append(detection)
        held = [o.detection for o in self.objects if o.shown and 0 < self.frame - o.last_seen <= self.hold]
        # An object is forgotten once its sightings are out of the window and its hold has run out.
        self.objects = [o for o in self.objects if self.frame - o.last_seen < max(self.n, self.hold + 1)]
        return shown + held


def filter_video(
    frames: Iterable[list[dict]], k: int, n: int, hold: int, iou_threshold: float = 0.3
) -> list[list[dict]]:
    """A fresh `CausalFilter` applied to a video's per-frame detection lists, in order: the shown lists."""
    temporal = CausalFilter(k, n, hold, iou_threshold)
    return [temporal.update(detections) for detections in frames]


def build_filter(cfg) -> CausalFilter:
    """The filter of the params' `filter` section."""
    return CausalFilter(cfg.k, cfg.n, cfg.hold, cfg.iou)


def filter_coco(gt: dict, detections: list[dict], score_threshold: float, cfg) -> list[dict]:
    """COCO results `detections` kept at `score_threshold`, passed video by video, frame by frame (frame_id order)
    through a fresh filter of the `filter` section; a held box is re-issued for the frame it is shown on."""
    frames: dict[int, list[dict]] = {}
    for det in detections:
        if det["score"] >= score_threshold:
            frames.setdefault(det["image_id"], []).append(det)
    by_video: dict[object, list[dict]] = {}
    for image in gt["images"]:
        by_video.setdefault(image.get("video_id"), []).append(image)
    out = []
    for images in by_video.values():
        temporal = build_filter(cfg)
        for image in sorted(images, key=lambda im: im.get("frame_id", im.get("frame_idx", 0))):
            out += [{**det, "image_id": image["id"]} for det in temporal.update(frames.get(image["id"], []))]
    return out
