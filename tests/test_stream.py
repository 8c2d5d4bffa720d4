"""`v2i infer --stream`: a video piped in frame by frame is answered line by line before its input ends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import av
import numpy as np

from tests.test_infer import write_model

ROOT = Path(__file__).resolve().parents[1]
FRAMES = 60


def live_video(path: Path) -> bytes:
    """A streamable (MPEG-TS) video of FRAMES random frames, as its bytes."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format="mpegts") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 80, "yuv420p"
        for _ in range(FRAMES):
            image = rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
    return path.read_bytes()


def test_lines_leave_while_the_video_is_still_arriving(tmp_path):
    data = live_video(tmp_path / "live.ts")
    model = write_model(tmp_path / "student")
    command = [sys.executable, "-m", "v2i_core.cli", "infer", "--params", "", "--set", "eval.score_threshold=0.0",
               "--model", str(model), "--video", "-", "--stream"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)  # fmt: skip
    answered, written = threading.Event(), threading.Event()

    def feed() -> None:  # the camera: the first half of the video, then the rest once a line came (or 60 s)
        half = len(data) // 2
        child.stdin.write(data[:half])
        child.stdin.flush()
        answered.wait(timeout=60)
        child.stdin.write(data[half:])
        child.stdin.close()
        written.set()

    feeder = threading.Thread(target=feed)
    feeder.start()
    first = child.stdout.readline()
    early = not written.is_set()  # the first frame's line came while half the video was still to arrive
    answered.set()
    rest = child.stdout.read().decode().splitlines()
    feeder.join()
    assert child.wait(timeout=120) == 0, child.stderr.read().decode()[-2000:]
    assert early
    lines = [json.loads(first), *map(json.loads, rest)]
    assert [line["frame"] for line in lines] == list(range(len(lines))) and len(lines) >= FRAMES - 2
    assert all(set(line["latency_ms"]) == {"decode", "model", "filter", "total"} for line in lines)
    assert any(line["detections"] for line in lines)  # threshold 0: an untrained model's boxes pass the filter
    assert "latency ms, median / p99: decode" in child.stderr.read().decode()


def test_a_stream_that_is_not_a_video_is_one_line(tmp_path):
    model = write_model(tmp_path / "student")
    done = subprocess.run([sys.executable, "-m", "v2i_core.cli", "infer", "--params", "", "--model", str(model),
                           "--video", "-", "--stream"], cwd=ROOT, input=b"not a video" * 100, capture_output=True)
    assert done.returncode == 1 and done.stdout == b""
    assert done.stderr.decode().strip().splitlines()[-1].startswith("v2i: error: -: ")
