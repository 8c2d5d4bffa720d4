"""`v2i infer --stream`: live detection, one JSON line per frame written as soon as that frame is decided.

The source is read frame by frame as it arrives: a video file, `-` for a stream piped into stdin (MPEG-TS,
Matroska or any container FFmpeg can read without seeking), a network stream URL (rtsp://, udp://, http://), or a
capture device as FORMAT:DEVICE (e.g. `v4l2:/dev/video0`). FFmpeg's probing and buffering are turned down so the
first frame is decoded as soon as its bytes are in. Each frame's boxes go through the causal temporal filter
(params `filter`; it looks only at past frames) unless `--no-filter` is given, and its line holds the frame index,
its time in the stream, the boxes shown and the per-frame latency. At the end the median and 99th percentile of
each stage's latency (decode, model, filter) go to stderr.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import av
import numpy as np

from v2i_core.errors import V2IError
from v2i_core.serving import ImageDetector
from v2i_core.temporal_filter import CausalFilter

# Low latency: decide the stream's format from its first bytes and hand on each frame at once.
LIVE_OPTIONS = {"probesize": "32768", "analyzeduration": "0", "fflags": "nobuffer"}
DEVICE = re.compile(r"^(?P<format>[a-z0-9_]+):(?P<device>/dev/.+)$")
STAGES = ("decode", "model", "filter", "total")


def open_source(source: str):
    """The container of a file, `-` (stdin), a URL or FORMAT:DEVICE; all but a file opened for low-latency reading."""
    device = DEVICE.match(source)
    try:
        if source == "-":
            return av.open(sys.stdin.buffer, options=LIVE_OPTIONS)
        if device:
            return av.open(device["device"], format=device["format"], options=LIVE_OPTIONS)
        if Path(source).is_file():  # a recorded file: read as it is (fflags nobuffer drops an mp4's every frame)
            return av.open(source)
        return av.open(source, options=LIVE_OPTIONS)
    except (av.error.FFmpegError, OSError) as exc:
        raise V2IError(f"{source}: cannot open as a video stream ({getattr(exc, 'strerror', None) or exc})") from None


def frames(source: str) -> Iterator[tuple[np.ndarray, float | None, float]]:
    """(uint8 RGB [H, W, 3], its time in the stream in seconds, seconds spent waiting for and decoding it)."""
    container = open_source(source)
    try:
        if not container.streams.video:
            raise V2IError(f"{source}: no video stream")
        decoded = container.decode(container.streams.video[0])
        while True:
            start = time.perf_counter()
            try:
                frame = next(decoded)
            except StopIteration:
                return
            except av.error.FFmpegError as exc:
                raise V2IError(f"{source}: unreadable or truncated video stream ({exc.__class__.__name__})") from None
            image = frame.to_ndarray(format="rgb24")
            yield image, (float(frame.time) if frame.time is not None else None), time.perf_counter() - start
    finally:
        container.close()


def stream(
    detector: ImageDetector, source: str, threshold: float, temporal: CausalFilter | None, out: TextIO
) -> dict[str, dict[str, float]]:
    """Write one JSON line per frame of `source` to `out` as soon as it is decided; returns per-stage latency
    {stage: {"median_ms", "p99_ms"}} and the frame count."""
    latency: dict[str, list[float]] = {stage: [] for stage in STAGES}
    count = 0
    for index, (image, seconds, decode_s) in enumerate(frames(source)):
        start = time.perf_counter()
        detections = detector.detect_batch(detector.preprocess(image)[None], [image.shape[:2]], threshold)[0]
        model_s = time.perf_counter() - start
        start = time.perf_counter()
        shown = temporal.update(detections) if temporal is not None else detections
        filter_s = time.perf_counter() - start
        times = {"decode": decode_s, "model": model_s, "filter": filter_s}
        times["total"] = sum(times.values())
        for stage, value in times.items():
            latency[stage].append(1000 * value)
        line = {"frame": index, "time": seconds, "detections": shown,
                "latency_ms": {k: round(1000 * v, 3) for k, v in times.items()}}  # fmt: skip
        out.write(json.dumps(line) + "\n")
        out.flush()
        count += 1
    if not count:
        raise V2IError(f"{source}: no frames decoded")
    summary = {stage: {"median_ms": float(np.median(v)), "p99_ms": float(np.percentile(v, 99))}
               for stage, v in latency.items()}  # fmt: skip
    return {"frames": count, **summary}
