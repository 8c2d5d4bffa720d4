"""`v2i extract`: decode a dataset (videos, SUN-SEG, BUV, synthetic) into JPEG frames + index + COCO files.

Videos are spread over processes, one per core; in each, the main thread decodes while a second thread
resizes, JPEG-encodes and writes the frames (PyAV and Pillow both release the GIL while they work), so
extraction keeps up with plain decoding. Image-folder layouts are read, encoded and written the same way, except
that a JPEG frame which keeps its size is copied as it is. Everything is built in a temporary folder that replaces
`out` only when the whole dataset has been written; an s3:// source is first downloaded, many objects at a time.
"""

from __future__ import annotations

import io
import logging
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from v2i_core.config import ExtractConfig
from v2i_core.data.annotations import check_box
from v2i_core.data.index import INDEX, FrameRow, assign_splits, build_table, coco_documents, write_coco, write_table
from v2i_core.data.layout_buv import read_buv
from v2i_core.data.layout_sunseg import read_sunseg
from v2i_core.data.layout_videos import read_synthetic, read_videos
from v2i_core.data.source import DEFAULT_FPS, SourceDataset, SourceVideo
from v2i_core.data.tracks import assign_tracks
from v2i_core.data.video import decode
from v2i_core.errors import V2IError
from v2i_core.storage import atomic_dir, local_copy

log = logging.getLogger(__name__)

LAYOUTS: dict[str, Callable[[Path, str], SourceDataset]] = {
    "videos": read_videos,
    "sun-seg": read_sunseg,
    "buv": read_buv,
    "synthetic": read_synthetic,
}
JPEG_QUALITY = 95
BATCH = 16  # frames per encoder task
ENCODER_THREADS = 2  # per process: encoding overlaps decoding
IN_FLIGHT = 8  # batches decoded ahead of the encoders: bounds memory
EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class Job:
    """How frames are written: every `stride`-th source frame, optionally resized to (width, height)."""

    out: Path
    stride: int
    resize: tuple[int, int] | None


def read_layout(fmt: str, root: Path, src: str, fps: float | None = None) -> SourceDataset:
    """The dataset at `root` as its layout reads it, every box given its lesion track and every video a frame
    rate: the source's, else `fps`, else DEFAULT_FPS."""
    if fmt not in LAYOUTS:
        raise V2IError(f"{src}: unknown format '{fmt}' (known: {', '.join(LAYOUTS)})")
    dataset = LAYOUTS[fmt](root, src)
    assumed = [v.video_id for v in dataset.videos if v.fps is None]
    if assumed and fps is None:
        log.info("%s: %d videos state no frame rate; assuming %g fps (set extract.fps)", src, len(assumed), DEFAULT_FPS)
    for video in dataset.videos:
        assign_tracks(video.annotations, video.sequence())
        video.fps = video.fps or fps or DEFAULT_FPS
    return dataset


def extract(
    src: str | Path,
    out: str | Path,
    cfg: ExtractConfig,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Write `out` (frames, index.parquet, coco_<split>.json) from the dataset at `src`; returns a summary."""
    out = Path(out)
    with local_copy(src, progress) as root:
        dataset = read_layout(cfg.format, root, str(src), cfg.fps)
        splits = assign_splits(
            [(v.video_id, v.split) for v in dataset.videos],
            cfg.val_fraction,
            cfg.test_fraction,
            cfg.seed,
            str(src),
            dataset.layout_splits,
        )
        with atomic_dir(out) as tmp:
            job = Job(tmp, cfg.stride, tuple(cfg.resize) if cfg.resize else None)
            rows = write_frames(dataset.videos, job, workers or default_workers(), progress)
            table = build_table(rows, splits, dataset.has_flags)
            write_table(table, tmp / INDEX)
            docs = coco_documents(table, dataset.categories)
            write_coco(docs, tmp)
    counts = {split: len(doc["images"]) for split, doc in sorted(docs.items())}
    return {"frames": len(rows), "videos": len(dataset.videos), "splits": counts, "categories": dataset.categories}


def default_workers() -> int:
    """Processes extracting videos side by side: one per core (at most 8, to bound memory)."""
    return min(8, os.cpu_count() or 1)


def write_frames(videos: list[SourceVideo], job: Job, workers: int, progress: bool = True) -> list[FrameRow]:
    """Write every video's kept frames as JPEG and return their index rows (boxes checked and scaled), in
    video_id order. Videos are spread over `workers` processes, so every core decodes and encodes; within a
    process a thread encodes while the main thread decodes."""
    ordered = sorted(videos, key=lambda v: v.video_id)
    counts = [_expected_frames(v, job.stride) for v in ordered]
    total = None if None in counts else sum(counts)  # an undeclared video length is known only once decoded
    rows: list[FrameRow] = []
    with tqdm(total=total, desc="extract", unit="frame", disable=not progress) as bar:
        if workers <= 1 or len(ordered) <= 1:
            for video in ordered:
                rows.extend(_write_video(video, job))
                bar.update(len(rows) - bar.n)
            return rows
        with ProcessPoolExecutor(max_workers=min(workers, len(ordered))) as pool:
            futures = [pool.submit(_write_video, video, job) for video in ordered]
            try:
                for future in futures:
                    done = future.result()
                    rows.extend(done)
                    bar.update(len(done))
            finally:
                for future in futures:  # a failure: start nothing more, the temp dir is going away
                    future.cancel()
    return rows


def _write_video(video: SourceVideo, job: Job) -> list[FrameRow]:
    """One video's frames: decoded (or read) here, encoded and written by a second thread in batches."""
    rows: list[FrameRow] = []
    pending: deque[Future] = deque()
    (job.out / "images" / video.video_id).mkdir(parents=True, exist_ok=True)

    def collect(until: int) -> None:
        while len(pending) > until or (pending and pending[0].done()):
            rows.extend(pending.popleft().result())

    with ThreadPoolExecutor(max_workers=ENCODER_THREADS) as pool:
        try:
            batch: list = []
            for item in _kept_frames(video, job.stride):
                batch.append(item)
                if len(batch) == BATCH:  # batches, not frames, go to the pool: less overhead per frame
                    pending.append(pool.submit(_write_batch, video, batch, job))
                    batch = []
                    collect(IN_FLIGHT)
            if batch:
                pending.append(pool.submit(_write_batch, video, batch, job))
            collect(0)
        finally:
            for future in pending:
                future.cancel()
    return rows


def _expected_frames(video: SourceVideo, stride: int) -> int | None:
    if video.video_path is None:
        return sum(1 for index, _ in video.images if index % stride == 0)
    return None if video.frame_count is None else -(-video.frame_count // stride)


def _kept_frames(video: SourceVideo, stride: int) -> Iterator[tuple[int, np.ndarray | Path]]:
    """(frame index, decoded RGB array or image path) of every `stride`-th frame; video checks at the end."""
    if video.video_path is None:
        yield from ((index, path) for index, path in video.images if index % stride == 0)
        return
    count = 0
    for index, frame in enumerate(decode(video.video_path, video.video_shown)):
        if index % stride == 0:
            yield index, frame
        count = index + 1
    if video.frame_count is not None and count < video.frame_count:
        raise V2IError(f"{video.video_shown}: truncated: decoded {count} of the {video.frame_count} frames")
    if video.annotations and max(video.annotations) >= count:
        raise V2IError(
            f"{video.annotation_file}: annotation for frame {max(video.annotations)}, but the video has {count} frames"
        )


def _write_batch(video: SourceVideo, batch: list[tuple[int, np.ndarray | Path]], job: Job) -> list[FrameRow]:
    return [_write(video, index, item, job) for index, item in batch]


def _write(video: SourceVideo, index: int, item: np.ndarray | Path, job: Job) -> FrameRow:
    """Check the frame's boxes against its size and write it; runs in a pool thread.

    A JPEG file that keeps its size is copied byte for byte: no decode and re-encode, so no second round of JPEG
    loss and a fraction of the time. Anything else (decoded video frames, PNG, a resize) is resized and encoded.
    """
    image, data = _open(item)
    width, height = image.size
    ann = video.annotations.get(index)
    where = f"{video.annotation_file}: frame {index}"
    boxes = [check_box(b, width, height, where) for b in ann.boxes] if ann else []
    file_name = f"images/{video.video_id}/{index:06d}.jpg"
    resize = job.resize if job.resize and job.resize != (width, height) else None
    if data is not None and not resize and _copyable(image):
        _check_decodes(image, item)
        (job.out / file_name).write_bytes(data)
    else:
        image = _rgb(image, item)
        if resize:
            sx, sy = resize[0] / width, resize[1] / height
            image = image.resize(resize, Image.Resampling.BILINEAR)
            boxes = [b.scaled(sx, sy) for b in boxes]
            width, height = resize
        image.save(job.out / file_name, format="JPEG", quality=JPEG_QUALITY)
    flags = {"hard": ann.hard, "hard_kind": ann.hard_kind, "distractor": ann.distractor} if ann else {}
    tracks = list(ann.tracks) if ann else []
    return FrameRow(video.video_id, index, file_name, width, height, boxes, tracks, video.fps, job.stride, flags)


def _open(item: np.ndarray | Path) -> tuple[Image.Image, bytes | None]:
    """The frame as a (lazily decoded) image, and for an image file its bytes, read once."""
    if isinstance(item, np.ndarray):
        return Image.fromarray(item), None
    try:
        data = item.read_bytes()
        return Image.open(io.BytesIO(data)), data
    except OSError as exc:
        raise V2IError(f"{item}: unreadable image ({exc})") from exc


def _copyable(image: Image.Image) -> bool:
    """An RGB JPEG that every reader shows the same way: no EXIF rotation that some apply and others ignore."""
    return image.format == "JPEG" and image.mode == "RGB" and image.getexif().get(EXIF_ORIENTATION, 1) == 1


def _check_decodes(image: Image.Image, item: Path) -> None:
    """Decode a JPEG about to be copied at 1/8 scale: every byte is still parsed, so a truncated or corrupt file is
    caught here, as it is when re-encoded, at a fraction of a full decode."""
    try:
        image.draft("RGB", (image.width // 8, image.height // 8))
        image.load()
    except OSError as exc:
        raise V2IError(f"{item}: unreadable image ({exc})") from exc


def _rgb(image: Image.Image, item: np.ndarray | Path) -> Image.Image:
    try:
        return image.convert("RGB")
    except OSError as exc:
        raise V2IError(f"{item}: unreadable image ({exc})") from exc


def _config(args, params) -> ExtractConfig:
    """params.extract with the CLI flags that were given laid over it."""
    updates = {
        "format": getattr(args, "format", None),
        "stride": getattr(args, "stride", None),
        "resize": tuple(args.resize) if getattr(args, "resize", None) else None,
        "seed": getattr(args, "seed", None),
    }
    raw = {**params.extract.model_dump(), **{k: v for k, v in updates.items() if v is not None}}
    from pydantic import ValidationError

    try:
        cfg = ExtractConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise V2IError(f"extract: '{'.'.join(map(str, first['loc']))}': {first['msg']}") from exc
    if cfg.resize and min(cfg.resize) < 1:
        raise V2IError(f"extract: resize {list(cfg.resize)} must be two positive sizes (width, height)")
    return cfg


def run(args, params) -> int:
    cfg = _config(args, params)
    summary = extract(args.src, args.out, cfg)
    log.info(
        "%d frames of %d videos -> %s (%s)",
        summary["frames"],
        summary["videos"],
        args.out,
        ", ".join(f"{split}: {n}" for split, n in summary["splits"].items()),
    )
    return 0
