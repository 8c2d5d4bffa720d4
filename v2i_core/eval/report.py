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


def _by_role(metrics: dict, role: str, arch: str | None = None) -> dict | None:
    entries = [m for m in metrics["models"].values() if m.get("role") == role]
    if arch is not None and len(entries) > 1:
        entries = [m for m in entries if m.get("arch") == arch]
    return entries[0] if entries else None


def gain_line(metrics: dict) -> str | None:
    """The method's result in one line: the student against its baseline in F1 and AP50, the teacher's lead over
    the same baseline, and the share of that lead the student closed (None without a student and a baseline)."""
    student = _by_role(metrics, "student")
    baseline = _by_role(metrics, "baseline", student.get("arch") if student else None)
    if student is None or baseline is None:
        return None

    def points(entry: dict, key: str) -> float:
        return 100 * (entry[key] - baseline[key])

    gain = f"F1 {points(student, 'f1'):+.1f}, AP50 {points(student, 'AP50'):+.1f} points"
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
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]

    def line(cells: list[str]) -> str:
        padded = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if i >= 2 else "-") for i, w in enumerate(widths)) + "|"
    caption = (
        f"Split `{metrics['split']}`. Precision, recall, F1: SUN protocol (detection centre in a ground-truth box) "
        f"at score >= {metrics['score_threshold']:g}, in %. IoU F1: the same with a match at IoU >= 0.5, boxes that "
        "localise. AP, AP50: COCO, in %. FPS: batch 1 after warm-up on "
        f"{metrics['device']}. I: image-based, V: video-based, V->I: distilled from video into image."
    )
    gain = gain_line(metrics)
    lines = [line(rows[0]), rule, *(line(r) for r in rows[1:]), "", *([gain, ""] if gain else []), caption]
    return "\n".join(lines) + "\n"
