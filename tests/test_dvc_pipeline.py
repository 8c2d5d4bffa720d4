"""The DVC pipeline end to end on tiny data: `dvc repro` builds every output and registers the student, a second
`dvc repro` does nothing, and a changed knob reruns exactly the stages that read it.

Runs in a temporary git + DVC repository holding the project's dvc.yaml, .dvc/config, .dvcignore, .gitignore and
a copy of v2i_core (the stages' code dependencies), with a params.yaml small enough for two CPU cores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = {"synth", "extract", "teacher", "baseline", "distill", "evaluate", "register"}

_TINY_MODEL = {
    "input_size": [64, 64],
    "d_model": 32,
    "nheads": 4,
    "dim_feedforward": 64,
    "enc_layers": 1,
    "dec_layers": 1,
    "num_queries": 6,
    "num_feature_levels": 1,
}
_TINY_TRAIN = {"epochs": 1, "batch_size": 4, "max_train_frames": 8}
TINY_PARAMS = {
    "synth": {"videos": 4, "frames": 12},
    "extract": {"format": "synthetic", "test_fraction": 0.5},  # 2 test videos: the gain's interval resamples them
    "baseline": {"model": _TINY_MODEL, "train": _TINY_TRAIN},
    "teacher": {"model": _TINY_MODEL, "train": _TINY_TRAIN, "msi": {"frames": 2, "global_heads": 4}},
    "distill": {"model": _TINY_MODEL, "train": _TINY_TRAIN},
    "eval": {"score_threshold": 0.5, "speed": {"warmup": 1, "iters": 2}, "disagreement_frames": 2},
    "filter": {"k": 2, "n": 3, "hold": 1},
    "register": {"name": "v2i-student"},
}


def tool_env() -> dict[str, str]:
    """This virtualenv's tools first on PATH; MLflow in the repository's own mlflow.db; no DVC analytics."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "V2I_PARAMS")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def sh(repo: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=repo, env=tool_env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def dvc_project(repo: Path, params: dict) -> Path:
    """A fresh git + DVC repository with the project's pipeline files, v2i_core and `params` as params.yaml."""
    repo.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy2(ROOT / name, repo / name)
    shutil.copytree(ROOT / "v2i_core", repo / "v2i_core", ignore=shutil.ignore_patterns("__pycache__"))
    # a JSON round trip unshares nested dicts, so the YAML has no anchors tying sections together
    (repo / "params.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(params)), sort_keys=False))
    sh(repo, "git", "init", "-q")
    sh(repo, "git", "config", "user.email", "ci@v2i.invalid")
    sh(repo, "git", "config", "user.name", "ci")
    sh(repo, "dvc", "init", "-q")
    shutil.copy2(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    return repo


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([\w-]+)'", output))


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """The tiny project after one full `dvc repro`, committed (experiments need a base commit)."""
    repo = dvc_project(tmp_path_factory.mktemp("dvc") / "project", TINY_PARAMS)
    first = sh(repo, "dvc", "repro")
    assert stages_run(first.stdout) == STAGES, first.stdout
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "tiny pipeline")
    return repo


def registry(repo: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")


@pytest.mark.slow
def test_repro_builds_every_output_and_registers_the_student(repo):
    assert (repo / "data" / "frames" / "index.parquet").exists()
    for name in ("baseline", "teacher", "student"):
        spec = yaml.safe_load((repo / "models" / name / "config.yaml").read_text())
        assert spec["role"] == name
        assert (repo / "models" / name / "model.pt").stat().st_size > 0
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    assert set(metrics["models"]) == {"baseline", "teacher", "student"}
    assert all(0.0 <= entry["f1"] <= 1.0 for entry in metrics["models"].values())
    table = (repo / "reports" / "table.md").read_text()
    assert "| student" in table
    gain = metrics["gain"]  # the student's F1 gain with its 95% interval over the test videos, under the table
    assert gain["f1_gain"] == pytest.approx(metrics["models"]["student"]["f1"] - metrics["models"]["baseline"]["f1"])
    low, high = gain["f1_gain_ci95"]
    assert low <= high and f"interval over the {gain['videos']} test videos" in table
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert set(lock) == STAGES
    assert lock["distill"]["params"]["params.yaml"]["distill"]["train"]["epochs"] == 1
    version = registry(repo).get_model_version_by_alias("v2i-student", "challenger")
    assert str(version.version) == "1"
    assert version.tags["data_version"].startswith("dvc:")  # traced to the DVC hash of data/frames


@pytest.mark.slow
def test_second_repro_does_nothing(repo):
    again = sh(repo, "dvc", "repro")
    assert stages_run(again.stdout) == set()
    assert "Data and pipelines are up to date" in again.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("knob", "value", "changed"),
    [
        ("synth.seed", 7, {"synth"}),
        ("extract.stride", 2, {"extract"}),
        ("teacher.msi.frames", 3, {"teacher"}),
        ("baseline.train.lr", 0.001, {"baseline"}),
        ("distill.cqd.weight", 1.0, {"distill"}),
        ("eval.speed.iters", 3, {"evaluate"}),
        ("eval.score_threshold", 0.3, {"evaluate", "register"}),
        ("filter.k", 3, {"evaluate", "register"}),  # register records it in the served model
        ("register.min_delta", 0.1, {"register"}),
    ],
)
def test_each_knob_invalidates_only_the_stages_that_read_it(repo, knob, value, changed):
    # `dvc status` lists the stages whose own dependencies changed; their downstream stages follow by data
    params_file = repo / "params.yaml"
    original = params_file.read_text()
    edited = yaml.safe_load(original)
    node = edited
    *parents, leaf = knob.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    params_file.write_text(yaml.safe_dump(edited, sort_keys=False))
    try:
        status = json.loads(sh(repo, "dvc", "status", "--json").stdout)
    finally:
        params_file.write_text(original)
    assert set(status) == changed


@pytest.mark.slow
def test_experiment_on_a_knob_reruns_only_evaluate_and_register(repo):
    run = sh(repo, "dvc", "exp", "run", "-S", "eval.score_threshold=0.3")
    assert stages_run(run.stdout) == {"evaluate", "register"}
    assert json.loads((repo / "reports" / "metrics.json").read_text())["score_threshold"] == 0.3
    # same student, same training run: the registry keeps its one version
    assert [str(v.version) for v in registry(repo).search_model_versions("name = 'v2i-student'")] == ["1"]
    rows = json.loads(sh(repo, "dvc", "exp", "show", "--json").stdout)
    experiments = [rev for row in rows for exp in row.get("experiments") or [] for rev in exp["revs"]]
    assert experiments, rows
    metrics = experiments[0]["data"]["metrics"]["reports/metrics.json"]["data"]
    assert metrics["score_threshold"] == 0.3
    assert set(metrics["models"]) == {"baseline", "teacher", "student"}


@pytest.mark.slow
def test_metrics_and_plots_show(repo):
    shown = json.loads(sh(repo, "dvc", "metrics", "show", "--json").stdout)
    models = shown[""]["data"]["reports/metrics.json"]["data"]["models"]  # "": the workspace
    assert {"precision", "recall", "f1", "fps", "params_m"} <= set(models["student"])
    plots = json.loads(sh(repo, "dvc", "plots", "show", "--json").stdout)["data"]
    for curve in ("train_loss", "val_f1"):
        values = plots[curve][0]["content"]["data"]["values"]
        assert len(values) == 3  # one epoch of each of the three models
    for image in ("reports/pr_curve.png", "reports/f1_threshold.png", "reports/disagreement.png"):
        assert plots[image][0]["type"] == "image"
