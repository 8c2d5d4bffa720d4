"""`v2i score` and its library: SUN centre-in-box, IoU >= 0.5 and COCO AP against hand-counted cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from v2i_core.cli import main
from v2i_core.errors import V2IError
from v2i_core.eval.score import score_detections, subset_recall, sweep_thresholds


def coco_gt(boxes: dict[int, list[list[float]]]) -> dict:
    """A COCO-VID ground truth: image id -> its boxes (an empty list: a frame without lesion)."""
    return {
        "images": [
            {"id": i, "file_name": f"v/{i:06d}.jpg", "width": 100, "height": 100, "video_id": "v", "frame_id": i}
            for i in boxes
        ],
        "annotations": [{"image_id": i, "category_id": 1, "bbox": b} for i, bs in boxes.items() for b in bs],
        "categories": [{"id": 1, "name": "lesion"}],
    }


def det(image_id: int, bbox: list[float], score: float) -> dict:
    return {"image_id": image_id, "category_id": 1, "bbox": bbox, "score": score}


# Frame 1: two lesions A, B; frame 2: none; frame 3: one lesion, missed; frame 4: none, nothing detected.
SCENE_GT = coco_gt({1: [[10, 10, 20, 20], [50, 50, 10, 10]], 2: [], 3: [[0, 0, 40, 40]], 4: []})
SCENE_DETS = [
    det(1, [12, 12, 10, 10], 0.9),  # centre (17, 17) in A
    det(1, [15, 15, 10, 10], 0.8),  # centre (20, 20) in A again: a second hit, not a false positive
    det(1, [70, 70, 10, 10], 0.7),  # centre (75, 75) in nothing: FP
    det(1, [52, 52, 6, 6], 0.3),  # centre (55, 55) in B, but below 0.5
    det(2, [0, 0, 10, 10], 0.6),  # false alarm on a frame without lesion
    det(2, [0, 0, 10, 10], 0.2),  # the same, below every threshold used below but 0
]


def test_sun_hand_counted_with_empty_frames():
    metrics = score_detections(SCENE_GT, SCENE_DETS, "sun", 0.5)
    # Kept: A hit (twice), d3 and the frame-2 alarm are FP; B and frame 3's lesion missed.
    assert metrics == {
        "protocol": "sun",
        "precision": pytest.approx(1 / 3),
        "recall": pytest.approx(1 / 3),
        "f1": pytest.approx(1 / 3),
        "tp": 1,
        "fp": 2,
        "fn": 2,
    }
    lower = score_detections(SCENE_GT, SCENE_DETS, "sun", 0.25)  # now B is hit too
    assert (lower["tp"], lower["fp"], lower["fn"]) == (2, 2, 1)
    assert lower["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))


def test_subset_recall_counts_only_the_chosen_frames_boxes():
    # at 0.5 frame 1 has A hit and B missed, frame 3's lesion is missed; frame 2's false alarm never counts
    assert subset_recall(SCENE_GT, SCENE_DETS, {1}, 0.5) == pytest.approx(1 / 2)
    assert subset_recall(SCENE_GT, SCENE_DETS, {1, 2}, 0.25) == pytest.approx(1.0)
    assert subset_recall(SCENE_GT, SCENE_DETS, {1, 3}, 0.5) == pytest.approx(1 / 3)
    assert subset_recall(SCENE_GT, SCENE_DETS, {2, 4}, 0.5) is None  # no lesion there: nothing to recall
    assert subset_recall(SCENE_GT, SCENE_DETS, set(), 0.5) is None


def test_sun_centre_on_edge_hits_and_overlap_without_centre_does_not():
    gt = coco_gt({1: [[10, 10, 10, 10]]})
    on_edge = score_detections(gt, [det(1, [16, 16, 8, 8], 0.9)], "sun", 0.5)  # centre (20, 20): corner
    assert (on_edge["tp"], on_edge["fp"], on_edge["fn"]) == (1, 0, 0)
    overlapping = score_detections(gt, [det(1, [15, 15, 12, 12], 0.9)], "sun", 0.5)  # centre (21, 21)
    assert (overlapping["tp"], overlapping["fp"], overlapping["fn"]) == (0, 1, 1)


def test_sun_is_class_agnostic():
    gt = coco_gt({1: [[0, 0, 10, 10]]})
    metrics = score_detections(gt, [{"image_id": 1, "category_id": 7, "bbox": [2, 2, 6, 6], "score": 1.0}], "sun", 0.5)
    assert metrics["tp"] == 1 and metrics["fp"] == 0


def test_nothing_to_find_and_nothing_found_defines_zero():
    metrics = score_detections(coco_gt({1: [], 2: []}), [], "sun", 0.5)
    assert metrics == {"protocol": "sun", "precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "fp": 0, "fn": 0}


def test_iou_variant_duplicates_are_false_positives():
    gt = coco_gt({1: [[0, 0, 10, 10], [20, 0, 10, 10]], 2: []})
    dets = [
        det(1, [0, 0, 10, 10], 0.9),  # IoU 1 with the first box
        det(1, [1, 0, 10, 10], 0.8),  # IoU 0.82 with the first box, already taken: FP
        det(1, [20, 0, 10, 8], 0.7),  # IoU 0.8 with the second box
        det(2, [5, 5, 10, 10], 0.95),  # lesion-free frame: FP
    ]
    iou = score_detections(gt, dets, "iou", 0.5)
    assert (iou["protocol"], iou["tp"], iou["fp"], iou["fn"]) == ("iou", 2, 2, 0)
    assert iou["precision"] == pytest.approx(0.5) and iou["recall"] == pytest.approx(1.0)
    sun = score_detections(gt, dets, "sun", 0.5)  # the duplicate's centre is inside the first box
    assert (sun["tp"], sun["fp"], sun["fn"]) == (2, 1, 0)


def test_iou_greedy_by_score_takes_best_free_box():
    gt = coco_gt({1: [[0, 0, 10, 10], [4, 0, 10, 10]]})  # P and Q
    wide = [3, 0, 10, 10]  # IoU 0.54 with P, 0.82 with Q
    exact_q = [4, 0, 10, 10]  # IoU 0.43 with P, 1 with Q

    first_wide = score_detections(gt, [det(1, exact_q, 0.8), det(1, wide, 0.9)], "iou", 0.5)
    # `wide` goes first and takes Q (its best); `exact_q` finds no free box with IoU >= 0.5.
    assert (first_wide["tp"], first_wide["fp"], first_wide["fn"]) == (1, 1, 1)
    first_exact = score_detections(gt, [det(1, exact_q, 0.9), det(1, wide, 0.8)], "iou", 0.5)
    assert (first_exact["tp"], first_exact["fp"], first_exact["fn"]) == (2, 0, 0)


def _reference_counts(gt: dict, dets: list[dict], protocol: str, threshold: float) -> tuple[int, int, int]:
    """A plain per-frame loop over the DESIGN.md definitions, to check the vectorised code against."""
    tp = fp = fn = 0
    for image in gt["images"]:
        boxes = [a["bbox"] for a in gt["annotations"] if a["image_id"] == image["id"]]
        kept = sorted(
            (d for d in dets if d["image_id"] == image["id"] and d["score"] >= threshold), key=lambda d: -d["score"]
        )
        if protocol == "sun":
            centres = [(d["bbox"][0] + d["bbox"][2] / 2, d["bbox"][1] + d["bbox"][3] / 2) for d in kept]

            def inside(c, b):
                return b[0] <= c[0] <= b[0] + b[2] and b[1] <= c[1] <= b[1] + b[3]

            hit = [any(inside(c, b) for c in centres) for b in boxes]
            tp += sum(hit)
            fn += len(boxes) - sum(hit)
            fp += sum(not any(inside(c, b) for b in boxes) for c in centres)
        else:
            free = set(range(len(boxes)))
            for d in kept:
                ious = {g: _iou(d["bbox"], boxes[g]) for g in free}
                best = max(ious, key=ious.get, default=None)
                if best is not None and ious[best] >= 0.5:
                    free.remove(best)
                    tp += 1
                else:
                    fp += 1
            fn += len(free)
    return tp, fp, fn


def _iou(a, b):
    w = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return w * h / (a[2] * a[3] + b[2] * b[3] - w * h)


def _random_scene(seed: int, frames: int = 60):
    rng = np.random.default_rng(seed)
    boxes = {}
    dets = []
    for i in range(frames):
        n = int(rng.integers(0, 3))  # frames without lesions included
        boxes[i] = [[float(v) for v in (*rng.uniform(0, 60, 2), *rng.uniform(5, 30, 2))] for _ in range(n)]
        for b in boxes[i]:  # jittered detections near each lesion, some good, some loose
            for _ in range(int(rng.integers(0, 3))):
                jitter = rng.normal(0, 4, 4)
                bbox = [b[0] + jitter[0], b[1] + jitter[1], max(1.0, b[2] + jitter[2]), max(1.0, b[3] + jitter[3])]
                dets.append(det(i, bbox, round(float(rng.uniform()), 2)))
        for _ in range(int(rng.integers(0, 2))):  # background false alarms
            dets.append(det(i, [*rng.uniform(0, 80, 2).tolist(), 10.0, 10.0], round(float(rng.uniform()), 2)))
    return coco_gt(boxes), dets


@pytest.mark.parametrize("protocol", ["sun", "iou"])
def test_vectorised_counts_match_a_per_frame_loop(protocol):
    gt, dets = _random_scene(seed=1)
    for threshold in (0.0, 0.3, 0.5, 0.77):
        metrics = score_detections(gt, dets, protocol, threshold)
        assert (metrics["tp"], metrics["fp"], metrics["fn"]) == _reference_counts(gt, dets, protocol, threshold)


@pytest.mark.parametrize("protocol", ["sun", "iou"])
def test_sweep_equals_scoring_each_threshold(protocol):
    gt, dets = _random_scene(seed=2)
    thresholds = [0.0, 0.1, 0.25, 0.5, 0.51, 0.9, 1.0]
    curve = sweep_thresholds(gt, dets, protocol, thresholds)
    assert [point["threshold"] for point in curve] == thresholds
    for point in curve:
        single = score_detections(gt, dets, protocol, point["threshold"])
        assert {k: point[k] for k in ("tp", "fp", "fn")} == {k: single[k] for k in ("tp", "fp", "fn")}
        assert point["f1"] == pytest.approx(single["f1"])
    recalls = [point["recall"] for point in curve]
    assert recalls == sorted(recalls, reverse=True)  # a higher threshold never finds more


def test_sweep_default_grid_has_51_points_and_exact_half():
    curve = sweep_thresholds(SCENE_GT, SCENE_DETS)
    assert len(curve) == 51 and curve[25]["threshold"] == 0.5
    assert curve[25]["tp"] == 1 and curve[25]["fp"] == 2


def test_coco_ap_hand_counted():
    gt = coco_gt({1: [[0, 0, 10, 10]]})
    perfect = score_detections(gt, [det(1, [0, 0, 10, 10], 0.9)], "coco", 0.5)
    assert perfect == pytest.approx({"AP": 1.0, "AP50": 1.0, "AP75": 1.0})
    dets = [det(1, [0, 0, 10, 6.2], 0.9)]  # IoU 0.62: passes 0.50, 0.55, 0.60 of the ten IoU thresholds
    loose = score_detections(gt, dets, "coco", 0.5)
    assert loose == pytest.approx({"AP": 0.3, "AP50": 1.0, "AP75": 0.0})
    assert dets == [det(1, [0, 0, 10, 6.2], 0.9)]  # pycocotools' loadRes did not write into the caller's list


def test_coco_false_alarm_on_lesion_free_frame_halves_ap():
    gt = coco_gt({1: [[0, 0, 10, 10]], 2: []})
    dets = [det(1, [0, 0, 10, 10], 0.9), det(2, [0, 0, 10, 10], 0.95)]  # the false alarm ranks first
    assert score_detections(gt, dets, "coco", 0.5) == pytest.approx({"AP": 0.5, "AP50": 0.5, "AP75": 0.5})


def test_coco_numbers_equal_pycocotools_summarize():
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, dets = _random_scene(seed=3, frames=40)
    gt["categories"].append({"id": 2, "name": "other"})
    for number, ann in enumerate(gt["annotations"], start=1):  # every third lesion of class 2, some large
        ann.update(id=number, area=ann["bbox"][2] * ann["bbox"][3], iscrowd=0, category_id=1 + (number % 3 == 0))
        ann["bbox"][2:] = [v * 3 if number % 4 == 0 else v for v in ann["bbox"][2:]]
    for number, d in enumerate(dets):
        d["category_id"] = 1 + (number % 3 == 0)
    with contextlib.redirect_stdout(io.StringIO()):
        reference = COCO()
        reference.dataset = json.loads(json.dumps(gt))
        reference.createIndex()
        evaluator = COCOeval(reference, reference.loadRes(json.loads(json.dumps(dets))), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    expected = dict(zip(("AP", "AP50", "AP75"), evaluator.stats[:3].tolist(), strict=True))
    assert 0 < expected["AP"] < expected["AP50"] < 1  # a case where the three numbers differ
    assert score_detections(gt, dets, "coco", 0.5) == pytest.approx(expected)


def test_coco_without_detections_is_zero():
    assert score_detections(SCENE_GT, [], "coco", 0.5) == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}


def test_ground_truth_may_be_a_file(tmp_path):
    path = tmp_path / "coco_test.json"
    path.write_text(json.dumps(SCENE_GT))
    assert score_detections(path, SCENE_DETS, "sun", 0.5) == score_detections(SCENE_GT, SCENE_DETS, "sun", 0.5)


@pytest.mark.parametrize(
    ("dets", "message"),
    [
        ([det(9, [0, 0, 1, 1], 0.5)], "not in the ground truth"),
        ([{"image_id": 1, "bbox": [0, 0, 1], "score": 0.5}], "detection 0: 'bbox' must be a list of 4 numbers"),
        ([det(1, [0, 0, 1, 1], 0.5), {"image_id": 1, "bbox": [0, 0, 1, 1]}], "detection 1 has no 'score'"),
        ([det(1, [0, 0, -1, 1], 0.5)], "width and height must be >= 0"),
        ([det(1, [0, 0, 1, 1], float("nan"))], "'score' must be finite"),
        ({"image_id": 1}, "expected a JSON list"),
    ],
)
def test_bad_detections_name_the_problem(dets, message):
    with pytest.raises(V2IError, match=message):
        score_detections(SCENE_GT, dets, "sun", 0.5)


def test_coco_protocol_checks_categories():
    with pytest.raises(V2IError, match="category_id 3, not a category"):
        score_detections(SCENE_GT, [{"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 1.0}], "coco", 0.5)


def test_bad_ground_truth_is_named():
    gt = coco_gt({1: []})
    gt["annotations"] = [{"image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1]}]
    with pytest.raises(V2IError, match="annotation 0 refers to image id 2"):
        score_detections(gt, [], "sun", 0.5)
    with pytest.raises(V2IError, match="image id 1 appears more than once"):
        score_detections({"images": [{"id": 1}, {"id": 1}], "annotations": []}, [], "sun", 0.5)
    with pytest.raises(V2IError, match="protocol 'map'"):
        score_detections(SCENE_GT, [], "map", 0.5)


# --- the `v2i score` verb -------------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path):
    gt, pred = tmp_path / "coco_test.json", tmp_path / "detections.json"
    gt.write_text(json.dumps(SCENE_GT))
    pred.write_text(json.dumps(SCENE_DETS))
    return gt, pred


def test_cli_writes_metrics_and_prints_table(files, tmp_path, capsys):
    gt, pred = files
    out = tmp_path / "report" / "metrics.json"
    argv = ["score", "--params", "", "--gt", str(gt), "--pred", str(pred)]
    assert main([*argv, "--protocol", "sun", "--score-threshold", "0.25", "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics == score_detections(SCENE_GT, SCENE_DETS, "sun", 0.25)
    table = capsys.readouterr().out
    assert "protocol sun, score >= 0.25" in table and "f1" in table and "0.5714" in table
    assert [p.name for p in out.parent.iterdir()] == ["metrics.json"]  # no temporary left beside it


def test_cli_defaults_come_from_params(files, tmp_path):
    gt, pred = files
    params = tmp_path / "params.yaml"
    params.write_text("eval:\n  protocol: iou\n  score_threshold: 0.75\n")
    out = tmp_path / "metrics.json"
    assert main(["score", "--params", str(params), "--gt", str(gt), "--pred", str(pred), "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == score_detections(SCENE_GT, SCENE_DETS, "iou", 0.75)
    coco_out = tmp_path / "coco.json"
    argv = ["score", "--params", str(params), "--gt", str(gt), "--pred", str(pred), "--protocol", "coco"]
    assert main([*argv, "--out", str(coco_out)]) == 0
    assert set(json.loads(coco_out.read_text())) == {"AP", "AP50", "AP75"}


@pytest.mark.parametrize(
    ("content", "which", "message"),
    [
        (json.dumps([det(99, [0, 0, 1, 1], 0.5)]), "pred", "1 detection(s) have image ids not in the ground truth"),
        ('[{"image_id": 1,', "pred", "not valid JSON"),
        (None, "pred", "no such file"),
        ('{"images": [], "annotations": 3}', "gt", "'annotations' must be a list"),
    ],
)
def test_cli_bad_input_one_line_error_and_no_output(files, tmp_path, capsys, content, which, message):
    gt, pred = files
    bad = pred if which == "pred" else gt
    if content is None:
        bad.unlink()
    else:
        bad.write_text(content)
    out = tmp_path / "out" / "metrics.json"
    argv = ["score", "--params", "", "--gt", str(gt), "--pred", str(pred), "--out", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and message in err
    assert not out.exists() and not out.parent.exists()


def _coco_vid() -> dict:
    """Two videos at 25 fps: one with two lesions over four frames, one without a lesion."""
    images = [{"id": i + 1, "video_id": 1, "frame_id": i, "width": 64, "height": 64} for i in range(4)]
    images += [{"id": 5 + i, "video_id": 2, "frame_id": i, "width": 64, "height": 64} for i in range(3)]
    boxes = [(1, 1, [10, 10, 8, 8]), (2, 1, [11, 10, 8, 8]), (3, 1, [12, 10, 8, 8]), (3, 2, [40, 40, 6, 6]),
             (4, 2, [41, 40, 6, 6])]  # fmt: skip
    annotations = [{"id": n + 1, "image_id": image, "instance_id": track, "category_id": 1, "bbox": bbox,
                    "area": bbox[2] * bbox[3], "iscrowd": 0}
                   for n, (image, track, bbox) in enumerate(boxes)]  # fmt: skip
    videos = [{"id": 1, "name": "a", "fps": 25.0}, {"id": 2, "name": "b", "fps": 25.0}]
    return {"images": images, "annotations": annotations, "videos": videos,
            "categories": [{"id": 1, "name": "polyp"}]}  # fmt: skip


def test_lesion_protocol_of_the_ground_truth_against_itself_is_perfect():
    gt = _coco_vid()
    perfect = [{"image_id": a["image_id"], "bbox": a["bbox"], "score": 1.0, "category_id": 1}
               for a in gt["annotations"]]
    metrics = score_detections(gt, perfect, "lesion", 0.5)
    assert (metrics["lesions"], metrics["lesion_sensitivity"], metrics["false_alarms"]) == (2, 1.0, 0)
    assert metrics["delay_median_frames"] == 0 and metrics["flicker_switches"] == 0
    assert metrics["minutes"] == pytest.approx(7 / 25 / 60)  # the lesion-free video counts in the minutes


def test_lesion_protocol_counts_a_missed_lesion_and_an_alarm_below_and_above_the_threshold():
    gt = _coco_vid()
    found = [{"image_id": 2, "bbox": [11, 10, 8, 8], "score": 0.9, "category_id": 1},  # lesion 1, one frame late
             {"image_id": 6, "bbox": [30, 30, 5, 5], "score": 0.8, "category_id": 1},  # an alarm where no lesion is
             {"image_id": 4, "bbox": [41, 40, 6, 6], "score": 0.2, "category_id": 1}]  # lesion 2, below threshold
    metrics = score_detections(gt, found, "lesion", 0.5)
    assert (metrics["lesions_found"], metrics["missed_lesions"], metrics["false_alarms"]) == (1, 1, 1)
    assert metrics["delay_median_frames"] == 1 and metrics["delay_median_s"] == pytest.approx(1 / 25)
    assert score_detections(gt, found, "lesion", 0.1)["lesions_found"] == 2
    assert score_detections(gt, found, "lesion", 0.5, min_hits=2)["lesions_found"] == 0
