"""The `videos` layout (a folder of video files, one `<stem>.json` annotation file each) and `synthetic`, which is
the same plus the `synth.json` manifest that `v2i synth` writes. A video's frame rate is its container's."""

from __future__ import annotations

from pathlib import Path

from v2i_core.data.annotations import MANIFEST, check_box, read_annotation_file
from v2i_core.data.source import SourceDataset, SourceVideo, check_unique_ids, shower
from v2i_core.data.video import VIDEO_SUFFIXES, stream_info
from v2i_core.errors import V2IError
from v2i_core.storage import read_json


def read_videos(root: Path, src: str) -> SourceDataset:
    return _read(root, src, manifest=None)


def read_synthetic(root: Path, src: str) -> SourceDataset:
    shown = shower(root, src)
    path = root / MANIFEST
    if not path.exists():
        raise V2IError(f"{shown(path)}: manifest missing (not a `v2i synth` output; try --format videos)")
    manifest = read_json(path, shown(path))
    if not isinstance(manifest, dict) or not isinstance(manifest.get("categories"), list) or not manifest["categories"]:
        raise V2IError(f"{shown(path)}: expected an object with a non-empty 'categories' list")
    for entry in manifest.get("videos", []):
        if not (root / str(entry.get("file", ""))).is_file():
            raise V2IError(f"{shown(path)}: lists video '{entry.get('file')}' which is missing")
    return _read(root, src, manifest=manifest)


def _video_files(root: Path, shown) -> list[Path]:
    if not root.is_dir():
        raise V2IError(f"{shown(root)}: not a directory of videos")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if not files:
        raise V2IError(f"{shown(root)}: no video files ({', '.join(VIDEO_SUFFIXES)})")
    return files


def _read(root: Path, src: str, manifest: dict | None) -> SourceDataset:
    shown = shower(root, src)
    files = _video_files(root, shown)
    stems = {p.stem for p in files}
    for orphan in sorted(p for p in root.glob("*.json") if p.name != MANIFEST and p.stem not in stems):
        raise V2IError(f"{shown(orphan)}: annotation file without a video of the same name")
    videos, declared, labels, has_flags = [], [], set(), False
    for path in files:
        ann_path = path.with_suffix(".json")
        ann = read_annotation_file(ann_path, shown(ann_path))
        width, height, fps = stream_info(path, shown(path))
        if ann.width and ann.height and (ann.width, ann.height) != (width, height):
            raise V2IError(f"{ann.path}: says {ann.width}x{ann.height} but the video is {width}x{height}")
        if ann.frame_count is not None and ann.frames and max(ann.frames) >= ann.frame_count:
            raise V2IError(
                f"{ann.path}: annotation for frame {max(ann.frames)}, but the video has {ann.frame_count} frames"
            )
        for index, frame in sorted(ann.frames.items()):  # fail before decoding anything
            for box in frame.boxes:
                check_box(box, width, height, f"{ann.path}: frame {index}")
        if ann.categories:
            declared.append((ann.path, ann.categories))
        labels.update(b.label for f in ann.frames.values() for b in f.boxes)
        has_flags = has_flags or ann.has_flags
        videos.append(
            SourceVideo(
                video_id=path.stem,
                annotation_file=ann.path,
                annotations=ann.frames,
                video_path=path,
                video_shown=shown(path),
                frame_count=ann.frame_count,
                fps=fps,
            )
        )
    check_unique_ids(videos, shown(root))
    categories = _categories(manifest, declared, labels, shown(root))
    for label in sorted(labels - set(categories)):
        raise V2IError(f"{shown(root)}: label '{label}' is not among the categories {categories}")
    return SourceDataset(videos, categories, has_flags=has_flags)


def _categories(manifest: dict | None, declared: list, labels: set[str], root_shown: str) -> list[str]:
    """The manifest's categories, else those the annotation files declare (they must agree), else the labels."""
    if manifest is not None:
        return [str(c) for c in manifest["categories"]]
    if declared:
        first_path, first = declared[0]
        for path, cats in declared[1:]:
            if cats != first:
                raise V2IError(f"{path}: categories {cats} differ from {first} in {first_path}")
        return list(first)
    if not labels:
        raise V2IError(f"{root_shown}: no boxes and no 'categories' in any annotation file")
    return sorted(labels)
