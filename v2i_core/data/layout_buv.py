"""The BUV layout of CVA-Net: `rawframes/<benign|malignant>/<video>/NNNNNN.png` and COCO-VID JSON files.

The train file is `imagenet_vid_train*.json` (CVA-Net ships `imagenet_vid_train_15frames.json`), or
`train.json`, or `annotations/instances_imagenet_vid_train*.json`; the val file likewise with `val`.
`file_name`s are relative to `rawframes`; the video is the file's folder (`<class>/<video>`, the video id)
and the frame index is the file's number. Only the frames an annotation file lists are extracted: the
others carry no labels. BUV's val videos are the paper's test set, so they form split `test`; a seeded
`val` is carved from the train videos. An annotation's `instance_id` (or `track_id`) names its lesion: the same
id within a video is one lesion track; without them boxes are linked by overlap from one listed frame to the next.
The frames carry no frame rate: extraction gives them `extract.fps`.
"""

from __future__ import annotations

import json
from pathlib import Path

from v2i_core.data.annotations import (
    Box,
    FrameAnnotation,
    check_all_or_none,
    check_frame_tracks,
    is_bbox,
    track_name,
)
from v2i_core.data.source import SourceDataset, SourceVideo, check_unique_ids, shower
from v2i_core.errors import V2IError
from v2i_core.storage import read_json

CANDIDATES = {
    "train": (
        "imagenet_vid_train.json",
        "imagenet_vid_train_*.json",
        "train.json",
        "annotations/instances_imagenet_vid_train*.json",
    ),
    "test": (
        "imagenet_vid_val.json",
        "imagenet_vid_val_*.json",
        "val.json",
        "annotations/instances_imagenet_vid_val*.json",
    ),
}

# what names an annotation's lesion: ImageNet-VID's converters write `instance_id`, MOT-style files `track_id`
TRACK_KEYS = ("instance_id", "track_id")


def read_buv(root: Path, src: str) -> SourceDataset:
    shown = shower(root, src)
    frames_root = root / "rawframes"
    if not frames_root.is_dir():
        raise V2IError(f"{shown(frames_root)}: missing (the BUV layout keeps its frames there)")
    videos: list[SourceVideo] = []
    categories: list[str] | None = None
    categories_from = ""
    for split, patterns in CANDIDATES.items():
        path = _find(root, patterns)
        if path is None:
            raise V2IError(f"{shown(root)}: no {split} annotation file (looked for {', '.join(patterns)})")
        cats, split_videos = _read_file(path, shown(path), frames_root, split)
        if categories is not None and cats != categories:
            raise V2IError(f"{shown(path)}: categories {cats} differ from {categories} in {categories_from}")
        categories, categories_from = cats, shown(path)
        videos.extend(split_videos)
    check_unique_ids(videos, shown(root))
    return SourceDataset(videos, categories or [], layout_splits=tuple(CANDIDATES))


def _find(root: Path, patterns: tuple[str, ...]) -> Path | None:
    for pattern in patterns:
        matches = sorted(root.glob(pattern))
        if matches:
            return matches[0]
    return None


def _read_file(path: Path, shown: str, frames_root: Path, split: str) -> tuple[list[str], list[SourceVideo]]:
    raw = read_json(path, shown)
    if not isinstance(raw, dict) or not all(
        isinstance(raw.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise V2IError(f"{shown}: expected COCO-VID lists 'images', 'annotations' and 'categories'")
    try:
        cats = sorted(raw["categories"], key=lambda c: c["id"])
        names = {c["id"]: str(c["name"]) for c in cats}
    except (KeyError, TypeError) as exc:
        raise V2IError(f"{shown}: every category needs an 'id' and a 'name'") from exc
    images: dict = {}
    per_video: dict[str, dict[int, Path]] = {}
    for image in raw["images"]:
        if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
            raise V2IError(f"{shown}: every image needs an 'id' and a 'file_name'")
        rel = image["file_name"].removeprefix("rawframes/")
        file = frames_root / rel
        parent, stem = Path(rel).parent.as_posix(), Path(rel).stem
        if parent in ("", ".") or not stem.isdigit():
            raise V2IError(f"{shown}: file_name '{image['file_name']}' is not <class>/<video>/<frame number>.<ext>")
        if not file.is_file():
            raise V2IError(f"{shown}: annotation for frame {rel}, which the video does not have")
        index = int(stem)
        if index in per_video.setdefault(parent, {}):
            raise V2IError(f"{shown}: frame {rel} is listed twice")
        per_video[parent][index] = file
        images[image["id"]] = (parent, index)
    annotations: dict[str, dict[int, FrameAnnotation]] = {v: {} for v in per_video}
    named = unnamed = 0  # annotations with and without the lesion's id
    for ann in raw["annotations"]:
        if not isinstance(ann, dict) or ann.get("image_id") not in images:
            raise V2IError(f"{shown}: annotation {json.dumps(ann)[:80]} refers to no listed image")
        bbox = ann.get("bbox")
        video, index = images[ann["image_id"]]
        if not is_bbox(bbox):
            raise V2IError(
                f"{shown}: annotation {ann.get('id')} (frame {index} of video {video}): bbox must be four finite "
                f"numbers [x, y, w, h], got {json.dumps(bbox)}"
            )
        if ann.get("category_id") not in names:
            raise V2IError(f"{shown}: annotation {ann.get('id')}: unknown category_id {ann.get('category_id')}")
        frame = annotations[video].setdefault(index, FrameAnnotation())
        frame.boxes.append(Box(*(float(v) for v in bbox), names[ann["category_id"]]))
        key = next((k for k in TRACK_KEYS if ann.get(k) is not None), None)
        if key is None:
            unnamed += 1
            continue
        named += 1
        where = f"{shown}: annotation {ann.get('id')} (frame {index} of video {video}) '{key}'"
        frame.tracks = [*(frame.tracks or []), track_name(ann[key], where)]
        check_frame_tracks(frame.tracks, f"{shown}: frame {index} of video {video}")
    check_all_or_none(named, unnamed, shown, "an 'instance_id' or 'track_id'")
    videos = [
        SourceVideo(
            video_id=video,
            annotation_file=shown,
            annotations=annotations[video],
            split=split,
            images=sorted(files.items()),
        )
        for video, files in sorted(per_video.items())
    ]
    return [names[c["id"]] for c in cats], videos
