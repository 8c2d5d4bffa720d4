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
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from v2i_core.errors import V2IError

# Objects fetched at once. A dataset is mostly small frames, where each request's round trip, not bandwidth,
# bounds the speed, so many requests in flight are what makes a download fast.
DOWNLOAD_WORKERS = 16
STREAM_ATTEMPTS = 3  # botocore retries a failed request, but not a connection lost while the body streams
CHUNK = 1 << 20


def is_s3(uri: str | Path) -> bool:
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """'s3://bucket/a/b' -> ('bucket', 'a/b')."""
    rest = uri[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise V2IError(f"{uri}: no bucket in S3 URI")
    return bucket, prefix.strip("/")


def s3_client(connections: int | None = None):
    """A boto3 S3 client for AWS_ENDPOINT_URL (else AWS itself) with room for `connections` requests at once.

    One client serves every thread of a download: boto3 clients are thread-safe.
    """
    import boto3
    from botocore.config import Config

    config = Config(max_pool_connections=connections) if connections else None
    return boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None, config=config)


def download_prefix(uri: str, dest: Path, workers: int = DOWNLOAD_WORKERS, progress: bool = True) -> Path:
    """Copy every object under an s3:// prefix into `dest`, keeping relative paths; returns `dest`.

    `workers` objects are fetched side by side (1: one after the other), each with one streamed GET into a
    temporary sibling that takes the object's name only once it is whole. The first failure stops the rest and is a
    V2IError naming its object; objects already finished stay (the callers download into a temporary folder).
    """
    bucket, _ = split_s3(uri)
    client = s3_client(workers)
    objects = list_objects(client, uri)
    with (
        tqdm(total=len(objects), desc="download", unit="object", disable=not progress) as bar,
        ThreadPoolExecutor(max_workers=workers) as pool,
    ):
        futures = [pool.submit(download_object, client, bucket, key, dest / rel) for key, rel in objects]
        try:
            for future in as_completed(futures):
                future.result()
                bar.update(1)
        finally:
            pool.shutdown(cancel_futures=True)  # after a failure or Ctrl-C: start no more downloads
    return dest


def list_objects(client, uri: str) -> list[tuple[str, str]]:
    """(key, path relative to the prefix) of every object under an s3:// prefix, which must hold at least one."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = split_s3(uri)
    base = f"{prefix}/" if prefix else ""  # s3://b/raw is the folder raw/, not raw2/ beside it
    objects = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
            for obj in page.get("Contents", []):
                rel = _relative(obj["Key"], base, bucket)
                if rel:
                    objects.append((obj["Key"], rel))
    except (BotoCoreError, ClientError) as exc:
        raise V2IError(f"{uri}: cannot read from S3 ({exc})") from exc
    if not objects:
        raise V2IError(f"{uri}: no objects under this S3 prefix")
    return objects


def _relative(key: str, base: str, bucket: str) -> str:
    """The local relative path of `key` under the listing prefix `base`; empty for a folder marker."""
    parts = [part for part in key[len(base) :].split("/") if part not in ("", ".")]
    if ".." in parts:
        raise V2IError(f"s3://{bucket}/{key}: the key climbs out of its prefix ('..'); not downloaded")
    return "" if key.endswith("/") else "/".join(parts)


def download_object(client, bucket: str, key: str, target: Path) -> None:
    """One object into `target`, atomically: a failed download leaves no file behind, only a V2IError naming it."""
    from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, IncompleteReadError

    shown = f"s3://{bucket}/{key}"
    for attempt in range(1, STREAM_ATTEMPTS + 1):
        try:
            with atomic_file(target, "wb") as handle:
                for chunk in client.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(CHUNK):
                    handle.write(chunk)
            return
        except (HTTPClientError, IncompleteReadError) as exc:  # the connection failed: try again
            if attempt == STREAM_ATTEMPTS:
                raise V2IError(f"{shown}: download failed after {attempt} attempts ({exc})") from exc
        except (BotoCoreError, ClientError) as exc:
            raise V2IError(f"{shown}: cannot download ({exc})") from exc
        except OSError as exc:
            raise V2IError(f"{shown}: cannot write {target} ({exc.strerror or exc})") from exc


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
def local_copy(src: str | Path, progress: bool = True) -> Iterator[Path]:
    """A local directory holding `src`: the path itself, or a temporary download of an s3:// prefix."""
    if not is_s3(src):
        path = Path(src)
        if not path.exists():
            raise V2IError(f"{path}: no such file or directory")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="v2i-s3-") as tmp:
        yield download_prefix(str(src), Path(tmp), progress=progress)


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
