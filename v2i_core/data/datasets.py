"""Torch datasets over a frames directory (`v2i extract` output): single frames, and clips of T frames.

A clip is the current frame plus T-1 reference frames of the same video at fixed offsets in the index's
frame order, clamped at the video's ends; one augmentation draw is applied to all of its frames and to
the current frame's boxes (its hard-frame degradation, when drawn, to the current frame only; a clip dataset made
with keep_clean keeps the clip clean and returns the degraded frame beside it, as target["student_frame"], for a
distillation whose teacher sees the clean view). Targets follow
DETR: boxes (cx, cy, w, h) normalised to [0, 1], labels category_id - 1, the image id, and the written frame's
(height, width) to map predictions back.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from v2i_core.config import AugmentConfig
from v2i_core.data.annotations import Box
from v2i_core.data.hard_frames import degrade
from v2i_core.data.index import INDEX
from v2i_core.data.source import DEFAULT_FPS
from v2i_core.data.tracks import link_by_overlap
from v2i_core.data.transforms import apply_boxes, apply_frames, identity, sample_augment
from v2i_core.errors import V2IError

log = logging.getLogger(__name__)


def load_index(frames_dir: str | Path) -> pd.DataFrame:
    """The frame index as a DataFrame (one row per written frame, sorted by image_id).

    An index written before lesion tracks and frame rates were recorded is completed as it is read: its boxes
    linked into tracks by overlap (`tracks.link_by_overlap`, over the written frames of each video) and its
    videos given DEFAULT_FPS, each with a warning; extracting again records the source's own.
    """
    path = Path(frames_dir) / INDEX
    if not path.is_file():
        raise V2IError(f"{path}: missing (is {frames_dir} the output of `v2i extract`?)")
    index = pd.read_parquet(path).sort_values("image_id", kind="stable").reset_index(drop=True)
    if "track_ids" not in index and {"video_id", "frame_idx", "boxes"} <= set(index.columns):
        log.warning("%s: no track_ids (written before lesion tracks); linking its boxes by overlap", path)
        index["track_ids"] = _linked_tracks(index)
    if "fps" not in index:
        log.warning("%s: no frame rates (written before they were recorded); assuming %g fps", path, DEFAULT_FPS)
        index["fps"] = index["source_fps"] = DEFAULT_FPS
    return index


def _linked_tracks(index: pd.DataFrame) -> list[np.ndarray]:
    """Track ids of every row's boxes, linked by overlap through each video's rows in frame order."""
    tracks: list[np.ndarray] = [np.zeros(0, np.int64)] * len(index)
    for _, group in index.groupby("video_id", sort=False):
        rows = group.sort_values("frame_idx", kind="stable")
        frames = [[Box(b["x"], b["y"], b["w"], b["h"], b["label"]) for b in boxes] for boxes in rows["boxes"]]
        for row, ids in zip(rows.index, link_by_overlap(frames), strict=True):
            tracks[row] = np.asarray(ids, np.int64)
    return tracks


def load_categories(frames_dir: str | Path) -> list[dict]:
    """[{id, name}, ...] of the lesion classes, ids 1..C, as in every coco_<split>.json."""
    files = sorted(Path(frames_dir).glob("coco_*.json"))
    if not files:
        raise V2IError(f"{frames_dir}: no coco_<split>.json files (is it the output of `v2i extract`?)")
    categories = json.loads(files[0].read_text())["categories"]
    return [{"id": int(c["id"]), "name": str(c["name"])} for c in sorted(categories, key=lambda c: c["id"])]


def clip_offsets(frames: int, ref_stride: int) -> list[int]:
    """Offsets of a clip's frames in temporal order, the current frame at index frames // 2."""
    if frames < 1 or ref_stride < 1:
        raise V2IError(f"clip: frames ({frames}) and ref_stride ({ref_stride}) must be positive")
    return [(i - frames // 2) * ref_stride for i in range(frames)]


class FrameDataset(Dataset):
    """Single frames of one split: (image [3, H, W], target)."""

    def __init__(
        self,
        frames_dir: str | Path,
        split: str,
        input_size: tuple[int, int],
        augment: AugmentConfig | None = None,
        generator: torch.Generator | None = None,
    ):
        self.frames_dir = Path(frames_dir)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.augment = augment
        self.generator = generator
        index = load_index(self.frames_dir)
        if split not in set(index["split"]):
            raise V2IError(f"{self.frames_dir}: no split '{split}' in the index (has {sorted(set(index['split']))})")
        labels = {c["name"]: c["id"] - 1 for c in load_categories(self.frames_dir)}
        self.rows = index[index["split"] == split].reset_index(drop=True)
        self.boxes = [_xyxy(boxes) for boxes in self.rows["boxes"]]
        self.labels = [
            torch.tensor([labels[b["label"]] for b in boxes], dtype=torch.long) for boxes in self.rows["boxes"]
        ]
        self.refs = [[i] for i in range(len(self.rows))]  # rows making up each sample; a clip has several
        self.current = 0  # the position of the sample's own frame among them
        self.keep_clean = False  # a clip dataset may keep a drawn degradation out of the clip (see ClipDataset)

    def __len__(self) -> int:
        return len(self.rows)

    def _load(self, row: int, size_wh: tuple[int, int]) -> Image.Image:
        with Image.open(self.frames_dir / self.rows.at[row, "file_name"]) as image:
            rgb = image.convert("RGB")
        if rgb.size != size_wh:  # a reference frame of another size: match the current one
            rgb = rgb.resize(size_wh, Image.Resampling.BILINEAR)
        return rgb

    def _sample(self, i: int) -> tuple[torch.Tensor, dict]:
        """(frames [T, 3, H, W] normalised, target of row i)."""
        size_hw = (int(self.rows.at[i, "height"]), int(self.rows.at[i, "width"]))
        frames = [self._load(r, size_hw[::-1]) for r in self.refs[i]]
        boxes = self.boxes[i]
        aug = sample_augment(self.augment, size_hw, boxes, self.generator) if self.augment else identity(size_hw)
        degraded = aug.hard is not None
        if degraded:
            hard = degrade(frames[self.current], boxes, *aug.hard, self.augment.hard_strength)
            if self.keep_clean:
                frames.append(hard)  # transformed with the clip, split off below
            else:
                frames[self.current] = hard
        target = {
            "boxes": apply_boxes(boxes, aug),
            "labels": self.labels[i],
            "image_id": int(self.rows.at[i, "image_id"]),
            "orig_size": torch.tensor(size_hw, dtype=torch.long),
        }
        out = apply_frames(frames, aug, self.input_size)
        if degraded and self.keep_clean:
            out, target["student_frame"] = out[:-1], out[-1]
        return out, target

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]:
        frames, target = self._sample(i)
        return frames[0], target  # [3, H, W]


class ClipDataset(FrameDataset):
    """Clips of `frames` frames around each frame of one split: (clip [T, 3, H, W], target of the current frame).

    keep_clean: a drawn hard-frame degradation leaves the clip clean and comes as target["student_frame"]
    [3, H, W] (under the clip's crop, flip and colour), the image student's input where the teacher sees the clip."""

    def __init__(
        self,
        frames_dir: str | Path,
        split: str,
        input_size: tuple[int, int],
        frames: int,
        ref_stride: int,
        augment: AugmentConfig | None = None,
        generator: torch.Generator | None = None,
        keep_clean: bool = False,
    ):
        super().__init__(frames_dir, split, input_size, augment, generator)
        self.offsets = clip_offsets(frames, ref_stride)
        self.current = frames // 2
        self.keep_clean = keep_clean
        self.refs = [[] for _ in range(len(self.rows))]
        for _, group in self.rows.groupby("video_id", sort=False):
            order = group.sort_values("frame_idx").index.tolist()  # rows of the video in temporal order
            last = len(order) - 1
            for pos, row in enumerate(order):
                self.refs[row] = [order[min(max(pos + off, 0), last)] for off in self.offsets]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]:
        return self._sample(i)  # [T, 3, H, W]


def _xyxy(boxes) -> torch.Tensor:
    """Index boxes (x, y, w, h pixels) -> [n, 4] x0, y0, x1, y1."""
    if len(boxes) == 0:
        return torch.zeros((0, 4))
    return torch.tensor([[b["x"], b["y"], b["x"] + b["w"], b["y"] + b["h"]] for b in boxes], dtype=torch.float32)


def collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    """Stack images [B, 3, H, W] (or clips [B, T, 3, H, W]); targets stay a list."""
    inputs, targets = zip(*batch, strict=True)
    return torch.stack(inputs), list(targets)
