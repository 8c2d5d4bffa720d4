"""Training checkpoints: written atomically each epoch, loaded with weights_only=True.

A checkpoint holds only tensors and plain containers (state dicts, epoch, history), so `weights_only`
loading works and a checkpoint from an untrusted place cannot run code.
"""

from __future__ import annotations

from pathlib import Path

import torch

from v2i_core.errors import V2IError
from v2i_core.storage import atomic_path

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict:
    if not path.exists():
        raise V2IError(f"{path}: no checkpoint to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise V2IError(f"{path}: unreadable checkpoint ({exc.__class__.__name__})") from exc
