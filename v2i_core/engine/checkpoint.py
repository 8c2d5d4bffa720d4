"""Training checkpoints: written atomically each epoch, loaded with weights_only=True, kept in a local folder or under
an s3:// prefix.

A checkpoint holds only tensors and plain containers (state dicts, epoch, history), so `weights_only`
loading works and a checkpoint from an untrusted place cannot run code.

Where it lives: beside the model in --out by default, or in --checkpoint-dir, a place that outlives the process that
trains (a KFP data volume, an S3 prefix), so that a retried pod finds it. An S3 checkpoint is worked on through a local
copy, downloaded at start and uploaded after every save: an S3 put replaces the object whole, so a pod killed during an
upload leaves the previous epoch's checkpoint there, as `atomic_path` does on a local disk.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from v2i_core.errors import V2IError
from v2i_core.storage import atomic_path, is_s3, s3_client, split_s3

CHECKPOINT_NAME = "checkpoint.pt"
# What atomic_path names the temporary file of a save in progress: `.checkpoint.pt.tmp<PID>.pt`.
STALE_GLOB = f".{CHECKPOINT_NAME}.tmp*{Path(CHECKPOINT_NAME).suffix}"


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, shown: str | None = None) -> dict:
    """The checkpoint at `path`; errors name it as `shown` (default: the path)."""
    shown = shown or str(path)
    if not path.exists():
        raise V2IError(f"{shown}: no checkpoint to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise V2IError(f"{shown}: unreadable checkpoint ({exc.__class__.__name__})") from exc


def remove_stale(folder: Path) -> list[Path]:
    """Remove the temporary files that saves killed half-way left in `folder`; returns what was removed."""
    removed = []
    for path in sorted(folder.glob(STALE_GLOB)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


class LocalCheckpoint:
    """The checkpoint file in a local folder. `path` is the file training saves and loads; `shown` names the
    checkpoint in messages."""

    def __init__(self, folder: Path):
        self.path = folder / CHECKPOINT_NAME
        self.shown = str(self.path)

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> dict:
        return load_checkpoint(self.path, self.shown)

    def save(self, state: dict) -> None:
        save_checkpoint(self.path, state)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def remove_stale(self) -> list[Path]:
        return remove_stale(self.path.parent)


class S3Checkpoint(LocalCheckpoint):
    """The checkpoint object under an s3:// prefix, through a copy in the local folder `scratch`: downloaded when
    made (if the object is there), uploaded after each save, deleted with it."""

    def __init__(self, uri: str, scratch: Path):
        super().__init__(scratch)
        self.bucket, prefix = split_s3(uri)
        self.key = f"{prefix}/{CHECKPOINT_NAME}" if prefix else CHECKPOINT_NAME
        self.shown = f"s3://{self.bucket}/{self.key}"
        self.client = s3_client()
        self._download()

    def _s3(self, action: str, call, *args, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return call(*args, **kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise V2IError(f"{self.shown}: cannot {action} S3 ({exc})") from exc

    def _download(self) -> None:
        """Copy the object to `path` if it is there (s3transfer writes to a temporary name and renames it)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.download_file(self.bucket, self.key, str(self.path))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                return  # no checkpoint there yet
            raise V2IError(f"{self.shown}: cannot read from S3 ({exc})") from exc
        except BotoCoreError as exc:
            raise V2IError(f"{self.shown}: cannot read from S3 ({exc})") from exc

    def save(self, state: dict) -> None:
        super().save(state)
        self._s3("write to", self.client.upload_file, str(self.path), self.bucket, self.key)

    def remove(self) -> None:
        self._s3("delete from", self.client.delete_object, Bucket=self.bucket, Key=self.key)
        super().remove()


@contextlib.contextmanager
def checkpoint_at(location: str | Path) -> Iterator[LocalCheckpoint]:
    """The checkpoint kept in the folder or s3:// prefix `location` (an S3 one through a temporary local copy,
    removed on exit)."""
    if not is_s3(location):
        yield LocalCheckpoint(Path(location))
        return
    with tempfile.TemporaryDirectory(prefix="v2i-checkpoint-") as scratch:
        yield S3Checkpoint(str(location), Path(scratch))
