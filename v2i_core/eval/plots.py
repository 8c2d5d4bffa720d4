"""Evaluation figures for `v2i evaluate`: PR curves, F1 against threshold, and where models disagree.

Figures are drawn on matplotlib's Agg canvas without pyplot (no global figure state, no display needed)
and written atomically as PNG.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from PIL import Image

from v2i_core.errors import V2IError
from v2i_core.eval.score import match_detections, read_ground_truth
from v2i_core.storage import atomic_file

GT_COLOUR = "lime"
MODEL_COLOURS = ("tab:red", "tab:blue", "tab:orange", "tab:purple", "tab:cyan", "tab:pink", "tab:brown", "tab:olive")


def _save(fig: Figure, path: str | Path) -> None:
    FigureCanvasAgg(fig)
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)


def _check_curves(curves: dict[str, list[dict]], path: str | Path) -> None:
    if not curves or not all(curves.values()):
        raise V2IError(f"{path}: no curves to plot (expected model name -> sweep_thresholds points)")


def plot_pr_curves(curves: dict[str, list[dict]], path: str | Path) -> None:
    """Precision against recall over the score thresholds of `sweep_thresholds`, one line per model."""
    _check_curves(curves, path)
    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot()
    for (name, points), colour in zip(curves.items(), _colours(len(curves)), strict=True):
        # Thresholds that keep no detection have no precision: leave them out rather than draw them at 0.
        defined = [p for p in points if p["tp"] + p["fp"] > 0]
        ax.plot([p["recall"] for p in defined], [p["precision"] for p in defined], ".-", color=colour, label=name)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02), title="Precision-recall")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    _save(fig, path)


def plot_f1_vs_threshold(curves: dict[str, list[dict]], path: str | Path, chosen_threshold: float) -> None:
    """F1 against score threshold, one line per model, each model's F1 at `chosen_threshold` marked."""
    _check_curves(curves, path)
    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot()
    for (name, points), colour in zip(curves.items(), _colours(len(curves)), strict=True):
        thresholds = [p["threshold"] for p in points]
        f1 = [p["f1"] for p in points]
        ax.plot(thresholds, f1, "-", color=colour, label=name)
        ax.plot([chosen_threshold], [np.interp(chosen_threshold, thresholds, f1)], "o", color=colour)
    ax.axvline(chosen_threshold, color="grey", linestyle="--", label=f"chosen threshold {chosen_threshold:g}")
    ax.set(xlabel="score threshold", ylabel="F1", xlim=(0, 1), ylim=(0, 1.02), title="F1 against threshold")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    _save(fig, path)


def plot_grouped_bars(panels: dict[str, dict[str, dict[str, dict]]], path: str | Path, ylabel: str) -> None:
    """One panel per title, in each a group of bars per category and a bar per model, its height the mean and its
    whisker the spread: panels {title: {model: {category: {"mean", "std"}}}}; rates as fractions, drawn in %."""
    if not panels or not all(panels.values()):
        raise V2IError(f"{path}: nothing to plot (expected panel title -> model -> category -> mean and std)")
    fig = Figure(figsize=(5 + 2.5 * len(panels), 5.5), layout="constrained")
    for i, (title, models) in enumerate(panels.items(), start=1):
        ax = fig.add_subplot(1, len(panels), i)
        categories = list(dict.fromkeys(c for stats in models.values() for c in stats))
        width = 0.8 / len(models)
        for j, ((name, stats), colour) in enumerate(zip(models.items(), _colours(len(models)), strict=True)):
            x = [k + (j - (len(models) - 1) / 2) * width for k, c in enumerate(categories) if c in stats]
            means = [stats[c]["mean"] * 100 for c in categories if c in stats]
            spreads = [(stats[c]["std"] or 0) * 100 for c in categories if c in stats]
            ax.bar(x, means, width, yerr=spreads, capsize=2, color=colour, label=name)
        ax.set_xticks(range(len(categories)), [c.replace("_", " ") for c in categories], rotation=30, ha="right")
        ax.set(ylabel=ylabel, ylim=(0, 105), title=title)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 3), fontsize="small")
    _save(fig, path)


def _colours(n: int) -> list[str]:
    return [MODEL_COLOURS[i % len(MODEL_COLOURS)] for i in range(n)]


def select_disagreements(
    gt: dict | str | Path, detections: dict[str, list[dict]], n: int = 8, score_threshold: float = 0.5
) -> list[tuple[object, int]]:
    """The up to `n` frames where the models disagree most, as [(image_id, disagreement)], most first.

    Per frame and model the SUN counts are taken at `score_threshold`: hits (TP) and false alarms (FP).
    A frame's disagreement is the spread of hits across models plus the spread of false alarms
    (max - min of each). Frames where all models agree (0) are left out; ties keep ground-truth file order.
    """
    truth = read_ground_truth(gt)
    hits, alarms = [], []
    for name, dets in detections.items():
        tp, fp, _ = match_detections(truth, dets, "sun", source=f"detections of {name}").per_frame(score_threshold)
        hits.append(tp)
        alarms.append(fp)
    if not hits:
        return []
    hits, alarms = np.stack(hits), np.stack(alarms)  # (models, frames)
    spread = np.ptp(hits, axis=0) + np.ptp(alarms, axis=0)  # (frames,)
    order = np.argsort(-spread, kind="stable")[:n]
    return [(truth.image_ids[i], int(spread[i])) for i in order if spread[i] > 0]


def plot_disagreement_grid(
    frames_dir: str | Path,
    gt: dict | str | Path,
    detections: dict[str, list[dict]],
    path: str | Path,
    n: int = 8,
    score_threshold: float = 0.5,
) -> list:
    """Draw the frames of `select_disagreements` with GT boxes and each model's kept boxes; returns their ids.

    Frames are read from frames_dir / file_name of the ground-truth image entries.
    """
    truth = read_ground_truth(gt)
    chosen = select_disagreements(truth, detections, n, score_threshold)
    images = {image["id"]: image for image in truth.data["images"]}
    frames = [_read_frame(Path(frames_dir), images[image_id]) for image_id, _ in chosen]
    wanted = {image_id for image_id, _ in chosen}
    gt_boxes = _boxes_by_image(truth.data["annotations"], wanted)
    kept = {
        name: _boxes_by_image([d for d in dets if d["score"] >= score_threshold], wanted)
        for name, dets in detections.items()
    }
    colours = dict(zip(detections, _colours(len(detections)), strict=True))

    cols = max(1, min(4, len(chosen)))
    rows = max(1, math.ceil(len(chosen) / cols))
    fig = Figure(figsize=(3.2 * cols, 2.8 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes:
        ax.set_axis_off()
    if not chosen:
        axes[0].text(0.5, 0.5, "the models agree on every frame", ha="center", va="center")
    for ax, frame, (image_id, spread) in zip(axes, frames, chosen, strict=False):
        ax.imshow(frame)
        ax.set_title(f"{images[image_id]['file_name']}\ndisagreement {spread}", fontsize=8)
        for box in gt_boxes.get(image_id, []):
            ax.add_patch(Rectangle(box[:2], box[2], box[3], fill=False, edgecolor=GT_COLOUR, linewidth=2))
        for name, boxes in kept.items():
            for box in boxes.get(image_id, []):
                rect = Rectangle(box[:2], box[2], box[3], fill=False, edgecolor=colours[name], linestyle="--")
                ax.add_patch(rect)
    handles = [Line2D([], [], color=GT_COLOUR, linewidth=2, label="ground truth")]
    handles += [Line2D([], [], color=c, linestyle="--", label=name) for name, c in colours.items()]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8)
    fig.suptitle(f"Frames where the models disagree most (score >= {score_threshold:g})", fontsize=10)
    _save(fig, path)
    return [image_id for image_id, _ in chosen]


def _boxes_by_image(items: list[dict], wanted: set) -> dict:
    grouped: dict = {}
    for item in items:
        if item["image_id"] in wanted:
            grouped.setdefault(item["image_id"], []).append(item["bbox"])
    return grouped


def _read_frame(frames_dir: Path, image: dict) -> np.ndarray:
    """The frame of a ground-truth image entry as an (H, W, 3) uint8 array."""
    path = frames_dir / image["file_name"]
    try:
        with Image.open(path) as frame:
            return np.asarray(frame.convert("RGB"))
    except FileNotFoundError:
        raise V2IError(f"{path}: no such frame image") from None
    except OSError as exc:
        raise V2IError(f"{path}: cannot read frame image ({exc})") from None
