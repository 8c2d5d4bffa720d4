"""The frame index (`index.parquet`) and the per-split COCO-VID files, and the by-video split.

Both are written deterministically: rows sorted by (split, video_id, frame_idx), ids assigned in that
order, JSON with sorted keys, Parquet without wall-clock metadata, so re-running extraction on the same
input gives byte-identical files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from v2i_core.data.annotations import Box
from v2i_core.errors import V2IError

INDEX = "index.parquet"

BOX_TYPE = pa.struct(
    [("x", pa.float64()), ("y", pa.float64()), ("w", pa.float64()), ("h", pa.float64()), ("label", pa.string())]
)


@dataclass
class FrameRow:
    """One written frame, before ids are assigned."""

    video_id: str
    frame_idx: int
    file_name: str
    width: int
    height: int
    boxes: list[Box]
    tracks: list[int]  # the lesion track of each box, unique within the video
    source_fps: float  # frames per second of the source video
    stride: int  # every stride-th source frame is written
    flags: dict = field(default_factory=dict)  # hard, hard_kind, distractor (synthetic data only)


def _count(fraction: float, n: int) -> int:
    """Videos for a split asked for with `fraction`: at least one when it is asked for at all."""
    return 0 if fraction <= 0 else max(1, round(fraction * n))


def assign_splits(
    videos: list[tuple[str, str | None]],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    where: str,
    layout_splits: tuple[str, ...] = (),
) -> dict[str, str]:
    """video_id -> split. The layout's own splits are kept (val carved from their train); otherwise a seeded
    train/val/test split. Always by video, never by frame; an empty split that is asked for is an error."""
    rng = np.random.default_rng(seed)
    fixed = {vid: split for vid, split in videos if split is not None}
    if layout_splits:
        pool = sorted(vid for vid, split in fixed.items() if split == "train")
        n_val, n_test = _count(val_fraction, len(pool)), 0
        asked = {"train": 1.0, "val": val_fraction, **{s: 1.0 for s in layout_splits if s != "train"}}
    else:
        pool = sorted(vid for vid, _ in videos)
        n_val, n_test = _count(val_fraction, len(pool)), _count(test_fraction, len(pool))
        asked = {"train": 1.0, "val": val_fraction, "test": test_fraction}
    order = [pool[i] for i in rng.permutation(len(pool))] if pool else []
    splits = dict(fixed)
    for i, vid in enumerate(order):
        splits[vid] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    counts = {name: sum(1 for s in splits.values() if s == name) for name in asked}
    for name, fraction in sorted(asked.items()):
        if fraction > 0 and counts[name] == 0:
            raise V2IError(
                f"{where}: split '{name}' would be empty ({len(pool)} videos to share between train, val"
                f"{'' if layout_splits else ' and test'}; val_fraction={val_fraction}, test_fraction={test_fraction})"
            )
    return splits


def build_table(rows: list[FrameRow], splits: dict[str, str], with_flags: bool) -> pa.Table:
    """The index as an Arrow table, sorted and with COCO image ids 1..N."""
    ordered = sorted(rows, key=lambda r: (splits[r.video_id], r.video_id, r.frame_idx))
    columns = {
        "image_id": pa.array(range(1, len(ordered) + 1), pa.int64()),
        "video_id": pa.array([r.video_id for r in ordered], pa.string()),
        "frame_idx": pa.array([r.frame_idx for r in ordered], pa.int64()),
        "file_name": pa.array([r.file_name for r in ordered], pa.string()),
        "width": pa.array([r.width for r in ordered], pa.int64()),
        "height": pa.array([r.height for r in ordered], pa.int64()),
        "split": pa.array([splits[r.video_id] for r in ordered], pa.string()),
        "boxes": pa.array([[b.as_dict() for b in r.boxes] for r in ordered], pa.list_(BOX_TYPE)),
        "track_ids": pa.array([r.tracks for r in ordered], pa.list_(pa.int64())),
        "fps": pa.array([r.source_fps / r.stride for r in ordered], pa.float64()),
        "source_fps": pa.array([r.source_fps for r in ordered], pa.float64()),
    }
    if with_flags:
        columns["hard"] = pa.array([bool(r.flags.get("hard")) for r in ordered], pa.bool_())
        columns["hard_kind"] = pa.array([r.flags.get("hard_kind") for r in ordered], pa.string())
        columns["distractor"] = pa.array([bool(r.flags.get("distractor")) for r in ordered], pa.bool_())
    return pa.table(columns)


def write_table(table: pa.Table, path: Path) -> None:
    # no pandas metadata and a fixed writer: the bytes depend on the rows only
    pq.write_table(table.replace_schema_metadata(None), path, compression="zstd", store_schema=False)


def coco_documents(table: pa.Table, categories: list[str]) -> dict[str, dict]:
    """One COCO-VID document per split: images with video_id/frame_id, annotations with the lesion's
    instance_id, videos with their frame rates, categories.

    Video ids and instance ids are global, numbered in image-id order, so each is unique across every file (as
    the ImageNet-VID to COCO-VID converters number instance ids) and a video keeps its ids in every file.
    """
    cat_ids = {name: i + 1 for i, name in enumerate(categories)}
    rows = table.to_pylist()
    video_ids: dict[str, int] = {}
    instance_ids: dict[tuple[str, int], int] = {}
    for row in rows:
        video_ids.setdefault(row["video_id"], len(video_ids) + 1)
        for track in row["track_ids"]:
            instance_ids.setdefault((row["video_id"], track), len(instance_ids) + 1)
    docs: dict[str, dict] = {}
    frame_ids: dict[str, int] = {}
    ann_id = 0
    for row in rows:
        doc = docs.setdefault(
            row["split"],
            {
                "info": {"description": f"V2I frames, split {row['split']}", "version": "1"},
                "images": [],
                "annotations": [],
                "videos": [],
                "categories": [{"id": i, "name": n, "supercategory": "lesion"} for n, i in cat_ids.items()],
            },
        )
        vid = video_ids[row["video_id"]]
        if row["video_id"] not in frame_ids:
            doc["videos"].append(
                {"id": vid, "name": row["video_id"], "fps": row["fps"], "source_fps": row["source_fps"]}
            )
        frame_id = frame_ids[row["video_id"]] = frame_ids.get(row["video_id"], -1) + 1
        doc["images"].append(
            {
                "id": row["image_id"],
                "file_name": row["file_name"],
                "width": row["width"],
                "height": row["height"],
                "video_id": vid,
                "frame_id": frame_id,
                "frame_idx": row["frame_idx"],
            }
        )
        for box, track in zip(row["boxes"], row["track_ids"], strict=True):
            ann_id += 1
            doc["annotations"].append(
                {
                    "id": ann_id,
                    "image_id": row["image_id"],
                    "video_id": vid,
                    "instance_id": instance_ids[(row["video_id"], track)],
                    "category_id": cat_ids[box["label"]],
                    "bbox": [box["x"], box["y"], box["w"], box["h"]],
                    "area": box["w"] * box["h"],
                    "iscrowd": 0,
                }
            )
    return docs


def write_coco(docs: dict[str, dict], out: Path) -> None:
    for split, doc in docs.items():
        (out / f"coco_{split}.json").write_text(json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n")
