"""A model trained by `v2i train` and registered by `v2i register`, served by `mlflow models serve` from a Python
that cannot import the project: the registered model is the training run's, and it carries its own code."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import sysconfig
import urllib.request
from importlib.metadata import packages_distributions
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml

from tests.conftest import free_port, tiny_params, wait_for_http
from v2i_core.cli import main
from v2i_core.engine.model_dir import read_spec
from v2i_core.serving import SERVING_PACKAGES, ImageDetector, encode_image, requirements
from v2i_core.temporal_filter import filter_video

pytestmark = pytest.mark.slow
NAME = "v2i-portable"
# the params `filter` section of the training run: recorded in the model it logs (k=1: not the default k=2, so a
# request's first row shows boxes only if these settings reached the server)
FILTER = {"k": 1, "n": 1, "hold": 1, "iou": 0.3}


@pytest.fixture(scope="module")
def registered(mlflow_server, tiny_frames, tmp_path_factory):
    """A baseline trained for one epoch and registered as NAME version 1: its model directory."""
    root = tmp_path_factory.mktemp("portable")
    model_dir = root / "baseline"
    metrics = {"models": {"baseline": {"model_dir": str(model_dir), "role": "baseline", "f1": 0.5, "AP50": 0.4}}}
    (root / "metrics.json").write_text(json.dumps(metrics))
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(epochs=1, filter=FILTER)))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        patch.chdir(root)
        assert main(["train", "--role", "baseline", "--data", str(tiny_frames), "--out", str(model_dir)]) == 0
        assert main(["register", "--model", str(model_dir), "--metrics", "metrics.json", "--name", NAME]) == 0
    return model_dir


def test_the_registered_version_is_the_training_runs_model(registered, mlflow_server):
    client = mlflow.MlflowClient(mlflow_server)
    version = client.get_model_version(NAME, "1")
    training_run = read_spec(registered).provenance["mlflow_run_id"]
    assert version.run_id == training_run
    (model,) = client.search_logged_models(
        [client.get_run(training_run).info.experiment_id], f"source_run_id = '{training_run}'"
    )
    assert version.source == model.model_uri
    assert [i.dataset.name for i in client.get_run(training_run).inputs.dataset_inputs] == ["frames"]


def bare_python(env_dir: Path) -> Path:
    """A Python with this one's installed packages but not the project: a venv whose deps.pth names this
    interpreter's site-packages (a path line in a .pth adds that folder, not the .pth files in it, so the editable
    install of v2i_core stays out). `mlflow models serve` starts `uvicorn` from PATH: this Python's, as pip would
    have installed it."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    (site,) = (env_dir / "lib").glob("python*/site-packages")
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    python = env_dir / "bin" / "python"
    uvicorn = env_dir / "bin" / "uvicorn"
    uvicorn.write_text(f'#!/bin/sh\nexec "{python}" -m uvicorn "$@"\n')
    uvicorn.chmod(uvicorn.stat().st_mode | stat.S_IEXEC)
    return python


def test_mlflow_models_serve_answers_where_the_project_is_not_installed(registered, mlflow_server, tmp_path):
    python = bare_python(tmp_path / "env")
    path = f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(MLFLOW_TRACKING_URI=mlflow_server, PATH=path)
    outside = tmp_path / "elsewhere"  # not the repository, so not on sys.path either
    outside.mkdir()
    probe = subprocess.run([python, "-c", "import v2i_core"], cwd=outside, env=env, capture_output=True, text=True)
    assert probe.returncode == 1 and "No module named 'v2i_core'" in probe.stderr

    port = free_port()
    with (tmp_path / "serve.log").open("wb") as log:
        proc = subprocess.Popen(
            [python, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}/1", "--env-manager", "local",
             "--host", "127.0.0.1", "-p", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=outside, start_new_session=True,
        )  # fmt: skip
        try:
            wait_for_http(f"http://127.0.0.1:{port}/ping", proc, timeout=180)
            rng = np.random.default_rng(0)
            frames = [rng.integers(0, 256, (72, 90, 3), dtype=np.uint8), rng.integers(0, 256, (64, 64, 3), np.uint8)]
            split = {"columns": ["image"], "data": [[encode_image(f)] for f in frames]}
            predictions = invoke(port, {"dataframe_split": split, "params": {"threshold": 0.0}})
            # the rows as one clip's frames, through the causal filter with the settings recorded at training
            filtered = invoke(port, {"dataframe_split": split, "params": {"threshold": 0.0, "filter": True}})
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 15)  # the server's own process group: its uvicorn worker included
            proc.wait(timeout=30)
    local = ImageDetector.from_model_dir(registered, torch.device("cpu")).detect(frames, 0.0)
    assert len(predictions) == len(frames)
    for got, want in zip(predictions, local, strict=True):
        assert got and {"bbox", "score", "category_id", "category"} <= set(got[0])
        np.testing.assert_allclose([d["score"] for d in got], [d["score"] for d in want], rtol=1e-5)
        np.testing.assert_allclose([d["bbox"] for d in got], [d["bbox"] for d in want], rtol=1e-5, atol=1e-4)
    want = filter_video(local, FILTER["k"], FILTER["n"], FILTER["hold"], FILTER["iou"])
    assert filtered[0] and [len(row) for row in filtered] == [len(row) for row in want]
    for got, row in zip(filtered, want, strict=True):
        np.testing.assert_allclose([d["bbox"] for d in got], [d["bbox"] for d in row], rtol=1e-5, atol=1e-4)


def invoke(port: int, body: dict) -> list:
    """The predictions of a POST of `body` to the served model's /invocations."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["predictions"]


def test_the_model_pins_every_package_its_code_imports(registered, mlflow_server, tmp_path):
    """The pins cover the third-party packages imported at module level by the v2i_core modules a served model
    loads (asked of a fresh interpreter, from the model's own code)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server}
    script = (
        "import ast, json, sys, mlflow\n"
        f"mlflow.pyfunc.load_model('models:/{NAME}/1')\n"
        "tops = set()\n"
        "for name, module in list(sys.modules.items()):\n"
        "    if name.split('.')[0] == 'v2i_core' and getattr(module, '__file__', None):\n"
        "        tree = ast.parse(open(module.__file__).read())\n"
        "        for node in tree.body:\n"
        "            if isinstance(node, ast.Import):\n"
        "                tops.update(a.name.split('.')[0] for a in node.names)\n"
        "            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:\n"
        "                tops.add(node.module.split('.')[0])\n"
        "print(json.dumps(sorted(tops - set(sys.stdlib_module_names) - {'v2i_core'})))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    imported = json.loads(done.stdout)
    assert {"torch", "numpy", "PIL", "yaml"} <= set(imported)
    distributions = packages_distributions()  # a package may come from several (mlflow, mlflow-skinny)
    assert not [top for top in imported if not {d.lower() for d in distributions[top]} & set(SERVING_PACKAGES)]
    mlflow.set_tracking_uri(mlflow_server)
    pins = Path(mlflow.pyfunc.get_model_dependencies(f"models:/{NAME}/1")).read_text().split()
    assert set(requirements()) <= set(pins)
