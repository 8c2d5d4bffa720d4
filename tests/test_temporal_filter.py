"""The causal temporal filter (v2i_core.temporal_filter): k of n, hold, latency, and never a future frame."""

from __future__ import annotations

import numpy as np
import pytest

from v2i_core.errors import V2IError
from v2i_core.eval.lesion import Frame, Video, lesion_metrics
from v2i_core.temporal_filter import CausalFilter, filter_video

POLYP = [10, 10, 20, 20]
ELSEWHERE = [70, 70, 20, 20]


def det(box, score: float = 0.9) -> dict:
    return {"bbox": list(box), "score": score, "category": "polyp"}


def shown_frames(output: list[list[dict]]) -> list[int]:
    """The frames where anything is shown."""
    return [t for t, shown in enumerate(output) if shown]


def random_video(rng: np.random.Generator, n_frames: int) -> list[list[dict]]:
    """Frames mixing a few persistent, jittering objects that come and go with one-frame blips."""
    homes = rng.uniform(0, 200, size=(3, 2))
    frames = []
    for _ in range(n_frames):
        dets = [
            det([*(home + rng.normal(0, 2, 2)), 30, 30], float(rng.uniform(0.3, 1)))
            for home in homes
            if rng.random() < 0.6
        ]
        dets += [det([*rng.uniform(0, 200, 2), 20, 20]) for _ in range(rng.poisson(0.5))]
        rng.shuffle(dets)
        frames.append(dets)
    return frames


def test_k1_n1_hold0_is_the_identity():
    frames = random_video(np.random.default_rng(1), 60)
    output = filter_video(frames, k=1, n=1, hold=0)
    assert all(shown == dets for shown, dets in zip(output, frames, strict=True))
    assert CausalFilter(1, 1, 0).latency_frames == 0


def test_a_one_frame_blip_is_suppressed_with_k2():
    frames = [[det(POLYP)] for _ in range(6)]
    frames[3].append(det(ELSEWHERE))  # a false box for one frame
    output = filter_video(frames, k=2, n=3, hold=0)
    assert all(det(ELSEWHERE) not in shown for shown in output)
    assert output[0] == []  # the polyp waits for its second sighting ...
    assert all(shown == [det(POLYP)] for shown in output[1:])  # ... then stays


@pytest.mark.parametrize(("k", "n"), [(1, 1), (2, 2), (2, 4), (3, 5), (4, 4)])
def test_an_object_detected_from_frame_t_is_shown_from_t_plus_latency(k, n):
    t = 5
    frames = [[] for _ in range(t)] + [[det(POLYP)] for _ in range(10)]
    temporal = CausalFilter(k, n, hold=0)
    output = [temporal.update(dets) for dets in frames]
    assert temporal.latency_frames == k - 1
    assert shown_frames(output) == list(range(t + k - 1, len(frames)))


def test_k_of_n_counts_sightings_within_the_window():
    seen_at = {0: [0, 2], 1: [0, 3]}  # within 3 frames / spread over 4
    for case, frames_seen in seen_at.items():
        frames = [[det(POLYP)] if t in frames_seen else [] for t in range(4)]
        output = filter_video(frames, k=2, n=3, hold=0)
        assert shown_frames(output) == ([2] if case == 0 else [])


def test_a_short_gap_is_bridged_by_hold_with_the_last_box():
    moving = [[det([10 + t, 10, 20, 20])] for t in range(5)]  # frames 0-4, drifting right
    frames = moving + [[], []] + [[det([20, 10, 20, 20])] for _ in range(3)]  # gap at 5-6, back at 7-9
    output = filter_video(frames, k=2, n=3, hold=2)
    assert shown_frames(output) == list(range(1, 10))
    assert output[5] == output[6] == [det([14, 10, 20, 20])]  # the box of frame 4, held
    assert output[7] == [det([20, 10, 20, 20])]  # back: shown at once, not re-counted


def test_a_gap_longer_than_hold_is_not_bridged():
    frames = [[det(POLYP)] for _ in range(5)] + [[], []] + [[det(POLYP)] for _ in range(3)]
    output = filter_video(frames, k=2, n=3, hold=1)
    assert shown_frames(output) == [1, 2, 3, 4, 5, 8, 9]  # held at 5; at 7 it must be seen twice again


def test_hold_outlasts_the_window():
    frames = [[det(POLYP)] for _ in range(3)] + [[] for _ in range(5)]
    assert shown_frames(filter_video(frames, k=2, n=2, hold=4)) == [1, 2, 3, 4, 5, 6]


def test_an_unshown_object_is_not_held():
    frames = [[det(ELSEWHERE)], [], []]
    assert shown_frames(filter_video(frames, k=2, n=2, hold=5)) == []


def test_objects_are_followed_apart():
    frames = [[det(POLYP), det(ELSEWHERE)] if t % 2 == 0 else [det(POLYP)] for t in range(6)]
    output = filter_video(frames, k=3, n=3, hold=0)
    # The polyp is seen every frame: shown from frame 2. ELSEWHERE only every other frame: 2 of 3 at most.
    assert [len(shown) for shown in output] == [0, 0, 1, 1, 1, 1]
    assert all(shown == [det(POLYP)] for shown in output[2:])


def test_association_takes_the_best_overlap_first():
    left, right = [0, 0, 20, 20], [12, 0, 20, 20]  # IoU 0.25: two objects
    frames = [[det(left)], [det(left)], [det(left), det(right)]]
    # Frame 3: each new box overlaps both objects, but `near_left` overlaps `left` best (0.82 vs 0.33).
    near_right, near_left = [10, 0, 20, 20], [2, 0, 20, 20]
    output = filter_video([*frames, [det(near_right), det(near_left)]], k=3, n=3, hold=0)
    assert output[2] == [det(left)]
    assert output[3] == [det(near_left)]  # continues `left`, shown; `right` has 2 sightings of 3


@pytest.mark.parametrize(("k", "n", "hold"), [(1, 1, 0), (2, 3, 2), (3, 5, 1), (2, 2, 4)])
def test_output_for_frame_t_never_depends_on_later_frames(k, n, hold):
    rng = np.random.default_rng(k * 100 + n * 10 + hold)
    for _ in range(20):
        frames = random_video(rng, 30)
        t = int(rng.integers(0, 30))
        changed = frames[: t + 1] + random_video(rng, 30 - t - 1)
        before = filter_video(frames, k, n, hold)
        after = filter_video(changed, k, n, hold)
        assert before[: t + 1] == after[: t + 1]
        assert any(shown for shown in before)  # the case is not vacuous


def test_the_filter_removes_a_blip_alarm_and_delays_by_its_latency():
    """Composes with the lesion metrics: one blip alarm fewer, the first hit k - 1 frames later."""
    gt = [{"a": POLYP} for _ in range(10)]
    frames = [[det(POLYP)] for _ in range(10)]
    frames[6].append(det(ELSEWHERE))

    def metrics(dets: list[list[dict]]) -> dict:
        video = Video(
            "v",
            10,
            [
                Frame(list(g.values()), list(g), [d["bbox"] for d in ds], [d["score"] for d in ds])
                for g, ds in zip(gt, dets, strict=True)
            ],
        )
        return lesion_metrics([video])

    raw, filtered = metrics(frames), metrics(filter_video(frames, k=3, n=3, hold=0))
    assert (raw["false_alarms"], filtered["false_alarms"]) == (1, 0)
    assert (raw["delay_median_frames"], filtered["delay_median_frames"]) == (0, 2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 1, 0), "k must be an integer >= 1"),
        ((2, 1, 0), r"k \(2\) must be <= n \(1\)"),
        ((1, 1, -1), "hold must be an integer >= 0"),
        ((1.5, 2, 0), "k must be an integer"),
        ((1, 1, 0, 0.0), r"iou_threshold must be in \(0, 1\]"),
    ],
)
def test_bad_parameters_are_one_clear_error(args, message):
    with pytest.raises(V2IError, match=message):
        CausalFilter(*args)
