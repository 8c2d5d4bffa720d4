"""`v2i infer`: a video through an image model in real time: annotated video, per-frame detections, frames/s.

Three stages overlap, joined by bounded queues so memory stays flat on long videos:
decode + preprocess (a thread; PyAV and torch's resize release the GIL) -> the model (this thread) ->
draw + encode (a thread). The first stage that fails stops the others and its error is raised here.
The model is a model directory or a registry URI `models:/NAME@ALIAS` (loaded through MLflow), run by torch or, with
`--engine onnxruntime`, by ONNX Runtime on the CPU (a registered version's graph, an exported FILE.onnx, or a model
directory exported first). Frames go through the model one at a time: on a GPU, torch replays them from a CUDA graph
(v2i_core.cuda_graph).
"""

from __future__ import annotations

import json
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

from v2i_core.data.video import decode, probe, write_video
from v2i_core.errors import V2IError
from v2i_core.serving import ImageDetector, default_device, open_detector
from v2i_core.storage import atomic_dir

log = logging.getLogger(__name__)

QUEUE_FRAMES = 8  # frames in flight between two stages
BOX_COLOUR = (255, 40, 40)
_END = object()  # end of stream marker


def frame_rate(path: Path) -> Fraction:
    """The video's average frame rate (25 when the container does not say)."""
    with av.open(str(path)) as container:
        rate = container.streams.video[0].average_rate
    return Fraction(rate) if rate else Fraction(25)


def draw_detections(frame: np.ndarray, detections: list[dict]) -> np.ndarray:
    """A copy of uint8 RGB `frame` [H, W, 3] with each detection's box, class and score drawn."""
    image = Image.fromarray(frame)
    pen = ImageDraw.Draw(image)
    for det in detections:
        x, y, w, h = det["bbox"]
        pen.rectangle([x, y, x + w, y + h], outline=BOX_COLOUR, width=2)
        pen.text((x + 2, max(0.0, y - 11)), f"{det['category']} {det['score']:.2f}", fill=BOX_COLOUR)
    return np.asarray(image)


class _Stage(threading.Thread):
    """A pipeline stage in its own thread; an exception is kept for the main thread and stops the pipeline."""

    def __init__(self, name: str, work: Callable[[], None], stop: threading.Event):
        super().__init__(name=name, daemon=True)
        self.work, self.stop, self.error = work, stop, None

    def run(self) -> None:
        try:
            self.work()
        except BaseException as exc:  # handed to the main thread, which re-raises it
            self.error = exc
            self.stop.set()


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    """Put unless the pipeline stopped; False when it did (the consumer may be gone)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _drain(q: queue.Queue, stop: threading.Event) -> Iterator:
    """Items of `q` until the end marker, or until the pipeline stops."""
    while not stop.is_set():
        try:
            item = q.get(timeout=0.1)
        except queue.Empty:
            continue
        if item is _END:
            return
        yield item


def run_video(detector: ImageDetector, video: Path, out: Path, threshold: float) -> dict:
    """Detect lesions in every frame of `video`; write out/<stem>_annotated.mp4 and out/detections.json.

    Returns {"frames", "seconds", "fps" (end to end), "model_fps" (the model alone), "video", "detections"}.
    """
    w, h = probe(video)  # an unreadable file fails here, before any thread starts
    rate = frame_rate(video)
    stop = threading.Event()
    decoded: queue.Queue = queue.Queue(QUEUE_FRAMES)
    annotated: queue.Queue = queue.Queue(QUEUE_FRAMES)
    video_path = out / f"{video.stem}_annotated.mp4"
    written = [0]

    def read() -> None:
        for frame in decode(video):
            if not _put(decoded, (frame, detector.preprocess(frame)), stop):
                return
        _put(decoded, _END, stop)

    def encode() -> None:
        # H.264 (yuv420p) needs even sizes: an odd last row or column is left out of the annotated video.
        frames = (draw_detections(frame, dets)[: h // 2 * 2, : w // 2 * 2] for frame, dets in _drain(annotated, stop))
        written[0] = write_video(video_path, frames, round(rate))

    stages = [_Stage("decode", read, stop), _Stage("encode", encode, stop)]
    records, model_seconds = [], 0.0
    started = time.perf_counter()
    for stage in stages:
        stage.start()
    try:
        for index, (frame, tensor) in enumerate(_drain(decoded, stop)):
            tick = time.perf_counter()
            dets = detector.detect_batch(tensor[None], [frame.shape[:2]], threshold)[0]  # batch 1: real time
            model_seconds += time.perf_counter() - tick
            records.append({"frame": index, "detections": dets})
            if not _put(annotated, (frame, dets), stop):
                break
        _put(annotated, _END, stop)
    except BaseException:
        stop.set()  # the other stages give up instead of waiting on a queue
        raise
    finally:
        for stage in stages:
            stage.join()
    seconds = time.perf_counter() - started
    reader, writer = stages
    if reader.error is not None:
        raise reader.error
    if not records:  # the encoder cannot size an empty video: say what is wrong with the input instead
        raise V2IError(f"{video}: no frames decoded")
    if writer.error is not None:
        raise writer.error
    (out / "detections.json").write_text(
        json.dumps({"video": video.name, "fps": float(rate), "threshold": threshold, "frames": records}) + "\n"
    )
    return {
        "frames": len(records),
        "written": written[0],
        "seconds": seconds,
        "fps": len(records) / seconds,
        "model_fps": len(records) / model_seconds if model_seconds > 0 else float("inf"),
        "video": video_path.name,
        "detections": sum(len(r["detections"]) for r in records),
    }


def run(args, params) -> int:
    """`v2i infer --model DIR|models:/NAME@ALIAS|FILE.onnx --video FILE --out DIR [--engine torch|onnxruntime]`:
    prints the frames/s it ran at; `--stream`: JSON lines on stdout as frames arrive (v2i_core.stream), latency on
    stderr."""
    if args.stream == bool(args.out):
        raise V2IError("infer: give --out DIR for a video file, or --stream for JSON lines on stdout")
    video = Path(args.video)
    if not args.stream and not video.is_file():
        raise V2IError(f"{video}: no such video file")
    device = default_device()
    opened = open_detector(args.model, device, args.engine, params.eval.onnx_threads)
    detector = opened.detector
    # the threshold the model was registered (and is served) with, unless one is asked for
    threshold = args.score_threshold if args.score_threshold is not None else opened.threshold
    threshold = params.eval.score_threshold if threshold is None else threshold
    if args.stream:
        from v2i_core.stream import STAGES, stream
        from v2i_core.temporal_filter import build_filter

        # a registered model's filter settings, as its served `filter` param applies them; else the params'
        temporal = None if args.no_filter else build_filter(opened.filter_settings or params.filter)
        summary = stream(detector, args.video, threshold, temporal, sys.stdout)
        added = "" if temporal is None else f"; the filter shows boxes {temporal.latency_frames} frame(s) late"
        cells = ", ".join(f"{s} {summary[s]['median_ms']:.1f} / {summary[s]['p99_ms']:.1f}" for s in STAGES)
        print(f"{summary['frames']} frames; latency ms, median / p99: {cells}{added}", file=sys.stderr)
        return 0
    with atomic_dir(Path(args.out)) as tmp:
        result = run_video(detector, video, tmp, threshold)
    print(
        f"{result['frames']} frames in {result['seconds']:.2f} s: {result['fps']:.1f} frames/s end to end "
        f"(model alone {result['model_fps']:.1f} frames/s) on {detector.runtime}; "
        f"{result['detections']} detections with score >= {threshold:g} -> {Path(args.out) / result['video']}"
    )
    return 0
