"""The comparison table of `v2i evaluate`, in the layout of the paper's Table I (percentages, FPS, params)."""

from __future__ import annotations

COLUMNS = ("Model", "Manner", "Precision", "Recall", "F1", "AP", "AP50", "FPS", "Params (M)")
# (metrics key, scale, decimals) per numeric column: rates as percentages with one decimal, as in the paper.
CELLS = (
    ("precision", 100, 1),
    ("recall", 100, 1),
    ("f1", 100, 1),
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


def markdown_table(metrics: dict) -> str:
    """The table as GitHub markdown, columns padded so it reads as well in a terminal, and its caption."""
    rows = [list(COLUMNS), *table_rows(metrics)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]

    def line(cells: list[str]) -> str:
        padded = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if i >= 2 else "-") for i, w in enumerate(widths)) + "|"
    caption = (
        f"Split `{metrics['split']}`. Precision, recall, F1: SUN protocol (detection centre in a ground-truth box) "
        f"at score >= {metrics['score_threshold']:g}, in %. AP, AP50: COCO, in %. FPS: batch 1 after warm-up on "
        f"{metrics['device']}. I: image-based, V: video-based, V->I: distilled from video into image."
    )
    return "\n".join([line(rows[0]), rule, *(line(r) for r in rows[1:]), "", caption]) + "\n"
