"""Bad input: a one-line error naming the file and the problem, exit status 1, and no partial output."""

import json
import re
from pathlib import Path

import pytest
import torch

from tests.fixtures_layouts import build_buv, build_sunseg, build_videos, moving_square_frames
from v2i_core.cli import main
from v2i_core.config import ExtractConfig, ModelConfig, load_params
from v2i_core.data.annotations import Box, check_box
from v2i_core.data.extract import extract
from v2i_core.data.video import write_video
from v2i_core.engine.model_dir import ModelSpec, build_network, load_model_dir, write_model_dir
from v2i_core.errors import V2IError


def _edit_json(path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _box(doc, frame=0, **fields) -> None:
    entry = next(a for a in doc["annotations"] if a["frame"] == frame)
    entry["boxes"][0].update(fields)


def _truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _short_video(root) -> None:
    """b.mp4 re-encoded with 4 frames while b.json still says 6: frames lost at the end."""
    write_video(root / "b.mp4", moving_square_frames(4, lambda t: (4 + t, 6, 12, 10)), fps=10)


VIDEO_CASES = {
    "unreadable video": (lambda r: (r / "a.mp4").write_bytes(b"not a video at all"), r"a\.mp4: unreadable video"),
    "truncated file": (lambda r: _truncate(r / "c.mp4"), r"c\.mp4: unreadable"),
    "truncated stream": (_short_video, r"b\.mp4: truncated: decoded 4 of the 6 frames"),
    "missing annotation": (lambda r: (r / "b.json").unlink(), r"b\.json: annotation file missing"),
    "malformed json": (lambda r: (r / "a.json").write_text("{oops"), r"a\.json: not valid JSON"),
    "annotations not a list": (
        lambda r: (r / "a.json").write_text('{"annotations": 3}'),
        r"a\.json: expected an object with an 'annotations' list",
    ),
    "box lacks a field": (
        lambda r: _edit_json(r / "a.json", lambda d: d["annotations"][0]["boxes"][0].pop("h")),
        r"a\.json: frame 0: box lacks h",
    ),
    "box outside the frame": (
        lambda r: _edit_json(r / "b.json", lambda d: _box(d, 1, x=60.0, w=20.0)),
        r"b\.json: frame 1: box \[x=60, y=6, w=20, h=10\] lies outside the 64x48 frame",
    ),
    "box of zero width": (
        lambda r: _edit_json(r / "c.json", lambda d: _box(d, 2, w=0)),
        r"c\.json: frame 2: box .* has non-positive size",
    ),
    "negative height": (
        lambda r: _edit_json(r / "c.json", lambda d: _box(d, 0, h=-3)),
        r"c\.json: frame 0: box .* has non-positive size",
    ),
    "NaN coordinate": (
        lambda r: (r / "b.json").write_text((r / "b.json").read_text().replace('"y": 6', '"y": NaN', 1)),
        r"b\.json: frame 0 'y': expected a finite number, got NaN",
    ),
    "infinite width": (
        lambda r: (r / "c.json").write_text((r / "c.json").read_text().replace('"w": 12', '"w": Infinity', 1)),
        r"c\.json: frame 0 'w': expected a finite number, got Infinity",
    ),
    "coordinate too large for a float": (
        lambda r: (r / "a.json").write_text((r / "a.json").read_text().replace('"x": 5', '"x": -1e999', 1)),
        r"a\.json: frame 1 'x': expected a finite number, got -Infinity",
    ),
    "frame past the declared end": (
        lambda r: _edit_json(r / "a.json", lambda d: d["annotations"][0].update(frame=99)),
        r"a\.json: annotation for frame 99, but the video has 6 frames",
    ),
    "frame past the decoded end": (
        lambda r: _edit_json(r / "a.json", lambda d: (d.pop("frames"), d["annotations"][0].update(frame=40))),
        r"a\.json: annotation for frame 40, but the video has 6 frames",
    ),
    "orphan annotation": (
        lambda r: (r / "zz.json").write_text('{"annotations": []}'),
        r"zz\.json: annotation file without a video",
    ),
    "no videos": (lambda r: [p.unlink() for p in r.glob("*.mp4")], r"raw: no video files"),
}


@pytest.mark.parametrize("case", list(VIDEO_CASES))
def test_bad_videos_layout_one_line_exit_1_no_output(tmp_path, capsys, case):
    mutate, message = VIDEO_CASES[case]
    build_videos(tmp_path / "raw", {"a": 6, "b": 6, "c": 6})
    mutate(tmp_path / "raw")
    params = tmp_path / "params.yaml"
    params.write_text("extract:\n  format: videos\n  val_fraction: 0.2\n  test_fraction: 0.2\n")
    code = main(["extract", "--params", str(params), "--src", str(tmp_path / "raw"), "--out", str(tmp_path / "out")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    errors = [line for line in lines if line.startswith("v2i: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines  # anything before it is the progress bar
    assert all(line.startswith("extract:") for line in lines[:-1]), lines
    assert re.search(message, errors[0]), errors[0]
    assert str(tmp_path / "raw") in errors[0]  # the file is named by its full path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "raw"]  # no output, no temp dir


def test_a_failed_run_leaves_the_previous_output_untouched(tmp_path):
    build_videos(tmp_path / "raw", {"a": 6, "b": 6, "c": 6})
    cfg = ExtractConfig(format="videos")
    extract(str(tmp_path / "raw"), tmp_path / "out", cfg, progress=False)
    before = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    _edit_json(tmp_path / "raw" / "c.json", lambda d: _box(d, 5, x=100.0))
    with pytest.raises(V2IError, match=r"c\.json: frame 5: box"):
        extract(str(tmp_path / "raw"), tmp_path / "out", cfg, progress=False)
    assert {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]


@pytest.mark.parametrize(
    ("videos", "val", "test", "split"),
    [({"a": 3}, 0.15, 0.25, "train"), ({"a": 3, "b": 3}, 0.15, 0.25, "train"), ({"a": 3}, 0.0, 0.0, None)],
)
def test_an_empty_split_that_is_asked_for_is_named(tmp_path, videos, val, test, split):
    build_videos(tmp_path / "raw", videos)
    cfg = ExtractConfig(format="videos", val_fraction=val, test_fraction=test)
    if split is None:  # nothing asked beyond train: a single video is fine
        extract(str(tmp_path / "raw"), tmp_path / "out", cfg, progress=False)
        assert [p.name for p in sorted((tmp_path / "out").glob("coco_*"))] == ["coco_train.json"]
        return
    with pytest.raises(V2IError, match=rf"raw: split '{split}' would be empty"):
        extract(str(tmp_path / "raw"), tmp_path / "out", cfg, progress=False)
    assert not (tmp_path / "out").exists()


def test_unknown_format_through_params_and_through_the_library(tmp_path, capsys):
    build_videos(tmp_path / "raw", {"a": 3})
    params = tmp_path / "params.yaml"
    params.write_text("extract:\n  format: avi-folder\n")
    assert main(["extract", "--params", str(params), "--src", str(tmp_path / "raw"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(params) in err and "'extract.format'" in err
    with pytest.raises(V2IError, match=r"raw: unknown format 'avi-folder'"):
        extract(
            str(tmp_path / "raw"),
            tmp_path / "o",
            ExtractConfig.model_construct(
                format="avi-folder", stride=1, resize=None, val_fraction=0, test_fraction=0, seed=0
            ),
            progress=False,
        )
    assert not (tmp_path / "o").exists()


def _sun_move_frame(root):
    frame = next((root / "TrainDataset" / "Frame" / "case2_1").glob("*image2.jpg"))
    frame.unlink()


def _sun_same_name_thrice(root):
    """a.jpg beside a.JPG and a.png: the annotation names the frame without extension, so which file is it?"""
    frame = root / "TrainDataset" / "Frame" / "case1_1" / "case_M_2018_case1_1_image1.jpg"
    for suffix in (".JPG", ".png"):
        frame.with_suffix(suffix).write_bytes(frame.read_bytes())


SUNSEG_CASES = {
    "annotation for a missing frame": (
        _sun_move_frame,
        r"TrainDataset/Detection/bbox_annotation.json: annotation for frame "
        r"case2_1/case_M_2018_case2_1_image2, which the video does not have",
    ),
    "missing detection file": (
        lambda r: (r / "TestHardDataset" / "Detection" / "bbox_annotation.json").unlink(),
        r"TestHardDataset/Detection/bbox_annotation.json: annotation file missing",
    ),
    "bbox of three numbers": (
        lambda r: _edit_json(
            r / "TrainDataset/Detection/bbox_annotation.json", lambda d: d["annotation"][0].update(bbox=[1, 2, 3])
        ),
        r"TrainDataset/Detection/bbox_annotation.json: image case1_1-a2-image1 "
        r"\(frame case1_1/case_M_2018_case1_1_image1\): bbox must be four finite numbers, got \[1, 2, 3\]",
    ),
    "unknown image id": (
        lambda r: _edit_json(
            r / "TrainDataset/Detection/bbox_annotation.json", lambda d: d["annotation"][0].update(id="case1_1-zz")
        ),
        r"bbox_annotation.json: annotation for image id \"case1_1-zz\", which 'images' does not list",
    ),
    "box outside the frame": (
        lambda r: _edit_json(
            r / "TestHardDataset/Detection/bbox_annotation.json",
            lambda d: d["annotation"][1].update(bbox=[32, 48, 40, 16]),
        ),
        r"TestHardDataset/Detection/bbox_annotation.json: frame 1: box .* lies outside the 64x48 frame",
    ),
    "masks disagree with every order": (
        lambda r: [
            p.write_bytes((r / "TrainDataset/GT/case2_4").glob("*").__next__().read_bytes())
            for p in (r / "TrainDataset/GT").rglob("*.png")
        ],
        r"TrainDataset/Detection/bbox_annotation.json: no bbox field order matches the GT masks",
    ),
    "one frame name, three files": (
        _sun_same_name_thrice,
        r"sun/TrainDataset/Frame/case1_1: case_M_2018_case1_1_image1\.JPG, case_M_2018_case1_1_image1\.jpg, "
        r"case_M_2018_case1_1_image1\.png are all frame 'case_M_2018_case1_1_image1'",
    ),
    "no split folders": (
        lambda r: [p.rename(r / f"x{p.name}") for p in list(r.iterdir())],
        r"sun: no SUN-SEG split folders",
    ),
}


@pytest.mark.parametrize("case", list(SUNSEG_CASES))
def test_bad_sunseg_layout(tmp_path, case):
    mutate, message = SUNSEG_CASES[case]
    build_sunseg(tmp_path / "sun")
    mutate(tmp_path / "sun")
    with pytest.raises(V2IError, match=message):
        extract(
            str(tmp_path / "sun"), tmp_path / "out", ExtractConfig(format="sun-seg", val_fraction=0), progress=False
        )
    assert not (tmp_path / "out").exists()


BUV_CASES = {
    "no rawframes": (lambda r: (r / "rawframes").rename(r / "frames"), r"buv/rawframes: missing"),
    "no val file": (lambda r: (r / "imagenet_vid_val.json").unlink(), r"buv: no test annotation file"),
    "frame not on disk": (
        lambda r: (r / "rawframes/malignant/7f3e/000001.png").unlink(),
        r"imagenet_vid_train_15frames.json: annotation for frame malignant/7f3e/000001.png, "
        r"which the video does not have",
    ),
    "unknown category": (
        lambda r: _edit_json(r / "imagenet_vid_val.json", lambda d: d["annotations"][0].update(category_id=7)),
        r"imagenet_vid_val.json: annotation 1: unknown category_id 7",
    ),
    "truncated png": (
        lambda r: _truncate(r / "rawframes/benign/c0ffee/000001.png"),
        r"rawframes/benign/c0ffee/000001.png: unreadable image",
    ),
    "empty val": (
        lambda r: _edit_json(r / "imagenet_vid_val.json", lambda d: d.update(images=[], annotations=[])),
        r"buv: split 'test' would be empty",
    ),
    "video in both files": (
        lambda r: _edit_json(
            r / "imagenet_vid_val.json", lambda d: d["images"][0].update(file_name="benign/c0ffee/000000.png")
        ),
        r"video 'benign/c0ffee' appears twice",
    ),
}


@pytest.mark.parametrize("case", list(BUV_CASES))
def test_bad_buv_layout(tmp_path, case):
    mutate, message = BUV_CASES[case]
    build_buv(tmp_path / "buv")
    mutate(tmp_path / "buv")
    with pytest.raises(V2IError, match=message):
        extract(str(tmp_path / "buv"), tmp_path / "out", ExtractConfig(format="buv", val_fraction=0), progress=False)
    assert not (tmp_path / "out").exists()


def test_synth_refuses_bad_options_in_one_line(tmp_path, capsys):
    assert main(["synth", "--params", "", "--out", str(tmp_path / "s"), "--frames", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'frames'" in err
    assert not (tmp_path / "s").exists()


def _one_error_line(capsys) -> str:
    """The single `v2i: error: ...` line the CLI printed, with nothing else on stderr."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("v2i: error: "), lines
    return lines[0]


def _nan_in_videos(root) -> str:
    (root / "b.json").write_text((root / "b.json").read_text().replace('"x": 5', '"x": NaN', 1))
    return r"raw/b\.json: frame 1 'x': expected a finite number, got NaN"


def _nan_in_sunseg(root) -> str:
    path = root / "TestHardDataset/Detection/bbox_annotation.json"
    _edit_json(path, lambda d: d["annotation"][1]["bbox"].__setitem__(2, float("nan")))
    return (
        r"raw/TestHardDataset/Detection/bbox_annotation\.json: image case9_2-a2-image4 "
        r"\(frame case9_2/case_M_2018_case9_2_image4\): bbox must be four finite numbers, got \[32, 48, NaN, 16\]"
    )


def _inf_in_buv(root) -> str:
    _edit_json(root / "imagenet_vid_val.json", lambda d: d["annotations"][1]["bbox"].__setitem__(3, float("-inf")))
    return (
        r"raw/imagenet_vid_val\.json: annotation 2 \(frame 1 of video malignant/9d9d\): bbox must be four finite "
        r"numbers \[x, y, w, h\], got \[6, 20, 40, -Infinity\]"
    )


NON_FINITE = {
    "videos": (lambda r: build_videos(r, {"a": 3, "b": 3}), _nan_in_videos),
    "sun-seg": (build_sunseg, _nan_in_sunseg),
    "buv": (build_buv, _inf_in_buv),
}


@pytest.mark.parametrize("fmt", list(NON_FINITE))
def test_a_non_finite_box_is_refused_at_parse_time_in_every_format(tmp_path, capsys, fmt):
    build, spoil = NON_FINITE[fmt]
    build(tmp_path / "raw")
    message = spoil(tmp_path / "raw")  # Python's JSON reads NaN, Infinity and 1e999 as floats
    params = tmp_path / "params.yaml"
    params.write_text("extract:\n  val_fraction: 0\n  test_fraction: 0\n")
    argv = ["extract", "--params", str(params), "--format", fmt, "--src", str(tmp_path / "raw")]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 1
    assert re.search(message, _one_error_line(capsys))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "raw"]  # no index.parquet, no COCO file


@pytest.mark.parametrize("coordinate", ["x", "y", "w", "h"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_check_box_refuses_a_non_finite_coordinate(coordinate, value):
    box = Box(**{"x": 1.0, "y": 1.0, "w": 4.0, "h": 4.0, coordinate: value}, label="polyp")
    with pytest.raises(V2IError, match=r"^f.json: frame 3: box \[.*\] has a coordinate that is not a finite number$"):
        check_box(box, 64, 48, "f.json: frame 3")


def test_a_named_params_file_that_is_missing_is_an_error_the_default_one_is_not(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml here
    small = ["--videos", "1", "--frames", "2"]
    assert main(["synth", "--params", "missing.yaml", "--out", "s", *small]) == 1
    assert _one_error_line(capsys) == "v2i: error: missing.yaml: no such params file"
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(V2IError, match=r"^missing\.yaml: no such params file$"):
        load_params("missing.yaml", named=True)
    assert main(["synth", "--out", "defaults", *small]) == 0  # no --params, no params.yaml: the built-in defaults
    assert main(["synth", "--params", "", "--out", "empty", *small]) == 0  # "": the built-in defaults by name
    assert (tmp_path / "defaults" / "synth.json").read_bytes() == (tmp_path / "empty" / "synth.json").read_bytes()


FINITE = "a finite number"
BAD_FLOATS = [  # key, value as typed after --set KEY=, what pydantic says the value should be
    ("baseline.train.lr", "-1e-4", "greater than 0"),
    ("baseline.train.lr", "0", "greater than 0"),
    ("baseline.train.lr", "nan", FINITE),
    ("baseline.train.lr", ".inf", FINITE),
    ("baseline.train.lr_backbone", "-1", "greater than or equal to 0"),
    ("baseline.train.lr_backbone", "inf", FINITE),
    ("baseline.train.weight_decay", ".nan", FINITE),
    ("baseline.train.clip_max_norm", "-0.1", "greater than or equal to 0"),
    ("baseline.train.loss.giou", "-.inf", FINITE),
    ("baseline.train.loss.focal_alpha", "2", "less than or equal to 1"),
    ("baseline.train.augment.hard_frames", "nan", FINITE),
    ("baseline.train.max_minutes", "nan", FINITE),
    ("baseline.model.dropout", ".inf", FINITE),
    ("eval.score_threshold", ".nan", FINITE),
]


@pytest.mark.parametrize(("key", "value", "problem"), BAD_FLOATS)
def test_a_bad_float_knob_names_its_key_before_any_run_starts(tmp_path, capsys, monkeypatch, key, value, problem):
    monkeypatch.chdir(tmp_path)  # an MLflow run would leave mlruns/ or mlflow.db here
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "params.yaml").write_text("baseline:\n  train:\n    epochs: 1\n")
    (tmp_path / "frames").mkdir()
    argv = ["train", "--params", "params.yaml", "--data", "frames", "--out", "model", "--set", f"{key}={value}"]
    assert main(argv) == 1
    assert _one_error_line(capsys) == f"v2i: error: params.yaml: '{key}': Input should be {problem}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames", "params.yaml"]


def test_an_infinite_lr_in_the_params_file_is_named_too(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("distill:\n  train:\n    lr: .inf\n  cqd:\n    weight: 5.0\n")
    with pytest.raises(V2IError, match=rf"^{path}: 'distill.train.lr': Input should be a finite number$"):
        load_params(path)
    path.write_text("teacher:\n  train:\n    lr_backbone: 0\n")  # 0: a frozen backbone, which is allowed
    assert load_params(path).teacher.train.lr_backbone == 0


class _Payload:
    """An object whose unpickling touches `marker`: what a pickled model.pt could do to whoever loads it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("payload", ["whole module", "code in the dict"])
def test_a_pickled_model_pt_is_refused_in_one_line_and_never_unpickled(tmp_path, capsys, payload):
    model = ModelConfig(input_size=(64, 64), d_model=32, nheads=4, enc_layers=1, dec_layers=1, dim_feedforward=64)
    spec = ModelSpec("baseline", model, [{"id": 1, "name": "polyp"}])
    network = build_network(spec)
    write_model_dir(tmp_path / "model", network, spec, {})
    marker = tmp_path / "unpickled"
    content = network if payload == "whole module" else {**network.state_dict(), "x": _Payload(marker)}
    torch.save(content, tmp_path / "model" / "model.pt")
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "coco_test.json").write_text("{}")
    out = tmp_path / "dets.json"
    argv = ["predict", "--params", "", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "frames")]
    assert main([*argv, "--out", str(out)]) == 1
    line = _one_error_line(capsys)
    assert line == (
        f"v2i: error: {tmp_path / 'model' / 'model.pt'}: not a weights-only checkpoint (a state dict of tensors); it "
        "will not be unpickled, as that can run code (save the model's state_dict() instead)"
    )
    assert "weights_only" not in line
    assert not marker.exists() and not out.exists()


def test_a_model_pt_that_is_not_a_state_dict_is_refused(tmp_path):
    model = ModelConfig(input_size=(64, 64), d_model=32, nheads=4, enc_layers=1, dec_layers=1, dim_feedforward=64)
    spec = ModelSpec("baseline", model, [{"id": 1, "name": "polyp"}])
    write_model_dir(tmp_path, build_network(spec), spec, {})
    torch.save([torch.zeros(3)], tmp_path / "model.pt")
    with pytest.raises(V2IError, match=r"model\.pt: not a state dict"):
        load_model_dir(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"hello")  # torch.load raises KeyError on these bytes
    with pytest.raises(V2IError, match=r"model\.pt: unreadable weights file \(KeyError\)$"):
        load_model_dir(tmp_path)
