"""`v2i bench extract`: extraction frames/s beside plain decoding frames/s of the same videos, in one run.

Decode-only runs the very decoder extraction uses (PyAV to RGB arrays) over the videos one after the other,
as playing them would; extraction is the whole `extract()` call (decode, JPEG encode and write, index and COCO
files), with its videos spread over one process per core. The two alternate for a few rounds and the medians
are reported with their ratio (target: extraction keeps >= 80% of decode-only speed), together with the CPU
time each spends per frame, worker processes included. Scratch output goes to a temporary folder under
./build, removed afterwards.
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

from v2i_core.data.extract import default_workers, extract, read_layout
from v2i_core.data.synth import synthesize
from v2i_core.data.video import decode
from v2i_core.storage import local_copy

log = logging.getLogger(__name__)

REPEATS = 5
TARGET_RATIO = 0.8
DEFAULT_SET = {"videos": 8, "frames": 240}  # synthesised when no --src: long enough to swamp fixed costs
# Scratch output beside the project's other build outputs, on the disk extraction normally writes to: the
# system temporary folder can be another file system (tmpfs, or one that is slow to create files in).
SCRATCH = Path("build")


def decode_only(videos: list[tuple[Path, str]]) -> int:
    """Decode every frame of every video to RGB, keep nothing; returns the frame count."""
    count = 0
    for path, shown in videos:
        for _ in decode(path, shown):
            count += 1
    return count


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (extraction's worker processes)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of all threads and worker processes) of fn()."""
    wall, cpu = time.perf_counter(), _cpu_seconds()
    fn()
    return time.perf_counter() - wall, _cpu_seconds() - cpu


def measure(src: str, fmt: str, params, work: Path, repeats: int = REPEATS) -> dict:
    """Medians over `repeats` interleaved rounds of decode-only and extraction of the same videos."""
    cfg = params.extract.model_copy(update={"format": fmt, "stride": 1})
    with local_copy(src) as root:
        dataset = read_layout(fmt, root, src)
        videos = [(v.video_path, v.video_shown) for v in dataset.videos if v.video_path is not None]
        frames = decode_only(videos)  # warm-up: file cache and codec set-up are not what we measure
        runs: dict[str, list[tuple[float, float]]] = {"decode": [], "extract": []}
        for i in range(repeats):  # interleaved, so both see the same machine load
            runs["decode"].append(_timed(lambda: decode_only(videos)))
            runs["extract"].append(_timed(lambda i=i: extract(str(root), work / f"frames{i}", cfg, progress=False)))
    result = {"videos": len(videos), "frames": frames, "repeats": repeats, "workers": default_workers()}
    for name, timings in runs.items():
        result[f"{name}_runs"] = [frames / wall for wall, _ in timings]
        result[f"{name}_fps"] = statistics.median(result[f"{name}_runs"])
        result[f"{name}_cpu_ms"] = statistics.median(1e3 * cpu / frames for _, cpu in timings)
    result["ratio"] = result["extract_fps"] / result["decode_fps"]
    return result


def report(result: dict) -> str:
    lines = [
        f"extraction benchmark: {result['videos']} videos, {result['frames']} frames, "
        f"median of {result['repeats']} interleaved runs, extraction in {result['workers']} processes"
    ]
    for name, label in (("decode", "decode only"), ("extract", "extraction ")):
        runs = ", ".join(f"{v:.0f}" for v in result[f"{name}_runs"])
        fps, cpu = result[f"{name}_fps"], result[f"{name}_cpu_ms"]
        lines.append(f"  {label}: {fps:8.1f} frames/s  {cpu:.3f} CPU ms/frame  (runs: {runs})")
    lines.append(f"  ratio      : {result['ratio']:.2f}  (target >= {TARGET_RATIO:.2f})")
    return "\n".join(lines)


def run(args, params, cfg=None) -> int:
    SCRATCH.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-extract-", dir=SCRATCH) as tmp:
        work = Path(tmp)
        src, fmt = args.src, args.format
        if not src:
            synthesize(params.synth.model_copy(update=DEFAULT_SET), work / "raw")
            src, fmt = str(work / "raw"), "synthetic"
        result = measure(src, fmt, params, work)
    print(report(result))
    if result["ratio"] < TARGET_RATIO:
        log.warning(
            "extraction reached %.0f%% of decode-only speed, below the %.0f%% target (it spends %.1f times the CPU "
            "of decoding per frame: it needs that many free cores to keep up)",
            100 * result["ratio"],
            100 * TARGET_RATIO,
            result["extract_cpu_ms"] / result["decode_cpu_ms"],
        )
    return 0
