"""Evaluation figures: valid PNGs of sensible size, and the frames picked as disagreements."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from v2i_core.errors import V2IError
from v2i_core.eval.lesion import Frame, Track, Video, VideoOutcome
from v2i_core.eval.plots import (
    VideoTimeline,
    plot_disagreement_grid,
    plot_f1_vs_threshold,
    plot_grouped_bars,
    plot_pr_curves,
    plot_timelines,
    select_disagreements,
    video_timeline,
    worst_first,
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


def timeline(video: str, n_frames: int, tracks: dict, alarm_frames=()) -> VideoTimeline:
    """A hand-made timeline: tracks {id: (frames, hits)}."""
    made = [Track(video, t, np.array(f), np.array(h, dtype=bool)) for t, (f, h) in tracks.items()]
    return VideoTimeline(VideoOutcome(video, 25.0, n_frames, made, alarms=0), np.array(alarm_frames, dtype=int))


# Badness: frames with a lesion in view and none hit, plus frames with a false alarm.
CALM = timeline("calm", 10, {})  # no lesion, no alarm
BLIND = timeline("blind", 12, {1: ([2, 3, 4, 5], [False] * 4), 2: ([4, 5], [True, True])}, [9])
NOISY = timeline("noisy", 8, {7: ([0, 1, 2], [True, False, True])}, [3, 4])
CLEAN = timeline("clean", 6, {}, [5])


def test_worst_first_counts_missed_and_alarm_frames():
    # blind: frames 2 and 3 have a lesion and none hit (4 and 5 are hit, through lesion 2), plus frame 9's alarm.
    assert [t.badness() for t in (CALM, BLIND, NOISY, CLEAN)] == [0, 3, 3, 1]
    assert worst_first([CALM, BLIND, NOISY, CLEAN]) == [1, 2, 3, 0]  # a tie keeps the given order
    assert worst_first([CALM, NOISY, BLIND]) == [1, 2, 0]
    assert worst_first([]) == []


def test_video_timeline_marks_the_frames_of_false_detections():
    frames = [
        Frame([LESION], ["polyp"], [ON_LESION, BACKGROUND]),  # hit, and a false alarm beside it
        Frame([LESION], ["polyp"], [BACKGROUND]),  # missed, and a false alarm
        Frame(),  # no lesion, nothing shown
        Frame(det_boxes=[BACKGROUND]),  # no lesion, a false alarm
    ]
    made = video_timeline(Video("v", 30.0, frames))
    assert made.alarm_frames.tolist() == [0, 1, 3]
    assert [t.hits.tolist() for t in made.outcome.tracks] == [[True, False]]
    in_view, hit, alarm = made.lanes()
    assert (in_view.tolist(), hit.tolist(), alarm.tolist()) == (
        [True, True, False, False], [True, False, False, False], [True, True, False, True])
    assert made.badness() == 4


def test_timelines_png_shows_the_worst_videos_up_to_the_cap(tmp_path):
    student = [CALM, BLIND, NOISY, CLEAN]
    baseline = [CALM, timeline("blind", 12, {1: ([2, 3, 4, 5], [True] * 4), 2: ([4, 5], [True] * 2)}), NOISY,
                timeline("clean", 6, {})]  # fmt: skip
    models = {"baseline": baseline, "student": student, "student + filter": student}
    plot_timelines(models, tmp_path / "all.png", "student")
    plot_timelines(models, tmp_path / "two.png", "student", max_videos=2)
    (w_all, h_all), (w_two, h_two) = _png_size(tmp_path / "all.png"), _png_size(tmp_path / "two.png")
    assert w_all == w_two >= 800 and 300 <= h_two < h_all <= 2000  # a strip per video drawn

    with pytest.raises(V2IError, match="'baseline' are not of the same videos"):
        plot_timelines({**models, "baseline": baseline[:3]}, tmp_path / "bad.png", "student")
    with pytest.raises(V2IError, match="nothing to plot"):
        plot_timelines(models, tmp_path / "bad.png", "teacher")
    assert not (tmp_path / "bad.png").exists()
