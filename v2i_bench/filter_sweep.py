"""`v2i bench filter`: the causal temporal filter's settings swept on one split, to choose its defaults.

Each model's detections on the split (`v2i predict`'s, at eval.score_threshold) go through the filter at every
(k, n, hold) of a small grid, and each setting's lesion-level figures are printed beside the raw detections':
sensitivity, false alarms per minute, the delay to the first hit and flicker. Choose on the validation split (the
default), never on test: `v2i evaluate` then reports the chosen filter on the test videos.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch

from v2i_core.config import FilterConfig
from v2i_core.engine.model_dir import load_model_dir
from v2i_core.engine.predict import dataset_for, predict_dataset
from v2i_core.errors import V2IError
from v2i_core.eval.score import score_detections
from v2i_core.storage import read_json
from v2i_core.temporal_filter import filter_coco

GRID = {"k": (1, 2, 3), "n": (2, 3, 5), "hold": (0, 1, 2, 4)}
COLUMNS = ("lesion_sensitivity", "false_alarms_per_min", "delay_median_s", "flicker_per_lesion_min")


def settings() -> list[FilterConfig]:
    """The grid's valid settings (k <= n), the identity (1, 1, 0) first."""
    grid = [FilterConfig(k=1, n=1, hold=0)]
    grid += [FilterConfig(k=k, n=n, hold=h) for k, n, h in itertools.product(*GRID.values()) if k <= n]
    return grid


def sweep(gt: dict, detections: list[dict], threshold: float, min_hits: int) -> list[tuple[FilterConfig, dict]]:
    """Lesion figures of `detections` through each setting of the grid."""
    rows = []
    for cfg in settings():
        shown = filter_coco(gt, detections, threshold, cfg)
        rows.append((cfg, score_detections(gt, shown, "lesion", 0.0, min_hits)))
    return rows


def _cell(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def run(args, params, bench) -> int:
    frames = Path(args.data)
    gt_path = frames / f"coco_{args.split}.json"
    if not gt_path.is_file():
        raise V2IError(f"{frames}: no split '{args.split}' (no coco_{args.split}.json)")
    gt = read_json(gt_path)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for model in args.model:
        network, spec = load_model_dir(model, device)
        detections = predict_dataset(network, dataset_for(spec, frames, args.split), device)
        print(f"\n{model} on {args.split} ({len(gt['images'])} frames), score >= {params.eval.score_threshold:g}")
        print("| k | n | hold | " + " | ".join(COLUMNS) + " |")
        print("|---|---|---|" + "---:|" * len(COLUMNS))
        for cfg, figures in sweep(gt, detections, params.eval.score_threshold, params.eval.lesion_min_hits):
            cells = " | ".join(_cell(figures[key]) for key in COLUMNS)
            print(f"| {cfg.k} | {cfg.n} | {cfg.hold} | {cells} |")
    return 0
