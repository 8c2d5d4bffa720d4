"""`v2i export` and ONNX Runtime as an engine: a tiny trained Deformable DETR and a tiny DETR exported, their graphs
checked against the eager models on real frames (scores and boxes within export.TOLERANCE, 1e-4 absolute) at batch
1 and 3, run by `v2i infer --engine onnxruntime`, and registered with the graph on the same version."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from tests.conftest import TINY_MODEL, tiny_params
from v2i_core.cli import main
from v2i_core.config import ModelConfig, MSIConfig, SynthConfig
from v2i_core.data.synth import synthesize_video
from v2i_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from v2i_core.data.video import write_video
from v2i_core.engine.model_dir import ModelSpec, build_network, read_spec, write_model_dir
from v2i_core.export import TOLERANCE, export_model_dir, sidecar_path
from v2i_core.onnx_engine import OnnxDetector
from v2i_core.registry import model_md5
from v2i_core.serving import ImageDetector, encode_image

pytestmark = pytest.mark.slow  # each export is torch.export plus ONNX translation: several seconds on 2 cores
CPU = torch.device("cpu")
NAME = "v2i-exported"


@pytest.fixture(scope="module")
def trained(mlflow_server, tiny_frames, tmp_path_factory) -> tuple[Path, Path]:
    """A Deformable DETR baseline trained one epoch (logged to the tracking server) and `v2i export`ed: (model
    directory, graph)."""
    root = tmp_path_factory.mktemp("export")
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(epochs=1)))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        patch.chdir(root)
        assert main(["train", "--data", str(tiny_frames), "--out", "baseline"]) == 0
        assert main(["export", "--model", "baseline", "--format", "onnx", "--out", "baseline.onnx"]) == 0
    return root / "baseline", root / "baseline.onnx"


def tiny_model_dir(path: Path, arch: str = "detr", role: str = "student") -> Path:
    torch.manual_seed(0)
    msi = MSIConfig(frames=2, global_heads=4) if role == "teacher" else None
    spec = ModelSpec(role, ModelConfig(**{**TINY_MODEL, "arch": arch}), [{"id": 1, "name": "polyp"}], msi, {})
    write_model_dir(path, build_network(spec), spec, {})
    return path


@pytest.fixture(scope="module")
def detr(tmp_path_factory) -> tuple[Path, Path]:
    """An untrained tiny DETR student exported through the library: (model directory, graph)."""
    root = tmp_path_factory.mktemp("export-detr")
    model_dir = tiny_model_dir(root / "detr")
    export_model_dir(model_dir, root / "detr.onnx", 0.3)
    return model_dir, root / "detr.onnx"


@pytest.fixture(scope="module")
def real_frames(tiny_frames) -> list[np.ndarray]:
    """Three frames of the test split as the dataset stores them (uint8 RGB)."""
    images = json.loads((tiny_frames / "coco_test.json").read_text())["images"]
    frames = []
    for image in images[:: max(1, len(images) // 3)][:3]:
        with Image.open(tiny_frames / image["file_name"]) as handle:
            frames.append(np.asarray(handle.convert("RGB")))
    assert len(frames) == 3
    return frames


@pytest.fixture(params=["trained", "detr"])
def exported(request) -> tuple[Path, Path]:
    return request.getfixturevalue(request.param)


def test_onnx_runtime_matches_the_eager_model_on_real_frames_at_batch_1_and_3(exported, real_frames):
    model_dir, graph = exported
    eager = ImageDetector.from_model_dir(model_dir, CPU)
    onnx = OnnxDetector.from_file(graph, threads=1)
    for frames in (real_frames, real_frames[:1]):
        batch = torch.stack([eager.preprocess(f) for f in frames])
        with torch.inference_mode():
            want = eager.forward(batch)
        got = onnx.forward(batch)
        assert got["pred_logits"].shape == want["pred_logits"].shape == (len(frames), TINY_MODEL["num_queries"], 1)
        torch.testing.assert_close(got["pred_logits"].sigmoid(), want["pred_logits"].sigmoid(), atol=TOLERANCE, rtol=0)
        torch.testing.assert_close(got["pred_boxes"], want["pred_boxes"], atol=TOLERANCE, rtol=0)
    # what each engine reports: the same detections, boxes in the frames' pixels
    reported = zip(eager.detect(real_frames, 0.0), onnx.detect(real_frames, 0.0), real_frames, strict=True)
    for want, got, frame in reported:
        assert len(got) == len(want) == TINY_MODEL["num_queries"]
        want, got = sorted(want, key=lambda d: d["bbox"]), sorted(got, key=lambda d: d["bbox"])
        np.testing.assert_allclose([d["score"] for d in got], [d["score"] for d in want], atol=TOLERANCE, rtol=0)
        pixels = TOLERANCE * max(frame.shape[:2])
        np.testing.assert_allclose([d["bbox"] for d in got], [d["bbox"] for d in want], atol=pixels, rtol=0)
        assert [d["category"] for d in got] == [d["category"] for d in want]


def test_the_batch_axis_is_dynamic_and_the_sidecar_describes_the_boundary(trained):
    model_dir, graph = trained
    (images,) = OnnxDetector.from_file(graph).session.get_inputs()
    assert images.name == "images" and isinstance(images.shape[0], str) and images.shape[1:] == [3, 64, 80]
    meta = json.loads(sidecar_path(graph).read_text())
    assert meta["input_size"] == TINY_MODEL["input_size"] and meta["score_threshold"] == 0.3
    assert meta["mean"] == pytest.approx(IMAGENET_MEAN.tolist()) and meta["std"] == pytest.approx(IMAGENET_STD.tolist())
    spec = read_spec(model_dir)
    assert meta["categories"] == spec.categories and meta["model"]["role"] == "baseline"
    assert meta["model_md5"] == model_md5(model_dir) and meta["opset"] >= 16  # GridSample


def test_a_deployment_that_follows_the_sidecar_feeds_the_graph_what_the_model_was_trained_on(trained, real_frames):
    """The pre-processing written in the sidecar, done by hand, is the project's own to float precision."""
    model_dir, graph = trained
    meta = json.loads(sidecar_path(graph).read_text())
    h, w = meta["input_size"]
    by_hand = [
        (np.asarray(Image.fromarray(f).resize((w, h), Image.Resampling.BILINEAR), np.float32) * meta["scale"]
         - meta["mean"]) / meta["std"]
        for f in real_frames
    ]
    ours = ImageDetector.from_model_dir(model_dir, CPU)
    for frame, tensor in zip(real_frames, by_hand, strict=True):
        np.testing.assert_allclose(tensor.transpose(2, 0, 1), ours.preprocess(frame).numpy(), atol=1e-5)


def test_a_video_model_and_a_wrong_file_name_are_refused_and_nothing_is_written(tmp_path, capsys):
    teacher = tiny_model_dir(tmp_path / "teacher", "deformable_detr", "teacher")
    out = tmp_path / "teacher.onnx"
    assert main(["export", "--params", "", "--model", str(teacher), "--out", str(out)]) == 1
    assert capsys.readouterr().err == f"v2i: error: {teacher}: role teacher is a video model; use an image model " \
                                      "(student, baseline)\n"
    assert main(["export", "--params", "", "--model", str(teacher), "--out", str(tmp_path / "model.pt")]) == 1
    assert "ending in .onnx" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher"]


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("export-video") / "clip.mp4"
    write_video(path, synthesize_video(SynthConfig(videos=1, frames=6, width=96, height=80), 0).frames, fps=25)
    return path


def infer(model: Path | str, video: Path, out: Path, *flags: str) -> int:
    return main(["infer", "--params", "", "--model", str(model), "--video", str(video), "--out", str(out),
                 "--score-threshold", "0", *flags])


def detections(out: Path) -> list[list[dict]]:
    return [r["detections"] for r in json.loads((out / "detections.json").read_text())["frames"]]


def assert_same_detections(got: list[list[dict]], want: list[list[dict]]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(sorted(d["score"] for d in g), sorted(d["score"] for d in w), atol=TOLERANCE)


def test_infer_runs_the_graph_or_a_model_directory_with_onnx_runtime(trained, video, tmp_path, capsys):
    model_dir, graph = trained
    assert infer(model_dir, video, tmp_path / "torch") == 0
    assert infer(graph, video, tmp_path / "graph", "--engine", "onnxruntime", "--set", "eval.onnx_threads=1") == 0
    assert "on onnxruntime" in capsys.readouterr().out.splitlines()[-1]
    assert infer(model_dir, video, tmp_path / "dir", "--engine", "onnxruntime") == 0  # exported on the way
    want = detections(tmp_path / "torch")
    assert_same_detections(detections(tmp_path / "graph"), want)
    assert_same_detections(detections(tmp_path / "dir"), want)


def test_a_missing_or_corrupt_graph_is_one_line_and_leaves_no_output(trained, video, tmp_path, capsys):
    _, graph = trained
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(graph.read_bytes()[:5000])
    sidecar_path(corrupt).write_bytes(sidecar_path(graph).read_bytes())
    alone = tmp_path / "alone.onnx"
    alone.write_bytes(graph.read_bytes())
    cases = {
        tmp_path / "absent.onnx": f"{tmp_path / 'absent.onnx'}: no such ONNX file",
        corrupt: f"{corrupt}: not an ONNX model ONNX Runtime can load (",
        alone: f"{sidecar_path(alone)}: no such file (the sidecar `v2i export` writes beside alone.onnx)",
    }
    for model, message in cases.items():
        assert infer(model, video, tmp_path / "out", "--engine", "onnxruntime") == 1
        err = capsys.readouterr().err
        assert err.startswith(f"v2i: error: {message}") and err.count("\n") == 1
        assert not (tmp_path / "out").exists()
    assert infer(graph, video, tmp_path / "out") == 1
    assert "an exported graph runs with --engine onnxruntime" in capsys.readouterr().err


def test_register_puts_the_graph_on_the_version_and_the_served_model_runs_it(
    trained, mlflow_server, real_frames, video, tmp_path, monkeypatch
):
    model_dir, _ = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    metrics = tmp_path / "metrics.json"
    entry = {"model_dir": str(model_dir), "role": "baseline", "f1": 0.5}
    metrics.write_text(json.dumps({"models": {"baseline": entry}}))
    assert main(["register", "--params", "", "--model", str(model_dir), "--metrics", str(metrics), "--name", NAME]) == 0
    client = mlflow.MlflowClient(mlflow_server)
    version = client.get_model_version(NAME, "1")
    assert version.run_id == read_spec(model_dir).provenance["mlflow_run_id"]  # the training run's own model
    # the graph and its sidecar sit beside model.pt in the version's model directory
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/1", dst_path=str(tmp_path / "download")))
    (held,) = [p.parent for p in local.rglob("model.pt")]
    assert {"model.onnx", "model.onnx.json", "config.yaml"} <= {p.name for p in held.iterdir()}
    assert OnnxDetector.from_file(held / "model.onnx").session.get_outputs()[0].name == "logits"

    request = pd.DataFrame({"image": [encode_image(f) for f in real_frames]})
    served = mlflow.pyfunc.load_model(f"models:/{NAME}/1")
    onnx = mlflow.pyfunc.load_model(f"models:/{NAME}/1", model_config={"engine": "onnxruntime", "threads": 1})
    assert isinstance(onnx.unwrap_python_model().detector, OnnxDetector)
    assert not isinstance(served.unwrap_python_model().detector, OnnxDetector)
    want = served.predict(request, params={"threshold": 0.0})
    assert_same_detections(onnx.predict(request, params={"threshold": 0.0}), want)
    # `mlflow models serve` takes the engine from the environment
    monkeypatch.setenv("MLFLOW_PYFUNC_INFERENCE_CONFIG", json.dumps({"engine": "onnxruntime"}))
    assert isinstance(mlflow.pyfunc.load_model(f"models:/{NAME}/1").unwrap_python_model().detector, OnnxDetector)
    monkeypatch.delenv("MLFLOW_PYFUNC_INFERENCE_CONFIG")

    assert infer(f"models:/{NAME}/1", video, tmp_path / "out", "--engine", "onnxruntime") == 0
    assert infer(f"models:/{NAME}/1", video, tmp_path / "torch") == 0
    assert_same_detections(detections(tmp_path / "out"), detections(tmp_path / "torch"))
