"""The training engine as users drive it: `v2i train`, killed and resumed, under torchrun, on bad losses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import tiny_params
from v2i_core.config import ModelConfig, MSIConfig
from v2i_core.engine.model_dir import ModelSpec, build_network, load_model_dir, write_model_dir

pytestmark = pytest.mark.slow


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params))
    return path


def v2i(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "v2i_core.cli", *args], capture_output=True, text=True, env=env, timeout=600
    )


def train_args(params: Path, frames: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--params", str(params), "--role", "baseline", "--data", str(frames), "--out", str(out), *extra]


def weights(model_dir: Path) -> dict:
    return torch.load(model_dir / "model.pt", weights_only=True)


def test_killed_run_resumes_to_the_same_weights(tiny_frames, tmp_path, isolated_mlflow):
    params = write_params(tmp_path / "params.yaml", tiny_params(epochs=3))
    straight = tmp_path / "straight"
    done = v2i(*train_args(params, tiny_frames, straight))
    assert done.returncode == 0, done.stderr

    interrupted = tmp_path / "interrupted"
    proc = subprocess.Popen(
        [sys.executable, "-m", "v2i_core.cli", *train_args(params, tiny_frames, interrupted)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint = interrupted / "checkpoint.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (interrupted / "model.pt").exists()
    assert torch.load(checkpoint, weights_only=True)["epoch"] < 2

    again = v2i(*train_args(params, tiny_frames, interrupted))
    assert again.returncode == 1
    assert "pass --resume" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    other = v2i(*train_args(params, tiny_frames, interrupted, "--resume", "--set", "baseline.model.d_model=64"))
    assert other.returncode == 1 and "another model config" in other.stderr

    resumed = v2i(*train_args(params, tiny_frames, interrupted, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    expected, got = weights(straight), weights(interrupted)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    history = json.loads((interrupted / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2]


def test_a_finished_run_leaves_its_model_and_no_checkpoint(tiny_frames, tmp_path, isolated_mlflow):
    params = write_params(tmp_path / "params.yaml", tiny_params(epochs=1))
    out = tmp_path / "model"
    assert v2i(*train_args(params, tiny_frames, out)).returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "metrics.json", "model.pt"]
    (epoch,) = json.loads((out / "metrics.json").read_text())["history"]
    assert {"train_loss", "val_f1", "val_precision", "val_recall"} <= epoch.keys()  # what dvc.yaml's plots read


def test_student_with_distillation_off_ends_as_its_baseline(tiny_frames, tmp_path, isolated_mlflow):
    # the student path (clips, teacher forward, task wrapper) must add nothing but the distillation terms
    params = tiny_params(epochs=2)
    params["distill"].update(tfd={"enabled": False}, cqd={"enabled": False}, score_weight=None)
    path = write_params(tmp_path / "params.yaml", params)
    teacher = ["--params", str(path), "--data", str(tiny_frames), "--out", str(tmp_path / "teacher")]
    assert v2i("train", "--role", "teacher", *teacher).returncode == 0
    assert v2i(*train_args(path, tiny_frames, tmp_path / "baseline")).returncode == 0
    student = ["--params", str(path), "--data", str(tiny_frames), "--teacher", str(tmp_path / "teacher")]
    done = v2i("distill", *student, "--out", str(tmp_path / "student"))
    assert done.returncode == 0, done.stderr
    baseline, plain_student = weights(tmp_path / "baseline"), weights(tmp_path / "student")
    assert baseline.keys() == plain_student.keys()
    assert all(torch.equal(baseline[k], plain_student[k]) for k in baseline)


def test_a_clean_teacher_view_needs_hard_frames_and_changes_what_the_student_learns(
    tiny_frames, tmp_path, isolated_mlflow
):
    params = tiny_params(epochs=1)
    teacher = ["--params", str(write_params(tmp_path / "params.yaml", params)), "--data", str(tiny_frames)]
    assert v2i("train", "--role", "teacher", *teacher, "--out", str(tmp_path / "teacher")).returncode == 0

    def distill(name: str, teacher_view: str, hard_frames: float):
        train = {**params["distill"]["train"], "augment": {"hard_frames": hard_frames}}
        section = {**params["distill"], "train": train, "teacher_view": teacher_view}
        path = write_params(tmp_path / f"{name}.yaml", {**params, "distill": section})
        args = ["--params", str(path), "--data", str(tiny_frames), "--teacher", str(tmp_path / "teacher")]
        return v2i("distill", *args, "--out", str(tmp_path / name))

    refused = distill("refused", "clean", 0.0)
    assert refused.returncode == 1 and "distill.train.augment.hard_frames" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "refused").exists()
    for name, view in (("clean", "clean"), ("degraded", "degraded")):
        done = distill(name, view, 1.0)
        assert done.returncode == 0, done.stderr
    clean, degraded = weights(tmp_path / "clean"), weights(tmp_path / "degraded")
    assert any(not torch.equal(clean[k], degraded[k]) for k in degraded)


def test_non_finite_loss_stops_with_a_clear_message(tiny_frames, tmp_path, isolated_mlflow):
    params = tiny_params(epochs=2)
    params["baseline"]["train"].update(lr=1e30, lr_backbone=1e30, clip_max_norm=0)
    result = v2i(*train_args(write_params(tmp_path / "params.yaml", params), tiny_frames, tmp_path / "m"))
    assert result.returncode == 1
    assert "loss is not finite" in result.stderr
    assert not (tmp_path / "m" / "model.pt").exists()


def test_two_process_ddp_run(tiny_frames, tmp_path, isolated_mlflow):
    params = write_params(tmp_path / "params.yaml", tiny_params(epochs=1))
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "v2i_core.cli",
            *train_args(params, tiny_frames, out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    network, _ = load_model_dir(out)
    assert all(torch.isfinite(p).all() for p in network.state_dict().values() if p.is_floating_point())

    import mlflow

    runs = mlflow.search_runs(experiment_names=["v2i"], output_format="list")
    assert len(runs) == 1, "only rank 0 logs to MLflow"


def test_training_is_tracked_in_mlflow(tiny_frames, tmp_path, isolated_mlflow):
    params = write_params(tmp_path / "params.yaml", tiny_params(epochs=2))
    out = tmp_path / "tracked"
    assert v2i(*train_args(params, tiny_frames, out)).returncode == 0

    import mlflow

    (run,) = mlflow.search_runs(experiment_names=["v2i"], output_format="list")
    assert run.data.params["model.d_model"] == "32"
    assert run.data.tags["data_version"].startswith(("dvc:", "md5:"))
    assert len(run.data.tags["git_commit"]) >= 7
    history = mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == [0, 1]
    spec = yaml.safe_load((out / "config.yaml").read_text())
    assert spec["provenance"]["mlflow_run_id"] == run.info.run_id
    artifacts = {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(run.info.run_id, "model_dir")}
    assert "model_dir/model.pt" in artifacts


@pytest.mark.parametrize("role", ["baseline", "teacher"])
def test_model_rebuilt_from_its_folder_alone_gives_identical_outputs(tmp_path, role):
    model = ModelConfig(input_size=(64, 64), d_model=32, nheads=4, enc_layers=1, dec_layers=1, dim_feedforward=64)
    spec = ModelSpec(
        role, model, [{"id": 1, "name": "polyp"}], MSIConfig(global_heads=4) if role == "teacher" else None
    )
    torch.manual_seed(0)
    network = build_network(spec).eval()
    write_model_dir(tmp_path / "a", network, spec, {"history": []})
    moved = tmp_path / "elsewhere" / "b"
    shutil.copytree(tmp_path / "a", moved)
    rebuilt, rebuilt_spec = load_model_dir(moved)
    inputs = torch.rand(2, 3, 3, 64, 64) if role == "teacher" else torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        first, second = network(inputs), rebuilt(inputs)
    assert rebuilt_spec.to_dict() == spec.to_dict()
    assert torch.equal(first["pred_logits"], second["pred_logits"])
    assert torch.equal(first["pred_boxes"], second["pred_boxes"])


def test_model_dir_with_wrong_weights_is_refused(tmp_path):
    model = ModelConfig(input_size=(64, 64), d_model=32, nheads=4, enc_layers=1, dec_layers=1, dim_feedforward=64)
    spec = ModelSpec("baseline", model, [{"id": 1, "name": "polyp"}])
    write_model_dir(tmp_path, build_network(spec), spec, {})
    bigger = yaml.safe_load((tmp_path / "config.yaml").read_text())
    bigger["model"]["d_model"] = 64
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(bigger))
    from v2i_core.errors import V2IError

    with pytest.raises(V2IError, match="do not match config.yaml"):
        load_model_dir(tmp_path)


def test_tracking_uri_credentials_never_reach_messages():
    from v2i_core.tracking import display_uri

    assert display_uri("https://bob:s3cret@mlflow.example:5000/api") == "https://mlflow.example:5000/api"
    assert display_uri("sqlite:///mlflow.db") == "sqlite:///mlflow.db"
