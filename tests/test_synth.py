"""Synthetic videos: determinism, the plan of hard frames and distractors, boxes true to the pixels, and
hard frames that weaken the lesion without erasing it."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from v2i_core.config import SynthConfig
from v2i_core.data.synth import SCENES, synthesize, synthesize_video
from v2i_core.data.synth_scene import Shape, lesion_visibility, plan_video
from v2i_core.data.video import decode
from v2i_core.errors import V2IError

SMALL = {"width": 96, "height": 64, "frames": 16, "videos": 3}


def test_same_seed_same_files_other_seed_other_videos(tmp_path):
    cfg = SynthConfig(**SMALL, seed=5)
    synthesize(cfg, tmp_path / "a")
    synthesize(cfg, tmp_path / "b")
    synthesize(cfg.model_copy(update={"seed": 6}), tmp_path / "c")
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert len([n for n in names if n.endswith(".mp4")]) == 3 and "synth.json" in names
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "colonoscopy_000.json").read_bytes() != (
        tmp_path / "c" / "colonoscopy_000.json"
    ).read_bytes()


def test_manifest_and_annotation_files_agree_with_the_videos(tmp_path):
    cfg = SynthConfig(**SMALL, flavour="ultrasound", seed=1)
    manifest = synthesize(cfg, tmp_path)
    assert json.loads((tmp_path / "synth.json").read_text()) == manifest
    assert manifest["categories"] == ["benign", "malignant"] and manifest["config"]["seed"] == 1
    for entry in manifest["videos"]:
        doc = json.loads((tmp_path / entry["annotation"]).read_text())
        frames = list(decode(tmp_path / entry["file"]))
        assert len(frames) == doc["frames"] == entry["frames"] == len(doc["annotations"]) == 16
        assert frames[0].shape == (64, 96, 3)
        assert [a["frame"] for a in doc["annotations"]] == list(range(16))
        assert entry["lesion_frames"] == sum(bool(a["boxes"]) for a in doc["annotations"])
        assert entry["hard_frames"] == sum(a["hard"] for a in doc["annotations"])
        for ann in doc["annotations"]:
            for b in ann["boxes"]:
                assert b["label"] in manifest["categories"]
                assert b["w"] > 0 and b["h"] > 0 and b["x"] >= 0 and b["y"] >= 0
                assert b["x"] + b["w"] <= 96 and b["y"] + b["h"] <= 64


@pytest.mark.parametrize("seed", range(6))
def test_plan_hard_events_are_short_and_flanked_by_clean_lesion_frames(seed):
    cfg = SynthConfig(frames=48, hard_fraction=0.3, distractor_rate=0.1, empty_fraction=0.2, seed=seed)
    plan = plan_video(np.random.default_rng(seed), cfg, ("blur", "glare"))
    lesion = [p.lesion for p in plan]
    assert sum(lesion) == 48 - round(0.2 * 48)
    first, last = lesion.index(True), len(lesion) - 1 - lesion[::-1].index(True)
    assert all(lesion[first : last + 1])  # one contiguous stretch
    hard = [p.hard_kind is not None for p in plan]
    assert abs(sum(hard) - round(0.3 * sum(lesion))) <= 1
    t = 0
    while t < len(plan):
        if hard[t]:
            length = 1 + (t + 1 < len(plan) and hard[t + 1])
            assert length <= 2 and not (t + 2 < len(plan) and hard[t + 2] and length == 2)
            assert lesion[t - 1] and not hard[t - 1]  # clean lesion frame before ...
            assert lesion[t + length] and not hard[t + length]  # ... and after
            t += length
        else:
            t += 1
    events = {}
    for t, p in enumerate(plan):
        if p.distractor is not None:
            events.setdefault(p.distractor, []).append(t)
    assert events and all(len(ts) <= 2 and ts == list(range(ts[0], ts[0] + len(ts))) for ts in events.values())


@pytest.mark.parametrize("flavour", ["colonoscopy", "ultrasound"])
def test_boxes_are_true_to_the_pixels_where_the_lesion_appears(tmp_path, flavour):
    """Between the last empty frame and the first lesion frame (camera nearly still), the change is in the box."""
    cfg = SynthConfig(
        **{**SMALL, "videos": 1}, flavour=flavour, hard_fraction=0, distractor_rate=0, empty_fraction=0.5, seed=3
    )
    synthesize(cfg, tmp_path)
    doc = json.loads((tmp_path / f"{flavour}_000.json").read_text())
    frames = [f.astype(np.float32) for f in decode(tmp_path / f"{flavour}_000.mp4")]
    has = [bool(a["boxes"]) for a in doc["annotations"]]
    t = next(i for i in range(1, len(has)) if has[i] != has[i - 1])
    with_lesion = t if has[t] else t - 1
    b = doc["annotations"][with_lesion]["boxes"][0]
    diff = np.abs(frames[t] - frames[t - 1]).mean(axis=2)
    x0, y0, x1, y1 = int(b["x"]), int(b["y"]), int(b["x"] + b["w"]), int(b["y"] + b["h"])
    inside = np.zeros(diff.shape, bool)
    inside[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1] = True
    outside = np.ones(diff.shape, bool)
    outside[max(0, y0 - 4) :, max(0, x0 - 4) : x1 + 4] = False  # the box, its margin and what lies below it
    assert diff[inside].mean() > 3 * diff[outside].mean()


def test_shape_box_is_the_half_coverage_outline():
    shape = Shape(40.3, 30.7, 12.0, 7.0, 0.4, ((3, 0.1, 0.5), (5, 0.05, 1.0)))
    x0, y0, x1, y1 = shape.bbox()
    alpha, _ = shape.coverage((64, 80), edge=1.0)
    ys, xs = np.nonzero(alpha >= 0.5)
    assert abs(xs.min() + 0.5 - x0) <= 1 and abs(xs.max() + 0.5 - x1) <= 1
    assert abs(ys.min() + 0.5 - y0) <= 1 and abs(ys.max() + 0.5 - y1) <= 1


def _evidence(flavour: str, kind: str | None, strength: float) -> float:
    """Mean |frame with lesion - same frame without| inside the lesion box: what a detector can see."""
    h, w = 96, 128
    scene = SCENES[flavour](np.random.default_rng(0), (h + 4, w + 4), (h, w))
    shape, label, _ = scene.lesion_shape(np.random.default_rng(1))
    shape = Shape(64.0, 52.0, max(shape.rx, 12), max(shape.ry, 12), shape.angle, shape.harmonics)
    layer = scene.lesion_layer(np.random.default_rng(2), shape, label)
    box = shape.bbox()
    offset = np.zeros(2)
    frames = [
        scene.render(0, offset, layers, kind, box, np.random.default_rng(3), strength).astype(np.float32)
        for layers in ([(layer, lesion_visibility(kind, strength))], [])
    ]
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    return float(np.abs(frames[0] - frames[1])[y0:y1, x0:x1].mean())


@pytest.mark.parametrize("flavour", ["colonoscopy", "ultrasound"])
def test_hard_frames_weaken_the_lesion_but_leave_a_cue(flavour):
    clean = _evidence(flavour, None, 0.8)
    for kind in SCENES[flavour].hard_kinds:
        hard = _evidence(flavour, kind, 0.8)
        assert hard < 0.9 * clean, kind
        assert hard > 0.1 * clean, kind
        assert _evidence(flavour, kind, 0.3) > hard, kind  # the strength knob scales the damage


def test_ultrasound_has_both_classes_and_colonoscopy_only_polyps():
    labels = {
        synthesize_video(SynthConfig(**SMALL, flavour="ultrasound", seed=0), i).annotations[8].boxes[0].label
        for i in range(8)
    }
    assert labels == {"benign", "malignant"}
    video = synthesize_video(SynthConfig(**SMALL, seed=0), 0)
    assert {b.label for a in video.annotations for b in a.boxes} == {"polyp"}


def test_odd_frame_size_is_refused(tmp_path):
    with pytest.raises(V2IError, match="even"):
        synthesize(SynthConfig(**{**SMALL, "width": 97}), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_a_terminated_synth_leaves_nothing_behind(tmp_path):
    # DVC, KFP and Kubernetes stop a step with SIGTERM: its half-written output must go with it
    out = tmp_path / "raw"
    proc = subprocess.Popen(
        [sys.executable, "-m", "v2i_core.cli", "synth", "--out", str(out), "--set", "synth.videos=200"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".raw.*.tmp/*.mp4")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, f"exit {proc.returncode}: done before the signal, or killed by it"
    assert stderr.strip().splitlines()[-1] == "v2i: terminated"
    assert list(tmp_path.iterdir()) == []
