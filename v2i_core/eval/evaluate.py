"""`v2i evaluate`: run models over one split and compare them: metrics, speed, plots, and a Table I.

Each model runs on what it was trained on (a teacher on clips, an image model on single frames) and is
scored by the same code as `v2i score`: SUN centre-hit and IoU precision/recall/F1 at eval.score_threshold,
COCO AP/AP50/AP75; its speed is measured at batch 1 after warm-up. Everything under --out is built in a
temporary directory and moved into place whole, then logged to MLflow.

Outputs: metrics.json, table.md, pr_curve.png, f1_threshold.png, disagreement.png, timeline.png,
detections/<name>.json.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import statistics
from pathlib import Path

import torch
from tqdm import tqdm

from v2i_core.config import EvalConfig, FilterConfig
from v2i_core.engine.model_dir import ModelSpec, load_model_dir, read_spec
from v2i_core.engine.predict import dataset_for, predict_dataset
from v2i_core.errors import V2IError
from v2i_core.eval.gain import f1_gain_interval
from v2i_core.eval.plots import (
    plot_disagreement_grid,
    plot_f1_vs_threshold,
    plot_pr_curves,
    plot_timelines,
    timelines_from_coco,
)
from v2i_core.eval.report import markdown_table, student_and_baseline
from v2i_core.eval.score import score_detections, sweep_thresholds
from v2i_core.eval.speed import count_parameters, device_name, measure_fps, speed_input
from v2i_core.storage import atomic_dir, is_s3, local_copy, read_json
from v2i_core.temporal_filter import filter_coco
from v2i_core.tracking import data_version, log_frames_input, mlflow_run

log = logging.getLogger(__name__)

MANNER = {"baseline": "I", "teacher": "V", "student": "V->I"}


def model_names(model_dirs: list[str]) -> list[str]:
    """Each model's directory name, made unique by a -2, -3, ... suffix where names repeat."""
    names: list[str] = []
    for model_dir in model_dirs:
        base = Path(str(model_dir).rstrip("/")).name or "model"
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}-{n}"
        names.append(name)
    return names


def score_model(
    network: torch.nn.Module,
    spec: ModelSpec,
    frames_dir: Path,
    split: str,
    gt: dict,
    cfg: EvalConfig,
    device: torch.device,
) -> tuple[dict, list[dict]]:
    """(SUN centre-hit, IoU and COCO scores, COCO detections) of a loaded model on one split."""
    detections = predict_dataset(network, dataset_for(spec, frames_dir, split), device)
    sun = score_detections(gt, detections, "sun", cfg.score_threshold)
    iou = score_detections(gt, detections, "iou", cfg.score_threshold)
    coco = score_detections(gt, detections, "coco", cfg.score_threshold)
    scores = {
        **{k: sun[k] for k in ("precision", "recall", "f1", "tp", "fp", "fn")},
        **{f"iou_{k}": iou[k] for k in ("precision", "recall", "f1")},
        **{k: coco[k] for k in ("AP", "AP50", "AP75")},
    }
    return scores, detections


def evaluate_model(
    model_dir: Path, frames_dir: Path, split: str, gt: dict, cfg: EvalConfig, device: torch.device
) -> tuple[dict, list[dict], list[dict]]:
    """(metrics entry, COCO detections, SUN threshold sweep) of one model directory."""
    network, spec = load_model_dir(model_dir, device)
    scores, detections = score_model(network, spec, frames_dir, split, gt, cfg, device)
    frames = speed_input(spec)
    rounds = [measure_fps(network, frames, cfg.speed.warmup, cfg.speed.iters, device) for _ in range(cfg.speed.repeats)]
    speed = {key: statistics.median(r[key] for r in rounds) for key in ("fps", "ms_median")}
    entry = {
        "role": spec.role,
        "manner": MANNER[spec.role],
        "arch": spec.model.arch,
        **scores,
        "fps": speed["fps"],
        "ms_median": speed["ms_median"],
        "params_m": count_parameters(network),
    }
    return entry, detections, sweep_thresholds(gt, detections, "sun")


LESION_KEYS = ("lesion_sensitivity", "false_alarms_per_min", "delay_median_s", "delay_p90_s", "flicker_per_lesion_min",
               "lesions", "missed_lesions")  # fmt: skip


def lesion_scores(gt: dict, detections: list[dict], cfg: EvalConfig, temporal: FilterConfig) -> dict:
    """The lesion-level figures of a model's test detections as they are, and (`filtered_*`) through the causal
    temporal filter: what a clinician would see on the live screen with and without it."""
    raw = score_detections(gt, detections, "lesion", cfg.score_threshold, cfg.lesion_min_hits)
    shown = filter_coco(gt, detections, cfg.score_threshold, temporal)
    filtered = score_detections(gt, shown, "lesion", 0.0, cfg.lesion_min_hits)
    return {**{k: raw[k] for k in LESION_KEYS}, **{f"filtered_{k}": filtered[k] for k in LESION_KEYS}}


def write_report(
    out: Path,
    metrics: dict,
    detections: dict[str, list[dict]],
    curves: dict[str, list[dict]],
    frames_dir: Path,
    gt: dict,
    cfg: EvalConfig,
) -> str:
    """Write every output into `out` (a fresh directory); returns the markdown table."""
    (out / "detections").mkdir()
    for name, dets in detections.items():
        (out / "detections" / f"{name}.json").write_text(json.dumps(dets))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    table = markdown_table(metrics)
    (out / "table.md").write_text(table)
    plot_pr_curves(curves, out / "pr_curve.png")
    plot_f1_vs_threshold(curves, out / "f1_threshold.png", cfg.score_threshold)
    plot_disagreement_grid(
        frames_dir, gt, detections, out / "disagreement.png", cfg.disagreement_frames, cfg.score_threshold
    )
    # The timelines follow the student (else the first model), through the temporal filter too: the live screen.
    roles = {name: entry["role"] for name, entry in metrics["models"].items()}
    reference = next((name for name, role in roles.items() if role == "student"), next(iter(detections)))
    timelines = {name: timelines_from_coco(gt, dets, cfg.score_threshold) for name, dets in detections.items()}
    shown = filter_coco(gt, detections[reference], cfg.score_threshold, FilterConfig(**metrics["filter"]))
    timelines[f"{reference} + filter"] = timelines_from_coco(gt, shown, 0.0)
    plot_timelines(timelines, out / "timeline.png", reference)
    return table


def _metric_key(name: str, metric: str) -> str:
    """An MLflow metric name for one model's metric (MLflow allows letters, digits, _ - . / and spaces)."""
    return re.sub(r"[^\w\-./ ]", "_", f"{name}/{metric}")


def _log_to_mlflow(out: Path, metrics: dict, frames_dir: Path, specs: dict[str, ModelSpec], source: str | None) -> None:
    """One evaluate run: the figures per model, the report as artifacts, the frames (`source`) as its input."""
    params = {"split": metrics["split"], "score_threshold": metrics["score_threshold"], "data": str(frames_dir)}
    params.update({f"model.{name}": entry["model_dir"] for name, entry in metrics["models"].items()})
    tags = {"step": "evaluate", "data_version": data_version(frames_dir), "device": metrics["device"]}
    tags.update({f"training_run.{n}": str(s.provenance.get("mlflow_run_id", "unknown")) for n, s in specs.items()})
    with mlflow_run(f"evaluate:{metrics['split']}", params, tags) as tracker:
        tracker.metrics(
            {
                _metric_key(name, key): value
                for name, entry in metrics["models"].items()
                for key, value in entry.items()
                if isinstance(value, int | float)
            }
        )
        if metrics.get("gain"):  # the student's F1 gain over its baseline and its 95% interval over the videos
            low, high = metrics["gain"]["f1_gain_ci95"]
            tracker.metrics({"gain.f1": metrics["gain"]["f1_gain"], "gain.f1_ci95_low": low, "gain.f1_ci95_high": high})
        tracker.artifacts(out, artifact_path="evaluation")
        log_frames_input(frames_dir, "evaluation", source=source)


def run(args, params) -> int:
    """`v2i evaluate --model DIR [--model DIR ...] --data FRAMES [--split S] --out DIR`."""
    cfg: EvalConfig = params.eval
    out = Path(args.out)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = model_names(args.model)
    with contextlib.ExitStack() as stack:
        frames_dir = stack.enter_context(local_copy(args.data))
        gt_path = frames_dir / f"coco_{args.split}.json"
        if not gt_path.exists():
            raise V2IError(f"{args.data}: no split '{args.split}' (no coco_{args.split}.json)")
        gt = read_json(gt_path)
        if not gt["categories"]:  # e.g. a BUV layout whose COCO files declare none: nothing to score against
            raise V2IError(f"{args.data}: split '{args.split}' has no lesion categories: nothing to score against")
        model_dirs = [stack.enter_context(local_copy(m)) for m in args.model]
        specs = {name: read_spec(d) for name, d in zip(names, model_dirs, strict=True)}  # fail before any work

        metrics = {"split": args.split, "score_threshold": cfg.score_threshold, "device": device_name(device),
                   "lesion_min_hits": cfg.lesion_min_hits, "filter": params.filter.model_dump()}  # fmt: skip
        metrics["models"], detections, curves = {}, {}, {}
        for name, given, model_dir in tqdm(
            list(zip(names, args.model, model_dirs, strict=True)), desc="evaluate", unit="model"
        ):
            entry, detections[name], curves[name] = evaluate_model(model_dir, frames_dir, args.split, gt, cfg, device)
            entry.update(lesion_scores(gt, detections[name], cfg, params.filter))
            metrics["models"][name] = {"model_dir": str(given), **entry}
            log.info("%s: F1 %.3f, AP %.3f, %.1f frames/s", name, entry["f1"], entry["AP"], entry["fps"])
        pair = student_and_baseline(metrics)
        if pair is not None:  # the gain's spread over the test videos, for the line under the table
            metrics["gain"] = f1_gain_interval(gt, *(detections[name] for name in pair), cfg.score_threshold)
        with atomic_dir(out) as tmp:
            table = write_report(tmp, metrics, detections, curves, frames_dir, gt, cfg)
        print(table, end="")
        source = str(args.data) if is_s3(args.data) else None
        _log_to_mlflow(out, metrics, frames_dir if source else Path(args.data), specs, source)
    log.info("evaluation of %d model(s) on split %s -> %s", len(names), args.split, out)
    return 0
