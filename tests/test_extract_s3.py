"""Extraction from s3:// through boto3 against moto's S3 server on loopback (endpoint from the environment), and the
download underneath it: many objects at once, whole files only, failures named by their object."""

import http.server
import os
import threading

import boto3
import pytest

from tests.conftest import upload_tree
from tests.fixtures_layouts import build_buv
from v2i_core.cli import main
from v2i_core.config import ExtractConfig, SynthConfig
from v2i_core.data.extract import extract
from v2i_core.data.synth import synthesize
from v2i_core.errors import V2IError
from v2i_core.storage import download_prefix

pytestmark = pytest.mark.slow


def _files(root) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _same_tree(a, b) -> None:
    assert _files(a) == _files(b)


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
    with pytest.raises(V2IError, match=r"^s3://no-such-bucket-v2i/buv: cannot read from S3 \(.*NoSuchBucket"):
        extract("s3://no-such-bucket-v2i/buv", tmp_path / "out", ExtractConfig(format="buv"), progress=False)
    assert not (tmp_path / "out").exists()


def test_a_prefix_downloads_whole_with_its_folders_and_nothing_beside_it(tmp_path, s3_bucket):
    client = boto3.client("s3")
    objects = {f"v{i % 7}/sub/{i:04d}.jpg": bytes([i % 251]) * (1000 + 37 * i) for i in range(120)}
    for key, body in objects.items():
        client.put_object(Bucket=s3_bucket, Key=f"raw/{key}", Body=body)
    client.put_object(Bucket=s3_bucket, Key="raw/empty-folder/", Body=b"")  # a folder marker: no file
    client.put_object(Bucket=s3_bucket, Key="raw2/beside.jpg", Body=b"not under raw/")
    assert download_prefix(f"s3://{s3_bucket}/raw", tmp_path / "dl", workers=8, progress=False) == tmp_path / "dl"
    assert _files(tmp_path / "dl") == objects  # every byte, no temporary file left over
    download_prefix(f"s3://{s3_bucket}/raw/", tmp_path / "one", workers=1, progress=False)  # one at a time
    assert _files(tmp_path / "one") == objects


def test_an_object_that_cannot_be_downloaded_is_named_and_leaves_no_file(tmp_path, s3_bucket):
    client = boto3.client("s3")
    for i in range(20):
        client.put_object(Bucket=s3_bucket, Key=f"raw/{i:02d}.jpg", Body=b"frame")
    client.put_object(Bucket=s3_bucket, Key="raw/07.jpg", Body=b"archived", StorageClass="GLACIER")
    with pytest.raises(V2IError, match=rf"^s3://{s3_bucket}/raw/07.jpg: cannot download \(.*InvalidObjectState"):
        download_prefix(f"s3://{s3_bucket}/raw", tmp_path / "dl", progress=False)
    assert "07.jpg" not in {p.name for p in (tmp_path / "dl").iterdir()}
    assert all(p.read_bytes() == b"frame" for p in (tmp_path / "dl").iterdir())  # whole files only, no temporaries


def test_a_key_that_climbs_out_of_its_prefix_is_refused(tmp_path, s3_bucket):
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="raw/../../escaped.txt", Body=b"x")
    with pytest.raises(V2IError, match=rf"^s3://{s3_bucket}/raw/../../escaped.txt: the key climbs out of its prefix"):
        download_prefix(f"s3://{s3_bucket}/raw", tmp_path / "a" / "b", progress=False)
    assert not list(tmp_path.rglob("escaped.txt"))


class _CutOffS3(http.server.BaseHTTPRequestHandler):
    """Lists one object, then sends 10 of the 1000 bytes it promised for it and hangs up."""

    gets = 0

    def do_GET(self):
        if "list-type=2" in self.path:
            body = (
                b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                b"<Name>cut</Name><Prefix>raw/</Prefix><KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys>"
                b"<IsTruncated>false</IsTruncated><Contents><Key>raw/a.jpg</Key><Size>1000</Size></Contents>"
                b"</ListBucketResult>"
            )
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        type(self).gets += 1
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"0123456789")
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_a_download_cut_off_mid_object_is_retried_then_named_and_leaves_no_partial_file(tmp_path, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CutOffS3)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    try:
        with pytest.raises(V2IError, match=r"^s3://cut/raw/a.jpg: download failed after 3 attempts"):
            download_prefix("s3://cut/raw", tmp_path / "dl", progress=False)
    finally:
        server.shutdown()
        server.server_close()
    assert _CutOffS3.gets == 3
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_bench_s3_downloads_the_same_objects_three_ways_on_its_own_moto_server(tmp_path, monkeypatch, capsys):
    from v2i_bench.cli import main as bench

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # the user's endpoint: not the bench's
    assert bench(["s3", "--params", "absent.yaml", "--objects", "30", "--size", "500", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "30 objects, 0.0 MB, median of 2 interleaved runs" in out
    for way in ("before", "1 worker", "16 workers"):
        assert f"{way}: " in out
    assert os.environ["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"  # put back
    assert not list((tmp_path / "build").iterdir())  # scratch downloads removed
