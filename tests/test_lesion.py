"""Lesion-level metrics (v2i_core.eval.lesion) against hand-counted tracks, alarms and videos."""

from __future__ import annotations

import numpy as np
import pytest

from v2i_core.errors import V2IError
from v2i_core.eval.lesion import Frame, Video, count_alarms, lesion_metrics, match_video

FPS = 10  # one frame = 0.1 s; 600 frames = one minute
A = [10, 10, 20, 20]  # lesion "a"; a detection with this box hits it
B = [50, 50, 20, 20]  # lesion "b"
FAR = [80, 0, 10, 10]  # overlaps no lesion: a detection here is a false one


def frame(gt: dict | None = None, dets: list | None = None) -> Frame:
    """A frame from {track id: box} and a list of detection boxes."""
    gt = gt or {}
    return Frame(gt_boxes=list(gt.values()), gt_tracks=list(gt), det_boxes=dets or [])


def video(frames: list[Frame], fps: float = FPS, name: str = "v") -> Video:
    return Video(name, fps, frames)


def test_a_track_never_hit_is_missed_and_has_no_delay():
    metrics = lesion_metrics([video([frame({"a": A}) for _ in range(5)])])
    assert metrics["lesions"] == 1
    assert metrics["lesions_found"] == 0
    assert metrics["missed_lesions"] == 1
    assert metrics["lesion_sensitivity"] == 0.0
    assert metrics["delay_median_frames"] is None
    assert metrics["delay_p90_s"] is None
    assert metrics["flicker_switches"] == 0
    assert metrics["flicker_per_lesion_min"] == 0.0
    assert metrics["false_alarms"] == 0


def test_a_track_hit_from_frame_3_has_a_delay_of_3_frames():
    frames = [frame({"a": A}, [A] if i >= 3 else []) for i in range(6)]
    metrics = lesion_metrics([video(frames)])
    assert metrics["lesion_sensitivity"] == 1.0
    assert metrics["delay_median_frames"] == 3
    assert metrics["delay_p90_frames"] == 3
    assert metrics["delay_median_s"] == pytest.approx(0.3)
    assert metrics["flicker_switches"] == 0  # miss -> hit is not a flicker


def test_an_alarm_spanning_several_frames_counts_once():
    drifting = [[80 + i, 0, 10, 10] for i in range(4)]  # the same false box moving 1 px per frame
    frames = [frame({}, [box]) for box in drifting]
    metrics = lesion_metrics([video(frames)])
    assert metrics["false_alarms"] == 1
    assert metrics["minutes"] == pytest.approx(4 / FPS / 60)
    assert metrics["false_alarms_per_min"] == pytest.approx(1 / (4 / FPS / 60))
    assert metrics["lesions"] == 0
    assert metrics["lesion_sensitivity"] is None
    assert metrics["flicker_per_lesion_min"] is None


def test_separate_alarms_in_time_and_in_space():
    # FAR in frames 0-1, nothing in frame 2, FAR again in frame 3: two alarms.
    gap = [frame({}, [FAR]), frame({}, [FAR]), frame(), frame({}, [FAR])]
    assert lesion_metrics([video(gap)])["false_alarms"] == 2
    # Two non-overlapping false boxes in the same frames: two alarms.
    side_by_side = [frame({}, [FAR, [0, 80, 10, 10]]) for _ in range(3)]
    assert lesion_metrics([video(side_by_side)])["false_alarms"] == 2
    # Consecutive but not overlapping (IoU < 0.1): two alarms.
    jump = [frame({}, [[0, 0, 10, 10]]), frame({}, [[9, 0, 10, 10]])]  # IoU 1/19
    assert lesion_metrics([video(jump)])["false_alarms"] == 2


def test_alarms_linked_through_a_shared_box_are_one():
    # Frame 0: two boxes; frame 1: one box overlapping both -> one connected alarm.
    boxes = np.array([[0, 0, 10, 10], [10, 0, 10, 10], [5, 0, 10, 10]], dtype=float)
    assert count_alarms(boxes, np.array([0, 0, 1]), 2) == 1
    assert count_alarms(boxes[:2], np.array([0, 0]), 1) == 2
    assert count_alarms(np.zeros((0, 4)), np.zeros(0, dtype=int), 3) == 0


def test_a_detection_on_a_lesion_is_no_alarm_even_twice():
    frames = [frame({"a": A}, [A, [12, 12, 10, 10]])]  # both centres inside A (SUN rule)
    metrics = lesion_metrics([video(frames)])
    assert metrics["false_alarms"] == 0
    assert metrics["lesion_sensitivity"] == 1.0


def test_a_video_without_lesion_adds_minutes_and_alarms():
    with_lesion = video([frame({"a": A}, [A]) for _ in range(600)], name="one-minute")
    without = video([frame({}, [FAR] if i < 5 else []) for i in range(1200)], name="two-minutes")
    metrics = lesion_metrics([with_lesion, without])
    assert metrics["minutes"] == pytest.approx(3.0)
    assert metrics["false_alarms"] == 1
    assert metrics["false_alarms_per_min"] == pytest.approx(1 / 3)
    assert metrics["lesions"] == 1
    assert metrics["lesion_sensitivity"] == 1.0
    assert metrics["lesion_minutes"] == pytest.approx(1.0)


def test_k_frames_needed_to_find_a_lesion():
    # a: hit in one frame (3); b: hit in two frames (1, 4).
    hits = {"a": {3}, "b": {1, 4}}
    frames = [
        frame({"a": A, "b": B}, [box for track, box in (("a", A), ("b", B)) if i in hits[track]]) for i in range(6)
    ]
    one = lesion_metrics([video(frames)], k=1)
    assert (one["lesions_found"], one["missed_lesions"]) == (2, 0)
    assert one["delay_median_frames"] == pytest.approx(2.0)  # delays 3 and 1
    two = lesion_metrics([video(frames)], k=2)
    assert (two["lesions_found"], two["missed_lesions"]) == (1, 1)
    assert two["lesion_sensitivity"] == 0.5
    assert two["delay_median_frames"] == 1  # only b is found; its delay is to its first hit
    assert lesion_metrics([video(frames)], k=3)["lesions_found"] == 0


def test_a_track_that_leaves_and_returns_is_one_lesion_and_flickers_only_in_view():
    # In view 0-2 (hit), out of view 3-4, back 5-7: 5 missed, 6 hit, 7 missed.
    hit = {0, 1, 2, 6}
    frames = [frame({"a": A} if i not in (3, 4) else {}, [A] if i in hit else []) for i in range(8)]
    outcome = match_video(video(frames))
    assert len(outcome.tracks) == 1
    assert outcome.tracks[0].frames.tolist() == [0, 1, 2, 5, 6, 7]
    assert outcome.tracks[0].hits.tolist() == [True, True, True, False, True, False]
    metrics = lesion_metrics([video(frames)])
    assert metrics["lesions"] == 1
    assert metrics["flicker_switches"] == 1  # 6 -> 7; 2 -> 5 crosses frames out of view
    assert metrics["lesion_minutes"] == pytest.approx(6 / FPS / 60)
    assert metrics["flicker_per_lesion_min"] == pytest.approx(1 / (6 / FPS / 60))


def test_delay_counts_the_frames_a_lesion_was_out_of_view():
    # In view 0-1 (missed), out of view 2-4, back at 5 and hit: 5 frames after it first appeared.
    frames = [frame({"a": A} if i not in (2, 3, 4) else {}, [A] if i == 5 else []) for i in range(6)]
    assert lesion_metrics([video(frames)])["delay_median_frames"] == 5


def test_delay_quantiles_over_videos_of_different_frame_rates():
    def delayed(delay: int, fps: float) -> Video:
        return video([frame({"a": A}, [A] if i >= delay else []) for i in range(12)], fps=fps)

    videos = [delayed(0, 10), delayed(1, 10), delayed(2, 5), delayed(3, 10), delayed(10, 5)]
    metrics = lesion_metrics(videos)
    # Frames 0, 1, 2, 3, 10: median 2; p90 at rank 0.9 * 4 = 3.6 -> 3 + 0.6 * (10 - 3).
    assert metrics["delay_median_frames"] == 2
    assert metrics["delay_p90_frames"] == pytest.approx(7.2)
    # Seconds 0, 0.1, 0.4, 0.3, 2.0 -> sorted 0, 0.1, 0.3, 0.4, 2.0.
    assert metrics["delay_median_s"] == pytest.approx(0.3)
    assert metrics["delay_p90_s"] == pytest.approx(0.4 + 0.6 * 1.6)


def test_two_lesions_in_one_frame_are_scored_apart():
    frames = [frame({"a": A, "b": B}, [A]) for _ in range(3)]
    metrics = lesion_metrics([video(frames)])
    assert (metrics["lesions"], metrics["lesions_found"]) == (2, 1)


def test_track_ids_are_per_video():
    one = video([frame({1: A}, [A])], name="x")
    other = video([frame({1: A})], name="y")
    assert lesion_metrics([one, other])["lesions"] == 2


def test_the_hit_rule_is_the_frame_protocols():
    # Centre (20, 20) inside A, but IoU with A = 4 / 400: a hit under sun, not under iou.
    small = [18, 18, 4, 4]
    frames = [frame({"a": A}, [small])]
    sun = lesion_metrics([video(frames)])
    assert (sun["lesions_found"], sun["false_alarms"]) == (1, 0)
    iou = lesion_metrics([video(frames)], protocol="iou")
    assert (iou["lesions_found"], iou["false_alarms"]) == (0, 1)


@pytest.mark.parametrize("protocol", ["sun", "iou"])
def test_ground_truth_against_itself_is_perfect(protocol):
    rng = np.random.default_rng(0)
    videos = []
    for v in range(3):
        frames = []
        for i in range(40):
            gt = {t: [10 + 30 * t + rng.uniform(-2, 2), 10, 20, 20] for t in range(3) if (i + 7 * t + v) % 13 < 9}
            frames.append(frame(gt, list(gt.values())))
        videos.append(video(frames, fps=5 + v, name=f"v{v}"))
    videos.append(video([frame() for _ in range(30)], name="empty"))
    metrics = lesion_metrics(videos, protocol=protocol)
    assert metrics["lesions"] == 9
    assert metrics["lesion_sensitivity"] == 1.0
    assert metrics["false_alarms"] == 0
    assert metrics["false_alarms_per_min"] == 0.0
    assert metrics["delay_median_frames"] == metrics["delay_p90_frames"] == 0
    assert metrics["delay_p90_s"] == 0
    assert metrics["flicker_switches"] == 0
    assert metrics["flicker_per_lesion_min"] == 0.0


def test_no_video_gives_none_for_every_ratio():
    metrics = lesion_metrics([])
    assert metrics["lesions"] == metrics["false_alarms"] == 0
    ratios = ["lesion_sensitivity", "false_alarms_per_min", "delay_median_frames", "delay_median_s"]
    assert all(metrics[name] is None for name in ratios + ["flicker_per_lesion_min"])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Video("clip", 0, []), "video 'clip': fps must be a positive number"),
        (lambda: Video("clip", FPS, [Frame(gt_boxes=[[1, 2, 3]], gt_tracks=[1])]), "video 'clip' frame 0: gt_boxes"),
        (lambda: Video("clip", FPS, [Frame(gt_boxes=[A], gt_tracks=[])]), "0 gt_tracks for 1 gt_boxes"),
        (lambda: Video("clip", FPS, [Frame(det_boxes=[A], det_scores=[1, 2])]), "2 det_scores for 1 det_boxes"),
        (lambda: Video("clip", FPS, [frame(), frame({}, [[0, 0, -1, 5]])]), "frame 1: box width and height"),
        (lambda: Video("clip", FPS, [Frame(gt_boxes=[A], gt_tracks=[[1]])]), "track id [1]"),
        (lambda: lesion_metrics([], k=0), "k must be an integer >= 1"),
        (lambda: lesion_metrics([video([frame()])], protocol="coco"), "protocol 'coco'"),
    ],
)
def test_bad_input_is_one_clear_error(make, message):
    with pytest.raises(V2IError, match=message.replace("[", r"\[").replace("]", r"\]")):
        make()
