"""The paper's Tables I, II and III from per-seed results: the rows, mean ± spread over seeds, the ablation deltas,
the speed ratios, and the markdown. Pure functions of plain dicts, so each is tested on hand-made numbers.

Numbers in: metrics as fractions (0.844), frames/s, parameters in millions. Numbers out: rates as percentages
with one decimal, "84.4 ± 1.2" (mean ± sample standard deviation over seeds; the mean alone for one seed), and
Table III's change against its row 1 in percentage points, "↑ 3.8" / "↓ 0.4", as the paper prints it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Row:
    """One table row: what is trained for it, and which V2I components a distilled row uses (Table III)."""

    name: str  # key in bench.rows (v2i_bench/bench.yaml), in the run folders and in results.json
    label: str  # as the paper's table prints it
    role: str  # baseline | teacher | student
    arch: str  # detr | deformable_detr | sam_detr
    tfd: bool = False
    msi: bool = False
    cqd: bool = False

    @property
    def title(self) -> str:
        """A name that stands on its own, outside the table's row order: "DETR student (V2I-DETR)"."""
        arch = ARCH_NAMES[self.arch]
        if self.role == "teacher":
            return f"{arch} + MSI teacher"
        if self.role == "baseline":
            return f"{arch} baseline"
        parts = [name for name, on in (("TFD", self.tfd), ("MSI", self.msi), ("CQD", self.cqd)) if on]
        return f"{arch} student ({'V2I-DETR' if len(parts) == 3 else ' + '.join(parts)})"


ARCH_NAMES = {"detr": "DETR", "deformable_detr": "Deformable DETR", "sam_detr": "SAM-DETR"}

ROWS = {
    row.name: row
    for row in (
        Row("teacher", "Deformable DETR + MSI (Teacher)", "teacher", "deformable_detr"),
        Row("detr", "DETR", "baseline", "detr"),
        Row("detr_v2i", "+ V2I-DETR", "student", "detr", tfd=True, msi=True, cqd=True),
        Row("deformable", "Deformable DETR", "baseline", "deformable_detr"),
        Row("deformable_v2i", "+ V2I-DETR", "student", "deformable_detr", tfd=True, msi=True, cqd=True),
        Row("sam_detr", "SAM-DETR", "baseline", "sam_detr"),
        Row("sam_detr_v2i", "+ V2I-DETR", "student", "sam_detr", tfd=True, msi=True, cqd=True),
        Row("tfd", "TFD", "student", "deformable_detr", tfd=True),
        Row("tfd_msi", "TFD + MSI", "student", "deformable_detr", tfd=True, msi=True),
        Row("tfd_cqd", "TFD + CQD", "student", "deformable_detr", tfd=True, cqd=True),
    )
}
# Tables I and II
MAIN_ROWS = ("teacher", "detr", "detr_v2i", "deformable", "deformable_v2i", "sam_detr", "sam_detr_v2i")
ABLATION_ROWS = ("deformable", "tfd", "tfd_msi", "tfd_cqd", "deformable_v2i")  # Table III, IDs 1-5
MANNER = {"baseline": "I", "teacher": "V", "student": "V→I"}
SUN_KEYS = ("precision", "recall", "f1")
COCO_KEYS = ("AP", "AP50", "AP75")
# (faster, slower) pairs of the speed claim: a student runs as fast as its baseline and far faster than the teacher.
RATIOS = (
    ("deformable_v2i", "deformable"),
    ("deformable_v2i", "teacher"),
    ("detr_v2i", "detr"),
    ("detr_v2i", "teacher"),
    ("sam_detr_v2i", "sam_detr"),
    ("sam_detr_v2i", "teacher"),
)
VIDEO_DRAWS = 2000  # resamplings of the videos behind each share's 5-95% range
PAPER_FPS = {  # Table I, FPS
    "teacher": 2,
    "detr": 30,
    "detr_v2i": 30,
    "deformable": 18,
    "deformable_v2i": 18,
    "sam_detr": 16,
    "sam_detr_v2i": 16,
}
NOT_RUN = "–"


def mean_spread(values: list[float]) -> tuple[float, float | None]:
    """(mean, sample standard deviation); the deviation is None for a single value."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def aggregate(per_seed: dict[int, dict], keys: tuple[str, ...]) -> dict[str, dict]:
    """{key: {"mean", "std", "values"}} over the seeds of one row; values in seed order."""
    seeds = sorted(per_seed)
    out = {}
    for key in keys:
        raw = [per_seed[seed].get(key) for seed in seeds]
        if None in raw:  # a metric some run has no value for (e.g. no hard frame to recall) is left out
            continue
        values = [float(v) for v in raw]
        mean, std = mean_spread(values)
        out[key] = {"mean": mean, "std": std, "values": values}
    return out


def format_stat(stat: dict, scale: float = 100, decimals: int = 1) -> str:
    """The cell "84.4 ± 1.2" from {"mean": 0.844, "std": 0.012}; "84.4" when there is no spread (one seed)."""
    text = f"{stat['mean'] * scale:.{decimals}f}"
    return text if stat["std"] is None else f"{text} ± {stat['std'] * scale:.{decimals}f}"


def format_delta(value: float, reference: float, scale: float = 100, decimals: int = 1) -> str:
    """The change from `reference` in percentage points, as Table III prints it: "↑ 3.8", "↓ 0.4"."""
    delta = round((value - reference) * scale, decimals)
    return f"{'↑' if delta >= 0 else '↓'} {abs(delta):.{decimals}f}"


def paired_ratios(fps_rounds: dict[str, list[float]]) -> dict[str, list[float]]:
    """{"a/b": fps[a] / fps[b] within each round, each two consecutive rounds combined by their geometric mean} for
    each pair of RATIOS whose two rows were measured (an odd last round counts alone). Paired by round because the
    load of a shared machine moves between rounds more than within one: two identical networks measured 47-75
    frames/s across the rounds of one invocation, and the ratio of their median frames/s came to 0.95 and 1.20 on two
    datasets where the median of their per-round ratios came to 0.99 and 1.00. Paired by two rounds because those
    run the models in opposite orders (time_models): a drift within a round that makes the later model of a pair look
    slower in one round makes it look faster in the next."""
    paired = {}
    for a, b in RATIOS:
        if a in fps_rounds and b in fps_rounds:
            per_round = [x / y for x, y in zip(fps_rounds[a], fps_rounds[b], strict=True)]
            pairs = [per_round[i : i + 2] for i in range(0, len(per_round), 2)]
            paired[f"{a}/{b}"] = [math.prod(pair) ** (1 / len(pair)) for pair in pairs]
    return paired


def speed_ratios(fps_rounds: dict[str, list[float]]) -> dict[str, float]:
    """{"a/b": the median of paired_ratios}: each student's frames/s over its baseline's and the teacher's."""
    return {pair: statistics.median(values) for pair, values in paired_ratios(fps_rounds).items()}


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free interval for the median of what `values` sample: the order statistics x(j) and x(n+1-j)
    for the largest j whose coverage, P(j <= Binomial(n, 1/2) <= n - j), is at least `confidence`; the whole range
    where even that of x(1) and x(n) is less (n < 6 at 95%). Assumes nothing of the distribution, so a round that a
    busy neighbour slowed counts as one value, not as a variance that widens every interval."""
    ordered = sorted(values)
    n = len(ordered)
    below = 0.5**n  # P(Binomial(n, 1/2) <= j - 1), for j = 1
    j = 1
    while j < n + 1 - j:
        below_next = below + math.comb(n, j) / 2**n  # P(B <= j)
        if 1 - 2 * below_next < confidence:
            break
        below, j = below_next, j + 1
    return ordered[j - 1], ordered[n - j]


def speed_ratio_ranges(fps_rounds: dict[str, list[float]]) -> dict[str, tuple[float, float]]:
    """{"a/b": median_interval of paired_ratios}: how far one invocation's ratio can be trusted."""
    return {pair: median_interval(values) for pair, values in paired_ratios(fps_rounds).items()}


def markdown(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    """A GitHub table padded to read well in a terminal too; the first `left` columns left-aligned."""
    table = [header, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ("-" if i < left else ":") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def _speed_cells(row: str, speed: dict | None) -> list[str]:
    model = (speed or {}).get("models", {}).get(row)
    return [f"{model['fps']:.1f}", f"{model['params_m']:.1f}"] if model else [NOT_RUN, NOT_RUN]


def main_table(aggregates: dict[str, dict], speed: dict | None, keys: tuple[str, ...]) -> str:
    """Table I (SUN keys and hard-frame recall) or Table II (COCO_KEYS) of one dataset: the rows run, in paper order.

    aggregates: {row: aggregate(...)}; speed: measure's result for this dataset (FPS and params per row) or None.
    """
    names = {
        "precision": "Precision", "recall": "Recall", "f1": "F1", "hard_recall": "Recall (hard)",
        "tuned_f1": "F1 (val. thr.)", "tuned_threshold": "Val. thr.", "AP": "AP", "AP50": "AP50", "AP75": "AP75",
    }
    shown = [name for name in MAIN_ROWS if name in aggregates]
    keys = tuple(k for k in keys if any(k in aggregates[name] for name in shown))  # a column no run has: dropped
    header = ["Model", "Manner", *(names[k] for k in keys), "FPS", "Params (M)"]
    rows = []
    for name in shown:
        row = ROWS[name]
        stats = [_cell(aggregates[name], k) for k in keys]
        rows.append([row.label, MANNER[row.role], *stats, *_speed_cells(name, speed)])
    return markdown(header, rows, left=2)


def _cell(stats: dict, key: str) -> str:
    if key not in stats:
        return NOT_RUN
    if key == "tuned_threshold":  # a score, not a rate
        return format_stat(stats[key], scale=1, decimals=2)
    return format_stat(stats[key])


def ablation_table(aggregates: dict[str, dict]) -> str:
    """Table III: precision, recall and F1 of rows 1-5, each with its change against row 1 (when row 1 was run)."""
    header = ["ID", "TFD", "MSI", "CQD", "Precision", "Recall", "F1"]
    base = aggregates.get(ABLATION_ROWS[0])
    rows = []
    for i, name in enumerate(ABLATION_ROWS, start=1):
        if name not in aggregates:
            continue
        row = ROWS[name]
        cells = []
        for key in SUN_KEYS:
            text = format_stat(aggregates[name][key])
            if i > 1 and base is not None:
                text += " " + format_delta(aggregates[name][key]["mean"], base[key]["mean"])
            cells.append(text)
        ticks = ["baseline", "", ""] if i == 1 else ["✓" if on else "" for on in (row.tfd, row.msi, row.cqd)]
        rows.append([str(i), *ticks, *cells])
    return markdown(header, rows, left=4)


def baseline_of(student: str) -> str:
    """The image baseline a student row is measured against: the baseline row of its architecture."""
    arch = ROWS[student].arch
    return next(row.name for row in ROWS.values() if row.role == "baseline" and row.arch == arch)


def _paired_students(per_seed: dict[str, dict[int, object]]) -> Iterator[tuple]:
    """(student row, its per-seed values, its baseline's, the teacher's, the seeds all three ran) for each student
    row of `per_seed` ({row: {seed: value}}) in table order, where there is such a seed."""
    teacher = per_seed.get("teacher", {})
    for name in ROWS:
        if ROWS[name].role != "student" or name not in per_seed:
            continue
        student, baseline = per_seed[name], per_seed.get(baseline_of(name), {})
        if seeds := sorted(set(student) & set(baseline) & set(teacher)):
            yield name, student, baseline, teacher, seeds


def distillation_gaps(per_seed: dict[str, dict[int, float]]) -> dict[str, dict]:
    """Seed for seed, what distillation gave each student: its metric minus its baseline's, the teacher's minus
    the same baseline's, and the share of that baseline-to-teacher gap the student closed (its mean change over
    the teacher's; None when the teacher does not lead by more than its spread over seeds). per_seed:
    {row: {seed: metric}}; only seeds where the student, its baseline and the teacher all ran are paired.
    {student: {"seeds", "student", "teacher", "closed", "ahead"}}, ahead: the seeds at which the student beat its
    baseline."""
    gaps = {}
    for name, student, baseline, teacher, seeds in _paired_students(per_seed):
        gained = [student[k] - baseline[k] for k in seeds]
        led = [teacher[k] - baseline[k] for k in seeds]
        lead, spread = mean_spread(led)
        # a share of a lead no larger than its spread over seeds is noise (measured: 1045% of +0.1 ± 1.3 points)
        leads = lead > 0 and (spread is None or lead > spread)
        gaps[name] = {
            "seeds": seeds,
            "student": mean_spread(gained),
            "teacher": (lead, spread),
            "closed": statistics.fmean(gained) / lead if leads else None,
            "ahead": [k for k, d in zip(seeds, gained, strict=True) if d > 0],
        }
    return gaps


def f1_of_counts(counts: np.ndarray) -> np.ndarray:
    """SUN F1 from summed [TP, FP, FN] on the last axis (0 where there is nothing to count)."""
    tp, fp, fn = np.moveaxis(np.asarray(counts, dtype=float), -1, 0)
    return 2 * tp / np.maximum(2 * tp + fp + fn, 1)


def _resampled_f1(per_video: dict[str, list[list[int]]], videos: list[str], picks: np.ndarray) -> np.ndarray:
    """F1 on each draw of videos (picks: [draws, videos] indices into `videos`) from the summed [TP, FP, FN] at each
    threshold the counts were kept at, the best of them: a model's F1 at its one threshold (f1, tuned_f1), or at
    the best of the sweep (val_f1, picked again on every draw)."""
    summed = np.array([per_video[v] for v in videos], dtype=float)[picks].sum(axis=1)  # [draws, thresholds, 3]
    return f1_of_counts(summed).max(axis=1)


def _mean_gain(row: dict, baseline: dict, seeds: list[int], videos: list[str], picks: np.ndarray) -> np.ndarray:
    """On each draw of videos, the mean over seeds of a row's F1 minus its baseline's."""
    return np.mean([_resampled_f1(row[k], videos, picks) - _resampled_f1(baseline[k], videos, picks) for k in seeds], 0)


def video_resampled_gaps(counts: dict[str, dict[int, dict]], draws: int = VIDEO_DRAWS) -> dict:
    """How far each student's share of the teacher's lead moves with the videos drawn. counts: {row: {seed: {video:
    [[TP, FP, FN] per threshold]}}}. Each of `draws` resamplings takes as many videos as there are, with replacement
    and the same ones for every model and seed, recomputes each F1 from summed counts (_resampled_f1) and the share as
    distillation_gaps does (the mean gain over seeds over the teacher's mean lead). {student: {"closed": its 5th,
    50th and 95th percentile over the draws where the teacher leads (None if none), "teacher_leads": the fraction
    of draws where it does, "half": of all draws, where the student closes at least half of a lead, "draws",
    "videos"}}."""
    out = {}
    for name, student, baseline, teacher, seeds in _paired_students(counts):
        videos = sorted(set.intersection(*(set(c[k]) for c in (student, baseline, teacher) for k in seeds)))
        if not videos:
            continue
        # seeded the same for every student: the same draws, so their ranges compare
        picks = np.random.default_rng(0).integers(len(videos), size=(draws, len(videos)))
        gained = _mean_gain(student, baseline, seeds, videos, picks)
        led = _mean_gain(teacher, baseline, seeds, videos, picks)
        leads = led > 0
        shares = gained[leads] / led[leads]
        out[name] = {
            "closed": np.percentile(shares, [5, 50, 95]).tolist() if shares.size else None,
            "teacher_leads": float(leads.mean()),
            "half": float(np.mean(leads & (gained >= 0.5 * led))),
            "draws": draws,
            "videos": len(videos),
        }
    return out


def _signed(spread: tuple[float, float | None], scale: float = 100) -> str:
    mean, std = spread
    return f"{mean * scale:+.1f}" + ("" if std is None else f" ± {std * scale:.1f}")


def _resampled_cells(resampled: dict | None) -> list[str]:
    if resampled is None:
        return [NOT_RUN, NOT_RUN]
    closed = resampled["closed"]
    interval = NOT_RUN if closed is None else f"{closed[0] * 100:.0f}% to {closed[2] * 100:.0f}%"
    return [interval, f"{resampled['half'] * 100:.0f}%"]


def gap_table(gaps: dict[str, dict]) -> str:
    """The distillation_gaps as a table: changes in points, the share of the gap closed in %; where the videos
    were resampled (a gap's "videos", from video_resampled_gaps), the share's 5-95% range over the draws and how
    often it is at least half."""
    header = ["Student", "Student − baseline", "Teacher − baseline", "Gap closed", "Ahead of baseline"]
    resampled = any("videos" in gap for gap in gaps.values())
    if resampled:
        header += ["Closed, 5-95% over video draws", "Half or more in"]
    rows = [
        [
            ROWS[name].title,
            _signed(gap["student"]),
            _signed(gap["teacher"]),
            NOT_RUN if gap["closed"] is None else f"{gap['closed'] * 100:.0f}%",
            f"{len(gap['ahead'])} of {len(gap['seeds'])} seeds",
            *(_resampled_cells(gap.get("videos")) if resampled else []),
        ]
        for name, gap in gaps.items()
    ]
    return markdown(header, rows)


def kind_table(per_row: dict[str, dict[str, dict]]) -> str:
    """Recall per kind of test frame, a row per model in table order: per_row {row: {kind: aggregate stat}}, each
    row's kinds in the order to print (the first row's kinds first, then any kind only a later row has)."""
    names = [name for name in ROWS if name in per_row]
    kinds = list(dict.fromkeys(kind for name in names for kind in per_row[name]))
    rows = [
        [ROWS[name].title, *(format_stat(per_row[name][k]) if k in per_row[name] else NOT_RUN for k in kinds)]
        for name in names
    ]
    return markdown(["Model", *(kind.replace("_", " ").capitalize() for kind in kinds)], rows)


def speed_table(speed: dict) -> str:
    """Median frames/s per model, then each student/other ratio with its 95% interval (median_interval) beside the
    paper's (from its Table I FPS)."""
    models = [
        [ROWS[name].title, f"{m['fps']:.1f}", f"{m['ms_median']:.2f}", f"{m['params_m']:.2f}"]
        for name, m in speed["models"].items()
    ]
    ratios = []
    for pair, value in speed["ratios"].items():
        a, b = pair.split("/")
        low, high = speed["ratio_ranges"][pair]
        ratios.append([
            f"{ROWS[a].title} / {ROWS[b].title}",
            f"{value:.2f}",
            f"{low:.2f}-{high:.2f}",
            f"{PAPER_FPS[a] / PAPER_FPS[b]:.1f}",
        ])
    tables = [markdown(["Model", "Frames/s (median)", "ms/frame", "Params (M)"], models)]
    if ratios:
        tables.append(markdown(["Frames/s ratio", "Measured", "95% interval", "Paper"], ratios))
    return "\n\n".join(tables)
