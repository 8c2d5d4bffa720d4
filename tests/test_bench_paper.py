"""`v2i bench paper`: the table arithmetic on hand-made numbers, the run plan, each row's configs from the stage
sections, and one tiny end-to-end benchmark (both datasets, one seed, two workers; every row but SAM-DETR's, then
those added) that the later tests share: resumed without training anything again, rescored, scored on a fresh draw
of videos."""

from __future__ import annotations

import json
import os
import re
import statistics
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from tests.conftest import TINY_MODEL
from v2i_bench import fresh_draw, speed
from v2i_bench.cli import build_parser, main
from v2i_bench.config import DATASETS, ROW_NAMES, load_bench
from v2i_bench.paper import (
    THRESHOLDS,
    Run,
    command_line,
    needed_runs,
    plan_runs,
    run_settings,
    waited_on_first,
)
from v2i_bench.paper_data import (
    APART_SPLIT,
    TestSet,
    counts_by_video,
    frame_counts,
    prepare_data,
    prepare_test,
    recall_by_kind,
    split_test_set,
)
from v2i_bench.paper_tables import (
    ABLATION_ROWS,
    COCO_KEYS,
    MAIN_ROWS,
    ROWS,
    SUN_KEYS,
    ablation_table,
    aggregate,
    distillation_gaps,
    format_delta,
    format_stat,
    gap_table,
    kind_table,
    main_table,
    mean_spread,
    median_interval,
    speed_ratio_ranges,
    speed_ratios,
    speed_table,
    video_resampled_gaps,
)
from v2i_core.config import SpeedConfig, load_params
from v2i_core.engine.model_dir import load_model_dir
from v2i_core.engine.predict import dataset_for, predict_dataset
from v2i_core.errors import V2IError
from v2i_core.eval.score import score_detections, subset_recall, sweep_thresholds
from v2i_core.tracking import EXPERIMENT

# ---- aggregation and formatting ----


def test_mean_and_sample_spread():
    mean, std = mean_spread([0.80, 0.84, 0.88])
    assert mean == pytest.approx(0.84)
    assert std == pytest.approx(0.04)  # sample (n - 1) deviation; the population one would be 0.0327
    assert mean_spread([0.5]) == (0.5, None)


def test_aggregate_orders_values_by_seed_and_formats_percentages():
    per_seed = {2: {"f1": 0.9, "AP": 0.30}, 0: {"f1": 0.7, "AP": 0.10}, 1: {"f1": 0.8, "AP": 0.20}}
    agg = aggregate(per_seed, ("f1", "AP"))
    assert agg["f1"]["values"] == [0.7, 0.8, 0.9]
    assert format_stat(agg["f1"]) == "80.0 ± 10.0"
    assert format_stat(agg["AP"]) == "20.0 ± 10.0"
    assert format_stat(aggregate({0: {"f1": 0.8444}}, ("f1",))["f1"]) == "84.4"  # one seed: no spread to show


def test_a_metric_some_seed_lacks_is_left_out_and_shown_as_not_run():
    keys = ("f1", "hard_recall")
    aggregates = {
        "teacher": aggregate({0: {"f1": 0.9, "hard_recall": 0.8}, 1: {"f1": 0.7, "hard_recall": 0.6}}, keys),
        "deformable": aggregate({0: {"f1": 0.8, "hard_recall": 0.5}, 1: {"f1": 0.6, "hard_recall": None}}, keys),
    }
    assert "hard_recall" not in aggregates["deformable"] and aggregates["deformable"]["f1"]["mean"] == 0.7
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in main_table(aggregates, None, keys).splitlines()]
    assert cells[0][2:4] == ["F1", "Recall (hard)"]
    assert cells[2][2:4] == ["80.0 ± 14.1", "70.0 ± 14.1"] and cells[3][2:4] == ["70.0 ± 14.1", "–"]


def test_delta_in_points_with_its_direction():
    assert format_delta(0.851, 0.836) == "↑ 1.5"
    assert format_delta(0.832, 0.836) == "↓ 0.4"
    assert format_delta(0.671, 0.671) == "↑ 0.0"


def _agg(**rows: tuple[float, float, float]) -> dict:
    """Aggregates of one seed per row from (precision, recall, f1)."""
    return {name: aggregate({0: dict(zip(SUN_KEYS, values, strict=True))}, SUN_KEYS) for name, values in rows.items()}


def test_ablation_table_gives_each_row_its_change_against_row_1():
    # Table III of the paper, from its precision / recall / F1 columns
    table = ablation_table(
        _agg(
            deformable=(0.836, 0.671, 0.744),
            tfd=(0.851, 0.725, 0.783),
            tfd_msi=(0.883, 0.745, 0.808),
            tfd_cqd=(0.895, 0.752, 0.817),
            deformable_v2i=(0.912, 0.763, 0.831),
        )
    )
    lines = table.splitlines()[2:]
    assert [line.split("|")[1].strip() for line in lines] == ["1", "2", "3", "4", "5"]
    assert "baseline" in lines[0] and "↑" not in lines[0]
    assert "85.1 ↑ 1.5" in lines[1] and "72.5 ↑ 5.4" in lines[1] and "78.3 ↑ 3.9" in lines[1]
    assert "91.2 ↑ 7.6" in lines[4] and "83.1 ↑ 8.7" in lines[4]
    ticks = [[c.strip() for c in line.split("|")[2:5]] for line in lines[1:]]
    assert ticks == [["✓", "", ""], ["✓", "✓", ""], ["✓", "", "✓"], ["✓", "✓", "✓"]]


def test_ablation_table_without_row_1_shows_no_deltas():
    table = ablation_table(_agg(tfd=(0.851, 0.725, 0.783)))
    assert "85.1" in table and "↑" not in table and "↓" not in table


def test_kind_table_lists_models_in_table_order_and_marks_a_kind_a_model_lacks():
    per_row = {
        "deformable": {"clear": {"mean": 0.9, "std": 0.01}, "motion_blur": {"mean": 0.5, "std": 0.1}},
        "teacher": {"clear": {"mean": 0.92, "std": 0.02}},
    }
    lines = kind_table(per_row).splitlines()
    assert [c.strip() for c in lines[0].split("|")[1:-1]] == ["Model", "Clear", "Motion blur"]
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in lines[2:]]
    assert cells == [
        ["Deformable DETR + MSI teacher", "92.0 ± 2.0", "–"],
        ["Deformable DETR baseline", "90.0 ± 1.0", "50.0 ± 10.0"],
    ]


def test_main_table_keeps_paper_order_and_marks_unmeasured_speed():
    aggregates = {
        name: aggregate({0: dict.fromkeys(COCO_KEYS, value)}, COCO_KEYS)
        for name, value in (("deformable", 0.315), ("teacher", 0.37))
    }
    speed = {"models": {"teacher": {"fps": 2.04, "params_m": 40.12}}}
    lines = main_table(aggregates, speed, COCO_KEYS).splitlines()
    assert [c.strip() for c in lines[0].split("|")[3:-1]] == ["AP", "AP50", "AP75", "FPS", "Params (M)"]
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in lines[2:]]
    assert cells == [
        ["Deformable DETR + MSI (Teacher)", "V", "37.0", "37.0", "37.0", "2.0", "40.1"],
        ["Deformable DETR", "I", "31.5", "31.5", "31.5", "–", "–"],
    ]


def test_speed_ratios_for_measured_pairs_only():
    ratios = speed_ratios({"deformable": [20.0], "deformable_v2i": [19.0], "teacher": [2.0], "detr": [30.0]})
    assert ratios == {"deformable_v2i/deformable": pytest.approx(0.95), "deformable_v2i/teacher": pytest.approx(9.5)}


def test_speed_ratios_pair_rounds_so_load_swings_between_rounds_cancel():
    # the same network twice; the machine's load halves the speed of both in rounds 2-3 and of one in round 5
    fps_rounds = {"deformable": [60.0, 30.0, 30.0, 60.0, 61.0], "deformable_v2i": [59.0, 31.0, 30.0, 60.0, 30.5]}
    unpaired = statistics.median(fps_rounds["deformable_v2i"]) / statistics.median(fps_rounds["deformable"])
    assert unpaired == pytest.approx(31 / 60)
    assert speed_ratios(fps_rounds)["deformable_v2i/deformable"] == pytest.approx(1.0)


def test_median_interval_takes_the_order_statistics_that_cover_the_median_at_95_percent():
    assert median_interval([float(v) for v in range(30, 0, -1)]) == (10.0, 21.0)  # P(10 <= B(30, .5) <= 20) = 0.957
    assert median_interval([3.0, 1.0, 2.0, 5.0, 4.0]) == (1.0, 5.0)  # too few values for 95%: the whole range
    assert median_interval([1.5]) == (1.5, 1.5)
    # over skewed samples (a slow round now and then) the interval holds the true median as often as it claims
    rng = np.random.default_rng(0)
    covered = [low <= np.log(2) <= high for low, high in map(median_interval, rng.exponential(size=(2000, 30)))]
    assert 0.94 <= np.mean(covered) <= 0.975


def test_speed_table_gives_each_ratio_its_interval():
    fps_rounds = {"deformable": [60.0 + i % 3 for i in range(12)], "deformable_v2i": [60.0] * 12}
    speed = {
        "models": {name: {"fps": 60.0, "ms_median": 16.7, "params_m": 3.8} for name in fps_rounds},
        "ratios": speed_ratios(fps_rounds),
        "ratio_ranges": speed_ratio_ranges(fps_rounds),
    }
    low, high = speed["ratio_ranges"]["deformable_v2i/deformable"]
    assert low < speed["ratios"]["deformable_v2i/deformable"] < high <= 1.0
    ratio_row = "| Deformable DETR student (V2I-DETR) / "
    line = next(line for line in speed_table(speed).splitlines() if line.startswith(ratio_row))
    assert [cell.strip() for cell in line.split("|")][3] == f"{low:.2f}-{high:.2f}"


def test_speed_rounds_alternate_the_order_so_a_drift_within_rounds_favours_no_model(monkeypatch):
    calls = []

    def drifting(network, frames, warmup, iters, device):  # each model timed later in its round runs 10% slower
        position = len(calls) % 3
        calls.append(network)
        return {"fps": 100.0 * 0.9**position, "ms_median": 10.0}

    monkeypatch.setattr(speed, "measure_fps", drifting)
    same = torch.nn.Linear(1, 1)
    models = {name: (same, None) for name in ("teacher", "deformable", "deformable_v2i")}
    monkeypatch.setattr(speed, "speed_input", lambda spec: None)
    measured = speed.time_models(models, SpeedConfig(warmup=0, iters=1, repeats=4), torch.device("cpu"))
    assert len(calls) == 12
    assert measured["ratios"]["deformable_v2i/deformable"] == pytest.approx(1.0)  # 0.9 with the order kept
    assert measured["models"]["teacher"]["fps_rounds"] == pytest.approx([100.0, 81.0, 100.0, 81.0])


def test_distillation_gaps_pair_seeds_and_give_the_share_of_the_teachers_lead_the_student_closed():
    gaps = distillation_gaps({
        "teacher": {0: 0.90, 1: 0.96, 2: 0.80},
        "deformable": {0: 0.80, 1: 0.90, 2: 0.70},
        "deformable_v2i": {0: 0.86, 1: 0.88},  # seed 2 not run: the others' seed 2 is not paired
        "detr": {0: 0.50},
        "detr_v2i": {0: 0.40},
        "tfd": {3: 0.99},  # no baseline or teacher at its seed: nothing to pair
    })
    assert list(gaps) == ["detr_v2i", "deformable_v2i"]  # table order
    gap = gaps["deformable_v2i"]
    assert gap["seeds"] == [0, 1] and gap["ahead"] == [0]
    assert gap["student"] == pytest.approx((0.02, 0.08 / 2**0.5))  # +6 and -2 points
    assert gap["teacher"] == pytest.approx((0.08, 0.04 / 2**0.5))  # +10 and +6 points
    assert gap["closed"] == pytest.approx(0.25)
    assert gaps["detr_v2i"]["closed"] == pytest.approx(-0.25) and gaps["detr_v2i"]["student"][1] is None
    lines = gap_table(gaps).splitlines()
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in lines[2:]]
    assert cells == [
        ["DETR student (V2I-DETR)", "-10.0", "+40.0", "-25%", "0 of 1 seeds"],
        ["Deformable DETR student (V2I-DETR)", "+2.0 ± 5.7", "+8.0 ± 2.8", "25%", "1 of 2 seeds"],
    ]


def test_no_gap_is_closed_where_the_teacher_does_not_lead_beyond_its_spread():
    gaps = distillation_gaps({"teacher": {0: 0.7}, "deformable": {0: 0.8}, "deformable_v2i": {0: 0.85}})
    assert gaps["deformable_v2i"]["closed"] is None
    assert [c.strip() for c in gap_table(gaps).splitlines()[2].split("|")[1:-1]][3] == "–"
    # a lead inside its own spread over seeds (+1 ± 3 points) is not one either; a steady one (+1 ± 0.5) is
    noisy = {"teacher": {0: 0.84, 1: 0.78}, "deformable": {0: 0.80, 1: 0.80}, "deformable_v2i": {0: 0.9, 1: 0.9}}
    assert distillation_gaps(noisy)["deformable_v2i"]["closed"] is None
    steady = {"teacher": {0: 0.815, 1: 0.805}, "deformable": {0: 0.80, 1: 0.80}, "deformable_v2i": {0: 0.8, 1: 0.81}}
    assert distillation_gaps(steady)["deformable_v2i"]["closed"] == pytest.approx(0.5)


def _per_video(*counts: list[int]) -> dict[str, list[list[int]]]:
    """{video: [[TP, FP, FN]]}: one threshold's counts on videos "1", "2", ..."""
    return {str(i): [list(c)] for i, c in enumerate(counts, start=1)}


def test_a_student_as_good_as_the_teacher_on_every_video_closes_all_of_its_lead_in_every_draw():
    baseline = _per_video([6, 2, 4], [5, 0, 5], [8, 1, 2])
    teacher = _per_video([9, 1, 1], [8, 0, 2], [10, 0, 0])
    counts = {"teacher": {0: teacher, 1: teacher}, "deformable": {0: baseline, 1: baseline}}
    same = video_resampled_gaps({**counts, "deformable_v2i": {0: teacher, 1: teacher}}, draws=200)["deformable_v2i"]
    assert same["closed"] == pytest.approx([1.0, 1.0, 1.0]) and same["half"] == 1.0 and same["teacher_leads"] == 1.0
    assert (same["draws"], same["videos"]) == (200, 3)
    none = video_resampled_gaps({**counts, "deformable_v2i": {0: baseline, 1: baseline}}, draws=200)
    assert none["deformable_v2i"]["closed"] == pytest.approx([0.0, 0.0, 0.0]) and none["deformable_v2i"]["half"] == 0


def test_a_share_resting_on_one_video_spreads_over_the_draws():
    # the teacher leads on video 3 alone, and the student takes that lead on video 3 alone: draws without video 3
    # have no lead, draws with it a share of 1
    baseline = _per_video([5, 0, 5], [5, 0, 5], [0, 0, 10])
    teacher = _per_video([5, 0, 5], [5, 0, 5], [10, 0, 0])
    counts = {"teacher": {0: teacher}, "deformable": {0: baseline}, "deformable_v2i": {0: teacher}}
    drawn = video_resampled_gaps(counts, draws=2000)["deformable_v2i"]
    assert drawn["teacher_leads"] == pytest.approx(1 - (2 / 3) ** 3, abs=0.04)  # a draw holds video 3
    assert drawn["half"] == pytest.approx(drawn["teacher_leads"]) and drawn["closed"] == pytest.approx([1, 1, 1])


def test_on_the_validation_videos_each_draw_picks_each_models_threshold_again():
    # one video at two thresholds: the baseline's F1 is 0 at the first and 2/3 at the second; at its best
    # (2/3) the student's 8/9 closes 2/3 of the teacher's lead, where the first threshold alone would make it 8/9
    counts = {
        "teacher": {0: {"1": [[10, 0, 0], [10, 0, 0]]}},
        "deformable": {0: {"1": [[0, 0, 10], [5, 0, 5]]}},
        "deformable_v2i": {0: {"1": [[8, 0, 2], [8, 0, 2]]}},
    }
    assert video_resampled_gaps(counts, draws=10)["deformable_v2i"]["closed"] == pytest.approx([2 / 3] * 3)


def test_the_gap_table_gives_the_shares_range_over_video_draws_where_there_is_one():
    gaps = distillation_gaps({"teacher": {0: 0.9, 1: 0.91}, "deformable": {0: 0.8, 1: 0.8}, "detr": {0: 0.5},
                              "deformable_v2i": {0: 0.86, 1: 0.85}, "detr_v2i": {0: 0.6}})  # fmt: skip
    gaps["deformable_v2i"]["videos"] = {"closed": [0.123, 0.5, 1.456], "half": 0.514}
    header, _, detr, deformable = ([c.strip() for c in line.split("|")[1:-1]] for line in gap_table(gaps).splitlines())
    assert header[-2:] == ["Closed, 5-95% over video draws", "Half or more in"]
    assert deformable[-2:] == ["12% to 146%", "51%"] and detr[-2:] == ["–", "–"]
    del gaps["deformable_v2i"]["videos"]
    assert "video draws" not in gap_table(gaps)


def test_counts_by_video_add_up_to_the_scores_at_each_threshold():
    # video 1: frames 1-2, video 2: frames 3-4; one lesion a frame, missed in frame 4
    gt = {
        "images": [{"id": i, "video_id": 1 + (i > 2), "width": 64, "height": 64} for i in (1, 2, 3, 4)],
        "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 20, 20]} for i in (1, 2, 3, 4)],
        "categories": [{"id": 1, "name": "lesion"}],
    }
    hit, miss = [12.0, 12.0, 10.0, 10.0], [40.0, 40.0, 10.0, 10.0]
    detections = [
        {"image_id": 1, "category_id": 1, "bbox": hit, "score": 0.9},
        {"image_id": 2, "category_id": 1, "bbox": hit, "score": 0.4},
        {"image_id": 2, "category_id": 1, "bbox": miss, "score": 0.5},
        {"image_id": 3, "category_id": 1, "bbox": hit, "score": 0.2},
        {"image_id": 4, "category_id": 1, "bbox": miss, "score": 0.8},
    ]
    counts = counts_by_video(gt, detections, [0.3, 0.6])
    assert counts == {"1": [[2, 1, 0], [1, 0, 1]], "2": [[0, 1, 2], [0, 1, 2]]}
    for i, threshold in enumerate((0.3, 0.6)):
        scores = score_detections(gt, detections, "sun", threshold)
        summed = np.sum([per_video[i] for per_video in counts.values()], axis=0).tolist()
        assert summed == [scores["tp"], scores["fp"], scores["fn"]]
    assert counts_by_video({**gt, "images": [{"id": 1, "width": 64, "height": 64}]}, [], [0.3]) == {}


# ---- run plan and config ----


def test_plan_trains_each_teacher_before_its_students_and_the_ablation_on_colonoscopy_only():
    runs = plan_runs(list(ROW_NAMES), [0, 1], list(DATASETS))
    names = [r.name for r in runs]
    assert len(names) == len(set(names)) == 2 * 10 + 2 * 7
    for dataset in DATASETS:
        for seed in (0, 1):
            mine = [r for r in runs if r.dataset == dataset and r.seed == seed]
            assert mine[0].row.name == "teacher"
    assert {r.row.name for r in runs if r.dataset == "ultrasound"} == set(MAIN_ROWS)
    assert {r.row.name for r in runs if r.dataset == "colonoscopy"} == set(MAIN_ROWS) | set(ABLATION_ROWS)


def test_plan_adds_the_teacher_a_student_needs():
    runs = plan_runs(["tfd", "detr"], [0], ["colonoscopy"])
    assert [r.row.name for r in runs] == ["teacher", "detr", "tfd"]
    assert [r.row.name for r in plan_runs(["detr"], [0], ["ultrasound"])] == ["detr"]
    assert plan_runs(["tfd"], [0], ["ultrasound"]) == plan_runs(["teacher"], [0], ["ultrasound"])


def test_each_student_waits_for_its_own_teacher_only():
    runs = plan_runs(list(ROW_NAMES), [0, 1], list(DATASETS))
    for run in runs:
        wanted = ["teacher"] if run.row.role == "student" else []
        assert [(r.dataset, r.row.name, r.seed) for r in needed_runs(run, runs)] == [
            (run.dataset, name, run.seed) for name in wanted
        ]


def test_runs_waited_on_come_first_each_still_after_what_it_waits_for():
    runs = plan_runs(list(ROW_NAMES), [0, 1, 2], list(DATASETS))
    ordered = waited_on_first(runs)
    assert sorted(ordered, key=runs.index) == runs  # the same runs
    teachers = [i for i, r in enumerate(ordered) if r.row.name == "teacher"]
    assert len(teachers) == 6 and max(teachers) < min(i for i, r in enumerate(ordered) if r.row.role == "student")
    for i, run in enumerate(ordered):
        assert all(ordered.index(needed) < i for needed in needed_runs(run, runs))


def test_config_rows_match_the_table_rows_and_datasets_keep_their_flavour():
    assert set(ROW_NAMES) == set(ROWS)
    _, bench = load_bench(None, ["bench.datasets.ultrasound.videos=3"])
    assert bench.datasets.ultrasound.flavour == "ultrasound"
    assert bench.datasets.ultrasound.videos == 3
    assert bench.datasets.colonoscopy.flavour == "colonoscopy"
    with pytest.raises(V2IError, match="ultrasound.flavour must be ultrasound"):
        load_bench(None, ["bench.datasets.ultrasound.flavour=colonoscopy"])
    with pytest.raises(V2IError, match="'bench.rows.0'"):
        load_bench(None, ["bench.rows=[yolo]"])
    with pytest.raises(V2IError, match="unknown key 'bench.teacher_init'"):  # retired: the stage sections decide
        load_bench(None, ["bench.teacher_init=baseline"])


def test_a_teacher_its_students_cannot_learn_from_is_refused_before_any_run():
    with pytest.raises(V2IError, match="teacher.model.last_layer must equal distill.model.last_layer"):
        load_bench(None, ["teacher.model.last_layer=4"])
    with pytest.raises(V2IError, match="teacher.model.input_size must equal distill.model.input_size"):
        load_bench(None, ["bench.input_size=null", "teacher.model.input_size=[96, 128]"])
    _, bench = load_bench(None, ["teacher.model.input_size=[96, 128]"])  # the bench's frame size sets both
    assert bench.input_size is not None


def test_set_files_and_overrides_go_to_the_params_or_to_the_bench_by_section(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("baseline:\n  train: {epochs: 3}\nbench:\n  seeds: [4, 5]\n  speed: {repeats: 7}\n")
    params, bench = load_bench(None, ["bench.workers=1", "eval.speed.iters=9"], [extra])
    assert params.baseline.train.epochs == 3 and bench.seeds == [4, 5] and bench.workers == 1
    assert (bench.speed.repeats, params.eval.speed.repeats) == (7, 1)
    (tmp_path / "plain.yaml").write_text("bench:\n  seeds: [1]\n")
    _, unset = load_bench(None, ["eval.speed.iters=9"], bench_file=tmp_path / "plain.yaml")
    assert unset.speed.iters == 9  # no speed of its own: the bench times as `v2i evaluate` does
    with pytest.raises(V2IError, match="unknown key 'bench'"):  # a bench section is not the pipeline's
        load_params(None, [], [extra])
    with pytest.raises(V2IError, match="unknown key 'bench.seed'"):
        load_bench(None, ["bench.seed=1"])


def test_the_project_bench_settings_and_its_gpu_size_are_valid():
    root = Path(__file__).parents[1]
    params, bench = load_bench(root / "params.yaml")
    assert bench.datasets.colonoscopy.videos > 0 and bench.rows == list(ROW_NAMES)
    gpu_files = [root / "configs/gpu-paper.yaml", root / "v2i_bench/gpu-paper.yaml"]
    gpu_params, gpu = load_bench(root / "params.yaml", [], gpu_files)
    assert gpu.input_size is None and gpu.datasets.colonoscopy.width == 400
    for name in ("teacher", "deformable", "deformable_v2i"):
        model = run_settings(gpu_params, gpu, Run("colonoscopy", ROWS[name], 0))["model"]
        assert (model["backbone"], model["input_size"], model["num_queries"]) == ("resnet50", [320, 400], 100)


def test_the_36_video_set_file_changes_only_the_bench_and_the_command_records_it():
    root = Path(__file__).parents[1]
    set_file = root / "v2i_bench/colonoscopy-36-videos.yaml"
    base_params, base = load_bench(root / "params.yaml")
    params, bench = load_bench(root / "params.yaml", [], [set_file])
    assert params == base_params  # the models and their training stay the stage sections'
    colonoscopy = bench.datasets.colonoscopy
    # it pins the size its runs were made at, which bench.yaml no longer trains at
    assert (colonoscopy.videos, colonoscopy.frames, colonoscopy.width, colonoscopy.height) == (36, 48, 160, 128)
    assert (base.datasets.colonoscopy.frames, base.datasets.colonoscopy.width) == (16, 80)
    assert bench.input_size == (128, 160) and base.input_size == (64, 80)
    assert bench.rows == ["deformable", "deformable_v2i"] and len(bench.seeds) == 7
    assert bench.val_videos == bench.test_videos == 72
    args = build_parser().parse_args(["paper", "--set-file", str(set_file), "--set", "bench.seeds=[1]"])
    assert command_line(args).startswith("v2i bench paper --params params.yaml")
    assert command_line(args).endswith(f"--set-file {set_file} --set 'bench.seeds=[1]'")


def test_each_row_is_its_stage_section_with_only_its_architecture_and_components_changed():
    sets = ["baseline.train.epochs=3", "teacher.train.epochs=5", "distill.train.epochs=4", "distill.tfd.weight=0.5",
            "distill.score_weight=2", "teacher.msi.frames=4", "baseline.train.max_minutes=2",
            "bench.input_size=[96, 128]"]  # fmt: skip
    params, bench = load_bench(None, sets)

    def settings(name: str) -> dict:
        return run_settings(params, bench, Run("colonoscopy", ROWS[name], 1))

    detr, teacher = settings("detr"), settings("teacher")
    sized = {"input_size": (96, 128)}
    assert detr["model"] == params.baseline.model.model_copy(update={"arch": "detr", **sized}).model_dump(mode="json")
    assert settings("deformable")["model"]["arch"] == "deformable_detr"
    assert settings("sam_detr")["model"] == {**detr["model"], "arch": "sam_detr"}  # the same section, its own arch
    # the run's seed, and its epochs whatever wall-time budget the section sets: the tables compare by epochs
    no_budget = {"seed": 1, "max_minutes": None}
    assert detr["train"] == params.baseline.train.model_copy(update=no_budget).model_dump(mode="json")
    assert teacher["model"] == params.teacher.model.model_copy(update=sized).model_dump(mode="json")
    assert teacher["train"]["epochs"] == 5 and teacher["msi"] == params.teacher.msi.model_dump(mode="json")
    assert teacher["eval"] == detr["eval"] == params.eval.model_dump(mode="json")
    assert {"msi", "distill"}.isdisjoint(detr) and "distill" not in teacher
    shared = params.distill.model_dump(mode="json", exclude={"model", "train", "use_msi", "tfd", "cqd", "score_weight"})
    for name in ("detr_v2i", "deformable_v2i", "sam_detr_v2i", "tfd", "tfd_msi", "tfd_cqd"):
        row, student = ROWS[name], settings(name)
        assert student["model"] == params.distill.model.model_copy(update={"arch": row.arch, **sized}).model_dump(
            mode="json"
        )
        assert student["train"] == params.distill.train.model_copy(update=no_budget).model_dump(mode="json")
        distill = student["distill"]
        assert (distill["tfd"]["enabled"], distill["use_msi"], distill["cqd"]["enabled"]) == (row.tfd, row.msi, row.cqd)
        assert distill["tfd"]["weight"] == 0.5 and distill["cqd"]["mode"] == params.distill.cqd.mode
        assert distill["score_weight"] == (2 if row.cqd else None)  # its targets are CQD's cross-view queries
        assert {key: distill[key] for key in shared} == shared


def test_held_out_test_videos_make_the_splits_test_part_optional(tmp_path):
    tiny = ["bench.datasets.colonoscopy={videos: 2, frames: 4, width: 80, height: 64}", "bench.extract.test_fraction=0"]
    with pytest.raises(V2IError, match=r"bench.datasets.colonoscopy: no test videos .*bench.extract.test_fraction"):
        prepare_data(load_bench(None, [*tiny, "bench.test_videos=0"])[1], "colonoscopy", tmp_path / "a")
    _, cfg = load_bench(None, [*tiny, "bench.test_videos=1"])
    frames = prepare_data(cfg, "colonoscopy", tmp_path / "b")
    assert split_test_set(frames) is None  # every synthesised video trains
    test = prepare_test(cfg, "colonoscopy", tmp_path / "b", frames)
    assert test.made_with["synth"]["seed"] == 2000 and frame_counts(frames, test)["test_videos"] == 1


def test_recall_by_kind_groups_the_lesion_frames_by_how_the_synthesiser_left_them(tmp_path):
    # frames 1-3 clear (3 without lesion), 4-5 motion blur, 6 glare; a hit is a detection centred in the box
    kinds = {1: None, 2: None, 3: None, 4: "motion_blur", 5: "motion_blur", 6: "glare"}
    box = {"x": 10.0, "y": 10.0, "w": 20.0, "h": 20.0, "label": "lesion"}
    pd.DataFrame({
        "image_id": list(kinds), "split": "train", "hard": [k is not None for k in kinds.values()],
        "hard_kind": list(kinds.values()), "boxes": [[box], [box], [], [box], [box], [box]],
    }).to_parquet(tmp_path / "index.parquet")  # fmt: skip
    gt = {
        "images": [{"id": i, "width": 64, "height": 64} for i in kinds],
        "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 20, 20]} for i in (1, 2, 4, 5, 6)],
        "categories": [{"id": 1, "name": "lesion"}],
    }
    (tmp_path / "coco_train.json").write_text(json.dumps(gt))

    def detection(image_id: int, score: float, x: float = 12) -> dict:
        return {"image_id": image_id, "category_id": 1, "bbox": [x, 12, 10, 10], "score": score}

    detections = [detection(1, 0.9), detection(2, 0.9, x=40), detection(3, 0.9), detection(4, 0.2),
                  detection(6, 0.9)]  # fmt: skip
    test = TestSet(tmp_path, "train", None)
    assert test.hard_frames == {4, 5, 6}
    assert recall_by_kind(test, detections, 0.5) == {"clear": 0.5, "motion_blur": 0.0, "glare": 1.0}
    assert recall_by_kind(test, detections, 0.1) == {"clear": 0.5, "motion_blur": 0.5, "glare": 1.0}


# ---- end to end ----

TINY_MODEL_YAML = yaml.safe_dump(TINY_MODEL, default_flow_style=True).strip()
# one epoch of the tiny model in every stage section; hard-frame augmentation on, so that whichever teacher view the
# distill section asks for can be had
TINY_TRAIN = "{epochs: 1, batch_size: 8, augment: {hard_frames: 0.3}}"
TINY = [
    "--set", "bench.datasets.colonoscopy={videos: 3, frames: 8, width: 80, height: 64}",
    "--set", "bench.datasets.ultrasound={videos: 3, frames: 8, width: 80, height: 64}",
    "--set", "bench.extract={val_fraction: 0, test_fraction: 0.34}",
    "--set", "bench.input_size=[64, 80]",
    "--set", f"baseline.model={TINY_MODEL_YAML}",
    "--set", f"teacher.model={TINY_MODEL_YAML}",
    "--set", f"distill.model={TINY_MODEL_YAML}",
    "--set", "teacher.msi.global_heads=4",
    "--set", "bench.val_videos=2",
    "--set", "bench.test_videos=2",
    "--set", f"baseline.train={TINY_TRAIN}",
    "--set", f"teacher.train={TINY_TRAIN}",
    "--set", f"distill.train={TINY_TRAIN}",
    "--set", "bench.workers=1",
    "--set", "bench.speed={warmup: 0, iters: 1, repeats: 2}",  # two rounds: one pair of each ratio
    "--set", "eval.speed={warmup: 0, iters: 1}",
    "--set", "eval.score_threshold=0.0",  # one epoch scores low: keep every detection so the counts are not all 0
]  # fmt: skip


def bench(out: Path, *extra: str) -> int:
    (out.parent / "none.yaml").touch()  # an empty params file: the built-in defaults
    return main(["paper", "--params", str(out.parent / "none.yaml"), "--out", str(out), "--seeds", "1", *TINY,
                 *extra])  # fmt: skip


def _weights(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted(out.glob("runs/*/*/*/model/model.pt"))}


ADDED = ("sam_detr", "sam_detr_v2i")  # rows the fixture adds to a finished bench


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bench")
    out = root / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.chdir(root)
        started = time.monotonic()
        earlier = [name for name in ROW_NAMES if name not in ADDED]
        # two runs at a time, as bench.yaml trains; every row but SAM-DETR's, then the bench with them added
        assert bench(out, "--set", "bench.workers=2", "--set", f"bench.rows=[{', '.join(earlier)}]") == 0
        before = _weights(out)
        assert bench(out, "--set", "bench.workers=2") == 0
        seconds = time.monotonic() - started
        assert "MLFLOW_TRACKING_URI" not in os.environ  # the bench's own store was set for the run only
    return {"out": out, "seconds": seconds, "doc": json.loads((out / "results.json").read_text()),
            "md": (out / "results.md").read_text(), "weights": _weights(out), "before": before}  # fmt: skip


def test_every_row_is_trained_scored_and_tabled(first):
    out, doc, md = first["out"], first["doc"], first["md"]
    planned = {r.name for r in plan_runs(list(ROW_NAMES), [0], list(DATASETS))}
    assert {f"{r['dataset']}/{r['row']}/seed{r['seed']}" for r in doc["runs"]} == planned
    assert len(first["weights"]) == len(planned)
    assert (out / "mlflow.db").exists()
    for dataset, rows in (("colonoscopy", set(MAIN_ROWS) | set(ABLATION_ROWS)), ("ultrasound", set(MAIN_ROWS))):
        assert set(doc["aggregates"][dataset]) == rows
    assert not list(out.glob("runs/*/*/*/model/checkpoint.pt"))  # finished runs keep only what they need
    for heading in ("## Table I: colonoscopy", "## Table II: ultrasound", "## Table III", "## Speed: colonoscopy"):
        assert heading in md
    assert md.count("+ V2I-DETR") == 6  # the three students of Tables I and II
    assert len(re.findall(r"^\| SAM-DETR +\| I +\|", md, flags=re.MULTILINE)) == 2  # a row of each table
    assert f"- Command: `v2i bench paper --params {out.parent / 'none.yaml'} --out {out} --seeds 1" in md
    assert "- Date: " in md and "- Machine: cpu: " in md and "GPU: none" in md
    assert "- Models (params baseline, teacher, distill): image models resnet18 to layer3, 64x80 input" in md
    assert "- Distillation (params distill; each row its own TFD, MSI and CQD): TFD mask " in md


def test_rows_added_to_a_finished_bench_train_alone(first):
    before, after = first["before"], first["weights"]
    added = {f"runs/{dataset}/{row}/seed0/model/model.pt" for dataset in DATASETS for row in ADDED}
    assert set(after) == set(before) | added and not added & set(before)
    assert {name: after[name] for name in before} == before  # nothing trained before was trained again


def test_two_workers_train_side_by_side_each_student_after_its_teacher_each_run_logging_to_its_folder(first):
    out, doc = first["out"], first["doc"]
    assert f"{len(doc['runs'])} runs (2 at a time, " in first["md"]
    for result in doc["runs"]:
        log = (out / "runs" / result["dataset"] / result["row"] / "seed0/train.log").read_text()
        assert "INFO v2i_core.engine.train: epoch 1:" in log and "epoch 1/1" in log  # its log lines and its bar
    client = mlflow.tracking.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = client.search_runs([experiment])
    assert len(runs) == len(doc["runs"])
    spans = sorted((run.info.start_time, run.info.end_time) for run in runs)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))  # two ran at once
    teachers = {run.data.tags["data"]: run.info for run in runs if run.data.tags["role"] == "teacher"}
    for run in runs:
        if run.data.tags["role"] == "student":
            assert run.info.start_time >= teachers[run.data.tags["data"]].end_time


def test_reported_metrics_are_those_of_the_saved_detections_on_the_held_out_videos(first):
    out, doc = first["out"], first["doc"]
    for result in doc["runs"]:
        if result["row"] not in ("teacher", "deformable_v2i"):
            continue
        folder = out / "runs" / result["dataset"] / result["row"] / "seed0"
        held_out = out / "data" / f"{result['dataset']}-test" / "frames"
        gt = held_out / f"coco_{APART_SPLIT}.json"
        detections = json.loads((folder / "detections.json").read_text())
        assert detections, "a zero score threshold keeps every query's box"
        assert {d["image_id"] for d in detections} == {image["id"] for image in json.loads(gt.read_text())["images"]}
        sun = score_detections(str(gt), detections, "sun", 0.0)
        coco = score_detections(str(gt), detections, "coco", 0.0)
        assert (result["metrics"]["tp"], result["metrics"]["fp"]) == (sun["tp"], sun["fp"])
        assert result["metrics"]["AP"] == pytest.approx(coco["AP"])
        agg = doc["aggregates"][result["dataset"]][result["row"]]
        assert agg["f1"] == {"mean": pytest.approx(sun["f1"]), "std": None, "values": [pytest.approx(sun["f1"])]}
        index = pd.read_parquet(held_out / "index.parquet")
        assert index["video_id"].nunique() == 2 == doc["frames"][result["dataset"]]["test_videos"]
        hard = set(index.loc[index["hard"], "image_id"])
        assert len(hard) == doc["frames"][result["dataset"]]["hard"]
        expected = subset_recall(json.loads(gt.read_text()), detections, hard, 0.0)
        assert result["metrics"]["hard_recall"] == (pytest.approx(expected) if hard else None)


def test_recall_is_broken_down_by_kind_of_test_frame_at_both_thresholds(first):
    out, doc, md = first["out"], first["doc"], first["md"]
    held_out = out / "data/colonoscopy-test/frames"
    gt = json.loads((held_out / f"coco_{APART_SPLIT}.json").read_text())
    index = pd.read_parquet(held_out / "index.parquet")
    lesion = index[index["boxes"].map(len) > 0]
    kinds = lesion["hard_kind"].where(lesion["hard"], "clear")
    assert "clear" in set(kinds) and len(set(kinds)) > 1  # the tiny videos hold hard frames too
    for result in doc["runs"]:
        if result["dataset"] != "colonoscopy" or result["row"] not in ("teacher", "deformable"):
            continue
        metrics = result["metrics"]
        detections = json.loads((out / "runs/colonoscopy" / result["row"] / "seed0/detections.json").read_text())
        for key, threshold in (("recall_by_kind", 0.0), ("tuned_recall_by_kind", metrics["tuned_threshold"])):
            expected = {
                kind: subset_recall(gt, detections, set(ids), threshold)
                for kind, ids in lesion.groupby(kinds)["image_id"]
            }
            assert metrics[key] == pytest.approx(expected)
    kinds_doc = doc["kinds"]["colonoscopy"]
    assert set(kinds_doc) == {"recall_by_kind", "tuned_recall_by_kind"}
    assert set(kinds_doc["recall_by_kind"]) == set(MAIN_ROWS) | set(ABLATION_ROWS)
    assert "## Recall by frame kind: colonoscopy" in md and "| Clear |" in md
    assert "*At each model's validation-picked threshold*" in md
    assert "tuned_recall_by_kind" not in doc["kinds"]["ultrasound"]  # no validation videos there
    for dataset in DATASETS:
        assert Image.open(out / f"recall_by_kind_{dataset}.png").format == "PNG"


def test_the_splits_own_test_videos_are_scored_apart(first):
    out, doc = first["out"], first["doc"]
    result = next(r for r in doc["runs"] if r["dataset"] == "colonoscopy" and r["row"] == "deformable")
    frames = out / "data/colonoscopy/frames"
    network, spec = load_model_dir(out / "runs/colonoscopy/deformable/seed0/model")
    detections = predict_dataset(network, dataset_for(spec, frames, "test"), torch.device("cpu"))
    sun = score_detections(str(frames / "coco_test.json"), detections, "sun", 0.0)
    assert result["split_metrics"]["f1"] == pytest.approx(sun["f1"])
    assert result["split_metrics"]["f1"] != result["metrics"]["f1"]  # other videos, other hits
    assert "tested on videos synthesised apart (synth seed 2000)" in first["md"]


def test_each_colonoscopy_model_is_also_scored_at_the_threshold_its_validation_videos_pick(first):
    out, doc = first["out"], first["doc"]
    val = out / "data/colonoscopy-val/frames"
    frames = out / "data/colonoscopy/frames"
    val_index, index = (
        pd.read_parquet(folder / "index.parquet").set_index(["video_id", "frame_idx"]) for folder in (val, frames)
    )
    assert val_index.index.get_level_values(0).nunique() == 2 and set(val_index["split"]) == {APART_SPLIT}
    key = val_index.index[0]  # the same video number under another seed: another video
    assert key in index.index
    pixels = [Image.open(p / table.loc[key, "file_name"]).tobytes() for p, table in ((val, val_index), (frames, index))]
    assert pixels[0] != pixels[1]
    for result in doc["runs"]:
        metrics = result["metrics"]
        if result["dataset"] == "ultrasound":  # COCO AP takes no threshold
            assert "tuned_f1" not in metrics
            continue
        if result["row"] not in ("teacher", "deformable_v2i"):
            continue
        model = out / "runs/colonoscopy" / result["row"] / "seed0/model"
        network, spec = load_model_dir(model)
        val_detections = predict_dataset(network, dataset_for(spec, val, APART_SPLIT), torch.device("cpu"))
        sweep = sweep_thresholds(val / f"coco_{APART_SPLIT}.json", val_detections, "sun", THRESHOLDS)
        best = max(sweep, key=lambda point: point["f1"])
        assert (metrics["tuned_threshold"], metrics["val_f1"]) == (best["threshold"], pytest.approx(best["f1"]))
        detections = json.loads((model.parent / "detections.json").read_text())
        held_out = out / f"data/colonoscopy-test/frames/coco_{APART_SPLIT}.json"
        at_it = score_detections(str(held_out), detections, "sun", metrics["tuned_threshold"])
        assert metrics["tuned_f1"] == pytest.approx(at_it["f1"])
    assert "| F1 (val. thr.) | Val. thr. |" in first["md"]
    assert "with the best F1 on 2 validation videos synthesised apart (synth seed 1000)" in first["md"]


def test_each_students_gain_is_taken_against_the_baseline_and_teacher_of_its_seed(first):
    doc, md = first["doc"], first["md"]
    for key in ("f1", "tuned_f1", "val_f1"):  # at the fixed and the validation-picked threshold, on validation
        f1 = {r["row"]: r["metrics"][key] for r in doc["runs"] if r["dataset"] == "colonoscopy"}
        gap = doc["gaps"]["colonoscopy"][key]["tfd_msi"]
        assert gap["student"][0] == pytest.approx(f1["tfd_msi"] - f1["deformable"])
        assert gap["teacher"][0] == pytest.approx(f1["teacher"] - f1["deformable"])
    ap = {r["row"]: r["metrics"]["AP"] for r in doc["runs"] if r["dataset"] == "ultrasound"}
    assert doc["gaps"]["ultrasound"]["AP"]["detr_v2i"]["student"][0] == pytest.approx(ap["detr_v2i"] - ap["detr"])
    assert set(doc["gaps"]["ultrasound"]) == {"AP"}  # COCO AP takes no threshold
    assert set(doc["gaps"]["ultrasound"]["AP"]) == {"detr_v2i", "deformable_v2i", "sam_detr_v2i"}  # no ablation
    # three tables after Table I, one after Table II
    assert md.count("Teacher − baseline") == 4 and "*F1 at each model's validation-picked threshold*" in md
    assert "*F1 on the validation videos, each model at the threshold it picks there*" in md


def test_each_colonoscopy_run_keeps_its_counts_per_video_and_the_gaps_resample_those_videos(first):
    doc, md = first["doc"], first["md"]
    for result in doc["runs"]:
        metrics, by_video = result["metrics"], result["metrics"].get("video_counts")
        if result["dataset"] == "ultrasound":  # judged by COCO AP: nothing to resample
            assert by_video is None
            continue
        assert set(by_video) == {"f1", "tuned_f1", "val_f1"}
        assert len(by_video["f1"]) == len(by_video["tuned_f1"]) == 2 and len(by_video["val_f1"]) == 2  # videos
        assert np.sum(list(by_video["f1"].values()), axis=(0, 1)).tolist() == [metrics[k] for k in ("tp", "fp", "fn")]
        val = np.sum(list(by_video["val_f1"].values()), axis=0)  # [thresholds, 3], summed over the videos
        assert val.shape == (len(THRESHOLDS), 3)
        tp, fp, fn = val[THRESHOLDS.index(metrics["tuned_threshold"])]
        assert 2 * tp / max(2 * tp + fp + fn, 1) == pytest.approx(metrics["val_f1"])
    for key in ("f1", "tuned_f1", "val_f1"):
        resampled = doc["gaps"]["colonoscopy"][key]["deformable_v2i"]["videos"]
        assert (resampled["draws"], resampled["videos"]) == (2000, 2)
        assert 0 <= resampled["half"] <= resampled["teacher_leads"] <= 1
    assert md.count("| Closed, 5-95% over video draws |") == 3  # three table headers, none after Table II


def _fresh_draw(out: Path, capsys, *extra: str) -> tuple[int, str, str]:
    code = fresh_draw.main([str(out), "--videos", "2", *extra])
    printed = capsys.readouterr()
    return code, printed.out, printed.err


def test_a_fresh_draw_scores_every_colonoscopy_model_once_on_videos_no_run_saw(first, capsys):
    out = first["out"]
    code, printed, errors = _fresh_draw(out, capsys)
    assert code == 0, errors
    for estimate in ("new draw, threshold picked on validation", "three draws, each at a threshold picked on another"):
        assert estimate in printed
    draw = out / "data/colonoscopy-draw4000"
    made = json.loads((draw / "settings.json").read_text())["synth"]
    test = json.loads((out / "data/colonoscopy-test/settings.json").read_text())["synth"]
    assert made == {**test, "seed": test["seed"] - 2000 + 4000, "videos": 2}  # the test videos' generator, reseeded
    frames = [sorted((d / "frames/images").rglob("*.jpg"))[0] for d in (draw, out / "data/colonoscopy-test")]
    assert not np.array_equal(*(np.asarray(Image.open(frame)) for frame in frames))
    kept = sorted(out.glob("runs/colonoscopy/*/seed0/draw4000_counts.json"))
    assert [path.parent.parent.name for path in kept] == ["deformable", "deformable_v2i", "teacher"]
    lesions = set()
    for path in kept:
        counts = np.array(list(json.loads(path.read_text()).values()))  # [videos, thresholds, TP FP FN]
        assert counts.shape == (2, len(THRESHOLDS), 3)
        lesions.update((counts[:, :, 0] + counts[:, :, 2]).sum(axis=0).tolist())  # TP + FN: every threshold alike
        assert (np.diff(counts[:, :, 1].sum(axis=0)) <= 0).all()  # fewer false alarms at higher thresholds
    assert len(lesions) == 1 and lesions.pop() > 0
    stamps = [path.stat().st_mtime_ns for path in kept]
    assert _fresh_draw(out, capsys)[0] == 0
    assert [path.stat().st_mtime_ns for path in kept] == stamps  # predicted once
    code, _, errors = _fresh_draw(out, capsys, "--seed-offset", "2000")
    assert code == 1 and "--seed-offset 2000: the bench's runs saw those videos" in errors


def test_speed_is_measured_per_model_and_ratios_follow(first):
    speed = first["doc"]["speed"]
    assert set(speed) == set(DATASETS)
    for measured in speed.values():
        models = measured["models"]
        assert set(models) == set(MAIN_ROWS)
        assert all(len(m["fps_rounds"]) == 2 and m["fps"] > 0 for m in models.values())
        rounds = {name: m["fps_rounds"] for name, m in models.items()}
        for faster, slower in (("deformable_v2i", "teacher"), ("detr_v2i", "detr"), ("sam_detr_v2i", "sam_detr")):
            paired = [a / b for a, b in zip(rounds[faster], rounds[slower], strict=True)]  # two rounds: one pair
            assert measured["ratios"][f"{faster}/{slower}"] == pytest.approx(statistics.geometric_mean(paired))
        assert models["teacher"]["params_m"] > models["deformable"]["params_m"]  # MSI adds parameters
        for student, baseline in (("deformable_v2i", "deformable"), ("sam_detr_v2i", "sam_detr")):
            assert models[student]["params_m"] == models[baseline]["params_m"]  # no inference overhead
        busy = f"Other processes kept {measured['others_cores']:.1f} of {measured['cores']} cores busy meanwhile"
        assert measured["cores"] >= 1 and busy in first["md"]


def test_second_invocation_skips_every_run(first, tmp_path, monkeypatch):
    out = first["out"]
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(out.parent)
    started = time.monotonic()
    assert bench(out) == 0
    assert time.monotonic() - started < first["seconds"] / 2
    assert _weights(out) == first["weights"]  # nothing retrained
    doc = json.loads((out / "results.json").read_text())
    assert doc["runs"] == first["doc"]["runs"] and doc["aggregates"] == first["doc"]["aggregates"]


def test_a_run_scored_before_the_breakdown_by_kind_the_validation_f1_and_the_video_counts_gets_them_unretrained(
    first, monkeypatch
):
    out = first["out"]
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(out.parent)
    path = out / "runs/colonoscopy/teacher/seed0/result.json"
    result = json.loads(path.read_text())
    for key in ("recall_by_kind", "tuned_recall_by_kind", "val_f1", "video_counts"):
        del result["metrics"][key]
    path.write_text(json.dumps(result))
    assert bench(out, "--only", "colonoscopy") == 0
    assert _weights(out) == first["weights"]
    expected = next(r for r in first["doc"]["runs"] if r["dataset"] == "colonoscopy" and r["row"] == "teacher")
    assert json.loads(path.read_text())["metrics"] == expected["metrics"]


def test_a_run_without_its_result_is_redone_alone(first, monkeypatch):
    out = first["out"]
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(out.parent)
    (out / "runs/colonoscopy/tfd/seed0/result.json").unlink()
    assert bench(out, "--only", "colonoscopy") == 0
    after = _weights(out)
    changed = {name for name in after if after[name] != first["weights"][name]}
    assert changed == {"runs/colonoscopy/tfd/seed0/model/model.pt"}
    assert (out / "runs/colonoscopy/tfd/seed0/result.json").exists()
    doc = json.loads((out / "results.json").read_text())
    assert doc["datasets"] == ["colonoscopy"] and set(doc["speed"]) == {"colonoscopy"}


def test_other_settings_in_the_same_out_are_refused(first, monkeypatch, capsys):
    out = first["out"]
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(out.parent)
    results, weights = (out / "results.json").read_bytes(), _weights(out)
    assert bench(out, "--set", "baseline.train.epochs=2") == 1  # the first baseline run meets it
    assert "colonoscopy/detr/seed0/settings.json: made with other settings" in capsys.readouterr().err
    assert _weights(out) == weights and (out / "results.json").read_bytes() == results


def test_seeds_beyond_the_configured_ones_are_refused(tmp_path, capsys):
    out = tmp_path / "out"
    (tmp_path / "none.yaml").touch()
    args = ["paper", "--params", str(tmp_path / "none.yaml"), "--out", str(out), "--seeds", "4"]
    assert main([*args, "--set", "bench.seeds=[0, 1]"]) == 1
    assert "--seeds 4: bench.seeds has 2 seed(s)" in capsys.readouterr().err
    assert not out.exists()


def test_without_validation_videos_the_picked_thresholds_are_dropped(first, monkeypatch):
    out = first["out"]  # this test and the next rewrite the results: they run last
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(out.parent)
    assert bench(out, "--only", "colonoscopy", "--set", "bench.val_videos=0") == 0
    doc = json.loads((out / "results.json").read_text())
    assert all("tuned_f1" not in r["metrics"] and r["tuned_on"] is None for r in doc["runs"])
    assert all("tuned_recall_by_kind" not in r["metrics"] and "recall_by_kind" in r["metrics"] for r in doc["runs"])
    assert "F1 (val. thr.)" not in (out / "results.md").read_text()
    assert set(doc["gaps"]["colonoscopy"]) == {"f1"}  # no gap at a picked threshold, nor on validation videos
    assert all(set(r["metrics"]["video_counts"]) == {"f1"} for r in doc["runs"])


def test_without_held_out_videos_the_runs_are_scored_on_the_split_without_retraining(first, monkeypatch):
    out = first["out"]
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(out.parent)
    before = json.loads((out / "results.json").read_text())["runs"]
    weights = _weights(out)
    assert bench(out, "--only", "colonoscopy", "--set", "bench.test_videos=0") == 0
    assert _weights(out) == weights
    doc = json.loads((out / "results.json").read_text())
    for old, new in zip(before, doc["runs"], strict=True):
        assert new["tested_on"] is None and new["split_metrics"] is None
        assert new["metrics"]["f1"] == pytest.approx(old["split_metrics"]["f1"])
        hard = old["split_metrics"]["hard_recall"]
        assert new["metrics"]["hard_recall"] == (None if hard is None else pytest.approx(hard))
    assert doc["frames"]["colonoscopy"]["test_videos"] == 1  # 3 videos at test_fraction 0.34
    assert "tested on the split's test videos" in (out / "results.md").read_text()
