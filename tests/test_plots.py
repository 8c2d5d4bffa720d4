"""Evaluation figures: valid PNGs of sensible size, and the frames picked as disagreements."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from v2i_core.errors import V2IError
from v2i_core.eval.plots import (
    plot_disagreement_grid,
    plot_f1_vs_threshold,
    plot_grouped_bars,
    plot_pr_curves,
    select_disagreements,
)
from v2i_core.eval.score import sweep_thresholds

LESION = [20, 10, 20, 20]  # centre (30, 20)
ON_LESION = [22, 12, 16, 16]
BACKGROUND = [0, 30, 8, 8]


def gt_of(frames: dict[int, list]) -> dict:
    return {
        "images": [{"id": i, "file_name": f"clip/{i:06d}.png", "width": 64, "height": 48} for i in frames],
        "annotations": [{"image_id": i, "category_id": 1, "bbox": b} for i, bs in frames.items() for b in bs],
        "categories": [{"id": 1, "name": "lesion"}],
    }


def d(image_id, bbox, score=0.9):
    return {"image_id": image_id, "category_id": 1, "bbox": bbox, "score": score}


# Frames 1, 2, 4, 6 have a lesion; 3 and 5 have none.
GT = gt_of({1: [LESION], 2: [LESION], 3: [], 4: [LESION], 5: [], 6: [LESION]})
DETECTIONS = {
    "a": [d(1, ON_LESION), d(2, ON_LESION), d(3, BACKGROUND), d(3, BACKGROUND), d(4, ON_LESION), d(4, BACKGROUND)]
    + [d(5, BACKGROUND, 0.1)],  # below the threshold: not a false alarm
    "b": [d(1, ON_LESION), d(4, BACKGROUND), d(4, BACKGROUND), d(6, ON_LESION)],
    "c": [d(1, ON_LESION), d(3, BACKGROUND)],
}


def test_selection_picks_the_constructed_disagreements():
    # Frame 4: hits a=1, b=0, c=0 (spread 1), false alarms 1, 2, 0 (spread 2) -> 3.
    # Frame 3: false alarms 2, 0, 1 -> 2. Frames 2 and 6: one model hits -> 1 each, file order.
    # Frames 1 (all hit) and 5 (nothing kept) are agreements and are left out.
    assert select_disagreements(GT, DETECTIONS, n=8, score_threshold=0.5) == [(4, 3), (3, 2), (2, 1), (6, 1)]
    assert select_disagreements(GT, DETECTIONS, n=2, score_threshold=0.5) == [(4, 3), (3, 2)]
    # At 0.05 model a's weak detection on frame 5 counts too: a false alarm only a raises.
    assert (5, 1) in select_disagreements(GT, DETECTIONS, n=8, score_threshold=0.05)


def test_selection_without_disagreement_is_empty():
    assert select_disagreements(GT, {"a": DETECTIONS["a"], "copy": list(DETECTIONS["a"])}) == []


@pytest.fixture
def frames_dir(tmp_path):
    root = tmp_path / "frames"
    (root / "clip").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for image in GT["images"]:
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / image["file_name"])
    return root


def _png_size(path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
        return image.size


def test_disagreement_grid_png(frames_dir, tmp_path):
    out = tmp_path / "report" / "disagreements.png"
    chosen = plot_disagreement_grid(frames_dir, GT, DETECTIONS, out, n=3, score_threshold=0.5)
    assert chosen == [4, 3, 2]
    width, height = _png_size(out)
    assert width >= 600 and 250 <= height <= 1200  # one row of three frame panels plus legend
    assert sorted(p.name for p in out.parent.iterdir()) == ["disagreements.png"]


def test_disagreement_grid_missing_frame_names_it_and_writes_nothing(frames_dir, tmp_path):
    (frames_dir / "clip" / "000004.png").unlink()
    out = tmp_path / "grid.png"
    with pytest.raises(V2IError, match="000004.png: no such frame image"):
        plot_disagreement_grid(frames_dir, GT, DETECTIONS, out)
    assert not out.exists()


def test_curve_plots_png(tmp_path):
    curves = {name: sweep_thresholds(GT, dets) for name, dets in DETECTIONS.items()}
    plot_pr_curves(curves, tmp_path / "pr.png")
    plot_f1_vs_threshold(curves, tmp_path / "f1.png", chosen_threshold=0.5)
    for name in ("pr.png", "f1.png"):
        width, height = _png_size(tmp_path / name)
        assert 400 <= width <= 1200 and 300 <= height <= 1000
    with pytest.raises(V2IError, match="no curves"):
        plot_pr_curves({}, tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()


def test_grouped_bars_png_grows_with_its_panels(tmp_path):
    stats = {"clear": {"mean": 0.9, "std": 0.02}, "motion_blur": {"mean": 0.6, "std": None}}
    one = {"at 0.3": {"teacher": stats, "baseline": {"clear": {"mean": 0.95, "std": 0.01}}}}
    plot_grouped_bars(one, tmp_path / "one.png", "recall (%)")
    plot_grouped_bars({**one, "at the picked threshold": one["at 0.3"]}, tmp_path / "two.png", "recall (%)")
    (w1, h1), (w2, h2) = _png_size(tmp_path / "one.png"), _png_size(tmp_path / "two.png")
    assert 400 <= w1 < w2 <= 1200 and h1 == h2
    with pytest.raises(V2IError, match="nothing to plot"):
        plot_grouped_bars({"at 0.3": {}}, tmp_path / "empty.png", "recall (%)")
    assert not (tmp_path / "empty.png").exists()
