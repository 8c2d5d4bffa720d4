"""Where runs go and what they record: a pipeline step refuses to run without a tracking server, a run logs
system metrics when the user turns on MLflow's own switch, and the frames a run used are its MLflow dataset."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from v2i_core.tracking import log_frames_input, mlflow_run

ROOT = Path(__file__).resolve().parents[1]
# each KFP step that logs to MLflow, as module:function; the pod runs the function's body
STEPS = ["train:train_op", "distill:distill_op", "evaluate:evaluate_op", "register:register_op"]


@pytest.mark.parametrize("step", STEPS)
def test_a_step_without_a_tracking_uri_stops_with_one_line(step):
    """The component's own function, as its pod runs it, without MLFLOW_TRACKING_URI: exit 1, one line, before
    it reads any of its inputs (all None here)."""
    module, function = step.split(":")
    body = (
        "import inspect\n"
        f"from components.{module} import {function} as step\n"
        "step.python_func(**{name: None for name in inspect.signature(step.python_func).parameters})\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run([sys.executable, "-c", body], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "v2i: MLFLOW_TRACKING_URI is not set: a pipeline step logs to an MLflow server (set it in the ConfigMap "
        "v2i-config), not to a file inside its pod"
    ]


def _system_metrics(run_id: str) -> set[str]:
    return {k for k in mlflow.MlflowClient().get_run(run_id).data.metrics if k.startswith("system/")}


def test_system_metrics_are_logged_only_when_the_user_enables_them(isolated_mlflow, monkeypatch):
    with mlflow_run("quiet", {}, {}) as quiet:
        time.sleep(0.3)
    assert not _system_metrics(quiet.run_id)

    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.1")  # seconds; 10 by default
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    with mlflow_run("watched", {}, {}) as watched:
        time.sleep(0.5)
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= _system_metrics(
        watched.run_id
    )


def test_frames_are_recorded_as_the_runs_dataset_with_their_digest_and_source(isolated_mlflow, tiny_frames):
    with mlflow_run("evaluate:test", {}, {}) as run:
        log_frames_input(tiny_frames, "evaluation", source="s3://bucket/frames/v3")  # a local copy of that prefix
    (used,) = mlflow.MlflowClient().get_run(run.run_id).inputs.dataset_inputs
    assert used.dataset.name == "v3"
    assert json.loads(used.dataset.source)["uri"] == "s3://bucket/frames/v3"
    assert used.dataset.digest == hashlib.md5((tiny_frames / "index.parquet").read_bytes()).hexdigest()
    tags = {t.key: t.value for t in used.tags}
    assert tags["mlflow.data.context"] == "evaluation" and tags["data_version"].startswith("md5:")
