"""The project's DVC remote against a real S3 endpoint (moto's server): `dvc push` then `dvc pull` on a fresh cache.

The committed .dvc/config names only the bucket; the endpoint and credentials come from the environment
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... as the s3_endpoint fixture sets them), as on a real machine.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import boto3
import pytest

from tests.test_dvc_pipeline import ROOT, TINY_PARAMS, dvc_project, sh


def tree_digest(root: Path) -> dict[str, str]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest() for p in files}


def test_committed_remote_holds_no_endpoint_or_credentials():
    listed = sh(ROOT, "dvc", "config", "--project", "--list").stdout.split()
    config = dict(line.partition("=")[::2] for line in listed)
    assert config["core.remote"] == "storage"
    assert config["remote.storage.url"].startswith("s3://")
    assert not [key for key in config if key.startswith("remote.") and not key.endswith(".url")]


@pytest.mark.slow
def test_push_then_pull_a_stage_output_through_s3(tmp_path, s3_bucket):
    repo = dvc_project(tmp_path / "project", {**TINY_PARAMS, "synth": {"videos": 2, "frames": 4}})
    sh(repo, "dvc", "repro", "synth")
    before = tree_digest(repo / "data" / "raw")
    assert any(name.endswith(".mp4") for name in before)

    sh(repo, "dvc", "remote", "modify", "--local", "storage", "url", f"s3://{s3_bucket}/store")
    sh(repo, "dvc", "push")
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert len(keys) == len(before) + 1  # every file plus the directory's manifest
    assert all(key.startswith("store/files/md5/") for key in keys)

    shutil.rmtree(repo / "data" / "raw")
    shutil.rmtree(repo / ".dvc" / "cache")
    pulled = sh(repo, "dvc", "pull", "synth")
    assert "fetched" in pulled.stdout
    assert tree_digest(repo / "data" / "raw") == before
    assert "Data and pipelines are up to date" in sh(repo, "dvc", "status", "synth").stdout
