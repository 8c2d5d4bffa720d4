"""Shared fixtures: real servers on loopback (moto's S3), small synthetic data."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listening on port {port} after {timeout}s")


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 endpoint: moto in server mode on loopback. Sets the AWS_* environment for boto3."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in _S3_ENV}
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        MLFLOW_S3_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing-key",
        AWS_SECRET_ACCESS_KEY="testing-secret",
        AWS_DEFAULT_REGION="us-east-1",
    )
    try:
        wait_for_port(port, proc)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_S3_ENV = (
    "AWS_ENDPOINT_URL",
    "MLFLOW_S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
)


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh bucket on the moto server; yields its name."""
    import uuid

    import boto3

    name = f"v2i-test-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


def upload_tree(bucket: str, prefix: str, root: Path) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    for path in sorted(root.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(root).as_posix()}")


def wait_for_http(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    """Poll `url` until it answers 200; fail early if the server process dies."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer after {timeout}s")


@pytest.fixture(scope="session")
def mlflow_server(s3_endpoint, tmp_path_factory):
    """A real MLflow tracking server on loopback: SQLite store, artifacts proxied to S3 on the moto server.

    Yields the tracking URI. Clients need no S3 credentials (--serve-artifacts); the server reads them
    from the environment the s3_endpoint fixture set.
    """
    import boto3

    bucket = "v2i-mlflow"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = open(root / "server.log", "wb")  # noqa: SIM115 - kept open for the server's lifetime
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--serve-artifacts",
            "--artifacts-destination",
            f"s3://{bucket}/mlartifacts",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=root,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{uri}/health", proc)
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


TINY_MODEL = {
    "input_size": [64, 80],
    "d_model": 32,
    "nheads": 4,
    "enc_layers": 1,
    "dec_layers": 1,
    "dim_feedforward": 64,
    "num_queries": 5,
}


def tiny_params(epochs: int = 1, **sections) -> dict:
    """A params.yaml dict whose models train in seconds on 2 cores."""
    train = {"epochs": epochs, "batch_size": 8}
    params = {
        "baseline": {"model": dict(TINY_MODEL), "train": dict(train)},
        "teacher": {"model": dict(TINY_MODEL), "train": dict(train), "msi": {"global_heads": 4}},
        "distill": {"model": dict(TINY_MODEL), "train": dict(train)},
    }
    params.update(sections)
    return params


@pytest.fixture(scope="session")
def tiny_frames(tmp_path_factory) -> Path:
    """A frames directory from 4 short synthetic colonoscopy videos (train/val/test by video)."""
    from v2i_core.config import ExtractConfig, SynthConfig
    from v2i_core.data.extract import extract
    from v2i_core.data.synth import synthesize

    root = tmp_path_factory.mktemp("tiny")
    synthesize(SynthConfig(videos=4, frames=12), root / "raw")
    extract(root / "raw", root / "frames", ExtractConfig(val_fraction=0.25, test_fraction=0.25), progress=False)
    return root / "frames"


@pytest.fixture
def isolated_mlflow(tmp_path, monkeypatch):
    """Point MLflow at a fresh SQLite store for one test, run from tmp_path so artifacts land there too: the
    environment for the `v2i` subprocesses, and this process's client too (an earlier test's
    mlflow.set_tracking_uri would otherwise win over the environment)."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    return uri
