"""`v2i evaluate` on a model trained here on tiny data (plus an untrained video teacher): its metrics are
those `v2i score` gives on its own detections; plots, table, detections and the MLflow run are written."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from PIL import Image

from tests.conftest import TINY_MODEL, tiny_params
from v2i_core.cli import main
from v2i_core.config import ModelConfig, MSIConfig
from v2i_core.data.datasets import load_categories
from v2i_core.engine.model_dir import ModelSpec, build_network, load_model_dir, write_model_dir
from v2i_core.eval.evaluate import model_names
from v2i_core.eval.report import gain_line, markdown_table
from v2i_core.registry import pick_metrics

THRESHOLD = 0.0  # a 1-epoch model scores low: keep every detection so the counts compared are not all zero


@pytest.fixture(scope="module")
def models(tiny_frames, tmp_path_factory) -> dict:
    """A baseline trained for one epoch, an untrained teacher (runs on clips), and a params file."""
    root = tmp_path_factory.mktemp("evaluate")
    params = root / "params.yaml"
    settings = tiny_params(eval={"score_threshold": THRESHOLD, "speed": {"warmup": 1, "iters": 3}})
    params.write_text(yaml.safe_dump(settings))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'train.db'}")
        patch.chdir(root)  # a SQLite store keeps run artifacts in ./mlruns
        assert main(["train", "--params", str(params), "--data", str(tiny_frames), "--out", str(root / "base")]) == 0
    spec = ModelSpec("teacher", ModelConfig(**TINY_MODEL), load_categories(tiny_frames), MSIConfig(frames=2,
                     global_heads=4), {"mlflow_run_id": "untrained"})
    torch.manual_seed(0)
    write_model_dir(root / "teacher", build_network(spec), spec, {})
    return {"params": params, "baseline": root / "base", "teacher": root / "teacher"}


def evaluate(models: dict, frames: Path, out: Path, *extra: str) -> int:
    return main(["evaluate", "--params", str(models["params"]), "--model", str(models["baseline"]),
                 "--model", str(models["teacher"]), "--data", str(frames), "--out", str(out), *extra])


def score(gt: Path, detections: Path, protocol: str, out: Path) -> dict:
    assert main(["score", "--gt", str(gt), "--pred", str(detections), "--protocol", protocol,
                 "--score-threshold", str(THRESHOLD), "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_evaluate_reports_what_score_says_and_logs_it(models, tiny_frames, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'eval.db'}")
    monkeypatch.chdir(tmp_path)  # a SQLite store keeps run artifacts in ./mlruns
    out = tmp_path / "report"
    assert evaluate(models, tiny_frames, out) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["score_threshold"] == THRESHOLD
    assert metrics["device"].startswith("cpu")
    assert set(metrics["models"]) == {"base", "teacher"}
    gt = tiny_frames / "coco_test.json"
    test_ids = {image["id"] for image in json.loads(gt.read_text())["images"]}
    for name, entry in metrics["models"].items():
        detections = out / "detections" / f"{name}.json"
        assert {d["image_id"] for d in json.loads(detections.read_text())} == test_ids  # every frame ran
        sun = score(gt, detections, "sun", tmp_path / "sun.json")
        assert {k: entry[k] for k in ("precision", "recall", "f1", "tp", "fp", "fn")} == {
            k: sun[k] for k in ("precision", "recall", "f1", "tp", "fp", "fn")}
        iou = score(gt, detections, "iou", tmp_path / "iou.json")
        assert [entry["iou_precision"], entry["iou_recall"], entry["iou_f1"]] == [
            iou["precision"], iou["recall"], iou["f1"]]
        coco = score(gt, detections, "coco", tmp_path / "coco.json")
        assert [entry["AP"], entry["AP50"], entry["AP75"]] == [coco["AP"], coco["AP50"], coco["AP75"]]
        lesion = score(gt, detections, "lesion", tmp_path / "lesion.json")
        assert entry["lesion_sensitivity"] == lesion["lesion_sensitivity"] and entry["lesions"] == lesion["lesions"] > 0
        assert entry["false_alarms_per_min"] == lesion["false_alarms_per_min"]
        # the causal filter only ever shows what the detector saw, later: never more lesions found
        assert entry["filtered_lesion_sensitivity"] <= entry["lesion_sensitivity"]
        network, _ = load_model_dir(entry["model_dir"])
        assert entry["params_m"] == pytest.approx(sum(p.numel() for p in network.parameters()) / 1e6)
        assert entry["fps"] > 0 and entry["ms_median"] == pytest.approx(1000 / entry["fps"])
    base = metrics["models"]["base"]
    assert base["fp"] > 0 and base["tp"] + base["fn"] > 0  # the counts compared above are not all zeros
    assert (base["role"], base["manner"]) == ("baseline", "I")
    assert (metrics["models"]["teacher"]["role"], metrics["models"]["teacher"]["manner"]) == ("teacher", "V")
    assert pick_metrics(out / "metrics.json", models["baseline"]) == base

    table = (out / "table.md").read_text()
    assert table.startswith("| Model") and table in printed
    assert f"{100 * base['f1']:.1f}" in table.splitlines()[2]
    lesion_rows = [line for line in table.splitlines() if line.startswith("| base ") and "causal" in line]
    assert len(lesion_rows) == 1 and f"{100 * base['filtered_lesion_sensitivity']:.1f}" in lesion_rows[0]
    for png in ("pr_curve.png", "f1_threshold.png", "disagreement.png", "timeline.png"):
        with Image.open(out / png) as image:
            assert image.format == "PNG" and min(image.size) > 100

    runs = mlflow.search_runs(experiment_names=["v2i"], filter_string="tags.step = 'evaluate'")
    assert len(runs) == 1
    assert runs.loc[0, "metrics.base/f1"] == pytest.approx(base["f1"])
    artifacts = mlflow.MlflowClient().list_artifacts(runs.loc[0, "run_id"], "evaluation")
    assert {Path(a.path).name for a in artifacts} >= {"metrics.json", "table.md", "pr_curve.png", "detections"}


def test_a_missing_split_or_model_is_an_error_that_writes_nothing(models, tiny_frames, tmp_path, capsys):
    assert evaluate(models, tiny_frames, tmp_path / "out", "--split", "nope") == 1
    assert "no split 'nope' (no coco_nope.json)" in capsys.readouterr().err
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    assert main(["evaluate", "--model", str(not_a_model), "--data", str(tiny_frames), "--out",
                 str(tmp_path / "out")]) == 1
    assert f"{not_a_model}: not a model directory" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_frames_without_lesion_categories_are_not_evaluated(tmp_path, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "coco_test.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    report = tmp_path / "report"
    args = ["evaluate", "--model", str(tmp_path / "any-model"), "--data", str(frames), "--out", str(report)]
    assert main(args) == 1
    error = capsys.readouterr().err.strip()
    assert error.endswith("split 'test' has no lesion categories: nothing to score against")
    assert len(error.splitlines()) == 1 and not report.exists()


def test_repeated_directory_names_are_made_unique():
    assert model_names(["runs/a/model", "runs/b/model/", "model", "student"]) == [
        "model", "model-2", "model-3", "student"]


def test_table_follows_the_paper_layout():
    entry = {"manner": "V->I", "precision": 0.889, "recall": 0.8034, "f1": 0.844, "iou_f1": 0.5012, "AP": 0.368,
             "AP50": 0.639, "fps": 18.04, "params_m": 50.12}
    table = markdown_table(
        {"split": "test", "score_threshold": 0.5, "device": "cuda: NVIDIA H200", "models": {"student": entry}}
    )
    header, rule, row = table.splitlines()[:3]
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "Model", "Manner", "Precision", "Recall", "F1", "IoU F1", "AP", "AP50", "FPS (cuda)", "Params (M)"]
    assert "on cuda: NVIDIA H200" in table
    assert [c.strip() for c in row.strip("|").split("|")] == [
        "student", "V->I", "88.9", "80.3", "84.4", "50.1", "36.8", "63.9", "18.0", "50.1"]
    assert rule.count("|") == header.count("|")
    assert "Student vs baseline" not in table  # no baseline: no gain line


def test_the_gain_line_states_the_students_result_against_its_baseline():
    def entry(role, f1, ap50):
        return {"role": role, "manner": "I", "arch": "deformable_detr", "precision": 0.5, "recall": 0.5, "f1": f1,
                "iou_f1": 0.5, "AP": 0.3, "AP50": ap50, "fps": 50.0, "params_m": 3.8}

    metrics = {"split": "test", "score_threshold": 0.3, "device": "cpu",
               "models": {"baseline": entry("baseline", 0.60, 0.50), "teacher": entry("teacher", 0.70, 0.60),
                          "student": entry("student", 0.65, 0.55)}}
    assert gain_line(metrics) == (
        "Student vs baseline: F1 +5.0, AP50 +5.0 points; the teacher leads the baseline by F1 +10.0, AP50 +10.0; "
        "the student closes 50% of the teacher's F1 lead.")
    assert gain_line(metrics) in markdown_table(metrics).splitlines()
    metrics["models"]["student"]["AP50"] = 0.45  # ahead in F1, behind in AP50: not a win
    assert gain_line(metrics).startswith("The student does NOT beat its baseline: F1 +5.0, AP50 -5.0 points")
    assert gain_line(metrics).endswith("does not beat its baseline's).")


def test_frames_on_s3_give_the_same_report(models, tiny_frames, tmp_path, s3_bucket, isolated_mlflow, monkeypatch):
    from tests.conftest import upload_tree

    monkeypatch.chdir(tmp_path)  # a SQLite store keeps run artifacts in ./mlruns

    upload_tree(s3_bucket, "frames", tiny_frames)
    reports = {}
    for where, data in (("local", str(tiny_frames)), ("s3", f"s3://{s3_bucket}/frames")):
        assert main(["evaluate", "--params", str(models["params"]), "--model", str(models["teacher"]),
                     "--data", data, "--out", str(tmp_path / where)]) == 0
        entry = json.loads((tmp_path / where / "metrics.json").read_text())["models"]["teacher"]
        reports[where] = {k: v for k, v in entry.items() if k not in ("fps", "ms_median")}
    assert reports["s3"] == reports["local"]
    assert (tmp_path / "s3" / "detections" / "teacher.json").read_text() == (
        tmp_path / "local" / "detections" / "teacher.json").read_text()
