"""Training that resumes by itself: a run killed mid-way and started again with the very same command (as a retried
pipeline pod is) finds its checkpoint in --checkpoint-dir, a folder or an s3:// prefix, and ends as one never stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import tiny_params
from v2i_core.engine.checkpoint import CHECKPOINT_NAME, remove_stale
from v2i_core.engine.predict import MAX_WORKERS, worker_count

EPOCHS = 3


def train_command(params: Path, frames: Path, out: Path, checkpoint_dir: str | None, *extra: str) -> list[str]:
    args = ["train", "--params", str(params), "--role", "baseline", "--data", str(frames), "--out", str(out)]
    if checkpoint_dir is not None:
        args += ["--checkpoint-dir", checkpoint_dir]
    return [sys.executable, "-m", "v2i_core.cli", *args, *extra]


def run(command: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def start_and_kill(command: list[str], env: dict, saved: Callable[[], bool]) -> None:
    """Start `command` and SIGKILL it once `saved()` finds its first checkpoint: no cleanup of any kind runs."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 300
    while not saved() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"


def weights(model_dir: Path) -> dict:
    return torch.load(model_dir / "model.pt", weights_only=True)


def resumed_from(stderr: str, shown: str) -> int:
    """The (1-based) epoch the run says it resumed from."""
    (line,) = [line for line in stderr.splitlines() if f"resuming {shown} from epoch" in line]
    return int(line.rsplit(" ", 1)[1])


@pytest.fixture(scope="module")
def setting(tmp_path_factory, tiny_frames) -> dict:
    """Params (loading with 2 worker processes), and an environment with MLflow in a folder of the module's."""
    root = tmp_path_factory.mktemp("resume")
    params = tiny_params(epochs=EPOCHS)
    params["baseline"]["train"]["num_workers"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    return {"root": root, "params": root / "params.yaml", "frames": tiny_frames, "env": env}


@pytest.fixture(scope="module")
def killed(setting) -> dict:
    """A run killed after its first checkpoint, and a copy of that checkpoint for the tests that need one."""
    root = setting["root"]
    out, checkpoints = root / "killed" / "model", root / "killed" / "checkpoints"
    command = train_command(setting["params"], setting["frames"], out, str(checkpoints))
    start_and_kill(command, setting["env"], (checkpoints / CHECKPOINT_NAME).exists)
    shutil.copy(checkpoints / CHECKPOINT_NAME, root / "first-checkpoint.pt")
    return {"command": command, "out": out, "checkpoints": checkpoints, "copy": root / "first-checkpoint.pt"}


@pytest.mark.slow
def test_a_killed_run_started_again_resumes_and_ends_as_one_never_stopped(setting, killed):
    checkpoint = killed["checkpoints"] / CHECKPOINT_NAME
    assert torch.load(checkpoint, weights_only=True)["epoch"] < EPOCHS - 1
    assert not (killed["out"] / "model.pt").exists() and not (killed["out"] / "metrics.json").exists()
    stale = killed["checkpoints"] / f".{CHECKPOINT_NAME}.tmp4242.pt"  # what a save killed half-way leaves
    stale.write_bytes(b"half a checkpoint")

    again = run(killed["command"], setting["env"])
    assert again.returncode == 0, again.stderr[-2000:]
    assert resumed_from(again.stderr, str(checkpoint)) >= 2
    assert f"removed {stale}" in again.stderr and not stale.exists()
    history = json.loads((killed["out"] / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == list(range(EPOCHS))
    assert not checkpoint.exists()  # finished: nothing left to resume

    # the same run never stopped, its data read in this process: the same weights, bit for bit
    straight = setting["root"] / "straight"
    in_process = ["--set", "baseline.train.num_workers=0"]
    done = run(train_command(setting["params"], setting["frames"], straight, None, *in_process), setting["env"])
    assert done.returncode == 0, done.stderr[-2000:]
    expected, got = weights(straight), weights(killed["out"])
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


@pytest.mark.slow
def test_a_run_with_another_model_config_refuses_the_checkpoint_and_names_what_differs(setting, killed, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    shutil.copy(killed["copy"], checkpoints / CHECKPOINT_NAME)
    command = train_command(setting["params"], setting["frames"], tmp_path / "model", str(checkpoints))
    refused = run([*command, "--set", "baseline.model.d_model=64"], setting["env"])
    assert refused.returncode == 1
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith(f"v2i: error: {checkpoints / CHECKPOINT_NAME}: ")
    assert "model.d_model 32 in the checkpoint, 64 here" in line
    assert (checkpoints / CHECKPOINT_NAME).exists() and not (tmp_path / "model" / "model.pt").exists()


def test_stale_temporaries_of_killed_saves_are_removed_and_nothing_else(tmp_path):
    kept = [tmp_path / CHECKPOINT_NAME, tmp_path / "model.pt", tmp_path / ".model.pt.tmp7.pt"]
    stale = [tmp_path / f".{CHECKPOINT_NAME}.tmp{pid}.pt" for pid in (12, 345)]
    for path in kept + stale:
        path.write_bytes(b"x")
    assert remove_stale(tmp_path) == stale
    assert sorted(tmp_path.iterdir()) == sorted(kept)


@pytest.mark.slow
def test_a_checkpoint_on_s3_is_saved_each_epoch_resumed_and_removed_at_the_end(setting, s3_bucket, tmp_path):
    import boto3

    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    uri, key = f"s3://{s3_bucket}/runs/baseline", f"runs/baseline/{CHECKPOINT_NAME}"

    def saved() -> bool:
        return client.list_objects_v2(Bucket=s3_bucket, Prefix=key).get("KeyCount", 0) > 0

    env = {**setting["env"], **{k: v for k, v in os.environ.items() if k.startswith(("AWS_", "MLFLOW_S3"))}}
    command = train_command(setting["params"], setting["frames"], tmp_path / "model", uri)
    start_and_kill(command, env, saved)
    client.download_file(s3_bucket, key, str(tmp_path / "left.pt"))
    assert torch.load(tmp_path / "left.pt", weights_only=True)["epoch"] < EPOCHS - 1

    again = run(command, env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert resumed_from(again.stderr, f"s3://{s3_bucket}/{key}") >= 2
    history = json.loads((tmp_path / "model" / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == list(range(EPOCHS))
    assert not saved()


def _daemon_workers(queue) -> None:
    queue.put(worker_count())


def test_loader_processes_default_to_a_share_of_the_cpus_and_an_explicit_count_wins(monkeypatch):
    import multiprocessing

    import torch

    assert worker_count() == 0 or torch.cuda.is_available()  # a CPU-only machine loads in process
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the share a GPU node's training gets
    cpus = len(os.sched_getaffinity(0))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert worker_count() == min(MAX_WORKERS, cpus)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cpus))  # as many training processes as CPUs: none left to share
    assert worker_count() == 1 and worker_count(3) == 3
    queue = multiprocessing.get_context("fork").Queue()
    daemon = multiprocessing.get_context("fork").Process(target=_daemon_workers, args=(queue,), daemon=True)
    daemon.start()
    assert queue.get(timeout=30) == 0  # a daemonic process may not start loader processes
    daemon.join()
