"""The comparison table of `v2i evaluate`, in the layout of the paper's Table I (percentages, FPS, params)."""

from __future__ import annotations

COLUMNS = ("Model", "Manner", "Precision", "Recall", "F1", "IoU F1", "AP", "AP50", "FPS", "Params (M)")
# (metrics key, scale, decimals) per numeric column: rates as percentages with one decimal, as in the paper.
CELLS = (
    ("precision", 100, 1),
    ("recall", 100, 1),
    ("f1", 100, 1),
    ("iou_f1", 100, 1),
    ("AP", 100, 1),
    ("AP50", 100, 1),
    ("fps", 1, 1),
    ("params_m", 1, 1),
)


def table_rows(metrics: dict) -> list[list[str]]:
    """One row of cells per model of an evaluate metrics dict, in the order the models were given."""
    rows = []
    for name, entry in metrics["models"].items():
        cells = [name, entry["manner"]]
        cells += [f"{entry[key] * scale:.{decimals}f}" for key, scale, decimals in CELLS]
        rows.append(cells)
    return rows


def _named(metrics: dict, role: str, arch: str | None = None) -> str | None:
    """The first model of `role` (of `arch` when several have the role), or None."""
    names = [n for n, m in metrics["models"].items() if m.get("role") == role]
    if arch is not None and len(names) > 1:
        names = [n for n in names if metrics["models"][n].get("arch") == arch]
    return names[0] if names else None


def _by_role(metrics: dict, role: str, arch: str | None = None) -> dict | None:
    name = _named(metrics, role, arch)
    return metrics["models"][name] if name is not None else None


def student_and_baseline(metrics: dict) -> tuple[str, str] | None:
    """The names of the student and of its baseline (the baseline of its architecture), or None."""
    student = _named(metrics, "student")
    baseline = _named(metrics, "baseline", metrics["models"][student].get("arch") if student else None)
    return (student, baseline) if student is not None and baseline is not None else None


def _interval(metrics: dict) -> str:
    """The F1 gain's 95% interval over the test videos (`v2i_core.eval.gain`), and what it says; '' without one."""
    gain = metrics.get("gain")
    if not gain:
        return ""
    low, high = (100 * v for v in gain["f1_gain_ci95"])
    verdict = "inside what another draw of videos moves" if low <= 0 <= high else "outside it"
    return f" (95% interval over the {gain['videos']} test videos {low:+.1f} to {high:+.1f}: {verdict})"


def gain_line(metrics: dict) -> str | None:
    """The method's result in one line: the student against its baseline in F1 and AP50, the teacher's lead over
    the same baseline, and the share of that lead the student closed (None without a student and a baseline)."""
    pair = student_and_baseline(metrics)
    if pair is None:
        return None
    student, baseline = (metrics["models"][name] for name in pair)

    def points(entry: dict, key: str) -> float:
        return 100 * (entry[key] - baseline[key])

    gain = f"F1 {points(student, 'f1'):+.1f}{_interval(metrics)}, AP50 {points(student, 'AP50'):+.1f} points"
    won = points(student, "f1") > 0 and points(student, "AP50") > 0
    line = f"Student vs baseline: {gain}" if won else f"The student does NOT beat its baseline: {gain}"
    teacher = _by_role(metrics, "teacher")
    if teacher is not None:
        lead = points(teacher, "f1")
        line += f"; the teacher leads the baseline by F1 {lead:+.1f}, AP50 {points(teacher, 'AP50'):+.1f}"
        if lead > 0:
            line += f"; the student closes {points(student, 'f1') / lead:.0%} of the teacher's F1 lead"
    if not won:
        line += " (`v2i promote` refuses a student whose register.primary_metric does not beat its baseline's)"
    return line + "."


def markdown_table(metrics: dict) -> str:
    """The table as GitHub markdown, columns padded so it reads as well in a terminal, and its caption."""
    # the FPS column names the kind of device it was measured on (the caption names the device itself)
    header = [f"FPS ({metrics['device'].split(':')[0]})" if column == "FPS" else column for column in COLUMNS]
    rows = [header, *table_rows(metrics)]
    caption = (
        f"Split `{metrics['split']}`. Precision, recall, F1: SUN protocol (detection centre in a ground-truth box) "
        f"at score >= {metrics['score_threshold']:g}, in %. IoU F1: the same with a match at IoU >= 0.5, boxes that "
        "localise. AP, AP50: COCO, in %. FPS: batch 1 after warm-up on "
        f"{metrics['device']}. I: image-based, V: video-based, V->I: distilled from video into image."
    )
    gain = gain_line(metrics)
    lines = [*_aligned(rows), "", *([gain, ""] if gain else []), caption]
    if any("lesion_sensitivity" in entry for entry in metrics["models"].values()):
        lines += ["", *_aligned(lesion_rows(metrics)), "", _lesion_caption(metrics)]
    return "\n".join(lines) + "\n"


def _aligned(rows: list[list[str]]) -> list[str]:
    """Markdown lines of a header and rows, padded to align; the first two columns text, the rest numbers."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def line(cells: list[str]) -> str:
        padded = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if i >= 2 else "-") for i, w in enumerate(widths)) + "|"
    return [line(rows[0]), rule, *(line(r) for r in rows[1:])]


LESION_COLUMNS = ("Model", "Filter", "Sensitivity", "Missed", "Alarms/min", "Delay (s)", "Delay p90 (s)",
                  "Flicker/min")  # fmt: skip
LESION_CELLS = (("lesion_sensitivity", 100, 1), ("missed_lesions", 1, 0), ("false_alarms_per_min", 1, 2),
                ("delay_median_s", 1, 2), ("delay_p90_s", 1, 2), ("flicker_per_lesion_min", 1, 2))  # fmt: skip


def lesion_rows(metrics: dict) -> list[list[str]]:
    """The lesion-level table: per model, its detections as they are and through the temporal filter."""
    rows = [list(LESION_COLUMNS)]
    for name, entry in metrics["models"].items():
        for label, prefix in (("none", ""), ("causal", "filtered_")):
            values = [entry.get(prefix + key) for key, _, _ in LESION_CELLS]
            cells = ["-" if v is None else f"{v * scale:.{decimals}f}" for v, (_, scale, decimals) in
                     zip(values, LESION_CELLS, strict=True)]  # fmt: skip
            rows.append([name, label, *cells])
    return rows


def _lesion_caption(metrics: dict) -> str:
    k, n, hold = (metrics.get("filter", {}).get(key, "?") for key in ("k", "n", "hold"))
    return (
        "Lesion level (same detections, same threshold): sensitivity, the share of lesions hit in at least "
        f"{metrics.get('lesion_min_hits', 1)} frame(s), in %; alarms per minute of video (false boxes linked over "
        "frames count once); delay from a lesion's first frame to its first hit, median and 90th percentile; "
        "flicker, hit-to-miss switches per lesion-minute. Causal: through the temporal filter (a box shown once "
        f"seen in {k} of the last {n} frames, held {hold} frames), which uses past frames only."
    )
