"""`v2i bench filter`: the filter's grid, and the identity setting reproduces the raw lesion figures."""

from v2i_bench.filter_sweep import settings, sweep
from v2i_core.eval.score import score_detections


def _video(blips: bool) -> tuple[dict, list[dict]]:
    """One 25 fps video of 10 frames with a lesion throughout, found from frame 2; with `blips`, a one-frame false
    box every third frame."""
    images = [{"id": i + 1, "video_id": 1, "frame_id": i, "width": 64, "height": 64} for i in range(10)]
    annotations = [{"id": i + 1, "image_id": i + 1, "instance_id": 1, "category_id": 1, "bbox": [10, 10, 10, 10],
                    "area": 100, "iscrowd": 0} for i in range(10)]  # fmt: skip
    gt = {"images": images, "annotations": annotations, "videos": [{"id": 1, "name": "v", "fps": 25.0}],
          "categories": [{"id": 1, "name": "polyp"}]}  # fmt: skip
    dets = [{"image_id": i + 1, "bbox": [10, 10, 10, 10], "score": 0.9, "category_id": 1} for i in range(2, 10)]
    if blips:
        dets += [{"image_id": i + 1, "bbox": [40, 40, 8, 8], "score": 0.9, "category_id": 1} for i in range(0, 10, 3)]
    return gt, dets


def test_the_grid_starts_with_the_identity_and_keeps_k_within_n():
    grid = settings()
    assert (grid[0].k, grid[0].n, grid[0].hold) == (1, 1, 0)
    assert all(cfg.k <= cfg.n for cfg in grid) and len({(c.k, c.n, c.hold) for c in grid}) == len(grid)


def test_the_identity_row_is_the_raw_figures_and_k2_removes_one_frame_blips():
    gt, dets = _video(blips=True)
    rows = sweep(gt, dets, threshold=0.5, min_hits=1)
    assert rows[0][1] == score_detections(gt, dets, "lesion", 0.5)
    assert rows[0][1]["false_alarms"] == 4
    k2 = next(figures for cfg, figures in rows if (cfg.k, cfg.n, cfg.hold) == (2, 3, 0))
    assert k2["false_alarms"] == 0 and k2["lesion_sensitivity"] == 1.0
    assert k2["delay_median_frames"] == rows[0][1]["delay_median_frames"] + 1  # k-1 frames of latency
