"""One training loop for the baseline, the video teacher and the student (`v2i train`, `v2i distill`: see
v2i_core/training.py, which builds the job and hands `fit` its per-epoch validation).

`fit` is the loop over epochs (set-up, resume, scheduler, validation, checkpoints, tracking); `train_one_epoch` is
one pass over the data, as in DETR's engine.py. The engine trains and never scores: the per-epoch validation is a
function the caller passes in, so nothing here imports v2i_core.eval.

Determinism and resume: every epoch reseeds torch from (seed, epoch) and draws its own data order, and every sample
draws its augmentation from a generator of its own seeded by (seed, epoch, sample), so an epoch depends only on the
state at its start, and not on how many loader processes read it or which of them read a sample. A checkpoint after
each epoch holds that state, so a run killed and resumed ends with the same weights as one that was never
interrupted (on CPU).

Data loading: one DataLoader serves the whole run, its worker processes kept between epochs; its sampler
(`EpochSampler`) hands it each epoch's order, pinned memory and non-blocking copies feed a GPU.

Where the checkpoint lives: in --out, resumed with --resume; or in --checkpoint-dir (a folder or an s3:// prefix that
outlives the pod, for a retried pipeline step, which reruns the very same command): a checkpoint found there resumes
the run by itself. A training that starts removes the temporary files of a save that a killed run left half-way.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from v2i_core.config import DistillConfig, ModelConfig, MSIConfig, TrainConfig
from v2i_core.engine import distributed
from v2i_core.engine.checkpoint import LocalCheckpoint, checkpoint_at
from v2i_core.engine.model_dir import MODEL_FILES, ModelSpec, build_network, load_model_dir, write_model_dir
from v2i_core.engine.predict import worker_count
from v2i_core.errors import V2IError
from v2i_core.tracking import data_version, git_commit, mlflow_run

log = logging.getLogger(__name__)


class DetectionTask(nn.Module):
    """A detector (image or video) and its set criterion: forward returns the weighted loss terms."""

    def __init__(self, network: nn.Module, criterion: nn.Module):
        super().__init__()
        self.model = network
        self.criterion = criterion

    def forward(self, inputs: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        # inputs: [B,3,H,W] frames or [B,T,3,H,W] clips
        return self.criterion(self.model(inputs), targets)


@dataclass
class TrainJob:
    """Everything one training run needs, resolved from params and the command line."""

    role: str  # baseline | teacher | student
    model: ModelConfig
    train: TrainConfig
    frames_dir: Path
    out: Path
    resume: bool = False
    max_minutes: float | None = None
    checkpoint_dir: str | None = None  # folder or s3:// prefix of the checkpoint (None: out); one there is resumed
    msi: MSIConfig | None = None
    distill: DistillConfig | None = None
    teacher_dir: Path | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(base: int, epoch: int) -> int:
    return base * 1_000_003 + epoch


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    """A seed of its own for each sample of each epoch of a run: SeedSequence mixes the three without collisions."""
    return int(np.random.SeedSequence([seed % 2**63, epoch, index]).generate_state(1, np.uint64)[0])


def _to_device(targets: list[dict], device: torch.device) -> list[dict]:
    return [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]


# Deformable DETR learns its sampling offsets and reference points at a tenth of the rate (official recipe).
SLOW_PROJECTIONS = ("sampling_offsets", "reference_points")


def _param_groups(task: nn.Module, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: backbone at lr_backbone, deformable sampling projections at lr/10, the rest at lr."""
    groups: dict[str, list] = {"rest": [], "backbone": [], "slow": []}
    for name, param in task.named_parameters():
        if not param.requires_grad:
            continue
        parts = name.split(".")
        key = "backbone" if "backbone" in parts else "slow" if any(p in SLOW_PROJECTIONS for p in parts) else "rest"
        groups[key].append(param)
    return [
        {"params": groups["rest"], "lr": cfg.lr},
        {"params": groups["backbone"], "lr": cfg.lr_backbone},
        {"params": groups["slow"], "lr": cfg.lr * 0.1},
    ]


def _checkpoint_state(task: nn.Module) -> dict:
    return {k: v for k, v in task.state_dict().items() if not k.startswith("teacher.")}


def _load_categories(frames_dir: Path) -> list[dict]:
    from v2i_core.data.datasets import load_categories

    categories = load_categories(frames_dir)
    if not categories:
        raise V2IError(f"{frames_dir}: no lesion categories in the frame index (its COCO files declare none)")
    return categories


def _build(
    job: TrainJob, categories: list[dict], device: torch.device
) -> tuple[nn.Module, nn.Module, ModelSpec, Dataset]:
    """(task, network to save, its spec, training dataset) for the job's role."""
    from v2i_core.data.datasets import ClipDataset, FrameDataset
    from v2i_core.models.criterion import build_criterion

    model_cfg = job.model.model_copy(update={"num_classes": len(categories)})
    criterion = build_criterion(model_cfg.num_classes, job.train.loss)
    size = tuple(model_cfg.input_size)
    provenance = {"git_commit": git_commit(), "data_version": data_version(job.frames_dir), "data": str(job.frames_dir)}
    if job.role == "teacher":
        assert job.msi is not None
        if model_cfg.arch != "deformable_detr":
            raise V2IError("teacher.model.arch: the V2I teacher is a Deformable DETR (paper II-A)")
        spec = ModelSpec("teacher", model_cfg, categories, job.msi, provenance)
        network = build_network(spec)
        train_ds = ClipDataset(job.frames_dir, "train", size, job.msi.frames, job.msi.ref_stride, job.train.augment)
        return DetectionTask(network, criterion), network, spec, train_ds
    if job.role == "student":
        from v2i_core.distill.checks import check_distillation
        from v2i_core.distill.objective import DistillationTask

        assert job.distill is not None and job.teacher_dir is not None
        teacher, teacher_spec = load_model_dir(job.teacher_dir, device)
        check_distillation(
            job.distill, job.train.augment, size, categories, job.frames_dir, teacher_spec, job.teacher_dir
        )
        provenance["teacher"] = str(job.teacher_dir)
        spec = ModelSpec("student", model_cfg, categories, None, provenance)
        # Building the teacher drew from the RNG: reseed so the student starts from the weights the baseline of
        # this seed starts from, and a student differs from its baseline by distillation alone.
        seed_everything(job.train.seed)
        network = build_network(spec)
        msi = teacher_spec.msi or MSIConfig()
        clean_view = job.distill.teacher_view == "clean"
        train_ds = ClipDataset(
            job.frames_dir, "train", size, msi.frames, msi.ref_stride, job.train.augment, keep_clean=clean_view
        )
        return DistillationTask(network, teacher, criterion, job.distill), network, spec, train_ds
    spec = ModelSpec("baseline", model_cfg, categories, None, provenance)
    network = build_network(spec)
    return (
        DetectionTask(network, criterion),
        network,
        spec,
        FrameDataset(job.frames_dir, "train", size, job.train.augment),
    )


def _epoch_indices(n: int, cfg: TrainConfig, epoch: int, ctx: distributed.DistContext) -> list[int]:
    """This rank's shuffled share of the (optionally capped) training frames for one epoch."""
    generator = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch))
    order = torch.randperm(n, generator=generator).tolist()
    if cfg.max_train_frames:
        order = order[: cfg.max_train_frames]
    usable = len(order) - len(order) % ctx.world_size if ctx.distributed else len(order)
    return order[ctx.rank : usable : ctx.world_size]


class EpochSampler(Sampler):
    """This rank's samples of the current epoch (`set_epoch`), in `_epoch_indices` order, as (epoch, index) keys of
    a `SeededSamples`: one DataLoader, and its worker processes, serve every epoch of the run."""

    def __init__(self, n: int, cfg: TrainConfig, ctx: distributed.DistContext):
        self.n, self.cfg, self.ctx = n, cfg, ctx
        self.epoch = 0
        self.size = len(_epoch_indices(n, cfg, 0, ctx))  # the same every epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        epoch = self.epoch
        return iter([(epoch, index) for index in _epoch_indices(self.n, self.cfg, epoch, self.ctx)])

    def __len__(self) -> int:
        return self.size


class SeededSamples(Dataset):
    """A training dataset read by (epoch, index): each sample's augmentation drawn from a generator seeded by
    (seed, epoch, index), so a sample looks the same whichever loader process reads it, and however many there are
    (the global generator a worker process would draw from is seeded per worker)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        self.dataset.generator = torch.Generator().manual_seed(_sample_seed(self.seed, epoch, index))
        return self.dataset[index]


def training_loader(dataset: Dataset, cfg: TrainConfig, batch_size: int, ctx: distributed.DistContext) -> DataLoader:
    """A run's one DataLoader over its training `dataset`: batches of this rank's samples in each epoch's order (call
    `loader.sampler.set_epoch(epoch)` before each pass), read by `cfg.num_workers` processes (None: worker_count())
    that are kept between epochs, pinned for a GPU."""
    from v2i_core.data.datasets import collate

    sampler = EpochSampler(len(dataset), cfg, ctx)
    workers = worker_count(cfg.num_workers)
    log.info("loading data with %d worker process(es)", workers)
    return DataLoader(
        SeededSamples(dataset, cfg.seed),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        drop_last=len(sampler) > batch_size,
        pin_memory=ctx.device.type == "cuda",
        persistent_workers=workers > 0,
        # the workers' base seed comes from this generator, not torch's global one, which the model's draws then
        # leave alone whatever the number of workers
        generator=torch.Generator(),
    )


# (network in eval mode or not, its spec, device) -> figures of the epoch, e.g. {"val_f1": 0.9}: recorded in the
# epoch's history (metrics.json, which dvc.yaml's plots read) and in MLflow.
Validator = Callable[[nn.Module, ModelSpec, torch.device], dict[str, float]]


def fit(job: TrainJob, validate: Validator | None = None) -> dict:
    """Train per the job; write the model directory; return the training metrics. `validate`, when given, scores the
    network after every epoch (on the main process) and its figures join that epoch's record. The per-epoch
    checkpoint is kept in job.checkpoint_dir, or else in job.out, and removed once the run is done."""
    ctx = distributed.setup()
    try:
        with checkpoint_at(job.checkpoint_dir or job.out) as checkpoint:
            return _fit(job, ctx, validate, checkpoint)
    finally:
        distributed.teardown(ctx)


def _mismatch(state: dict, spec: ModelSpec, role: str) -> str:
    """What a checkpoint's run has other than this one ('' when nothing): its role and its model config's keys."""
    diffs = [] if state.get("role") == role else [f"role {state.get('role')} in the checkpoint, {role} here"]
    saved, here = state.get("spec") or {}, spec.to_dict()["model"]
    for key in sorted(set(saved) | set(here)):
        if saved.get(key) != here.get(key):
            diffs.append(f"model.{key} {saved.get(key)} in the checkpoint, {here.get(key)} here")
    return "; ".join(diffs)


def _resume(job: TrainJob, checkpoint: LocalCheckpoint, spec: ModelSpec, task: nn.Module, optimizer, scheduler):
    """(first epoch, history so far, MLflow run id): where the run's checkpoint left off when it resumes (--resume, or
    one found in --checkpoint-dir), else a start from scratch."""
    if not (job.resume or (job.checkpoint_dir and checkpoint.exists())):
        if checkpoint.exists():
            raise V2IError(
                f"{checkpoint.shown}: an interrupted run is here; pass --resume to continue it, or remove it"
            )
        return 0, [], None
    state = checkpoint.load()
    if differences := _mismatch(state, spec, job.role):
        raise V2IError(
            f"{checkpoint.shown}: checkpoint was made with another model config ({differences}); cannot resume: "
            "remove it to start afresh"
        )
    missing, unexpected = task.load_state_dict(state["task"], strict=False)
    if unexpected or [k for k in missing if not k.startswith("teacher.")]:
        raise V2IError(f"{checkpoint.shown}: checkpoint does not match this task's weights; cannot resume")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    log.info("resuming %s from epoch %d", checkpoint.shown, state["epoch"] + 2)
    return state["epoch"] + 1, state["history"], state.get("mlflow_run_id")


def _fit(job: TrainJob, ctx: distributed.DistContext, validate: Validator | None, checkpoint: LocalCheckpoint) -> dict:
    cfg = job.train
    seed_everything(cfg.seed)
    categories = _load_categories(job.frames_dir)
    task, network, spec, train_ds = _build(job, categories, ctx.device)
    if len(train_ds) == 0:
        raise V2IError(f"{job.frames_dir}: the train split is empty")
    task.to(ctx.device)
    optimizer = torch.optim.AdamW(_param_groups(task, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=cfg.lr_drop, gamma=0.1)
    if ctx.is_main:
        for path in checkpoint.remove_stale():
            log.info("removed %s, the unfinished save of a killed run", path)
    start_epoch, history, run_id = _resume(job, checkpoint, spec, task, optimizer, scheduler)

    trainer = DistributedDataParallel(task) if ctx.distributed else task
    use_amp = cfg.amp and ctx.device.type == "cuda"
    per_rank_batch = max(1, cfg.batch_size // ctx.world_size)
    deadline = time.monotonic() + job.max_minutes * 60 if job.max_minutes else None
    started = time.monotonic()
    stopped_early = False
    loader = training_loader(train_ds, cfg, per_rank_batch, ctx)
    params = {"role": job.role, "model": spec.to_dict()["model"], "train": cfg.model_dump(mode="json")}
    if job.msi:
        params["msi"] = job.msi.model_dump(mode="json")
    if job.distill:
        params["distill"] = job.distill.model_dump(mode="json", exclude={"model", "train"})
    tags = {"role": job.role, "data_version": spec.provenance["data_version"], "data": str(job.frames_dir)}
    with mlflow_run(f"{job.role}:{job.out.name}", params, tags, enabled=ctx.is_main, run_id=run_id) as tracker:
        spec.provenance["mlflow_run_id"] = tracker.run_id
        for epoch in range(start_epoch, cfg.epochs):
            torch.manual_seed(_epoch_seed(cfg.seed, epoch))
            loader.sampler.set_epoch(epoch)
            means, stopped_early = train_one_epoch(
                trainer,
                loader,
                optimizer,
                ctx.device,
                epoch,
                clip_max_norm=cfg.clip_max_norm,
                amp=use_amp,
                deadline=deadline,
                checkpoint=checkpoint.shown if checkpoint.exists() else None,
                ctx=ctx,
                desc=f"{job.role} epoch {epoch + 1}/{cfg.epochs}",
            )
            scheduler.step()
            record = {"epoch": epoch, **{f"train_{k}": distributed.all_reduce_mean(v, ctx) for k, v in means.items()}}
            if ctx.is_main:
                if validate is not None:
                    record.update(validate(network, spec, ctx.device))
                tracker.metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch)
                history.append(record)
                log.info(
                    "epoch %d: %s", epoch + 1, ", ".join(f"{k}={v:.4f}" for k, v in record.items() if k != "epoch")
                )
                if not stopped_early:
                    checkpoint.save(
                        {
                            "task": _checkpoint_state(task),
                            "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(),
                            "epoch": epoch,
                            "history": history,
                            "spec": spec.to_dict()["model"],
                            "role": job.role,
                            "mlflow_run_id": tracker.run_id,
                        },
                    )
            distributed.barrier(ctx)
            if stopped_early:
                log.info("stopping: --max-minutes %.1f reached during epoch %d", job.max_minutes, epoch + 1)
                break
        metrics = {
            "history": history,
            "epochs_completed": len(history) - (1 if stopped_early else 0),
            "stopped_early": stopped_early,
            "train_seconds": round(time.monotonic() - started, 1),
            "world_size": ctx.world_size,
            "final": history[-1] if history else {},
        }
        if ctx.is_main:
            write_model_dir(job.out, network, spec, metrics)
            for name in MODEL_FILES:
                tracker.artifacts(job.out / name, artifact_path="model_dir")
            if not stopped_early:  # finished: nothing left to resume (a budget stop keeps it for --resume)
                checkpoint.remove()
    return metrics


def train_one_epoch(
    task: nn.Module,
    loader: Iterable[tuple[torch.Tensor, list[dict]]],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    epoch: int,
    *,
    clip_max_norm: float = 0.0,
    amp: bool = False,
    deadline: float | None = None,
    checkpoint: str | None = None,
    ctx: distributed.DistContext | None = None,
    desc: str | None = None,
) -> tuple[dict[str, float], bool]:
    """One pass of `task` over `loader`, one optimizer step per batch; returns this process's mean of each loss term
    over its steps ("loss" their sum; per-layer aux terms only in it) and whether `deadline` stopped the pass.

    task: forward(inputs, targets) -> weighted loss terms (a DetectionTask, a DistillationTask, or either under
    DistributedDataParallel). A non-finite loss stops training before it reaches the weights, naming `checkpoint`
    (where the last good one is; None: there is none yet). Gradients are clipped to `clip_max_norm` (0: not
    clipped); `amp` runs the forward pass under bfloat16 autocast; `deadline` (a time.monotonic() value) ends the pass
    after the step that passes it. The data order and the epoch's randomness are the caller's: it seeds before
    iterating `loader`.
    """
    ctx = ctx or distributed.DistContext(rank=0, world_size=1, local_rank=0, device=device)
    task.train()
    sums: dict[str, float] = {}
    steps = 0
    stopped = False
    bar = tqdm(loader, desc=desc or f"epoch {epoch + 1}", unit="batch", disable=not ctx.is_main)
    for inputs, targets in bar:
        inputs, targets = inputs.to(device, non_blocking=True), _to_device(targets, device)
        try:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                terms = task(inputs, targets)
            loss = sum(terms.values())
        except FloatingPointError:  # the matcher met non-finite predictions: the weights diverged
            loss = torch.tensor(float("nan"))
        _check_finite(loss, epoch, steps, checkpoint, ctx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_max_norm > 0:
            nn.utils.clip_grad_norm_(task.parameters(), clip_max_norm)
        optimizer.step()
        steps += 1
        sums["loss"] = sums.get("loss", 0.0) + loss.item()
        for name, value in terms.items():
            if not name[-1].isdigit():  # per-layer aux terms are summarised by the total
                sums[name] = sums.get(name, 0.0) + value.item()
        bar.set_postfix({k: f"{v / steps:.3f}" for k, v in sums.items()})
        if deadline and time.monotonic() > deadline:
            stopped = True
            break
    return {k: v / max(steps, 1) for k, v in sums.items()}, stopped


def _check_finite(
    loss: torch.Tensor, epoch: int, step: int, checkpoint: str | None, ctx: distributed.DistContext
) -> None:
    """Stop on a NaN or infinite loss before it reaches the weights; the last good checkpoint stays."""
    bad = torch.tensor([0.0 if math.isfinite(loss.item()) else 1.0], device=ctx.device)
    if ctx.distributed:
        torch.distributed.all_reduce(bad)  # every rank stops together
    if bad.item() > 0:
        kept = f"last good checkpoint kept at {checkpoint}" if checkpoint else "no checkpoint yet"
        raise V2IError(f"loss is not finite ({float(loss)}) at epoch {epoch + 1}, step {step + 1}: stopped; {kept}")
