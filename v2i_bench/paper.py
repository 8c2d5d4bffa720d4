"""`v2i bench paper`: the paper's Tables I, II and III measured on synthetic data, as one rerunnable command.

Per dataset (colonoscopy: SUN precision/recall/F1; ultrasound: COCO AP) one synthetic dataset is generated once and
shared by every model and seed; the seeds vary training only (train.seed). For each seed the video teacher is
trained first, then the image baselines and the students distilled from that teacher; on colonoscopy also the
Table III ablation students. Every model is the pipeline's: a baseline as `v2i train` trains it (params baseline),
the teacher as `v2i train --role teacher` (params teacher), a student as `v2i distill` (params distill), each for
its section's epochs (a fair comparison by epochs, not minutes: no wall-time budget), at bench.input_size; per row
only the architecture and the student's choice of TFD, MSI and CQD change (v2i_bench.config). The bench's own
settings (data, seeds, rows, held-out videos, workers): v2i_bench/bench.yaml. Every model is tested on
bench.test_videos videos synthesised apart (the split's own few test videos are scored too, for comparison).
Each colonoscopy model is scored at
eval.score_threshold and again at the threshold its best F1 on validation videos picks (bench.val_videos, also
synthesised apart, so no model trains or is tested on them): a model whose scores merely shift is not charged for it.
At the end, per dataset, one interleaved speed measurement (batch 1, after warm-up) times the Table I models of the
first seed, on the GPU when there is one, and gives the student/baseline and student/teacher frames/s ratios.

Layout under --out:
  data/<dataset>/{raw,frames,settings.json}           the synthetic videos and their extracted frames
  data/<dataset>-test/{raw,frames,settings.json}      the held-out videos every model is tested on
  data/colonoscopy-val/{raw,frames,settings.json}     the validation videos the score thresholds are picked on
  runs/<dataset>/<row>/seed<k>/{model/,settings.json,result.json,detections.json (on the test videos)}
  mlflow.db, mlartifacts/                              the training runs (unless MLFLOW_TRACKING_URI is set)
  results.json, results.md                            every run, the aggregates and the speed; the tables
  recall_by_kind_<dataset>.png                        recall per kind of test frame (clear, each hard kind)

Resumable: a run with a result.json is skipped and one with a checkpoint resumes, so a killed benchmark goes on
where it stopped. Settings are recorded beside data and runs: rerunning into the same --out with other settings is
an error (the tables would mix them), not a silent reuse.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from v2i_bench.cli import command_line as rebuilt_command
from v2i_bench.config import DATASETS, BenchConfig, row_distill, row_model, row_msi, row_train
from v2i_bench.paper_data import (
    APART_SPLIT,
    CLEAR,
    TEST_SEED_OFFSET,
    TestSet,
    check_settings,
    counts_by_video,
    frame_counts,
    hard_frame_recall,
    prepare_data,
    prepare_test,
    prepare_validation,
    recall_by_kind,
    split_test_set,
    validation_settings,
    write_json,
)
from v2i_bench.paper_tables import (
    ABLATION_ROWS,
    COCO_KEYS,
    MAIN_ROWS,
    ROWS,
    SUN_KEYS,
    VIDEO_DRAWS,
    Row,
    ablation_table,
    aggregate,
    distillation_gaps,
    gap_table,
    kind_table,
    main_table,
    speed_table,
    video_resampled_gaps,
)
from v2i_bench.parallel import Job, run_jobs, threads_per_worker
from v2i_bench.speed import load_line, rounds_line, time_models
from v2i_core.config import DistillConfig, EvalConfig, ModelConfig, MSIConfig, Params, SpeedConfig, TrainConfig
from v2i_core.engine.checkpoint import CHECKPOINT_NAME
from v2i_core.engine.model_dir import load_model_dir
from v2i_core.engine.predict import dataset_for, predict_dataset
from v2i_core.engine.train import TrainJob, fit
from v2i_core.errors import V2IError
from v2i_core.eval.evaluate import evaluate_model, score_model
from v2i_core.eval.plots import plot_grouped_bars
from v2i_core.eval.score import score_detections, sweep_thresholds
from v2i_core.eval.speed import device_name
from v2i_core.eval.validate import val_scorer
from v2i_core.storage import atomic_file, read_json
from v2i_core.tracking import use_experiment

log = logging.getLogger(__name__)

# val_f1: the validation videos' own F1 at the picked threshold, to compare settings without the test videos
TUNED_KEYS = ("tuned_threshold", "val_f1", "tuned_precision", "tuned_recall", "tuned_f1")
KIND_KEYS = ("recall_by_kind", "tuned_recall_by_kind")  # {kind: recall} at the fixed and at the picked threshold
METRIC_KEYS = (*SUN_KEYS, "hard_recall", *TUNED_KEYS, "iou_precision", "iou_recall", "iou_f1", *COCO_KEYS)
TABLES = {
    "colonoscopy": ("Table I", (*SUN_KEYS, "hard_recall", "tuned_f1", "tuned_threshold")),
    "ultrasound": ("Table II", COCO_KEYS),
}
# what a student's gain is judged by; colonoscopy at both thresholds, since at the fixed one a student can gain by
# taking the teacher's calibration alone (docs/bench-experiments.md), and on the validation videos too: a second draw
# of videos, which tells a gain of the method from one of the test videos drawn
JUDGED = {"colonoscopy": ("f1", "tuned_f1", "val_f1"), "ultrasound": ("AP",)}
THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))  # the score thresholds a validation pick is among
RUN_LOG = "train.log"  # a run's progress and log lines when it trains in a worker process (bench.workers > 1)


@dataclass(frozen=True)
class Run:
    dataset: str
    row: Row
    seed: int

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.row.name}/seed{self.seed}"

    def __str__(self) -> str:  # in the job runner's messages
        return self.name

    def folder(self, out: Path) -> Path:
        return out / "runs" / self.dataset / self.row.name / f"seed{self.seed}"


def plan_runs(rows: list[str], seeds: list[int], datasets: list[str]) -> list[Run]:
    """Every training run in order: per dataset and seed the teacher first (its students need it), then the rest
    in table order. The teacher is added when a student is asked for; Table III's own rows run on colonoscopy."""
    wanted = set(rows)
    if any(ROWS[name].role == "student" for name in wanted):
        wanted.add("teacher")
    order = dict.fromkeys(["teacher", *MAIN_ROWS, *ABLATION_ROWS])  # table order, duplicates dropped
    return [
        Run(dataset, ROWS[name], seed)
        for dataset in datasets
        for seed in seeds
        for name in order
        if name in wanted and (dataset == "colonoscopy" or name in MAIN_ROWS)
    ]


def needed_runs(run: Run, runs: list[Run]) -> list[Run]:
    """The runs of `runs` that must be trained before `run`: a student's teacher."""
    same = (run.dataset, run.seed)
    if run.row.role != "student":
        return []
    return [other for other in runs if other.row.name == "teacher" and (other.dataset, other.seed) == same]


def waited_on_first(runs: list[Run]) -> list[Run]:
    """`runs` with those another run waits for first, each still after what it needs: parallel workers then start
    every seed's teacher early instead of leaving students waiting at the end."""
    waited = {needed for run in runs for needed in needed_runs(run, runs)}
    return sorted(runs, key=lambda run: run not in waited)  # stable: plan order within each group


def tune_threshold(
    model_dir: Path, val_frames: Path, test_gt: dict, test_detections: list[dict], device: torch.device
) -> tuple[dict, dict]:
    """The score threshold with the best SUN F1 on the validation videos (the lowest of ties), and the test
    split's precision, recall and F1 at it (and the validation F1 it gave): each model at its own operating point,
    chosen without the test split. Also the validation videos' counts at every threshold (counts_by_video), from
    which val_f1 can be recomputed on resamplings of those videos."""
    network, spec = load_model_dir(model_dir, device)
    val_detections = predict_dataset(network, dataset_for(spec, val_frames, APART_SPLIT), device)
    val_gt = read_json(val_frames / f"coco_{APART_SPLIT}.json")
    best = max(sweep_thresholds(val_gt, val_detections, "sun", THRESHOLDS), key=lambda point: point["f1"])
    test = score_detections(test_gt, test_detections, "sun", best["threshold"])
    tuned = {"tuned_threshold": best["threshold"], "val_f1": best["f1"], **{f"tuned_{k}": test[k] for k in SUN_KEYS}}
    return tuned, counts_by_video(val_gt, val_detections, list(THRESHOLDS))


def run_settings(params: Params, cfg: BenchConfig, run: Run) -> dict:
    """Everything that decides a run's result, as recorded in its settings.json: the row's model and training from
    its stage section (v2i_bench.config), the teacher's MSI, a student's distillation, and the evaluation's params."""
    settings = {
        "run": run.name,
        "role": run.row.role,
        "model": row_model(params, cfg, run.row).model_dump(mode="json"),
        "train": row_train(params, run.row, run.seed).model_dump(mode="json"),
        "eval": params.eval.model_dump(mode="json"),
    }
    if (msi := row_msi(params, run.row)) is not None:
        settings["msi"] = msi.model_dump(mode="json")
    if (distill := row_distill(params, run.row)) is not None:
        settings["distill"] = distill.model_dump(mode="json", exclude={"model", "train"})
    return settings


def split_scores(model_dir: Path, split: TestSet, eval_cfg: EvalConfig, device: torch.device) -> dict:
    """SUN and COCO metrics on the extract split's own test videos, kept beside the held-out videos' for comparison."""
    network, spec = load_model_dir(model_dir, device)
    scores, detections = score_model(network, spec, split.frames, split.split, split.gt, eval_cfg, device)
    return {
        **{k: scores[k] for k in (*SUN_KEYS, *COCO_KEYS)},
        "hard_recall": hard_frame_recall(split, detections, eval_cfg.score_threshold),
    }


def _score(
    result: dict, folder: Path, test: TestSet, frames: Path, eval_cfg: EvalConfig, device: torch.device
) -> list[dict] | None:
    """Score a trained run on the test set unless its result already was, on the same test videos; the test set's
    detections when it scored, None when the result stands."""
    if result.get("tested_on") == test.made_with and "hard_recall" in result.get("metrics", {}):
        return None
    entry, detections, _ = evaluate_model(folder / "model", test.frames, test.split, test.gt, eval_cfg, device)
    entry["hard_recall"] = hard_frame_recall(test, detections, eval_cfg.score_threshold)
    result["metrics"] = entry
    result["tested_on"] = test.made_with
    split = split_test_set(frames) if test.made_with is not None else None
    result["split_metrics"] = split_scores(folder / "model", split, eval_cfg, device) if split else None
    write_json(folder / "detections.json", detections)
    return detections


def _tune(
    result: dict,
    folder: Path,
    val_frames: Path | None,
    gt: dict,
    detections: list[dict],
    device: torch.device,
    renew: bool,
) -> bool:
    """Add (or renew) the result's threshold picked on the validation videos; True when it changed."""
    made_with = read_json(val_frames.parent / "settings.json") if val_frames else None
    metrics = result["metrics"]
    # tuned before val_f1 or before the validation videos' counts were kept: tuned again
    kept = all(key in metrics for key in TUNED_KEYS) and "val_f1" in metrics.get("video_counts", {})
    if not renew and (val_frames is None or kept) and result.get("tuned_on") == made_with:
        return False
    for key in TUNED_KEYS:
        metrics.pop(key, None)
    metrics.get("video_counts", {}).pop("val_f1", None)
    if val_frames is not None:
        tuned, counts = tune_threshold(folder / "model", val_frames, gt, detections, device)
        metrics.update(tuned)
        metrics.setdefault("video_counts", {})["val_f1"] = counts
    result["tuned_on"] = made_with
    return True


def _recalls_by_kind(metrics: dict, test: TestSet, detections: list[dict], score_threshold: float) -> bool:
    """Add (or renew) the recall on each kind of test frame, at the fixed and at the validation-picked threshold;
    True when they changed. Read off the stored detections, so runs scored before get them without a model."""
    if not test.frames_by_kind:  # data without the synthesiser's flags
        return False
    recalls = {KIND_KEYS[0]: recall_by_kind(test, detections, score_threshold)}
    if "tuned_threshold" in metrics:
        recalls[KIND_KEYS[1]] = recall_by_kind(test, detections, metrics["tuned_threshold"])
    if recalls == {key: metrics[key] for key in KIND_KEYS if key in metrics}:
        return False
    for key in KIND_KEYS:
        metrics.pop(key, None)
    metrics.update(recalls)
    return True


def _counts_by_video(metrics: dict, test: TestSet, detections: list[dict], score_threshold: float) -> bool:
    """Add (or renew) the SUN counts on each test video behind f1 and tuned_f1 (metrics["video_counts"], beside
    the validation videos' behind val_f1), from which the gap tables resample the videos; True when they changed.
    Read off the stored detections, like the recalls by kind."""
    thresholds = {"f1": score_threshold, "tuned_f1": metrics.get("tuned_threshold")}
    counts = {key: counts_by_video(test.gt, detections, [t]) for key, t in thresholds.items() if t is not None}
    by_video = metrics.setdefault("video_counts", {})
    stale = {"f1", "tuned_f1"} - set(counts)  # tuned_f1 once no threshold is picked any more
    if all(by_video.get(key) == per_video for key, per_video in counts.items()) and not stale & set(by_video):
        return False
    for key in stale:
        by_video.pop(key, None)
    by_video.update(counts)
    return True


def _train(run: Run, settings: dict, frames: Path, out: Path) -> dict:
    """Train one run as its settings record it, resuming from its checkpoint if one is there."""
    model_dir = run.folder(out) / "model"
    teacher_dir = Run(run.dataset, ROWS["teacher"], run.seed).folder(out) / "model"
    train = TrainConfig.model_validate(settings["train"])
    job = TrainJob(
        role=run.row.role,
        model=ModelConfig.model_validate(settings["model"]),
        train=train,
        frames_dir=frames,
        out=model_dir,
        resume=(model_dir / CHECKPOINT_NAME).exists(),
        max_minutes=train.max_minutes,
        msi=MSIConfig.model_validate(settings["msi"]) if "msi" in settings else None,
        distill=DistillConfig.model_validate(settings["distill"]) if "distill" in settings else None,
        teacher_dir=teacher_dir if run.row.role == "student" else None,
    )
    training = fit(job, val_scorer(frames, EvalConfig.model_validate(settings["eval"])))
    return {k: training[k] for k in ("epochs_completed", "stopped_early", "train_seconds")}


def train_and_score(
    params: Params,
    cfg: BenchConfig,
    run: Run,
    frames: Path,
    out: Path,
    device: torch.device,
    test: TestSet,
    val_frames: Path | None = None,
) -> dict:
    """Train one run unless it was (with these settings), score it on the test set unless it was (on these test
    videos), at the fixed threshold and at the one picked on `val_frames` when given; write result.json."""
    folder = run.folder(out)
    eval_cfg = params.eval
    settings = run_settings(params, cfg, run)
    trained = check_settings(folder / "settings.json", settings) and (folder / "result.json").exists()
    if trained:
        log.info("%s: trained before", run.name)
        result = json.loads((folder / "result.json").read_text())
    else:
        write_json(folder / "settings.json", settings)
        training = _train(run, settings, frames, out)
        result = {"dataset": run.dataset, "row": run.row.name, "seed": run.seed, "training": training}
    detections = _score(result, folder, test, frames, eval_cfg, device)
    scored = detections is not None
    if not scored:
        detections = json.loads((folder / "detections.json").read_text())
    tuned = _tune(result, folder, val_frames, test.gt, detections, device, renew=scored)
    by_kind = _recalls_by_kind(result["metrics"], test, detections, eval_cfg.score_threshold)
    by_video = "f1" in JUDGED[run.dataset] and _counts_by_video(
        result["metrics"], test, detections, eval_cfg.score_threshold
    )
    if scored or tuned or by_kind or by_video:
        write_json(folder / "result.json", result)
    if not trained:
        (folder / "model" / CHECKPOINT_NAME).unlink(missing_ok=True)  # only a resume needs it; result.json ends that
    return result


def _run_with_progress(jobs: list[Job], workers: int) -> dict:
    """run_jobs under one progress bar over the runs, naming those in training."""
    running: set[str] = set()
    with tqdm(total=len(jobs), desc="bench", unit="run") as bar:

        def started(job: Job) -> None:
            running.add(job.key.name)
            bar.set_postfix_str(", ".join(sorted(running)))

        def finished(job: Job) -> None:
            running.discard(job.key.name)
            bar.update()
            bar.set_postfix_str(", ".join(sorted(running)))

        return run_jobs(jobs, workers, started, finished)


def measure_speed(model_dirs: dict[str, Path], cfg: SpeedConfig, device: torch.device) -> dict:
    """Frames/s of the trained models in `model_dirs` and the student ratios (`v2i_bench.speed.time_models`)."""
    return time_models({name: load_model_dir(path, device) for name, path in model_dirs.items()}, cfg, device)


def _metrics_by_seed(results: list[dict]) -> dict[str, dict[str, dict[int, dict]]]:
    """{dataset: {row: {seed: metrics}}}."""
    grouped: dict[str, dict[str, dict[int, dict]]] = {}
    for result in results:
        grouped.setdefault(result["dataset"], {}).setdefault(result["row"], {})[result["seed"]] = result["metrics"]
    return grouped


def aggregate_runs(results: list[dict]) -> dict[str, dict[str, dict]]:
    """{dataset: {row: {metric: {mean, std, values}}}} over the seeds of each row."""
    return {
        dataset: {row: aggregate(per_seed, METRIC_KEYS) for row, per_seed in rows.items()}
        for dataset, rows in _metrics_by_seed(results).items()
    }


def kinds_by_dataset(results: list[dict]) -> dict[str, dict[str, dict]]:
    """{dataset: {kind key: {row: {kind: {mean, std, values}}}}} for the KIND_KEYS the runs have."""
    kinds = {}
    for dataset, rows in _metrics_by_seed(results).items():
        for key in KIND_KEYS:
            per_row = {
                row: aggregate({seed: m[key] for seed, m in per_seed.items()}, tuple(_kinds(per_seed, key)))
                for row, per_seed in rows.items()
                if all(key in m for m in per_seed.values())
            }
            if per_row:
                kinds.setdefault(dataset, {})[key] = per_row
    return kinds


def _kinds(per_seed: dict[int, dict], key: str) -> list[str]:
    """The frame kinds every seed of a row has a recall for, CLEAR first, then the hard kinds by name."""
    common = set.intersection(*(set(m[key]) for m in per_seed.values()))
    return sorted(common, key=lambda kind: (kind != CLEAR, kind))


def gaps_by_dataset(results: list[dict]) -> dict[str, dict[str, dict]]:
    """{dataset: {metric: distillation_gaps(...)}} on each metric the dataset's students are judged by (JUDGED),
    paired by seed; a metric no student has a gap on (tuned_f1, val_f1 without validation videos) is left out.
    Where the runs hold counts per video (f1, tuned_f1 on the test videos; val_f1 on the validation videos), each
    student's gap also gets "videos": how its share moves over resamplings of those videos (video_resampled_gaps)."""
    gaps = {}
    for dataset, rows in _metrics_by_seed(results).items():
        for key in JUDGED[dataset]:
            values = {
                row: {seed: metrics[key] for seed, metrics in per_seed.items() if metrics.get(key) is not None}
                for row, per_seed in rows.items()
            }
            if not (judged := distillation_gaps(values)):
                continue
            counts = {
                row: {seed: m["video_counts"][key] for seed, m in per_seed.items() if key in m.get("video_counts", {})}
                for row, per_seed in rows.items()
            }
            for name, resampled in video_resampled_gaps(counts).items():
                if name in judged:
                    judged[name]["videos"] = resampled
            gaps.setdefault(dataset, {})[key] = judged
    return gaps


def machine() -> dict:
    """What ran it: the CPU (model, cores, torch threads), the GPU if any, the library versions."""
    gpu = device_name(torch.device("cuda")) if torch.cuda.is_available() else None
    return {
        "cpu": device_name(torch.device("cpu")),
        "cpu_cores": os.cpu_count(),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def command_line(args) -> str:
    """The invocation, rebuilt from the parsed flags (the same command whatever called it)."""
    words = ["paper", "--params", args.params, "--out", args.out]
    if args.seeds is not None:
        words += ["--seeds", str(args.seeds)]
    if args.only:
        words += ["--only", args.only]
    return rebuilt_command(args, *words)


def _model_note(m: ModelConfig) -> str:
    return (
        f"{m.backbone} to layer{m.last_layer}, {m.input_size[0]}x{m.input_size[1]} input, d_model {m.d_model}, "
        f"{m.enc_layers}+{m.dec_layers} layers, {m.num_queries} queries"
    )


def _train_note(t: TrainConfig) -> str:
    return (
        f"{t.epochs} epoch(s), batch {t.batch_size}, AdamW lr {t.lr:g}"
        + (f" (backbone {t.lr_backbone:g})" if t.lr_backbone != t.lr else "")
        + (f", x0.1 after epoch(s) {', '.join(map(str, t.lr_drop))}" if t.lr_drop else "")
        + (f", hard-frame augmentation {t.augment.hard_frames:g}" if t.augment.hard_frames else "")
    )


def _distill_note(d: DistillConfig) -> str:
    return (
        f"TFD mask {d.tfd.mask}, lambda_bk {d.tfd.weight:g}"
        + (f", the student's own detections from score {d.tfd.own_boxes:g} in the mask too" if d.tfd.own_boxes else "")
        + f"; CQD {d.cqd.mode}, lambda_qe {d.cqd.weight:g}"
        + (
            f"; the student's scores on the cross-view queries pulled towards the teacher's, lambda_sc "
            f"{d.score_weight:g}"
            if d.score_weight
            else ""
        )
        + (
            "; the teacher sees each hard-frame-augmented sample before its degradation"
            if d.teacher_view == "clean"
            else ""
        )
    )


def _describe_setup(params: Params, cfg: BenchConfig, doc: dict) -> list[str]:
    """The data, and each role's model, training and distillation as its stage section sets it."""
    lines = []
    for dataset, counts in doc["frames"].items():
        s = getattr(cfg.datasets, dataset)
        test = f"{counts['test']} frames of {counts['test_videos']} videos, {counts['hard']} of them hard"
        lines.append(
            f"- Data, {dataset}: {s.videos} synthetic videos x {s.frames} frames, {s.width}x{s.height}, synth seed "
            f"{s.seed}; split by video: {counts['train']} training frames; "
            + (
                f"tested on videos synthesised apart (synth seed {s.seed + TEST_SEED_OFFSET}): {test} (the split's "
                "own test videos, if any, are scored too: split_metrics in results.json)"
                if cfg.test_videos
                else f"tested on the split's test videos: {test}"
            )
        )
    baseline, teacher, student = (ROWS[name] for name in ("deformable", "teacher", "deformable_v2i"))
    image, students = row_model(params, cfg, baseline), row_model(params, cfg, student)
    same = students == image
    lines += [
        f"- Models (params baseline, teacher, distill): image models {_model_note(image)}; teacher "
        f"{_model_note(row_model(params, cfg, teacher))}, MSI over T={params.teacher.msi.frames} frames"
        + ("" if same else f"; students {_model_note(students)}"),
        f"- Training: baselines {_train_note(row_train(params, baseline, 0))}; teacher "
        f"{_train_note(row_train(params, teacher, 0))}; students {_train_note(row_train(params, student, 0))}; seeds "
        f"{', '.join(map(str, doc['seeds']))} (train.seed; the data stay fixed; a student starts from its "
        "baseline's initial weights)",
        "- Distillation (params distill; each row its own TFD, MSI and CQD): "
        + _distill_note(row_distill(params, student)),
    ]
    return lines


def _workers_note(cfg: BenchConfig) -> str:
    if cfg.workers == 1:
        return "one at a time"
    return f"{cfg.workers} at a time, {threads_per_worker(cfg.workers)} thread(s) each"


def _tuned_note(cfg: BenchConfig, dataset: str) -> str:
    settings = validation_settings(cfg, dataset)
    if settings is None:
        return ""
    return (
        f" F1 (val. thr.): test F1 at the score threshold (of {THRESHOLDS[0]:g}, {THRESHOLDS[1]:g}, ..., "
        f"{THRESHOLDS[-1]:g}) with the best F1 on {cfg.val_videos} validation videos synthesised apart (synth seed "
        f"{settings['synth']['seed']}); Val. thr.: that threshold (its validation F1: val_f1 in results.json, to "
        "compare settings without the test videos)."
    )


def render(doc: dict, params: Params, cfg: BenchConfig) -> str:
    """results.md: the header (command, date, machine, setup), Tables I-III, then the speed measurement."""
    mach = doc["machine"]
    parts = [
        "# V2I-DETR paper benchmark on synthetic data",
        "",
        f"- Command: `{doc['command']}`",
        f"- Date: {doc['date']}",
        f"- Machine: {mach['cpu']} ({mach['cpu_cores']} cores); GPU: {mach['gpu'] or 'none'}; "
        f"torch {mach['torch']}, Python {mach['python']}",
        *_describe_setup(params, cfg, doc),
        f"- Cells: mean ± sample standard deviation over {len(doc['seeds'])} seed(s); FPS and params: the speed "
        f"measurement below (first seed's models). Training time {doc['train_seconds'] / 60:.1f} min summed over "
        f"{len(doc['runs'])} runs ({_workers_note(cfg)}); this invocation took {doc['wall_seconds'] / 60:.1f} min",
    ]
    for dataset in doc["datasets"]:
        title, keys = TABLES[dataset]
        aggregates = doc["aggregates"].get(dataset, {})
        if not any(name in aggregates for name in MAIN_ROWS):
            continue
        protocol = (
            f"SUN protocol (a detection hits when its centre lies in a ground-truth box), score >= "
            f"{doc['score_threshold']:g}: precision, recall, F1 in %; Recall (hard): recall on the test set's "
            f"{doc['frames'][dataset].get('hard', 0)} hard frames, degraded by the synthesiser so that one frame "
            "lacks the evidence its neighbours hold (– when it has none)." + _tuned_note(cfg, dataset)
            if dataset == "colonoscopy"
            else "COCO AP, AP50, AP75 (pycocotools) in %."
        )
        parts += [
            "",
            f"## {title}: {dataset}",
            "",
            main_table(aggregates, doc["speed"].get(dataset), keys),
            "",
            f"{protocol} I: image-based, V: video-based, V→I: distilled from video into image.",
        ]
        gaps = doc["gaps"].get(dataset, {})
        captions = _gap_captions(doc)
        for key, judged in gaps.items():
            parts += ["", f"*{captions[key]}*", "", gap_table(judged)]
        if gaps:
            parts += [
                "",
                "Seed for seed, in points: each student against the baseline of its architecture and seed, and the "
                "teacher against the same baseline; gap closed: the student's mean change over the teacher's (100%: "
                "as good as the teacher; – where the teacher does not lead by more than its spread over seeds).",
            ]
        if any("videos" in gap for judged in gaps.values() for gap in judged.values()):
            parts[-1] += (
                f" Closed, 5-95% over video draws: that share on {VIDEO_DRAWS} resamplings of the videos judged on "
                "(as many, with replacement, the same for every model and seed; on the validation videos each "
                "model's threshold picked again on every draw), over the draws where the teacher leads; half or more "
                "in: the draws, of all, where the student closes at least half of a teacher's lead."
            )
        parts += _kinds_section(doc, dataset)
    colonoscopy = doc["aggregates"].get("colonoscopy", {})
    if any(name in colonoscopy for name in ABLATION_ROWS[1:]):
        parts += [
            "",
            "## Table III: component ablation, colonoscopy (Deformable DETR student; changes against ID 1 in points)",
            "",
            ablation_table(colonoscopy),
        ]
    for dataset, speed in doc["speed"].items():
        parts += [
            "",
            f"## Speed: {dataset} models of seed {doc['seeds'][0]}, batch 1, on {speed['device']}",
            "",
            f"{rounds_line(speed)} The teacher takes clips of T={params.teacher.msi.frames} frames. {load_line(speed)}",
            "",
            speed_table(speed),
        ]
    return "\n".join(parts) + "\n"


def _gap_captions(doc: dict) -> dict[str, str]:
    """The gap tables' captions, naming each threshold as the recall-by-kind tables do."""
    at = _kind_captions(doc)
    return {
        "f1": f"F1 {at[KIND_KEYS[0]]}",
        "tuned_f1": f"F1 {at[KIND_KEYS[1]]}",
        "val_f1": "F1 on the validation videos, each model at the threshold it picks there",
        "AP": "COCO AP",
    }


def _kind_captions(doc: dict) -> dict[str, str]:
    return {
        KIND_KEYS[0]: f"at score >= {doc['score_threshold']:g}",
        KIND_KEYS[1]: "at each model's validation-picked threshold",
    }


def _kinds_section(doc: dict, dataset: str) -> list[str]:
    """Recall by kind of test frame, at each threshold the runs were scored at, and where the figure is."""
    kinds = doc.get("kinds", {}).get(dataset)
    if not kinds:
        return []
    parts = ["", f"## Recall by frame kind: {dataset}"]
    for key, caption in _kind_captions(doc).items():
        if key in kinds:
            parts += ["", f"*{caption.capitalize()}*", "", kind_table(kinds[key])]
    return parts + [
        "",
        "SUN recall in % on the test set's lesion frames of each kind: clear, or degraded by the synthesiser in one "
        "way (docs/data-formats.md); a video model's lead should lie in the degraded ones, where the lesion's "
        f"evidence is in the neighbouring frames. Figure: `{_kinds_figure(dataset)}`.",
    ]


def _kinds_figure(dataset: str) -> str:
    return f"recall_by_kind_{dataset}.png"


def plot_kinds(doc: dict, out: Path) -> None:
    """recall_by_kind_<dataset>.png: the recall-by-kind tables as bars, a panel per threshold."""
    for dataset, kinds in doc.get("kinds", {}).items():
        panels = {
            caption: {ROWS[row].title: kinds[key][row] for row in ROWS if row in kinds[key]}  # in table order
            for key, caption in _kind_captions(doc).items()
            if key in kinds
        }
        plot_grouped_bars(panels, out / _kinds_figure(dataset), "SUN recall (%)")


@contextlib.contextmanager
def _tracking_store(out: Path):
    """Training runs go to <out>/mlflow.db unless MLFLOW_TRACKING_URI says otherwise: dozens of benchmark runs
    stay with the benchmark, out of the project's registry store."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        yield
        return
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{out.resolve() / 'mlflow.db'}"
    try:
        yield
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]


def bench(params: Params, cfg: BenchConfig, out: Path, seeds: list[int], datasets: list[str]) -> dict:
    """Train, score and time everything; returns the results document (without command, date and machine)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with _tracking_store(out):
        frames = {dataset: prepare_data(cfg, dataset, out) for dataset in datasets}
        tests = {dataset: prepare_test(cfg, dataset, out, frames[dataset]) for dataset in datasets}
        val_frames = {dataset: prepare_validation(cfg, dataset, out) for dataset in datasets}
        runs = plan_runs(cfg.rows, seeds, datasets)
        use_experiment()  # made here, not by two workers at once
        jobs = [
            Job(
                run,
                train_and_score,
                (params, cfg, run, frames[run.dataset], out, device, tests[run.dataset], val_frames[run.dataset]),
                after=tuple(needed_runs(run, runs)),
                log=run.folder(out) / RUN_LOG if cfg.workers > 1 else None,
            )
            for run in waited_on_first(runs)
        ]
        done = _run_with_progress(jobs, cfg.workers)
        results = [done[run] for run in runs]
    speed = {}
    for dataset in datasets:
        dirs = {r.row.name: r.folder(out) / "model" for r in runs if r.dataset == dataset and r.seed == seeds[0]}
        timed = {name: dirs[name] for name in MAIN_ROWS if name in dirs}
        if timed:
            speed[dataset] = measure_speed(timed, cfg.speed, device)
    return {
        "datasets": datasets,
        "frames": {dataset: frame_counts(frames[dataset], tests[dataset]) for dataset in datasets},
        "seeds": seeds,
        "score_threshold": params.eval.score_threshold,
        "config": {"bench": cfg.model_dump(mode="json"), "params": params.model_dump(mode="json")},
        "runs": results,
        "aggregates": aggregate_runs(results),
        "gaps": gaps_by_dataset(results),
        "kinds": kinds_by_dataset(results),
        "speed": speed,
        "train_seconds": round(sum(r["training"]["train_seconds"] for r in results), 1),
        "wall_seconds": round(time.monotonic() - started, 1),
    }


def run(args, params: Params, cfg: BenchConfig) -> int:
    """`v2i bench paper [--out DIR] [--seeds N] [--only DATASET]`: write results.json and results.md, print the md."""
    if args.seeds is not None and not 1 <= args.seeds <= len(cfg.seeds):
        raise V2IError(f"--seeds {args.seeds}: bench.seeds has {len(cfg.seeds)} seed(s); give 1 to that")
    seeds = cfg.seeds[: args.seeds] if args.seeds else list(cfg.seeds)
    if len(set(seeds)) != len(seeds):
        raise V2IError(f"bench.seeds: {seeds} repeats a seed")
    datasets = [args.only] if args.only else list(DATASETS)
    out = Path(args.out)
    measured = bench(params, cfg, out, seeds, datasets)
    doc = {
        "command": command_line(args),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        **measured,
    }
    text = render(doc, params, cfg)
    write_json(out / "results.json", doc)
    plot_kinds(doc, out)
    with atomic_file(out / "results.md") as handle:
        handle.write(text)
    print(text, end="")
    log.info("benchmark: %d runs in %.0f s -> %s", len(doc["runs"]), doc["wall_seconds"], out / "results.md")
    return 0
