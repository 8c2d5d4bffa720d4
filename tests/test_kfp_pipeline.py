"""The Kubeflow pipeline: the committed YAML is what the code compiles to, it asks for GPUs where it trains and
injects credentials from the Kubernetes secret, and the very same pipeline runs end to end under `kfp.local`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import upload_tree

ROOT = Path(__file__).resolve().parents[1]
COMPILED = ROOT / "pipelines" / "v2i_pipeline.yaml"
TRAINING = {"teacher", "baseline", "distill"}


def compiled() -> tuple[dict, dict]:
    """(pipeline spec, Kubernetes platform spec) of the committed YAML."""
    spec, platform = yaml.safe_load_all(COMPILED.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def steps() -> list[dict]:
    """Every container task of the pipeline, in both branches: its step name, task, executor and platform config."""
    spec, platform = compiled()
    found = []
    for component in spec["components"].values():
        for task in component.get("dag", {}).get("tasks", {}).values():
            label = spec["components"][task["componentRef"]["name"]].get("executorLabel")
            if label:
                found.append(
                    {
                        "name": task["taskInfo"]["name"],
                        "task": task,
                        "container": spec["deploymentSpec"]["executors"][label]["container"],
                        "k8s": platform.get(label, {}),
                    }
                )
    return found


def reads_synthetic(step: dict) -> bool:
    """The synthetic branch's extract step: it reads the synth step's artifact, not a source URI."""
    return step["name"] == "extract" and "raw" in step["task"]["inputs"].get("artifacts", {})


def test_compiled_yaml_is_fresh(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "V2I_IMAGE"}  # the committed YAML names the default image
    out = tmp_path / "v2i_pipeline.yaml"
    subprocess.run([sys.executable, "-m", "pipelines.compile", "--out", str(out)], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    assert out.read_text() == COMPILED.read_text(), "pipelines/v2i_pipeline.yaml is stale: python -m pipelines.compile"


def test_every_step_of_both_branches_is_present():
    names = [step["name"] for step in steps()]
    # synthetic branch: synth + extract + the five later steps; source branch: extract + the same five
    assert sorted(names) == sorted(
        ["synth", "extract", "extract", *["teacher", "baseline", "distill", "evaluate", "register"] * 2]
    )


def test_training_steps_ask_for_gpus_and_the_others_for_cpu_and_memory():
    for step in steps():
        resources = step["container"]["resources"]
        if step["name"] in TRAINING:
            assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert resources["accelerator"]["resourceCount"] == "{{$.inputs.parameters['pipelinechannel--gpus']}}"
            assert step["task"]["inputs"]["parameters"]["gpus"] == {"componentInputParameter": "gpus"}
            assert step["k8s"]["tolerations"][0]["key"] == "nvidia.com/gpu"
        else:
            assert "accelerator" not in resources, step["name"]
        assert resources["resourceCpuRequest"] and resources["resourceMemoryRequest"]


def test_credentials_come_from_the_secret_and_never_from_parameters():
    spec, _ = compiled()
    parameters = set(spec["root"]["inputDefinitions"]["parameters"])
    assert parameters == {"source_uri", "source_format", "overrides", "gpus", "registry_name", "promote"}
    for step in steps():
        secrets = step["k8s"].get("secretAsEnv", [])
        if step["name"] == "synth" or reads_synthetic(step):  # they read and write nothing remote
            assert not secrets, step["name"]
            continue
        assert [s["secretName"] for s in secrets] == ["v2i-credentials"], step["name"]
        envs = {pair["envVar"] for pair in secrets[0]["keyToEnv"]}
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD"} <= envs
        config_maps = step["k8s"]["configMapAsEnv"]
        assert {"AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI"} <= {pair["envVar"] for pair in config_maps[0]["keyToEnv"]}
        plain_env = {e["name"] for e in step["container"].get("env", [])}
        assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & plain_env


def test_retries_on_network_steps_and_caching_everywhere_but_the_registry():
    for step in steps():
        task = step["task"]
        from_source = step["name"] == "extract" and not reads_synthetic(step)
        assert ("retryPolicy" in task) == (step["name"] == "register" or from_source), step["name"]
        assert task["cachingOptions"].get("enableCache", False) == (step["name"] != "register"), step["name"]


@pytest.mark.slow
def test_run_local_runs_the_pipeline_end_to_end(tmp_path):
    from mlflow import MlflowClient

    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "V2I_PARAMS")}
    done = subprocess.run([sys.executable, "-m", "pipelines.run_local", "--root", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| student" in done.stdout  # it ends by printing the comparison table
    (run,) = list((tmp_path / "artifacts").iterdir())

    report = json.loads((run / "evaluate-op" / "report" / "metrics.json").read_text())
    assert {name: m["role"] for name, m in report["models"].items()} == {
        "baseline": "baseline", "teacher": "teacher", "student": "student"
    }
    assert (run / "evaluate-op" / "table").read_text().startswith("| Model")
    assert 'src="data:image/png;base64,' in (run / "evaluate-op" / "summary").read_text()
    for task, role in (("train-op", "teacher"), ("train-op-2", "baseline"), ("distill-op", "student")):
        spec = yaml.safe_load((run / task / "model" / "config.yaml").read_text())
        assert spec["role"] == role
        assert spec["model"]["d_model"] == 32  # the tiny overrides reached the step
    registered = json.loads((run / "register-op" / "executor_output.json").read_text())["parameterValues"]
    # the step hands on the student's gain over its baseline from the same evaluation, and the gate's verdict on it
    models = report["models"]
    assert registered["gain"] == pytest.approx(models["student"]["f1"] - models["baseline"]["f1"])
    assert registered["version"] == "1" and registered["champion"] is (registered["gain"] > 0)
    assert registered["gate"].startswith("gate passed" if registered["champion"] else "gate failed: student f1")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_model_version("v2i-student", "1").tags["baseline.f1"] == repr(models["baseline"]["f1"])
    assert ("champion" in client.get_registered_model("v2i-student").aliases) is registered["champion"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning")  # the image is a Python one
def test_extract_step_reads_a_source_on_s3(tmp_path, s3_bucket):
    from kfp import local

    from components.extract import extract_op
    from v2i_core.cli import main

    assert main(["synth", "--out", str(tmp_path / "raw"), "--params", "", "--set", "synth.videos=3",
                 "--set", "synth.frames=4"]) == 0
    upload_tree(s3_bucket, "videos", tmp_path / "raw")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "artifacts"))
    task = extract_op(source_uri=f"s3://{s3_bucket}/videos", source_format="synthetic", overrides=[])
    frames = task.outputs["frames"]
    assert frames.metadata["videos"] == 3 and frames.metadata["source"] == f"s3://{s3_bucket}/videos"
    assert Path(frames.path, "index.parquet").exists()
