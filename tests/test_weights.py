"""Pretrained weights by torchvision name, s3:// URI or path: cached, hash-checked, and refused in one line.

No test reaches the network. torchvision's real files (tens of MB) stand in as a small resnet18 state dict saved
under the name torch hub's convention gives a file, `<arch>-<first 8 hex digits of its sha256>.pth`; where a test
needs torchvision to name that file, it points the weights' URL at it (on loopback, or at a closed port).
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import subprocess
import sys
import threading
from pathlib import Path

import boto3
import pytest
import torch
import torchvision
from torchvision.models import ResNet18_Weights

from tests.conftest import free_port
from v2i_core.config import ModelConfig
from v2i_core.errors import V2IError
from v2i_core.models.build import build_detector
from v2i_core.models.weights import resolve_weights

REAL_NAME = "resnet18-f37072fd.pth"  # the file name of ResNet18_Weights.IMAGENET1K_V1's URL


def tiny(**overrides) -> ModelConfig:
    base = dict(arch="detr", d_model=32, nheads=4, enc_layers=1, dec_layers=1, dim_feedforward=64, num_queries=4)
    return ModelConfig(**{**base, "input_size": (64, 96), **overrides})


@pytest.fixture()
def hub(tmp_path, monkeypatch) -> Path:
    """An empty torch hub checkpoints directory of a temporary TORCH_HOME."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert Path(torch.hub.get_dir()) == tmp_path / "torch" / "hub"
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    """A resnet18 state dict (seeded, so not ImageNet's) named by torch hub's convention: resnet18-<sha8>.pth."""
    torch.manual_seed(3)
    saved = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), saved)
    return saved.rename(saved.with_name(f"resnet18-{sha256(saved)[:8]}.pth"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def point_at(monkeypatch, url: str) -> None:
    """Make ResNet18_Weights.IMAGENET1K_V1 name `url` (its dataclass is torchvision's; restored after the test)."""
    monkeypatch.setattr(ResNet18_Weights.IMAGENET1K_V1.value, "url", url)


def assert_backbone_holds(model, path: Path) -> None:
    state = torch.load(path, weights_only=True)
    torch.testing.assert_close(model.backbone.conv1.weight, state["conv1.weight"])
    torch.testing.assert_close(model.backbone.layer3[1].bn2.running_mean, state["layer3.1.bn2.running_mean"])


def one_line_error(excinfo, *parts: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message
    return message


def refuse_downloads(monkeypatch) -> None:
    def no_network(url, *args, **kwargs):
        raise AssertionError(f"tried to download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)


@pytest.mark.parametrize("name", ["ResNet18_Weights.IMAGENET1K_V1", "IMAGENET1K_V1", "ResNet18_Weights.DEFAULT"])
def test_a_torchvision_name_loads_the_cached_file_without_the_network(hub, weights_file, monkeypatch, name):
    hub.mkdir(parents=True)
    cached = hub / weights_file.name
    cached.write_bytes(weights_file.read_bytes())
    point_at(monkeypatch, f"https://download.pytorch.org/models/{weights_file.name}")
    refuse_downloads(monkeypatch)
    assert resolve_weights(name, "resnet18") == cached
    assert_backbone_holds(build_detector(tiny(pretrained=name, backbone_norm="frozen_bn")), cached)


def test_a_cached_file_that_does_not_match_its_hash_is_refused(hub, weights_file, monkeypatch):
    hub.mkdir(parents=True)
    (hub / REAL_NAME).write_bytes(weights_file.read_bytes())  # a valid resnet18 file, but not ImageNet's
    refuse_downloads(monkeypatch)
    with pytest.raises(V2IError) as excinfo:
        build_detector(tiny(pretrained="ResNet18_Weights.IMAGENET1K_V1"))
    actual = sha256(weights_file)[:8]
    one_line_error(excinfo, str(hub / REAL_NAME), "expects f37072fd", f"has {actual}")


def test_an_absent_file_with_no_network_says_where_to_put_it(hub, monkeypatch):
    point_at(monkeypatch, f"http://127.0.0.1:{free_port()}/models/{REAL_NAME}")  # nothing listens: refused at once
    with pytest.raises(V2IError) as excinfo:
        resolve_weights("ResNet18_Weights.IMAGENET1K_V1", "resnet18")
    one_line_error(excinfo, "ResNet18_Weights.IMAGENET1K_V1", str(hub / REAL_NAME), "cannot be downloaded")
    assert not any(hub.iterdir())  # no partial download left behind


@pytest.fixture()
def web(weights_file):
    """A real HTTP server on loopback serving the weights file's directory; yields its base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(weights_file.parent))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_absent_file_is_downloaded_into_the_cache_once_its_hash_matches(hub, weights_file, web, monkeypatch):
    point_at(monkeypatch, f"{web}/{weights_file.name}")
    path = resolve_weights("IMAGENET1K_V1", "resnet18")
    assert path == hub / weights_file.name and sha256(path) == sha256(weights_file)
    assert_backbone_holds(build_detector(tiny(pretrained="IMAGENET1K_V1")), weights_file)
    # A download whose content does not match the name's hash never lands in the cache.
    wrong = weights_file.with_name("resnet18-00000000.pth")
    wrong.write_bytes(weights_file.read_bytes())
    point_at(monkeypatch, f"{web}/{wrong.name}")
    with pytest.raises(V2IError) as excinfo:
        resolve_weights("IMAGENET1K_V1", "resnet18")
    one_line_error(excinfo, wrong.name, "expects 00000000", f"has {sha256(weights_file)[:8]}")
    assert sorted(p.name for p in hub.iterdir()) == [weights_file.name]


@pytest.mark.parametrize(
    ("name", "backbone", "message"),
    [
        ("ResNet18_Weights.IMAGENET1K_V1", "resnet50", "are not resnet50 weights (the backbone is resnet50: use "),
        ("ResNet50_Weights.IMAGENET1K_V2", "resnet34", "are not resnet34 weights"),
        ("IMAGENET1K_V2", "resnet18", "not a torchvision weights name (resnet18 has ResNet18_Weights.IMAGENET1K_V1"),
        ("ResNet50_Weights.IMAGENET1K_V9", "resnet50", "not a torchvision weights name"),
        ("Nope_Weights.IMAGENET1K_V1", "resnet50", "not a torchvision weights name"),
    ],
)
def test_wrong_architecture_or_unknown_weights_names_are_refused(hub, monkeypatch, name, backbone, message):
    refuse_downloads(monkeypatch)
    with pytest.raises(V2IError) as excinfo:
        build_detector(tiny(backbone=backbone, pretrained=name))
    one_line_error(excinfo, name, message)


def test_an_s3_weights_file_is_downloaded_once_and_hash_checked(hub, weights_file, s3_endpoint, s3_bucket):
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    key = f"weights/{weights_file.name}"
    client.upload_file(str(weights_file), s3_bucket, key)
    uri = f"s3://{s3_bucket}/{key}"
    model = build_detector(tiny(pretrained=uri))
    cached = hub / "s3" / s3_bucket / key
    assert_backbone_holds(model, cached)
    assert sha256(cached) == sha256(weights_file)
    client.delete_object(Bucket=s3_bucket, Key=key)
    assert resolve_weights(uri, "resnet18") == cached  # from the cache: the object is gone
    # An object whose name carries a hash its content does not have is refused, and not cached.
    client.upload_file(str(weights_file), s3_bucket, "weights/resnet18-00000000.pth")
    with pytest.raises(V2IError) as excinfo:
        resolve_weights(f"s3://{s3_bucket}/weights/resnet18-00000000.pth", "resnet18")
    one_line_error(excinfo, "resnet18-00000000.pth", "expects 00000000", f"has {sha256(weights_file)[:8]}")
    assert sorted(p.name for p in cached.parent.iterdir()) == [weights_file.name]
    with pytest.raises(V2IError) as excinfo:
        resolve_weights(f"s3://{s3_bucket}/weights/absent.pth", "resnet18")
    one_line_error(excinfo, f"s3://{s3_bucket}/weights/absent.pth: cannot download")


def test_the_cli_refuses_a_bad_weights_name_in_one_line(tiny_frames, tmp_path, hub):
    out = tmp_path / "model"
    params = Path(__file__).parents[1] / "params.yaml"
    args = ["train", "--params", str(params), "--data", str(tiny_frames), "--out", str(out)]
    bad = "baseline.model.pretrained=ResNet50_Weights.IMAGENET1K_V9"
    result = subprocess.run(
        [sys.executable, "-m", "v2i_core.cli", *args, "--set", bad], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert result.stderr.startswith("v2i: ") and result.stderr.count("\n") == 1, result.stderr
    assert "ResNet50_Weights.IMAGENET1K_V9" in result.stderr
    assert not out.exists()
