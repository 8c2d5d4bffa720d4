"""Local and s3:// paths, and atomic writes so a failed step never leaves a partial output behind.

The S3 endpoint comes from the environment (`AWS_ENDPOINT_URL`, which boto3 reads itself), and so do the
credentials: nothing here takes them as arguments, so they cannot leak into params or logs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from v2i_core.errors import V2IError


def is_s3(uri: str | Path) -> bool:
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """'s3://bucket/a/b' -> ('bucket', 'a/b')."""
    rest = uri[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise V2IError(f"{uri}: no bucket in S3 URI")
    return bucket, prefix.strip("/")


def s3_client():
    import boto3

    return boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)


def download_prefix(uri: str, dest: Path) -> Path:
    """Copy every object under an s3:// prefix into `dest`, keeping relative paths; returns `dest`."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = split_s3(uri)
    client = s3_client()
    found = 0
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix) :].lstrip("/") if prefix else obj["Key"]
                if not rel or rel.endswith("/"):
                    continue
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, obj["Key"], str(target))
                found += 1
    except (BotoCoreError, ClientError) as exc:
        raise V2IError(f"{uri}: cannot read from S3 ({exc})") from exc
    if not found:
        raise V2IError(f"{uri}: no objects under this S3 prefix")
    return dest


def read_json(path: str | Path, shown: str | None = None):
    """Parse a JSON file; a missing, unreadable or malformed file is a V2IError naming it (as `shown`)."""
    path = Path(path)
    shown = shown or str(path)
    try:
        with path.open("rb") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise V2IError(f"{shown}: no such file") from None
    except json.JSONDecodeError as exc:
        raise V2IError(f"{shown}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise V2IError(f"{shown}: cannot read ({exc.__class__.__name__})") from None


@contextlib.contextmanager
def local_copy(src: str | Path) -> Iterator[Path]:
    """A local directory holding `src`: the path itself, or a temporary download of an s3:// prefix."""
    if not is_s3(src):
        path = Path(src)
        if not path.exists():
            raise V2IError(f"{path}: no such file or directory")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="v2i-s3-") as tmp:
        yield download_prefix(str(src), Path(tmp))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary sibling path for a writer that wants a file name (e.g. torch.save, av.open)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator:
    """Open a temporary sibling of `path` for writing; it replaces `path` only if the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, mode) as handle:
        yield handle


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a directory under a temporary name; on success it replaces `path` whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
