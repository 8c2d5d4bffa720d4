"""`v2i train` and `v2i distill`: a training job from the command line and params, fitted by the engine with
per-epoch validation on the frames' val split (v2i_core/eval/validate.py), as DETR's main.py drives its engine."""

from __future__ import annotations

import os
from pathlib import Path

from v2i_core.config import ModelConfig, Params, TrainConfig
from v2i_core.engine.train import TrainJob, fit
from v2i_core.errors import V2IError
from v2i_core.eval.validate import val_scorer


def _frames_dir(path: str) -> Path:
    """A `v2i extract` output given on the command line, checked before any training starts."""
    frames_dir = Path(path)
    if not (frames_dir / "index.parquet").exists():
        raise V2IError(f"{frames_dir}: not a frames directory (no index.parquet); run `v2i extract` first")
    return frames_dir


def _job_from_args(args, role: str, model: ModelConfig, train: TrainConfig, **extra) -> TrainJob:
    if args.arch:
        model = model.model_copy(update={"arch": args.arch})
    frames_dir = _frames_dir(args.data)
    return TrainJob(
        role=role,
        model=model,
        train=train,
        frames_dir=frames_dir,
        out=Path(args.out),
        resume=args.resume,
        checkpoint_dir=args.checkpoint_dir,
        max_minutes=args.max_minutes or train.max_minutes,
        **extra,
    )


def _log_finished(job: TrainJob, metrics: dict, params: Params) -> None:
    """A finished training (not one stopped by --max-minutes) adds its frames and its served model to its MLflow
    run, for `v2i register`; once, from the main process (torchrun's RANK 0)."""
    from v2i_core.registry import log_to_training_run

    if not metrics["stopped_early"] and int(os.environ.get("RANK", "0")) == 0:
        log_to_training_run(job.out, job.frames_dir, params.eval.score_threshold, params.filter)


def run(args, params: Params) -> int:
    if args.role == "teacher":
        section = params.teacher
        job = _job_from_args(args, "teacher", section.model, section.train, msi=section.msi)
    else:
        section = params.baseline
        job = _job_from_args(args, "baseline", section.model, section.train)
    _log_finished(job, fit(job, val_scorer(job.frames_dir, params.eval)), params)
    return 0


def run_distill(args, params: Params) -> int:
    section = params.distill
    job = _job_from_args(args, "student", section.model, section.train, distill=section, teacher_dir=Path(args.teacher))
    _log_finished(job, fit(job, val_scorer(job.frames_dir, params.eval)), params)
    return 0
