"""Evaluation figures for `v2i evaluate`: PR curves, F1 against threshold, where models disagree, and a timeline
of each test video (where lesions are in view, where each model hits, misses and raises false alarms).

Figures are drawn on matplotlib's Agg canvas without pyplot (no global figure state, no display needed)
and written atomically as PNG.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from PIL import Image

from v2i_core.errors import V2IError
from v2i_core.eval.lesion import Video, VideoOutcome, match_video, videos_from_coco
from v2i_core.eval.score import match_detections, read_ground_truth
from v2i_core.eval.sun import MATCHERS
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


TIMELINE_VIDEOS = 8  # videos drawn in the timeline figure, worst first: more and each strip gets too thin to read
LESION_COLOUR, HIT_COLOUR, MISS_COLOUR, ALARM_COLOUR = "0.55", "tab:green", "tab:red", "tab:orange"


@dataclass(frozen=True)
class VideoTimeline:
    """One model on one video, frame by frame: its lesion tracks (the frames where each is in view and whether
    each was hit, from `v2i_core.eval.lesion.match_video`) and the frames where it shows a false detection."""

    outcome: VideoOutcome
    alarm_frames: np.ndarray  # (A,) indices of frames holding a detection that hits no lesion

    def lanes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(in view, hit, alarm): one bool per frame; in view: some lesion is annotated, hit: some lesion is hit."""
        n = self.outcome.n_frames
        in_view, hit, alarm = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool)
        for track in self.outcome.tracks:
            in_view[track.frames] = True
            hit[track.frames[track.hits]] = True
        alarm[np.asarray(self.alarm_frames, dtype=np.int64)] = True
        return in_view, hit, alarm

    def badness(self) -> int:
        """Frames with a lesion in view and none hit, plus frames with a false alarm: what a reader would fault."""
        in_view, hit, alarm = self.lanes()
        return int(np.count_nonzero(in_view & ~hit) + np.count_nonzero(alarm))


def video_timeline(video: Video, protocol: str = "sun") -> VideoTimeline:
    """The timeline of one video's detections, by the lesion metrics' hit rule (`protocol`)."""
    n = len(video.frames)
    det_boxes = np.concatenate([np.zeros((0, 4)), *(f.det_boxes for f in video.frames)])
    det_image = np.repeat(np.arange(n), [len(f.det_boxes) for f in video.frames])
    gt_boxes = np.concatenate([np.zeros((0, 4)), *(f.gt_boxes for f in video.frames)])
    gt_image = np.repeat(np.arange(n), [len(f.gt_boxes) for f in video.frames])
    scores = np.concatenate([np.zeros(0), *(f.det_scores for f in video.frames)])
    matches = MATCHERS[protocol](gt_boxes, gt_image, det_boxes, scores, det_image, n)
    return VideoTimeline(match_video(video, protocol), np.unique(det_image[~matches.det_matched]))


def timelines_from_coco(gt: dict, detections: list[dict], score_threshold: float) -> list[VideoTimeline]:
    """The timeline of every video of a COCO-VID ground truth, for the COCO results kept at `score_threshold`."""
    return [video_timeline(video) for video in videos_from_coco(gt, detections, score_threshold)]


def worst_first(timelines: Sequence[VideoTimeline]) -> list[int]:
    """Indices of `timelines` (one model's videos) ordered by `VideoTimeline.badness`, worst first; ties keep
    the given order."""
    badness = [timeline.badness() for timeline in timelines]
    return sorted(range(len(timelines)), key=lambda i: -badness[i])


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """The runs of True in `mask` as (first frame, length), as `broken_barh` takes them."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return list(zip(starts.tolist(), (ends - starts).tolist(), strict=True))


def _bars(ax, mask: np.ndarray, y: float, height: float, colour: str) -> None:
    # An edge in the face colour keeps a one-frame run visible on a long video.
    ax.broken_barh(_runs(mask), (y, height), facecolors=colour, edgecolors=colour, linewidth=0.5)


def plot_timelines(
    models: dict[str, list[VideoTimeline]], path: str | Path, reference: str, max_videos: int = TIMELINE_VIDEOS
) -> None:
    """One strip per video, frames along x: a band per lesion track where it is in view, then a lane per model
    (or filtered output) with its hits and misses of the lesions in view just above the frames where it raises
    false alarms. The videos drawn are the `max_videos` worst for `reference` (`worst_first`), worst at the top.

    models {label: [VideoTimeline]}: every label has the same videos in the same order.
    """
    if reference not in models or not models[reference]:
        raise V2IError(f"{path}: nothing to plot (expected model name -> its videos' timelines, '{reference}' too)")
    videos = [(t.outcome.video, t.outcome.n_frames) for t in models[reference]]
    for label, timelines in models.items():
        if [(t.outcome.video, t.outcome.n_frames) for t in timelines] != videos:
            raise V2IError(f"{path}: the timelines of '{label}' are not of the same videos as those of '{reference}'")
    chosen = worst_first(models[reference])[:max_videos]
    labels = list(reversed(models))  # lanes from the bottom up: the first model sits just under the lesions

    fig = Figure(figsize=(12, 1.2 + (0.5 + 0.25 * (len(labels) + 1)) * len(chosen)), layout="constrained")
    axes = fig.subplots(len(chosen), 1, squeeze=False).ravel()
    for ax, i in zip(axes, chosen, strict=True):
        timeline = models[reference][i]
        video = timeline.outcome
        for j, track in enumerate(video.tracks):  # the top lane, one band per track
            in_view = np.zeros(video.n_frames, bool)
            in_view[track.frames] = True
            band = 0.8 / len(video.tracks)
            _bars(ax, in_view, len(labels) + 0.1 + j * band, 0.85 * band, LESION_COLOUR)
        for row, label in enumerate(labels):  # a lane per model: hits and misses, its alarms just under them
            in_view, hit, alarm = models[label][i].lanes()
            _bars(ax, hit, row + 0.5, 0.4, HIT_COLOUR)
            _bars(ax, in_view & ~hit, row + 0.5, 0.4, MISS_COLOUR)
            _bars(ax, alarm, row + 0.2, 0.25, ALARM_COLOUR)
            ax.axhline(row + 1, color="0.4" if row + 1 == len(labels) else "0.85", linewidth=0.6)
        lesions = f"lesions ({len(video.tracks)})" if video.tracks else "no lesion"
        ax.set_yticks([row + 0.5 for row in range(len(labels) + 1)], [*labels, lesions], fontsize=8)
        ax.set(xlim=(0, max(video.n_frames, 1)), ylim=(0, len(labels) + 1))
        ax.tick_params(axis="x", labelsize=8)
        title = f"{video.video}: {video.n_frames} frames at {video.fps:g} fps"
        ax.set_title(f"{title}; {reference}: {timeline.badness()} missed or false-alarm frames", fontsize=9, loc="left")
    axes[-1].set_xlabel("frame")
    keys = [(LESION_COLOUR, "lesion in view (a band per lesion)"), (HIT_COLOUR, "hit"),
            (MISS_COLOUR, "missed (lesion in view, none hit)"), (ALARM_COLOUR, "false alarm in the frame")]  # fmt: skip
    handles = [Rectangle((0, 0), 1, 1, color=colour, label=name) for colour, name in keys]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8)
    fig.suptitle(f"Lesion timelines, worst first for {reference}: {len(chosen)} of {len(videos)} videos", fontsize=10)
    _save(fig, path)
