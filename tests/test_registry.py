"""The MLflow registry against a real tracking server (SQLite store, artifacts in moto's S3):
register (the training run's model, or a copy) -> promote (gate passed and failed) -> load by alias -> predict,
and infer. `mlflow models serve` of a registered model: tests/test_serving.py."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from tests.conftest import TINY_MODEL
from v2i_core.cli import main
from v2i_core.config import FilterConfig, ModelConfig
from v2i_core.engine.model_dir import ModelSpec, build_network, write_model_dir
from v2i_core.errors import V2IError
from v2i_core.registry import log_to_training_run, passes_gate, pick_metrics
from v2i_core.serving import ImageDetector, encode_image
from v2i_core.tracking import mlflow_run

CATEGORIES = [{"id": 1, "name": "polyp"}]


def tiny_model_dir(path: Path, seed: int, run_id: str) -> Path:
    """An untrained tiny image model directory: real weights, distinct per seed, with a training provenance."""
    torch.manual_seed(seed)
    provenance = {"git_commit": f"commit{seed}", "data_version": "md5:feed", "data": "frames", "mlflow_run_id": run_id}
    spec = ModelSpec("student", ModelConfig(**TINY_MODEL), CATEGORIES, None, provenance)
    write_model_dir(path, build_network(spec), spec, {"history": []})
    return path


def metrics_file(path: Path, model_dir: Path, f1: float, baseline_f1: float = 0.5) -> Path:
    """An evaluate metrics.json with the student and its baseline (F1 `baseline_f1`, AP50 0.3 below the student's)."""
    entry = {"model_dir": str(model_dir), "role": "student", "manner": "V->I", "arch": "deformable_detr", "f1": f1,
             "precision": 0.9, "recall": 0.8, "AP": 0.4, "AP50": 0.7, "fps": 50.0, "params_m": 2.0}
    baseline = {**entry, "model_dir": "models/baseline", "role": "baseline", "manner": "I", "f1": baseline_f1,
                "AP50": 0.4}
    path.write_text(json.dumps({"split": "test", "models": {model_dir.name: entry, "baseline": baseline}}))
    return path


def frames(n: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (72 + 8 * i, 90, 3), dtype=np.uint8) for i in range(n)]


def v2i(*argv: str) -> int:
    return main([*argv])


@pytest.fixture
def server(mlflow_server, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.chdir(tmp_path)  # no params.yaml here: defaults, plus --set
    return mlflow_server


def test_gate_needs_a_strict_gain_of_at_least_min_delta():
    assert passes_gate(0.5, None, 0.1)  # no champion: the first version passes
    assert passes_gate(0.70, 0.65, 0.05)
    assert not passes_gate(0.69, 0.65, 0.05)
    assert not passes_gate(0.65, 0.65, 0.0)  # a tie does not beat the champion
    assert passes_gate(0.651, 0.65, 0.0)


def test_a_lesion_figure_where_less_is_better_gates_downwards():
    assert passes_gate(30.0, 40.0, 5.0, "false_alarms_per_min")  # 10 fewer alarms a minute
    assert not passes_gate(38.0, 40.0, 5.0, "false_alarms_per_min")
    assert not passes_gate(50.0, 40.0, 0.0, "filtered_false_alarms_per_min")
    assert passes_gate(0.04, 0.08, 0.0, "delay_median_s") and not passes_gate(0.8, 0.9, 0.0, "lesion_sensitivity")


def test_pick_metrics_matches_the_model_dir(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"models": {"a": {"model_dir": str(tmp_path / "a"), "f1": 0.1},
                                           "b": {"model_dir": str(tmp_path / "b"), "f1": 0.2}}}))
    assert pick_metrics(path, tmp_path / "b")["f1"] == 0.2
    with pytest.raises(V2IError, match="no entry for model directory"):
        pick_metrics(path, tmp_path / "c")
    path.write_text("{not json")
    with pytest.raises(V2IError, match=r"metrics.json: not valid JSON"):
        pick_metrics(path, tmp_path / "a")


def test_register_promote_gate_and_load_by_alias(server, tmp_path, capsys):
    name = "v2i-flow"
    first = tiny_model_dir(tmp_path / "first", 1, "run-1")
    assert v2i("register", "--model", str(first), "--metrics", str(metrics_file(tmp_path / "m1.json", first, 0.60)),
               "--name", name) == 0
    client = mlflow.MlflowClient(server)
    v1 = client.get_model_version_by_alias(name, "challenger")
    assert v1.version == "1"
    # no run "run-1" in this server: register logged the model itself, in its own run
    assert client.get_run(v1.run_id).data.tags["step"] == "register" and v1.tags["score_threshold"] == "0.3"
    assert v1.tags["metric.f1"] == "0.6" and v1.tags["training_run_id"] == "run-1"
    assert v1.tags["git_commit"] == "commit1" and v1.tags["data_version"] == "md5:feed"
    assert v1.tags["baseline.f1"] == "0.5" and float(v1.tags["gain.f1"]) == pytest.approx(0.1)
    assert float(v1.tags["baseline.AP50"]) == 0.4 and float(v1.tags["gain.AP50"]) == pytest.approx(0.3)
    assert "student vs its baseline: f1 60.0 vs 50.0 (+10.0), AP50 70.0 vs 40.0 (+30.0)" in capsys.readouterr().out

    # The same training run and weights again: no second version.
    assert v2i("register", "--model", str(first), "--metrics", str(tmp_path / "m1.json"), "--name", name) == 0
    assert "already registered as v2i-flow version 1" in capsys.readouterr().out
    assert len(client.search_model_versions(f"name = '{name}'")) == 1

    assert v2i("promote", "--name", name) == 0
    assert "no champion yet" in capsys.readouterr().out
    assert client.get_model_version_by_alias(name, "champion").version == "1"

    worse = tiny_model_dir(tmp_path / "worse", 2, "run-2")
    assert v2i("register", "--model", str(worse), "--metrics", str(metrics_file(tmp_path / "m2.json", worse, 0.55)),
               "--name", name, "--set", "register.min_delta=0.01") == 0
    capsys.readouterr()
    assert v2i("promote", "--name", name, "--set", "register.min_delta=0.01") == 1
    out = capsys.readouterr().out
    assert "gate failed: f1 0.550 (version 2) does not beat champion version 1 f1 0.600 by min_delta 0.01" in out
    assert "nothing changed" in out
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    assert "promoted_at" not in client.get_model_version(name, "2").tags

    better = tiny_model_dir(tmp_path / "better", 3, "run-3")
    assert v2i("register", "--model", str(better), "--metrics", str(metrics_file(tmp_path / "m3.json", better, 0.70)),
               "--name", name, "--promote", "--set", "register.min_delta=0.05") == 0
    assert client.get_model_version_by_alias(name, "champion").version == "3"
    v3 = client.get_model_version(name, "3")
    assert v3.tags["promoted_from"] == "1" and v3.tags["promoted_at"]
    trail = {k: json.loads(v) for k, v in client.get_registered_model(name).tags.items() if k.startswith("promotion.")}
    assert [(r["version"], r["from_version"]) for _, r in sorted(trail.items())] == [("1", None), ("3", "1")]
    assert trail["promotion.0002"]["value"] == 0.70 and trail["promotion.0002"]["champion_value"] == 0.60

    # Version 2 is still below the new champion.
    assert v2i("promote", "--name", name, "--version", "2") == 1

    # Load by alias and predict: the same detections as the champion's own model directory.
    images = frames()
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    served = model.predict(pd.DataFrame({"image": [encode_image(f) for f in images]}), params={"threshold": 0.0})
    local = ImageDetector.from_model_dir(better, torch.device("cpu")).detect(images, 0.0)
    assert len(served) == len(images)
    for got, want, image in zip(served, local, images, strict=True):
        assert [d["category"] for d in got] == ["polyp"] * TINY_MODEL["num_queries"]
        np.testing.assert_allclose([d["bbox"] for d in got], [d["bbox"] for d in want], rtol=1e-5, atol=1e-4)
        boxes = np.array([d["bbox"] for d in got])
        assert (boxes[:, 0] + boxes[:, 2] <= image.shape[1] + 1e-3).all()
        assert (boxes[:, 1] + boxes[:, 3] <= image.shape[0] + 1e-3).all()
    assert model.metadata.get_params_schema().params[0].name == "threshold"

    _assert_no_credentials(client, name)
    _assert_artifacts_in_s3()


def _assert_no_credentials(client, name: str) -> None:
    """No param, tag or metric name anywhere in the tracking server holds the AWS secret or key id."""
    secrets = {os.environ["AWS_SECRET_ACCESS_KEY"], os.environ["AWS_ACCESS_KEY_ID"]}
    values = []
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            values += [*run.data.params.values(), *run.data.tags.values(), *run.data.metrics]
    values += client.get_registered_model(name).tags.values()
    for version in client.search_model_versions(f"name = '{name}'"):
        values += [*version.tags.values(), version.source or ""]
    assert values
    assert not [v for v in values if any(s in str(v) for s in secrets)]


def _assert_artifacts_in_s3() -> None:
    """The served models live in the server's S3 artifact store, without the training checkpoint."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="v2i-mlflow", Prefix="mlartifacts/")["Contents"]]
    assert any(k.endswith("artifacts/model_dir/model.pt") for k in keys)
    assert any(k.endswith("/MLmodel") for k in keys)


def test_a_student_below_its_baseline_is_never_promoted(server, tmp_path, capsys):
    """The method's purpose: a student that does not beat its own baseline by register.min_gain stays a
    challenger, even with no champion to beat; register --promote exits 1 and moves no alias."""
    name = "v2i-gain-gate"
    lost = tiny_model_dir(tmp_path / "lost", 11, "run-11")
    metrics = metrics_file(tmp_path / "lost.json", lost, 0.55, baseline_f1=0.60)
    assert v2i("register", "--model", str(lost), "--metrics", str(metrics), "--name", name, "--promote") == 1
    out = capsys.readouterr().out
    assert "gate failed: student f1 0.550 (version 1) does not beat its baseline's f1 0.600 by min_gain 0" in out
    client = mlflow.MlflowClient(server)
    assert client.get_model_version_by_alias(name, "challenger").version == "1"
    assert "champion" not in client.get_registered_model(name).aliases
    assert not [k for k in client.get_registered_model(name).tags if k.startswith("promotion.")]

    # ahead of its baseline, but not by min_gain: still refused; by enough: the first champion
    close = tiny_model_dir(tmp_path / "close", 12, "run-12")
    metrics = metrics_file(tmp_path / "close.json", close, 0.62, baseline_f1=0.60)
    assert v2i("register", "--model", str(close), "--metrics", str(metrics), "--name", name) == 0
    assert v2i("promote", "--name", name, "--set", "register.min_gain=0.05") == 1
    assert "by min_gain 0.05" in capsys.readouterr().out
    assert "champion" not in client.get_registered_model(name).aliases
    assert v2i("promote", "--name", name, "--set", "register.min_gain=0.01") == 0
    assert client.get_model_version_by_alias(name, "champion").version == "2"
    assert client.get_model_version(name, "2").tags["baseline.f1"] == "0.6"


def test_a_student_registered_without_its_baseline_is_refused(server, tmp_path, capsys):
    name = "v2i-no-baseline"
    alone = tiny_model_dir(tmp_path / "alone", 13, "run-13")
    entry = {"model_dir": str(alone), "role": "student", "f1": 0.9, "AP50": 0.9}
    (tmp_path / "alone.json").write_text(json.dumps({"split": "test", "models": {"student": entry}}))
    assert v2i("register", "--model", str(alone), "--metrics", str(tmp_path / "alone.json"), "--name", name,
               "--promote") == 1
    assert "records no baseline f1 to beat" in capsys.readouterr().out
    assert "champion" not in mlflow.MlflowClient(server).get_registered_model(name).aliases


def test_register_registers_the_model_its_training_run_logged(server, tiny_frames, tmp_path, capsys):
    """The registered version's run is the training run; the register run logs no second copy, except for a
    threshold or filter settings other than those the training logged its model with (the served default and what
    param `filter` applies live in the model)."""
    with mlflow_run("student:trained", {}, {}) as training:  # what the engine starts for a training
        pass
    trained = tiny_model_dir(tmp_path / "trained", 21, training.run_id)
    logged = log_to_training_run(trained, tiny_frames, 0.3)
    client = mlflow.MlflowClient(server)
    (used,) = client.get_run(training.run_id).inputs.dataset_inputs
    index = tiny_frames / "index.parquet"
    assert used.dataset.digest == hashlib.md5(index.read_bytes()).hexdigest()
    assert json.loads(used.dataset.source) == {"uri": str(tiny_frames.resolve())}
    assert {t.key: t.value for t in used.tags}["mlflow.data.context"] == "training"
    assert json.loads(used.dataset.profile)["num_rows"] == len(pd.read_parquet(index))

    metrics = metrics_file(tmp_path / "trained.json", trained, 0.6)
    assert v2i("register", "--model", str(trained), "--metrics", str(metrics), "--name", "v2i-trained") == 0
    version = client.get_model_version("v2i-trained", "1")
    assert (version.run_id, version.source) == (training.run_id, logged)
    (register_run,) = client.search_runs([client.get_run(training.run_id).info.experiment_id],
                                         "tags.step = 'register' and params.registered_model = 'v2i-trained'")
    assert not client.search_logged_models([register_run.info.experiment_id],
                                           f"source_run_id = '{register_run.info.run_id}'")

    assert v2i("register", "--model", str(trained), "--metrics", str(metrics), "--name", "v2i-trained-at-0.5",
               "--set", "eval.score_threshold=0.5") == 0
    copy = client.get_model_version("v2i-trained-at-0.5", "1")
    assert copy.run_id != training.run_id and copy.tags["training_run_id"] == training.run_id
    assert mlflow.pyfunc.load_model(copy.source).unwrap_python_model().threshold == 0.5
    assert mlflow.pyfunc.load_model(version.source).unwrap_python_model().threshold == 0.3

    assert v2i("register", "--model", str(trained), "--metrics", str(metrics), "--name", "v2i-trained-k3",
               "--set", "filter.k=3") == 0  # fmt: skip
    refiltered = client.get_model_version("v2i-trained-k3", "1")
    assert refiltered.run_id != training.run_id
    recorded = mlflow.pyfunc.load_model(refiltered.source).unwrap_python_model().filter_settings
    assert recorded == {**FilterConfig().model_dump(), "k": 3}
    assert mlflow.pyfunc.load_model(version.source).unwrap_python_model().filter_settings == FilterConfig().model_dump()


def test_promote_without_such_model_or_version_is_an_error(server):
    with pytest.raises(V2IError, match="no registered model 'v2i-nothing-here'"):
        from v2i_core.registry import promote

        promote("v2i-nothing-here", None, "f1", 0.0)


@pytest.fixture(scope="module")
def champion(mlflow_server, tmp_path_factory):
    """A registered model with a champion: (name, its model directory); its filter settings are not the params'
    defaults (k=2), so that `infer --stream` shows which it applies."""
    from v2i_core.config import FilterConfig
    from v2i_core.registry import promote, register

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        model_dir = tiny_model_dir(tmp_path_factory.mktemp("champion") / "student", 7, "run-7")
        recorded = FilterConfig(k=4, n=5, hold=1)
        version, created = register(
            model_dir, {"f1": 0.5}, "v2i-served", 0.5, "f1", baseline={"f1": 0.4}, filter_settings=recorded
        )
        assert created and promote("v2i-served", version, "f1", 0.0).passed
        yield "v2i-served", model_dir


def test_infer_runs_a_registered_champion(champion, mlflow_server, tmp_path, monkeypatch, capsys):
    from v2i_core.data.video import write_video

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    video = tmp_path / "clip.mp4"
    write_video(video, [np.full((64, 80, 3), 40 * i, np.uint8) for i in range(6)], fps=10)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"eval": {"score_threshold": 0.9}}))
    started = time.monotonic()
    assert v2i("infer", "--params", str(tmp_path / "params.yaml"), "--model", f"models:/{champion[0]}@champion",
               "--video", str(video), "--out", str(tmp_path / "out"), "--score-threshold", "0") == 0
    assert time.monotonic() - started < 60
    records = json.loads((tmp_path / "out" / "detections.json").read_text())["frames"]
    assert [r["frame"] for r in records] == list(range(6))
    assert all(len(r["detections"]) == TINY_MODEL["num_queries"] for r in records)
    assert "frames/s" in capsys.readouterr().out
    # without --score-threshold: the threshold it was registered with (0.5), not params.yaml's
    assert v2i("infer", "--params", str(tmp_path / "params.yaml"), "--model", f"models:/{champion[0]}@champion",
               "--video", str(video), "--out", str(tmp_path / "out2")) == 0
    assert json.loads((tmp_path / "out2" / "detections.json").read_text())["threshold"] == 0.5
    assert "with score >= 0.5" in capsys.readouterr().out
    # live, through the filter settings recorded with the model (k=4: 3 frames late), as its served `filter` param
    assert v2i("infer", "--params", str(tmp_path / "params.yaml"), "--model", f"models:/{champion[0]}@champion",
               "--video", str(video), "--stream") == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 6 and "the filter shows boxes 3 frame(s) late" in err
