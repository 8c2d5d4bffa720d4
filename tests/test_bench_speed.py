"""`v2i bench speed`: the Table I models built at the bench's size (the stage sections' models) or the paper's,
untrained, and timed."""

from __future__ import annotations

import json

import pytest
import torch

from v2i_bench.cli import main
from v2i_bench.config import load_bench
from v2i_bench.paper_tables import MAIN_ROWS, baseline_of
from v2i_bench.speed import PAPER_INPUT_SIZE, load_line, table_specs
from v2i_core.eval.speed import speed_input

# a quick measurement: 2 rounds of one timed frame per model
QUICK = ["--set", "bench.speed={warmup: 0, iters: 1, repeats: 2}"]


def test_bench_size_takes_each_rows_model_from_its_stage_section_at_the_bench_frame_size():
    sets = ["baseline.model.d_model=64", "distill.model.d_model=96", "teacher.msi.frames=4"]
    sets.append("bench.input_size=[96, 128]")
    params, bench = load_bench(None, sets)
    specs = table_specs(params, bench, "bench", None)
    assert list(specs) == list(MAIN_ROWS)
    assert {name: (s.role, s.model.arch) for name, s in specs.items()} == {
        "teacher": ("teacher", "deformable_detr"),
        "detr": ("baseline", "detr"),
        "detr_v2i": ("student", "detr"),
        "deformable": ("baseline", "deformable_detr"),
        "deformable_v2i": ("student", "deformable_detr"),
        "sam_detr": ("baseline", "sam_detr"),
        "sam_detr_v2i": ("student", "sam_detr"),
    }
    assert specs["deformable"].model.d_model == specs["detr"].model.d_model == 64  # baseline.model
    assert specs["deformable_v2i"].model.d_model == 96 and specs["teacher"].msi.frames == 4
    assert specs["teacher"].model.d_model == params.teacher.model.d_model
    assert all(s.msi is None for name, s in specs.items() if name != "teacher")
    assert {tuple(s.model.input_size) for s in specs.values()} == {(96, 128)}
    unsized = table_specs(*load_bench(None, ["bench.input_size=null"]), "bench", None)
    assert tuple(unsized["deformable"].model.input_size) == tuple(params.baseline.model.input_size)


def test_paper_size_is_resnet50_with_100_queries_at_its_input_or_the_one_given():
    params, bench = load_bench(None)
    specs = table_specs(params, bench, "paper", None)
    for spec in specs.values():
        assert (spec.model.backbone, spec.model.num_queries, spec.model.enc_layers) == ("resnet50", 100, 6)
        # each reference code's feed-forward width: 2048 in DETR's and SAM-DETR's, 1024 in Deformable DETR's
        assert spec.model.dim_feedforward == (1024 if spec.model.arch == "deformable_detr" else 2048)
        assert tuple(spec.model.input_size) == PAPER_INPUT_SIZE and spec.model.pretrained is None
    resized = table_specs(params, bench, "paper", (256, 320))
    assert {tuple(s.model.input_size) for s in resized.values()} == {(256, 320)}


def test_speed_input_is_random_frames_or_clips_the_same_each_time():
    specs = table_specs(*load_bench(None), "bench", (64, 96))
    frame, clip = speed_input(specs["deformable"]), speed_input(specs["teacher"])
    assert frame.shape == (1, 3, 64, 96) and clip.shape == (1, specs["teacher"].msi.frames, 3, 64, 96)
    assert frame.std() > 0.2  # not zeros: those can take faster paths than frames do
    assert torch.equal(frame, speed_input(specs["deformable"]))


def test_a_busy_machine_is_flagged_in_bold():
    assert load_line({"others_cores": 0.1, "cores": 2}).startswith("Other processes kept 0.1 of 2 cores")
    assert load_line({"others_cores": 1.2, "cores": 2}).startswith("**")


def test_command_times_every_table_one_model_and_pairs_the_ratios(tmp_path, capsys):
    out, absent = tmp_path / "speed", str(tmp_path / "absent.yaml")  # no params file: the defaults
    assert main(["speed", "--params", absent, "--input-size", "64", "80", "--out", str(out), *QUICK]) == 0
    doc = json.loads((out / "speed.json").read_text())
    models = doc["speed"]["models"]
    assert list(models) == list(MAIN_ROWS)
    assert all(len(m["fps_rounds"]) == 2 and m["fps"] > 0 for m in models.values())
    # a student is the image detector of its architecture: the same network, the same parameters
    for student, baseline in (("deformable_v2i", "deformable"), ("sam_detr_v2i", "sam_detr")):
        assert models[student]["params_m"] == models[baseline]["params_m"]
    assert models["teacher"]["params_m"] > models["deformable"]["params_m"]  # MSI on top of the detector
    students = ("detr_v2i", "deformable_v2i", "sam_detr_v2i")
    pairs = {f"{student}/{other}" for student in students for other in (baseline_of(student), "teacher")}
    assert set(doc["speed"]["ratios"]) == pairs
    assert doc["command"].startswith(f"v2i bench speed --params {absent} --size bench --out {out}")
    assert "--input-size 64 80" in doc["command"] and "64x80 input" in doc["models"]
    printed = capsys.readouterr().out
    assert printed == (out / "speed.md").read_text() and "| Frames/s ratio" in printed


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--input-size", "16", "80"], "--input-size 16 80: height and width must be at least 32 pixels"),
        pytest.param(
            ["--device", "cuda"],
            "--device cuda: torch sees no CUDA GPU here",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here"),
        ),
    ],
)
def test_bad_flags_are_one_line_errors_and_write_nothing(tmp_path, capsys, flags, message):
    out = tmp_path / "speed"
    absent = str(tmp_path / "absent.yaml")
    assert main(["speed", "--params", absent, "--out", str(out), *flags, *QUICK]) == 1
    assert capsys.readouterr().err == f"v2i-bench: error: {message}\n"
    assert not out.exists()


@pytest.mark.parametrize("size", ["bench", "paper"])
def test_the_hf_peer_has_our_students_size_and_weights(size):
    """HF's Deformable DETR built from our student's config: the same weights, counted the same way, at both sizes."""
    pytest.importorskip("transformers")
    from v2i_bench.speed import hf_deformable_detr, weights_m
    from v2i_core.engine.model_dir import build_network

    spec = table_specs(*load_bench(None), size, None)["deformable_v2i"]
    with torch.device("meta"):  # shapes only: the paper's size in a second
        ours, peer = build_network(spec), hf_deformable_detr(spec.model)
    assert weights_m(peer) == weights_m(ours) > 0
    config = peer.config
    m = spec.model
    assert (config.d_model, config.encoder_layers, config.decoder_layers, config.num_queries) == (
        m.d_model, m.enc_layers, m.dec_layers, m.num_queries)
    assert (config.num_feature_levels, config.encoder_attention_heads, config.encoder_ffn_dim) == (
        m.num_feature_levels, m.nheads, m.dim_feedforward)
    assert len(config.backbone_config.depths) == m.last_layer and not config.two_stage


@pytest.mark.slow  # exports the student to ONNX
def test_peer_command_times_ours_eager_and_exported_against_hf_in_the_same_rounds(tmp_path, capsys):
    pytest.importorskip("transformers")
    out, absent = tmp_path / "speed", str(tmp_path / "absent.yaml")
    flags = ["--peer", "hf", "--input-size", "64", "80", "--out", str(out)]
    assert main(["speed", "--params", absent, *flags, *QUICK]) == 0
    doc = json.loads((out / "peer-hf.json").read_text())
    models = doc["speed"]["models"]
    assert list(models) == ["ours_onnxruntime", "ours_torch", "hf_torch"]
    assert all(len(m["fps_rounds"]) == 2 and m["fps"] > 0 for m in models.values())
    assert doc["weights_m"]["ours"] == doc["weights_m"]["hf"]
    assert set(doc["speed"]["ratios"]) == set(doc["speed"]["ratio_ranges"]) == {
        "ours_onnxruntime/hf_torch", "ours_torch/hf_torch", "ours_onnxruntime/ours_torch",
    }
    low, high = doc["speed"]["ratio_ranges"]["ours_torch/hf_torch"]
    assert low <= doc["speed"]["ratios"]["ours_torch/hf_torch"] <= high
    assert "--peer hf" in doc["command"] and not (out / "speed.json").exists()
    printed = capsys.readouterr().out
    assert printed == (out / "peer-hf.md").read_text() and "| Ours, exported, ONNX Runtime / HF transformers" in printed

