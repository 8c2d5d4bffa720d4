"""The served model's param `filter`: a request's rows are one video's frames, each answered as the causal temporal
filter shows it, with the filter settings recorded in the model, and never from a later row. A real tiny model with
random weights gives the per-frame detections; the filter is the real one. Serving it over HTTP: test_serving.py."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException

from tests.conftest import TINY_MODEL
from v2i_core.config import FilterConfig, ModelConfig
from v2i_core.engine.model_dir import ModelSpec, build_network, write_model_dir
from v2i_core.errors import V2IError
from v2i_core.serving import ImageDetector, V2IDetectorModel, encode_image, signature
from v2i_core.temporal_filter import filter_video

# Not FilterConfig's defaults (k=2, n=3, hold=2): the recorded settings, not the defaults, must be the ones applied.
RECORDED = FilterConfig(k=3, n=4, hold=1, iou=0.3)
FRAMES = 8


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    spec = ModelSpec("student", ModelConfig(**TINY_MODEL), [{"id": 1, "name": "polyp"}], None, {})
    path = tmp_path_factory.mktemp("served") / "student"
    write_model_dir(path, build_network(spec), spec, {})
    return path


def video(seed: int = 0) -> list[np.ndarray]:
    """FRAMES frames of one scene that flickers, so the detections' scores drift from frame to frame."""
    rng = np.random.default_rng(seed)
    scene = rng.integers(0, 256, (72, 90, 3))
    return [np.clip(scene + rng.normal(0, 20, scene.shape) + 30 * np.sin(t), 0, 255).astype(np.uint8)
            for t in range(FRAMES)]  # fmt: skip


def request(frames: list[np.ndarray]) -> pd.DataFrame:
    return pd.DataFrame({"image": [encode_image(f) for f in frames]})


def served(model_dir: Path, settings: FilterConfig | None = RECORDED) -> V2IDetectorModel:
    """The pyfunc model as MLflow loads it (load_context with the model directory as its artifact)."""
    model = V2IDetectorModel(0.5, settings)
    model.load_context(SimpleNamespace(artifacts={"model_dir": str(model_dir)}, model_config=None))
    return model


def midway_threshold(model_dir: Path, frames: list[np.ndarray]) -> float:
    """A threshold between two of the frames' scores, near their median: some boxes come and go from frame to frame
    (and no score sits on it, so float noise between batch sizes cannot flip one)."""
    scores = sorted({d["score"] for row in ImageDetector.from_model_dir(model_dir).detect(frames, 0.0) for d in row})
    middle = len(scores) // 2
    return (scores[middle - 1] + scores[middle]) / 2


def shown(raw: list[list[dict]], settings: FilterConfig) -> list[list[dict]]:
    """What a fresh causal filter with these settings shows, frame by frame, of per-frame detections `raw`."""
    return filter_video(raw, settings.k, settings.n, settings.hold, settings.iou)


def assert_same(got: list[dict], want: list[dict]) -> None:
    """The same detections in the same order, up to float noise (a different batch may round differently)."""
    assert [d["category_id"] for d in got] == [d["category_id"] for d in want]
    np.testing.assert_allclose([d["score"] for d in got], [d["score"] for d in want], rtol=1e-5)
    np.testing.assert_allclose(np.reshape([d["bbox"] for d in got], (-1, 4)),
                               np.reshape([d["bbox"] for d in want], (-1, 4)), rtol=1e-5, atol=1e-4)  # fmt: skip


def test_filter_true_answers_each_row_as_the_causal_filter_shows_it(model_dir):
    frames = video()
    threshold = midway_threshold(model_dir, frames)
    model = served(model_dir)
    params = {"threshold": threshold}
    raw = model.predict(None, request(frames), params)
    assert raw == ImageDetector.from_model_dir(model_dir).detect(frames, threshold)  # filter off: as before
    assert raw == model.predict(None, request(frames), {**params, "filter": False})
    assert len({len(row) for row in raw}) > 1  # boxes come and go: the filter has something to decide

    filtered = model.predict(None, request(frames), {**params, "filter": True})
    assert filtered == shown(raw, RECORDED)
    assert filtered[0] == filtered[1] == [] != raw[0]  # k=3: nothing is shown before its third sighting
    assert any(filtered[2:])
    assert filtered != shown(raw, FilterConfig())  # the recorded settings, not the defaults


def test_a_row_is_never_decided_by_later_rows(model_dir):
    frames, other = video(0), video(1)
    model = served(model_dir)
    params = {"threshold": midway_threshold(model_dir, frames), "filter": True}
    whole = model.predict(None, request(frames), params)
    for t in range(FRAMES):
        cut = model.predict(None, request(frames[: t + 1]), params)  # the rows after t not sent yet
        changed = model.predict(None, request(frames[: t + 1] + other[t + 1 :]), params)  # other rows after t
        assert_same(cut[t], whole[t])
        assert_same(changed[t], whole[t])


def test_a_model_pickled_before_filter_settings_were_recorded_filters_with_the_defaults(model_dir):
    frames = video()
    model = served(model_dir)
    del model.filter_settings  # what unpickling an instance logged before this attribute existed gives
    params = {"threshold": midway_threshold(model_dir, frames)}
    raw = model.predict(None, request(frames), params)
    assert model.predict(None, request(frames), {**params, "filter": True}) == shown(raw, FilterConfig())


def test_mlflow_checks_the_filter_param_against_the_signature(model_dir, tmp_path):
    """Saved and loaded through MLflow: `filter` is a boolean param, false by default; a non-boolean is refused."""
    (spec,) = [p for p in signature(0.5).params.params if p.name == "filter"]
    assert (spec.dtype.name, spec.default) == ("boolean", False)
    path = tmp_path / "pyfunc"
    mlflow.pyfunc.save_model(
        path,
        python_model=V2IDetectorModel(0.0, RECORDED),
        artifacts={"model_dir": str(model_dir)},
        signature=signature(0.0),
        pip_requirements=["mlflow"],
    )
    loaded = mlflow.pyfunc.load_model(str(path))
    frames = video()[:4]
    raw = loaded.predict(request(frames))
    assert raw == loaded.predict(request(frames), params={"filter": False})
    assert loaded.predict(request(frames), params={"filter": True}) == shown(raw, RECORDED)
    with pytest.raises(MlflowException, match="filter"):
        loaded.predict(request(frames), params={"filter": "yes"})
    with pytest.raises(V2IError, match="param 'filter' must be true or false"):
        loaded.unwrap_python_model().predict(None, request(frames), {"filter": "yes"})  # past MLflow's check
