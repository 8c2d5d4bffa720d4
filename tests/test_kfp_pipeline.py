"""The Kubeflow pipeline: it compiles against an image pinned by commit or digest, keeps the frames on a volume
every step mounts, asks for GPUs where it trains and evaluates, retries training steps (which resume from the
volume), imports pretrained weights as an artifact, injects credentials from the Kubernetes secret, and the very
same DAG runs end to end under `kfp.local`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.compile import CompileError, image_name
from tests.conftest import upload_tree

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "registry.example.com/ml/v2i@sha256:" + "0123456789abcdef" * 4
TRAINING = {"teacher", "baseline", "distill"}
VOLUME_STEPS = {"data volume", "delete data volume"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[dict, dict]:
    """(pipeline spec, Kubernetes executors) of the pipeline compiled as a user does, against a pinned image."""
    out = tmp_path_factory.mktemp("compiled") / "v2i_pipeline.yaml"
    env = {k: v for k, v in os.environ.items() if k != "V2I_IMAGE"}
    done = subprocess.run([sys.executable, "-m", "pipelines.compile", "--image", IMAGE, "--out", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    spec, platform = yaml.safe_load_all(out.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.fixture(scope="module")
def steps(compiled) -> list[dict]:
    """Every container task of the pipeline, in every branch: its step name, task, executor and platform config."""
    spec, platform = compiled
    found = []
    for component in [spec["root"], *spec["components"].values()]:
        for task in component.get("dag", {}).get("tasks", {}).values():
            label = spec["components"][task["componentRef"]["name"]].get("executorLabel")
            executor = spec["deploymentSpec"]["executors"].get(label, {})
            if "container" in executor:
                found.append(
                    {
                        "name": task["taskInfo"]["name"],
                        "task": task,
                        "container": executor["container"],
                        "k8s": platform.get(label, {}),
                    }
                )
    return found


def test_image_is_named_by_commit_or_digest():
    commit = "9" * 40
    repo = "registry.example.com/ml/v2i"
    assert image_name(None, repo, commit, dirty=False) == f"{repo}:{commit}"
    assert image_name(IMAGE, None, None, dirty=True) == IMAGE
    with pytest.raises(CompileError, match="uncommitted changes"):
        image_name(None, "registry.example.com/ml/v2i", commit, dirty=True)
    with pytest.raises(CompileError, match="by digest"):
        image_name("registry.example.com/ml/v2i:latest", None, None, dirty=False)
    with pytest.raises(CompileError, match="without a tag"):
        image_name(None, "registry.example.com/ml/v2i:latest", commit, dirty=False)


def test_every_project_step_runs_in_the_pinned_image(steps):
    for step in steps:
        if step["name"] not in VOLUME_STEPS:  # kfp-kubernetes' own stubs
            assert step["container"]["image"] == IMAGE, step["name"]


def test_every_step_of_every_branch_is_present(steps):
    names = [step["name"] for step in steps]
    # one extract; the training steps with and without imported weights; evaluate + register (+ freeing the volume)
    # on a GPU and on CPU in each of those
    assert sorted(names) == sorted(
        ["data volume", "extract", *["teacher", "baseline", "distill"] * 2,
         *["evaluate", "register", "delete data volume"] * 4]
    )  # fmt: skip


def test_the_frames_live_on_the_run_volume_that_every_reading_step_mounts(compiled, steps):
    spec, _ = compiled
    create = spec["root"]["dag"]["tasks"]["createpvc"]["inputs"]["parameters"]
    assert create["size"] == {"componentInputParameter": "volume_size"}
    assert create["storage_class_name"] == {"componentInputParameter": "storage_class"}
    assert create["access_modes"]["runtimeValue"]["constant"] == ["ReadWriteMany"]
    for step in steps:
        mounts = step["k8s"].get("pvcMount", [])
        if step["name"] in {"extract", "evaluate", *TRAINING}:
            assert [m["mountPath"] for m in mounts] == ["/v2i-data"], step["name"]
            assert "frames" not in step["task"]["inputs"].get("artifacts", {})  # nothing downloads the frames
        else:
            assert not mounts, step["name"]
    extract = spec["root"]["dag"]["tasks"]["extract-op"]["inputs"]["parameters"]
    assert extract["data_root"]["runtimeValue"]["constant"] == "/v2i-data"


def test_gpus_for_training_one_for_evaluate_when_asked_and_cpu_and_memory_everywhere(steps):
    evaluate_gpus = []
    for step in steps:
        resources = step["container"].get("resources", {})
        if step["name"] in TRAINING:
            assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert resources["accelerator"]["resourceCount"] == "{{$.inputs.parameters['pipelinechannel--gpus']}}"
            assert step["task"]["inputs"]["parameters"]["gpus"] == {"componentInputParameter": "pipelinechannel--gpus"}
            assert step["k8s"]["tolerations"][0]["key"] == "nvidia.com/gpu"
        elif step["name"] == "evaluate":
            evaluate_gpus.append(resources.get("accelerator", {}).get("resourceCount"))
        else:
            assert "accelerator" not in resources, step["name"]
        if step["name"] not in VOLUME_STEPS:
            assert resources["resourceCpuRequest"] and resources["resourceMemoryRequest"]
    assert sorted(evaluate_gpus, key=str) == ["1", "1", None, None]  # GPU and CPU evaluate, with or without weights


def test_credentials_come_from_the_secret_and_never_from_parameters(compiled, steps):
    spec, _ = compiled
    parameters = set(spec["root"]["inputDefinitions"]["parameters"])
    assert parameters == {"source_uri", "source_format", "overrides", "params_file", "pretrained_uri", "gpus",
                          "registry_name", "promote", "volume_size", "storage_class"}  # fmt: skip
    for step in steps:
        secrets = step["k8s"].get("secretAsEnv", [])
        if step["name"] in VOLUME_STEPS:
            assert not secrets
            continue
        assert [s["secretName"] for s in secrets] == ["v2i-credentials"], step["name"]
        envs = {pair["envVar"] for pair in secrets[0]["keyToEnv"]}
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD"} <= envs
        config_maps = step["k8s"]["configMapAsEnv"]
        assert {"AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI"} <= {pair["envVar"] for pair in config_maps[0]["keyToEnv"]}
        plain_env = {e["name"] for e in step["container"].get("env", [])}
        assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & plain_env


def test_retries_and_caching(steps):
    for step in steps:
        task, name = step["task"], step["name"]
        # training retries resume from the volume; extract and register talk to S3 and MLflow
        assert ("retryPolicy" in task) == (name in {"extract", "register", *TRAINING}), name
        # the volume, extract (it writes this run's volume) and register (the registry's state) never come from cache
        cached = name not in {"extract", "register", *VOLUME_STEPS}
        assert task["cachingOptions"].get("enableCache", False) == cached, name
        if name in TRAINING | {"evaluate"}:  # cached by the data's version, not by where it lies
            assert task["inputs"]["parameters"]["data_version"]["componentInputParameter"].endswith("data_version")


def test_pretrained_weights_reach_every_training_step_as_an_imported_artifact(compiled, steps):
    spec, _ = compiled
    importer = spec["deploymentSpec"]["executors"]["exec-importer"]["importer"]
    assert importer["artifactUri"] == {"runtimeParameter": "uri"}
    training = [step for step in steps if step["name"] in TRAINING]
    with_weights = [step for step in training if "pretrained" in step["task"]["inputs"].get("artifacts", {})]
    assert sorted(step["name"] for step in with_weights) == ["baseline", "distill", "teacher"]
    for step in with_weights:
        assert step["task"]["inputs"]["artifacts"]["pretrained"]["taskOutputArtifact"]["producerTask"] == "importer"
    assert len(training) == 6  # the from-scratch branch trains the same three without weights
    tasks = spec["components"]["comp-condition-branches-1"]["dag"]["tasks"].values()
    branches = {task["taskInfo"]["name"]: task["triggerPolicy"]["condition"] for task in tasks}
    assert branches["pretrained"] == "inputs.parameter_values['pipelinechannel--pretrained_uri'] != ''"


@pytest.mark.slow
def test_run_local_runs_the_pipeline_end_to_end_from_imported_weights(tmp_path):
    import torch
    import torchvision
    from mlflow import MlflowClient

    weights = tmp_path / "resnet18-random.pth"  # stands in for ImageNet weights: what matters is that they arrive
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "V2I_PARAMS")}
    done = subprocess.run([sys.executable, "-m", "pipelines.run_local", "--root", str(tmp_path), "--pretrained-uri",
                           str(weights)], cwd=ROOT, env=env, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| student" in done.stdout  # it ends by printing the comparison table
    (run,) = list((tmp_path / "artifacts").iterdir())
    (evaluate,) = run.glob("evaluate-op*")  # the CPU evaluate of the pretrained branch: the only one that ran
    (register,) = run.glob("register-op*")

    report = json.loads((evaluate / "report" / "metrics.json").read_text())
    assert {name: m["role"] for name, m in report["models"].items()} == {
        "baseline": "baseline", "teacher": "teacher", "student": "student"
    }
    assert (evaluate / "table").read_text().startswith("| Model")
    assert 'src="data:image/png;base64,' in (evaluate / "summary").read_text()
    imported = torch.load(weights, weights_only=True)["conv1.weight"]
    roles = set()
    for model_dir in [*run.glob("train-op*/model"), *run.glob("distill-op*/model")]:
        spec = yaml.safe_load((model_dir / "config.yaml").read_text())
        roles.add(spec["role"])
        assert spec["model"]["d_model"] == 32  # the tiny overrides reached the step
        assert spec["model"]["pretrained"] == str(weights)  # the importer's file reached every training step
        state = torch.load(model_dir / "model.pt", weights_only=True)
        (stem,) = [value for key, value in state.items() if key.endswith("backbone.conv1.weight")]
        fresh = torchvision.models.resnet18().conv1.weight  # what training from scratch would start from
        assert (stem - imported).abs().max() < 0.01 < (fresh - imported).abs().max()
    assert roles == {"teacher", "baseline", "student"}
    # each training kept its checkpoint on the data root while it ran, and removed it once finished
    checkpoints = sorted(p.name.split("-")[0] for p in (tmp_path / "data" / "checkpoints").iterdir())
    assert checkpoints == ["baseline", "student", "teacher"]
    assert not list((tmp_path / "data" / "checkpoints").rglob("*.pt"))
    registered = json.loads((register / "executor_output.json").read_text())["parameterValues"]
    # the step hands on the student's gain over its baseline from the same evaluation, and the gate's verdict on it
    models = report["models"]
    assert registered["gain"] == pytest.approx(models["student"]["f1"] - models["baseline"]["f1"])
    assert registered["version"] == "1" and registered["champion"] is (registered["gain"] > 0)
    assert registered["gate"].startswith("gate passed" if registered["champion"] else "gate failed: student f1")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    version = client.get_model_version("v2i-student", "1")
    assert version.tags["baseline.f1"] == repr(models["baseline"]["f1"])
    assert client.get_run(version.run_id).data.tags["role"] == "student"  # the model is the training run's
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
    task = extract_op(source_uri=f"s3://{s3_bucket}/videos", source_format="synthetic", overrides=[], params_file="",
                      data_root=str(tmp_path / "volume"))  # fmt: skip
    assert task.outputs["frames_dir"] == str(tmp_path / "volume" / "frames")
    assert Path(task.outputs["frames_dir"], "index.parquet").exists()
    assert task.outputs["data_version"].startswith("md5:")
    index = task.outputs["index"]
    assert index.metadata["videos"] == 3 and index.metadata["source"] == f"s3://{s3_bucket}/videos"
    assert Path(index.path, "index.parquet").exists() and not list(Path(index.path).glob("*.jpg"))
