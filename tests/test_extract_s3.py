"""Extraction from s3:// through boto3 against moto's S3 server on loopback (endpoint from the environment)."""

import pytest

from tests.conftest import upload_tree
from tests.fixtures_layouts import build_buv
from v2i_core.cli import main
from v2i_core.config import ExtractConfig, SynthConfig
from v2i_core.data.extract import extract
from v2i_core.data.synth import synthesize
from v2i_core.errors import V2IError

pytestmark = pytest.mark.slow


def _same_tree(a, b) -> None:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_s3_source_gives_the_same_frames_directory_as_the_local_copy(tmp_path, s3_bucket):
    synthesize(SynthConfig(videos=3, frames=6, width=64, height=48, seed=4), tmp_path / "raw")
    upload_tree(s3_bucket, "datasets/raw", tmp_path / "raw")
    params = tmp_path / "params.yaml"
    params.write_text("extract:\n  format: synthetic\n")
    assert (
        main(
            [
                "extract",
                "--params",
                str(params),
                "--src",
                f"s3://{s3_bucket}/datasets/raw",
                "--out",
                str(tmp_path / "from_s3"),
            ]
        )
        == 0
    )
    extract(str(tmp_path / "raw"), tmp_path / "local", ExtractConfig(format="synthetic"), progress=False)
    _same_tree(tmp_path / "from_s3", tmp_path / "local")


def test_s3_errors_name_the_object_by_its_uri(tmp_path, s3_bucket):
    root = tmp_path / "buv"
    build_buv(root)
    (root / "imagenet_vid_val.json").write_text("{not json")
    upload_tree(s3_bucket, "buv", root)
    with pytest.raises(V2IError, match=rf"^s3://{s3_bucket}/buv/imagenet_vid_val.json: not valid JSON"):
        extract(f"s3://{s3_bucket}/buv", tmp_path / "out", ExtractConfig(format="buv"), progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(V2IError, match=rf"s3://{s3_bucket}/nothing-here: no objects under this S3 prefix"):
        extract(f"s3://{s3_bucket}/nothing-here", tmp_path / "out", ExtractConfig(format="buv"), progress=False)
