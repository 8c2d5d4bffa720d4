"""Run a model over a split and return COCO detections: used by validation, `v2i predict` and evaluation."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from v2i_core.engine.model_dir import ModelSpec, load_model_dir
from v2i_core.errors import V2IError
from v2i_core.storage import atomic_file

log = logging.getLogger(__name__)

# Cap on the derived number of loader processes: in a container limited by a CPU quota (Kubernetes) the CPUs a process
# may run on are the whole node's, and every loader process costs memory (its prefetched batches, its copy of the
# dataset's index).
MAX_WORKERS = 8


def worker_count(requested: int | None = None) -> int:
    """DataLoader worker processes: `requested` when given, else on a GPU node this process's share of the CPUs it
    may run on among the training processes on its node (torchrun's LOCAL_WORLD_SIZE), at most MAX_WORKERS. None
    on a CPU-only machine, where loader processes take cores from the compute threads (`v2i bench loader`:
    docs/results.md), nor in a daemonic process (the bench's parallel runs), which may not start processes."""
    if requested is not None:
        return requested
    if not torch.cuda.is_available() or multiprocessing.current_process().daemon:
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return min(MAX_WORKERS, cpus // ranks)


def dataset_for(spec: ModelSpec, frames_dir: Path, split: str) -> Dataset:
    """A teacher sees clips of T frames; image models see single frames. No augmentation."""
    from v2i_core.data.datasets import ClipDataset, FrameDataset

    size = tuple(spec.model.input_size)
    if spec.is_video:
        assert spec.msi is not None
        return ClipDataset(frames_dir, split, size, spec.msi.frames, spec.msi.ref_stride, augment=None)
    return FrameDataset(frames_dir, split, size, augment=None)


@torch.inference_mode()
def predict_dataset(
    network: nn.Module,
    dataset: Dataset,
    device: torch.device,
    batch_size: int = 8,
    progress: bool = True,
    num_workers: int | None = None,
) -> list[dict]:
    """COCO results for every frame of `dataset`, in the frames' own pixel coordinates; the frames are read by
    `num_workers` loader processes (default: worker_count())."""
    from v2i_core.data.datasets import collate
    from v2i_core.models.postprocess import postprocess

    was_training = network.training
    network.eval()
    detections: list[dict] = []
    batches = -(-len(dataset) // batch_size)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate,
        num_workers=min(worker_count(num_workers), batches),  # no process started for nothing to read
        pin_memory=device.type == "cuda",
    )
    for inputs, targets in tqdm(loader, desc="predict", unit="batch", disable=not progress, leave=False):
        outputs = network(inputs.to(device, non_blocking=True))
        sizes = torch.stack([t["orig_size"] for t in targets]).to(device)
        detections.extend(postprocess(outputs, sizes, [int(t["image_id"]) for t in targets]))
    network.train(was_training)
    return detections


def run(args, params) -> int:
    frames_dir = Path(args.data)
    if not (frames_dir / f"coco_{args.split}.json").exists():
        raise V2IError(f"{frames_dir}: no split '{args.split}' (no coco_{args.split}.json)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    network, spec = load_model_dir(args.model, device)
    detections = predict_dataset(network, dataset_for(spec, frames_dir, args.split), device)
    with atomic_file(args.out) as handle:
        json.dump(detections, handle)
    log.info("%d detections on split %s -> %s", len(detections), args.split, args.out)
    return 0
