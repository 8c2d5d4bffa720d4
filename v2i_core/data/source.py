"""What a layout reader hands to extraction: videos, each with its frames' origin and annotations.

A layout reader parses and validates every annotation file up front (so bad input fails before any
frame is decoded) and says where each video's frames come from: a video file decoded in order, or a
list of image files with their frame indices. It gives a video's frame rate where the source states one (a
video container); extraction gives the others `extract.fps`, or DEFAULT_FPS.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from v2i_core.data.annotations import FrameAnnotation
from v2i_core.errors import V2IError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
# The frame rate assumed where neither the source nor `extract.fps` gives one: PAL video's, and `synth.fps`'s
# default. SUN-SEG and BUV ship image folders without a rate; set `extract.fps` to the one they were recorded at.
DEFAULT_FPS = 25.0


@dataclass
class SourceVideo:
    video_id: str
    annotation_file: str  # as shown to the user, for error messages
    annotations: dict[int, FrameAnnotation]
    split: str | None = None  # the layout's own split, if it has one
    video_path: Path | None = None  # frames from a video file ...
    video_shown: str = ""
    images: list[tuple[int, Path]] = field(default_factory=list)  # ... or (frame index, image file)
    frame_count: int | None = None  # how many frames the annotation file says the video has
    fps: float | None = None  # frames per second of the source video, where the source says

    def sequence(self) -> list[int]:
        """The frame indices the source annotates, in order: an image layout's listed frames, or every frame
        of a video file up to its last annotated one (an unlisted frame has no lesion)."""
        if self.video_path is None:
            return [index for index, _ in self.images]
        return list(range(max(self.annotations, default=-1) + 1))


@dataclass
class SourceDataset:
    videos: list[SourceVideo]
    categories: list[str]
    has_flags: bool = False  # per-frame hard / distractor flags are known (synthetic data)
    layout_splits: tuple[str, ...] = ()  # split names the layout defines itself ("train" among them)


def shower(root: Path, src: str) -> Callable[[Path], str]:
    """Map a local path under `root` to the name the user knows it by (under `src`, e.g. an s3:// URI)."""
    base = str(src).rstrip("/")

    def shown(path: Path) -> str:
        try:
            rel = path.relative_to(root).as_posix()
        except ValueError:
            return str(path)
        return base if rel == "." else f"{base}/{rel}"

    return shown


def natural_key(name: str) -> list:
    """Sort key that orders image2 before image10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def check_unique_ids(videos: list[SourceVideo], where: str) -> None:
    seen: dict[str, SourceVideo] = {}
    for video in videos:
        if video.video_id in seen:
            other = seen[video.video_id]
            raise V2IError(
                f"{where}: video '{video.video_id}' appears twice ({other.annotation_file}, {video.annotation_file});"
                " splits are by video, so a video must be in one split only"
            )
        seen[video.video_id] = video
