"""The student's F1 gain and its 95% interval over test videos (paired bootstrap), against hand-counted cases."""

from __future__ import annotations

import pytest

from v2i_core.eval.gain import f1_gain_interval, video_counts
from v2i_core.eval.report import gain_line
from v2i_core.eval.score import read_ground_truth

BOX = [10.0, 10.0, 20.0, 20.0]  # a lesion; a detection of the same box hits it (its centre is inside)
ELSEWHERE = [60.0, 60.0, 10.0, 10.0]  # a false alarm


def ground_truth(videos: int, frames: int = 2) -> dict:
    """`videos` videos of `frames` frames, one lesion box in each frame."""
    images, annotations = [], []
    for v in range(videos):
        for f in range(frames):
            image_id = v * frames + f + 1
            images.append({"id": image_id, "file_name": f"v{v}/{f}.jpg", "width": 100, "height": 100,
                           "video_id": v + 1, "frame_id": f})  # fmt: skip
            annotations.append({"id": image_id, "image_id": image_id, "category_id": 1, "bbox": BOX, "area": 400.0,
                                "iscrowd": 0})  # fmt: skip
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "lesion"}]}


def detect(image_ids, box=BOX, score=0.9) -> list[dict]:
    return [{"image_id": i, "category_id": 1, "bbox": box, "score": score} for i in image_ids]


def test_counts_are_summed_per_video():
    gt = ground_truth(videos=2)  # video 1: images 1, 2; video 2: images 3, 4
    detections = detect([1, 2, 3]) + detect([4], ELSEWHERE) + detect([2], ELSEWHERE, score=0.1)  # last: below 0.3
    counts = video_counts(read_ground_truth(gt), detections, threshold=0.3)
    assert counts.tolist() == [[2, 0, 0], [1, 1, 1]]  # TP, FP, FN


def test_the_same_detections_gain_nothing_with_no_spread():
    gt = ground_truth(videos=5)
    detections = detect([1, 3, 5, 7, 9])
    result = f1_gain_interval(gt, detections, detections, 0.3)
    assert result == {"f1_gain": 0.0, "f1_gain_ci95": [0.0, 0.0], "videos": 5}


def test_a_gain_on_every_video_lies_outside_zero_and_one_video_alone_does_not():
    gt = ground_truth(videos=6)
    every_frame, first_frames = detect(range(1, 13)), detect(range(1, 13, 2))
    everywhere = f1_gain_interval(gt, every_frame, first_frames, 0.3)
    assert everywhere["f1_gain"] == pytest.approx(1 - 2 / 3)  # F1 1 against 2*6/(2*6+6)
    assert everywhere["f1_gain_ci95"] == pytest.approx([1 / 3, 1 / 3])  # every draw the same gain
    # the student finds one more box in one video only: draws without that video show no gain
    one_video = f1_gain_interval(gt, first_frames + detect([2]), first_frames, 0.3)
    low, high = one_video["f1_gain_ci95"]
    assert low == 0.0 < one_video["f1_gain"] < high


def test_one_video_gives_no_interval():
    gt = ground_truth(videos=1)
    assert f1_gain_interval(gt, detect([1, 2]), detect([1]), 0.3) is None


def test_the_gain_line_says_whether_the_gain_is_inside_the_spread():
    def entry(role, f1):
        return {"role": role, "manner": "I", "arch": "deformable_detr", "f1": f1, "AP50": 0.5}

    metrics = {"models": {"baseline": entry("baseline", 0.60), "student": entry("student", 0.62)},
               "gain": {"f1_gain": 0.02, "f1_gain_ci95": [-0.031, 0.072], "videos": 10}}  # fmt: skip
    metrics["models"]["student"]["AP50"] = 0.51
    assert gain_line(metrics) == (
        "Student vs baseline: F1 +2.0 (95% interval over the 10 test videos -3.1 to +7.2: inside what another draw "
        "of videos moves), AP50 +1.0 points."
    )
    metrics["gain"]["f1_gain_ci95"] = [0.004, 0.05]
    assert "+0.4 to +5.0: outside it)" in gain_line(metrics)
