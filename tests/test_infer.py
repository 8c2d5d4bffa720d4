"""`v2i infer` on a synthetic video: every frame through the threaded decode -> model -> encode pipeline."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import yaml

from tests.conftest import TINY_MODEL
from v2i_core.cli import main
from v2i_core.config import ModelConfig, MSIConfig, SynthConfig
from v2i_core.data.synth import synthesize_video
from v2i_core.data.video import decode, write_video
from v2i_core.engine.model_dir import ModelSpec, build_network, write_model_dir
from v2i_core.errors import V2IError
from v2i_core.serving import ImageDetector

CATEGORIES = [{"id": 1, "name": "polyp"}]
FRAMES = 14


def write_model(path: Path, role: str = "student") -> Path:
    """A tiny untrained model directory (real weights; infer's job is the pipeline, not the accuracy)."""
    torch.manual_seed(0)
    msi = MSIConfig(frames=2, global_heads=4) if role == "teacher" else None
    spec = ModelSpec(role, ModelConfig(**TINY_MODEL), CATEGORIES, msi, {})
    write_model_dir(path, build_network(spec), spec, {})
    return path


@pytest.fixture(scope="module")
def video_and_model(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("infer")
    synthetic = synthesize_video(SynthConfig(videos=1, frames=FRAMES, width=96, height=80), 0)
    write_video(root / "clip.mp4", synthetic.frames, fps=25)
    return root / "clip.mp4", write_model(root / "student")


def infer(tmp_path: Path, model: Path | str, video: Path, threshold: float, out: str = "out") -> int:
    params = tmp_path / f"params-{threshold}.yaml"
    params.write_text(yaml.safe_dump({"eval": {"score_threshold": threshold}}))
    return main(["infer", "--params", str(params), "--model", str(model), "--video", str(video),
                 "--out", str(tmp_path / out)])


def test_every_frame_is_annotated_and_recorded_in_order(video_and_model, tmp_path, capsys):
    video, model = video_and_model
    assert infer(tmp_path, model, video, threshold=0.0) == 0
    printed = capsys.readouterr().out
    assert f"{FRAMES} frames in" in printed and "frames/s end to end" in printed
    out = tmp_path / "out"
    annotated = list(decode(out / "clip_annotated.mp4"))
    source = list(decode(video))
    assert len(annotated) == len(source) == FRAMES
    records = json.loads((out / "detections.json").read_text())["frames"]
    assert [r["frame"] for r in records] == list(range(FRAMES))
    # The threaded pipeline keeps frame order: each record equals the detector run on that frame alone.
    detector = ImageDetector.from_model_dir(model, torch.device("cpu"))
    for record, frame in zip(records, source, strict=True):
        want = detector.detect([frame], 0.0)[0]
        np.testing.assert_allclose([d["score"] for d in record["detections"]], [d["score"] for d in want], rtol=1e-5)
        assert len(want) == TINY_MODEL["num_queries"]
    # Boxes are drawn: frames differ from the source far more than encoding noise does.
    drawn = np.mean([np.abs(a.astype(int) - s.astype(int)).max() for a, s in zip(annotated, source, strict=True)])
    assert drawn > 100


def test_no_box_is_drawn_above_every_score(video_and_model, tmp_path):
    video, model = video_and_model
    assert infer(tmp_path, model, video, threshold=1.0) == 0
    records = json.loads((tmp_path / "out" / "detections.json").read_text())["frames"]
    assert len(records) == FRAMES and not any(r["detections"] for r in records)
    annotated = list(decode(tmp_path / "out" / "clip_annotated.mp4"))
    source = list(decode(video))
    assert np.mean([np.abs(a.astype(int) - s.astype(int)).mean() for a, s in zip(annotated, source, strict=True)]) < 3


def test_preprocessing_matches_the_training_datasets(tiny_frames):
    """A served or streamed frame is fed to the model exactly as evaluation feeds it."""
    from PIL import Image

    from v2i_core.data.datasets import FrameDataset

    spec = ModelSpec("student", ModelConfig(**TINY_MODEL), CATEGORIES, None, {})
    detector = ImageDetector(build_network(spec), spec, torch.device("cpu"))
    dataset = FrameDataset(tiny_frames, "test", tuple(TINY_MODEL["input_size"]))
    for i in (0, len(dataset) - 1):
        with Image.open(tiny_frames / dataset.rows.at[i, "file_name"]) as image:
            frame = np.asarray(image.convert("RGB"))
        torch.testing.assert_close(detector.preprocess(frame), dataset[i][0])


def test_a_video_model_is_refused_and_nothing_is_written(video_and_model, tmp_path):
    video, _ = video_and_model
    teacher = write_model(tmp_path / "teacher", role="teacher")
    with pytest.raises(V2IError, match="teacher is a video model"):
        ImageDetector.from_model_dir(teacher)
    assert main(["infer", "--model", str(teacher), "--video", str(video), "--out", str(tmp_path / "out")]) == 1
    assert not (tmp_path / "out").exists()


def test_an_unreadable_video_names_the_file_and_leaves_no_output(video_and_model, tmp_path, capsys):
    _, model = video_and_model
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(64))
    assert main(["infer", "--model", str(model), "--video", str(broken), "--out", str(tmp_path / "out")]) == 1
    assert f"{broken}: unreadable" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def write_raw(path: Path, frames: list[np.ndarray], codec: str, pix_fmt: str, options: dict | None = None) -> Path:
    """Encode frames with PyAV directly, for containers and sizes `write_video` does not make."""
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=Fraction(25, 1))
        stream.pix_fmt, stream.height, stream.width = pix_fmt, *frames[0].shape[:2]
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def test_a_video_truncated_mid_stream_fails_in_the_decode_thread_and_leaves_no_output(tmp_path, video_and_model):
    """The index is up front (faststart), so the file opens and some frames decode before the error;
    the decode thread's error stops the other stages and reaches the caller."""
    _, model = video_and_model
    source = list(decode(video_and_model[0]))
    whole = write_raw(tmp_path / "whole.mp4", source, "libx264", "yuv420p", {"movflags": "faststart"})
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    assert main(["infer", "--model", str(model), "--video", str(truncated), "--out", str(tmp_path / "out")]) == 1
    assert not (tmp_path / "out").exists()


def test_odd_frame_sizes_are_encoded(tmp_path, video_and_model):
    _, model = video_and_model
    frames = [np.full((79, 95, 3), 30 * i, np.uint8) for i in range(5)]
    odd = write_raw(tmp_path / "odd.mkv", frames, "ffv1", "yuv444p")
    assert infer(tmp_path, model, odd, threshold=0.5) == 0
    annotated = list(decode(tmp_path / "out" / "odd_annotated.mp4"))
    assert len(annotated) == 5 and annotated[0].shape == (78, 94, 3)
