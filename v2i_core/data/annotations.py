"""Boxes, per-frame annotations, and the per-video annotation file of the `videos` / `synthetic` layouts.

One JSON file per video (`<video stem>.json`, see docs/data-formats.md):

    {"version": 1, "frames": 48, "width": 160, "height": 128, "categories": ["polyp"],
     "annotations": [{"frame": 0, "boxes": [{"x": 10.0, "y": 20.0, "w": 30.0, "h": 25.0, "label": "polyp",
                                             "track": 1}],
                      "hard": false, "hard_kind": null, "distractor": false}, ...]}

Only `annotations` is required; a frame that is not listed has no lesion. Boxes are COCO-style pixels
(top-left corner, width, height) of the video as stored. A box's optional `track` (an integer or a string) names
its lesion: boxes of the file with the same `track` are one lesion track (see `tracks.py`); a file gives it on
every box or on none.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from v2i_core.errors import V2IError
from v2i_core.storage import read_json

FORMAT_VERSION = 1
MANIFEST = "synth.json"  # what marks a `videos` folder as `v2i synth` output
# Boxes may overhang the frame by this much (annotation tools round outwards); more is an error.
EDGE_TOLERANCE = 1.0


@dataclass(frozen=True)
class Box:
    """A lesion box in pixels: top-left corner (x, y), width w, height h, class name."""

    x: float
    y: float
    w: float
    h: float
    label: str

    def scaled(self, sx: float, sy: float) -> Box:
        return Box(self.x * sx, self.y * sy, self.w * sx, self.h * sy, self.label)

    def as_dict(self) -> dict:
        return {"x": self.x, "y": self.y, "w": self.w, "h": self.h, "label": self.label}


@dataclass
class FrameAnnotation:
    """What is known about one source frame: its boxes and, for synthetic data, its difficulty flags.

    `tracks`, parallel to `boxes`: the lesion of each box as the source names it (None: the source does not),
    then, once `tracks.assign_tracks` has run, the track id of each box within its video.
    """

    boxes: list[Box] = field(default_factory=list)
    hard: bool = False
    hard_kind: str | None = None
    distractor: bool = False
    tracks: list | None = None


def check_box(box: Box, width: int, height: int, where: str) -> Box:
    """Reject non-finite numbers, non-positive sizes and boxes outside the frame; clip a sub-pixel overhang into it."""
    if not all(math.isfinite(v) for v in (box.x, box.y, box.w, box.h)):
        raise V2IError(f"{where}: box {_fmt(box)} has a coordinate that is not a finite number")
    if not box.w > 0 or not box.h > 0:
        raise V2IError(f"{where}: box {_fmt(box)} has non-positive size")
    tol = EDGE_TOLERANCE
    if box.x < -tol or box.y < -tol or box.x + box.w > width + tol or box.y + box.h > height + tol:
        raise V2IError(f"{where}: box {_fmt(box)} lies outside the {width}x{height} frame")
    if box.x >= 0 and box.y >= 0 and box.x + box.w <= width and box.y + box.h <= height:
        return box
    x0, y0 = max(box.x, 0.0), max(box.y, 0.0)
    x1, y1 = min(box.x + box.w, float(width)), min(box.y + box.h, float(height))
    if x1 <= x0 or y1 <= y0:
        raise V2IError(f"{where}: box {_fmt(box)} lies outside the {width}x{height} frame")
    return Box(x0, y0, x1 - x0, y1 - y0, box.label)


def _fmt(box: Box) -> str:
    return f"[x={box.x:g}, y={box.y:g}, w={box.w:g}, h={box.h:g}]"


@dataclass
class VideoAnnotation:
    """A parsed annotation file: per-frame annotations plus what the file says about its video."""

    path: str
    frames: dict[int, FrameAnnotation]
    frame_count: int | None = None
    width: int | None = None
    height: int | None = None
    categories: list[str] | None = None
    has_flags: bool = False


def is_number(value) -> bool:
    """A finite JSON number: Python's JSON parser also reads NaN, Infinity and 1e999, which no box may hold."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_bbox(value) -> bool:
    """Four finite numbers, as the COCO-style `bbox` lists of SUN-SEG and BUV give a box."""
    return isinstance(value, list) and len(value) == 4 and all(is_number(v) for v in value)


def _number(value, where: str) -> float:
    if not is_number(value):
        raise V2IError(f"{where}: expected a finite number, got {json.dumps(value)}")
    return float(value)


def _optional_int(raw: dict, key: str, path: str) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise V2IError(f"{path}: '{key}' must be a positive integer")
    return value


def parse_box(raw, where: str) -> Box:
    if not isinstance(raw, dict):
        raise V2IError(f"{where}: a box must be an object with x, y, w, h, label")
    missing = [k for k in ("x", "y", "w", "h", "label") if k not in raw]
    if missing:
        raise V2IError(f"{where}: box lacks {', '.join(missing)}")
    if not isinstance(raw["label"], str) or not raw["label"]:
        raise V2IError(f"{where}: box label must be a non-empty string")
    return Box(*(_number(raw[k], f"{where} '{k}'") for k in ("x", "y", "w", "h")), raw["label"])


def track_name(value, where: str) -> int | str:
    """A lesion's name as a source gives it: an integer or a non-empty string."""
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        raise V2IError(f"{where}: a track must be an integer or a non-empty string, got {json.dumps(value)}")
    return value


def check_frame_tracks(names: list, where: str) -> None:
    """Two boxes of one frame are two lesions: they cannot share a track."""
    seen = set()
    for name in names:
        if name in seen:
            raise V2IError(f"{where}: track {json.dumps(name)} is given to two boxes of the same frame")
        seen.add(name)


def check_all_or_none(named: int, unnamed: int, where: str, what: str) -> None:
    """A source names the lesions of all its boxes or of none: a mix cannot be turned into tracks."""
    if named and unnamed:
        raise V2IError(f"{where}: {named} boxes have {what} and {unnamed} do not; give every box one, or none")


def read_annotation_file(path: Path, shown: str | None = None) -> VideoAnnotation:
    """Parse and validate one per-video annotation file; errors name the file (as `shown`) and the entry."""
    shown = shown or str(path)
    if not path.exists():
        raise V2IError(f"{shown}: annotation file missing")
    raw = read_json(path, shown)
    if not isinstance(raw, dict) or not isinstance(raw.get("annotations"), list):
        raise V2IError(f"{shown}: expected an object with an 'annotations' list")
    categories = raw.get("categories")
    if categories is not None and (
        not isinstance(categories, list) or not categories or not all(isinstance(c, str) and c for c in categories)
    ):
        raise V2IError(f"{shown}: 'categories' must be a non-empty list of class names")
    frames: dict[int, FrameAnnotation] = {}
    has_flags = False
    named = unnamed = 0  # boxes with and without a `track`
    for entry in raw["annotations"]:
        if not isinstance(entry, dict) or "frame" not in entry:
            raise V2IError(f"{shown}: every annotation needs a 'frame' index")
        index = entry["frame"]
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise V2IError(f"{shown}: frame index {json.dumps(index)} is not a non-negative integer")
        if index in frames:
            raise V2IError(f"{shown}: frame {index} is annotated twice")
        where = f"{shown}: frame {index}"
        boxes = entry.get("boxes", [])
        if not isinstance(boxes, list):
            raise V2IError(f"{where}: 'boxes' must be a list")
        parsed = [parse_box(b, where) for b in boxes]
        names = [track_name(b["track"], f"{where} 'track'") for b in boxes if b.get("track") is not None]
        check_frame_tracks(names, where)
        named += len(names)
        unnamed += len(parsed) - len(names)
        if categories is not None:
            for box in parsed:
                if box.label not in categories:
                    raise V2IError(f"{where}: label '{box.label}' is not one of the file's categories {categories}")
        has_flags = has_flags or "hard" in entry or "distractor" in entry
        kind = entry.get("hard_kind")
        frames[index] = FrameAnnotation(
            parsed,
            bool(entry.get("hard", False)),
            kind if isinstance(kind, str) else None,
            bool(entry.get("distractor", False)),
            names if names else None,
        )
    check_all_or_none(named, unnamed, shown, "a 'track'")
    return VideoAnnotation(
        path=shown,
        frames=frames,
        frame_count=_optional_int(raw, "frames", shown),
        width=_optional_int(raw, "width", shown),
        height=_optional_int(raw, "height", shown),
        categories=list(categories) if categories else None,
        has_flags=has_flags,
    )


def annotation_document(frames: list[FrameAnnotation], width: int, height: int, categories: list[str]) -> dict:
    """The JSON document for a fully annotated video (every frame listed, flags included; each box's `track` where
    the frames name their lesions)."""
    return {
        "version": FORMAT_VERSION,
        "frames": len(frames),
        "width": width,
        "height": height,
        "categories": categories,
        "annotations": [
            {
                "frame": i,
                "boxes": [
                    {**b.as_dict(), "track": t} if ann.tracks is not None else b.as_dict()
                    for b, t in zip(ann.boxes, ann.tracks or [None] * len(ann.boxes), strict=True)
                ],
                "hard": ann.hard,
                "hard_kind": ann.hard_kind,
                "distractor": ann.distractor,
            }
            for i, ann in enumerate(frames)
        ],
    }
