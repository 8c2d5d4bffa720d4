"""Per-epoch validation of a training run: the model's figures on the frames' val split, under params `eval`.

The engine trains and never scores; the training verbs (v2i_core/training.py) build this scorer and hand it to
`fit`, which records its figures (val_f1, val_precision, ...) in each epoch's history: metrics.json, whose val_f1
dvc.yaml plots, and MLflow.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from v2i_core.config import EvalConfig
from v2i_core.engine.model_dir import ModelSpec
from v2i_core.engine.predict import dataset_for, predict_dataset
from v2i_core.engine.train import Validator
from v2i_core.eval.score import score_detections


def val_scorer(frames_dir: Path, cfg: EvalConfig) -> Validator | None:
    """A function (network, spec, device) -> {"val_<metric>": value} scoring a network on the val split of
    `frames_dir` by cfg.protocol at cfg.score_threshold; None when the frames have no val split."""
    gt = frames_dir / "coco_val.json"
    if not gt.exists():
        return None
    from v2i_core.data.datasets import load_index

    if not (load_index(frames_dir)["split"] == "val").any():
        return None

    def score(network: nn.Module, spec: ModelSpec, device: torch.device) -> dict[str, float]:
        detections = predict_dataset(network, dataset_for(spec, frames_dir, "val"), device, progress=False)
        scores = score_detections(str(gt), detections, cfg.protocol, cfg.score_threshold)
        return {f"val_{k}": float(v) for k, v in scores.items() if isinstance(v, int | float)}

    return score
