"""Extraction: hand-built SUN-SEG and BUV layouts box by box, the `videos` layout, resize and stride,
splits by video, byte-identical re-runs, the synth -> extract -> pycocotools round trip, and JPEG frames copied as
they are unless resized."""

import json

import numpy as np
import pandas as pd
import pytest
from pycocotools.coco import COCO

from tests.fixtures_layouts import BUV_UNLISTED, build_buv, build_sunseg, build_videos
from v2i_core.cli import main
from v2i_core.config import ExtractConfig, SynthConfig
from v2i_core.data.extract import extract
from v2i_core.data.index import assign_splits
from v2i_core.data.synth import synthesize
from v2i_core.errors import V2IError


def _index_boxes(out) -> dict:
    df = pd.read_parquet(out / "index.parquet")
    return {
        (r.video_id, int(r.frame_idx)): [(b["x"], b["y"], b["w"], b["h"], b["label"]) for b in r.boxes]
        for r in df.itertuples()
    }


def _coco_boxes(out) -> dict:
    """Boxes per (video name, frame_idx) as the COCO files have them, through pycocotools."""
    found = {}
    for path in sorted(out.glob("coco_*.json")):
        coco = COCO(str(path))
        names = {v["id"]: v["name"] for v in coco.dataset["videos"]}
        cats = {c["id"]: c["name"] for c in coco.dataset["categories"]}
        for image in coco.dataset["images"]:
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
            found[(names[image["video_id"]], image["frame_idx"])] = [(*a["bbox"], cats[a["category_id"]]) for a in anns]
    return found


def test_sunseg_layout_box_by_box_with_splits_of_the_layout(tmp_path):
    expected = build_sunseg(tmp_path / "sun", order="y,x,w,h")
    out = tmp_path / "frames"
    extract(str(tmp_path / "sun"), out, ExtractConfig(format="sun-seg", val_fraction=0.0), progress=False)
    assert _index_boxes(out) == expected
    assert _coco_boxes(out) == expected
    df = pd.read_parquet(out / "index.parquet")
    splits = df.groupby("video_id")["split"].first().to_dict()
    assert splits == {
        "case1_1": "train",
        "case2_1": "train",
        "case2_4": "train",
        "case1_3": "test_easy",
        "case7_1": "test_easy",
        "case9_2": "test_hard",
    }
    # natural order of frame names: image1, image2, image10 -> 0, 1, 2
    assert df[df.video_id == "case1_1"].sort_values("frame_idx").file_name.tolist() == [
        "images/case1_1/000000.jpg",
        "images/case1_1/000001.jpg",
        "images/case1_1/000002.jpg",
    ]
    assert sorted(p.name for p in out.glob("coco_*.json")) == [
        "coco_test_easy.json",
        "coco_test_hard.json",
        "coco_train.json",
    ]


@pytest.mark.parametrize("order", ["x,y,w,h", "x0,y0,x1,y1", "y,x,w,h"])
def test_sunseg_bbox_field_order_is_taken_from_the_gt_masks(tmp_path, order):
    expected = build_sunseg(tmp_path / "sun", order=order, masks=True)
    extract(
        str(tmp_path / "sun"), tmp_path / "frames", ExtractConfig(format="sun-seg", val_fraction=0.0), progress=False
    )
    assert _index_boxes(tmp_path / "frames") == expected


def test_sunseg_without_masks_assumes_the_loaders_order(tmp_path):
    expected = build_sunseg(tmp_path / "sun", order="y,x,w,h", masks=False)
    extract(
        str(tmp_path / "sun"), tmp_path / "frames", ExtractConfig(format="sun-seg", val_fraction=0.0), progress=False
    )
    assert _index_boxes(tmp_path / "frames") == expected


def test_sunseg_val_is_carved_from_train_by_video(tmp_path):
    build_sunseg(tmp_path / "sun")
    extract(
        str(tmp_path / "sun"), tmp_path / "frames", ExtractConfig(format="sun-seg", val_fraction=0.3), progress=False
    )
    df = pd.read_parquet(tmp_path / "frames" / "index.parquet")
    per_video = df.groupby("video_id")["split"].nunique()
    assert (per_video == 1).all()
    train_pool = {"case1_1", "case2_1", "case2_4"}
    val = set(df[df.split == "val"].video_id)
    assert len(val) == 1 and val < train_pool
    assert set(df[df.split == "train"].video_id) == train_pool - val


def test_buv_layout_box_by_box_and_its_val_is_the_test_split(tmp_path):
    expected = build_buv(tmp_path / "buv")
    out = tmp_path / "frames"
    extract(str(tmp_path / "buv"), out, ExtractConfig(format="buv", val_fraction=0.0), progress=False)
    assert _index_boxes(out) == expected
    assert _coco_boxes(out) == expected
    df = pd.read_parquet(out / "index.parquet")
    assert set(df[df.split == "test"].video_id) == {"malignant/9d9d"}
    assert set(df[df.split == "train"].video_id) == {"benign/x1a2b", "malignant/7f3e", "benign/c0ffee"}
    for video, index in BUV_UNLISTED:  # on disk but not in the annotation file: not extracted
        assert (video, index) not in _index_boxes(out)
    assert (out / "images" / "malignant" / "7f3e" / "000002.jpg").is_file()
    cats = json.loads((out / "coco_train.json").read_text())["categories"]
    assert [(c["id"], c["name"]) for c in cats] == [(1, "benign"), (2, "malignant")]


def test_videos_layout_resize_scales_boxes_and_stride_keeps_every_nth_frame(tmp_path):
    expected = build_videos(tmp_path / "vids", {"a": 8, "b": 8, "c": 8})
    out = tmp_path / "frames"
    cfg = ExtractConfig(format="videos", stride=2, resize=(128, 72), val_fraction=0.2, test_fraction=0.2)
    extract(str(tmp_path / "vids"), out, cfg, progress=False)
    found = _index_boxes(out)
    assert sorted(found) == sorted(k for k in expected if k[1] % 2 == 0)
    for key, boxes in found.items():  # 64x48 -> 128x72: x scales by 2, y by 1.5
        assert boxes == [(x * 2, y * 1.5, w * 2, h * 1.5, lab) for x, y, w, h, lab in expected[key]]
    df = pd.read_parquet(out / "index.parquet")
    assert set(zip(df.width, df.height, strict=True)) == {(128, 72)}
    assert sorted(df.groupby("split").video_id.nunique().items()) == [("test", 1), ("train", 1), ("val", 1)]
    assert df.image_id.tolist() == list(range(1, len(df) + 1))
    assert df.equals(df.sort_values(["split", "video_id", "frame_idx"]).reset_index(drop=True))


def test_rerun_gives_byte_identical_index_and_coco_files(tmp_path):
    build_videos(tmp_path / "vids", {"a": 6, "b": 6, "c": 6, "d": 6})
    cfg = ExtractConfig(format="videos", seed=3)
    extract(str(tmp_path / "vids"), tmp_path / "one", cfg, progress=False)
    extract(str(tmp_path / "vids"), tmp_path / "two", cfg, progress=False)
    names = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file())
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_split_is_by_video_seeded_and_sized_by_the_fractions():
    videos = [(f"v{i:02d}", None) for i in range(20)]
    one = assign_splits(videos, 0.15, 0.25, seed=0, where="src")
    assert one == assign_splits(list(reversed(videos)), 0.15, 0.25, seed=0, where="src")  # order-independent
    assert sorted(one.values()).count("test") == 5 and sorted(one.values()).count("val") == 3
    others = [assign_splits(videos, 0.15, 0.25, seed=s, where="src") for s in range(1, 4)]
    assert any(o != one for o in others)
    # layout splits are kept; val comes from the layout's train only
    fixed = [("a", "train"), ("b", "train"), ("c", "train"), ("t1", "test_easy"), ("t2", "test_hard")]
    kept = assign_splits(fixed, 0.3, 0.25, seed=0, where="src", layout_splits=("train", "test_easy", "test_hard"))
    assert kept["t1"] == "test_easy" and kept["t2"] == "test_hard"
    assert sorted(kept[v] for v in "abc") == ["train", "train", "val"]


@pytest.mark.parametrize("flavour", ["colonoscopy", "ultrasound"])
def test_synth_extract_round_trip_through_the_cli_and_pycocotools(tmp_path, flavour, capsys):
    raw, out = tmp_path / "raw", tmp_path / "frames"
    assert (
        main(
            [
                "synth",
                "--params",
                "",
                "--out",
                str(raw),
                "--flavour",
                flavour,
                "--videos",
                "4",
                "--frames",
                "8",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    assert main(["extract", "--params", "", "--src", str(raw), "--out", str(out)]) == 0
    df = pd.read_parquet(out / "index.parquet")
    assert len(df) == 32 and df.video_id.nunique() == 4
    assert set(df.split) == {"train", "val", "test"}
    assert (df.groupby("video_id").split.nunique() == 1).all()
    expected_cats = ["polyp"] if flavour == "colonoscopy" else ["benign", "malignant"]
    images = 0
    for split in ("train", "val", "test"):
        coco = COCO(str(out / f"coco_{split}.json"))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == expected_cats
        assert len(coco.getImgIds()) == (df.split == split).sum()
        images += len(coco.getImgIds())
        for image in coco.loadImgs(coco.getImgIds()):
            assert (out / image["file_name"]).is_file()
    assert images == 32
    # every box and flag of the annotation files, frame by frame
    for row in df.itertuples():
        ann = json.loads((raw / f"{row.video_id}.json").read_text())["annotations"][row.frame_idx]
        assert [(b["x"], b["y"], b["w"], b["h"], b["label"]) for b in row.boxes] == [
            (b["x"], b["y"], b["w"], b["h"], b["label"]) for b in ann["boxes"]
        ]
        assert (row.hard, row.distractor) == (ann["hard"], ann["distractor"])


def test_extract_from_a_synth_folder_marks_hard_frames(tmp_path):
    cfg = SynthConfig(videos=3, frames=20, width=64, height=48, hard_fraction=0.5, distractor_rate=0.3, seed=2)
    synthesize(cfg, tmp_path / "raw")
    extract(str(tmp_path / "raw"), tmp_path / "frames", ExtractConfig(), progress=False)
    df = pd.read_parquet(tmp_path / "frames" / "index.parquet")
    assert df.hard.any() and df.distractor.any()
    assert df[df.hard].boxes.map(len).gt(0).all()  # a hard frame always shows the lesion
    assert df[df.hard].hard_kind.notna().all() and df[~df.hard].hard_kind.isna().all()


def test_bench_measures_decode_and_extraction_of_the_same_frames(tmp_path):
    from v2i_bench.extract import measure, report
    from v2i_core.config import Params

    synthesize(SynthConfig(videos=2, frames=6, width=64, height=48), tmp_path / "raw")
    params = Params(extract=ExtractConfig(val_fraction=0.0, test_fraction=0.0))
    result = measure(str(tmp_path / "raw"), "synthetic", params, tmp_path, repeats=2)
    assert result["frames"] == 12 and result["videos"] == 2
    assert len(result["decode_runs"]) == len(result["extract_runs"]) == 2
    assert result["decode_fps"] > 0 and result["extract_fps"] > 0
    assert result["ratio"] == pytest.approx(result["extract_fps"] / result["decode_fps"])
    assert (tmp_path / "frames1" / "index.parquet").is_file()  # it really extracted
    text = report(result)
    assert f"{result['decode_fps']:.1f} frames/s" in text and f"ratio      : {result['ratio']:.2f}" in text


def _sunseg_sources(root) -> dict:
    """(video_id, frame_idx) -> source JPEG of the SUN-SEG fixture (frames in natural order of their names)."""
    from v2i_core.data.source import natural_key

    found = {}
    for case_dir in sorted(root.glob("*/Frame/*")) + sorted(root.glob("*/*/Frame/*")):
        for index, path in enumerate(sorted(case_dir.glob("*.jpg"), key=lambda p: natural_key(p.name))):
            found[(case_dir.name, index)] = path
    return found


def test_jpeg_frames_are_copied_byte_for_byte_and_a_resize_re_encodes_them(tmp_path):
    from PIL import Image

    build_sunseg(tmp_path / "sun")
    sources = _sunseg_sources(tmp_path / "sun")
    assert len(sources) == 12
    copied, resized = tmp_path / "copied", tmp_path / "resized"
    extract(str(tmp_path / "sun"), copied, ExtractConfig(format="sun-seg", val_fraction=0.0), progress=False)
    cfg = ExtractConfig(format="sun-seg", val_fraction=0.0, resize=(32, 24))
    extract(str(tmp_path / "sun"), resized, cfg, progress=False)
    df = pd.read_parquet(copied / "index.parquet")
    assert len(df) == len(sources)
    for row in df.itertuples():
        source = sources[(row.video_id, row.frame_idx)].read_bytes()
        assert (copied / row.file_name).read_bytes() == source, row.file_name
        assert (resized / row.file_name).read_bytes() != source
        with Image.open(resized / row.file_name) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (32, 24))


def test_png_frames_are_still_encoded_as_jpeg(tmp_path):
    from PIL import Image

    build_buv(tmp_path / "buv")
    out = tmp_path / "frames"
    extract(str(tmp_path / "buv"), out, ExtractConfig(format="buv", val_fraction=0.0), progress=False)
    source = tmp_path / "buv" / "rawframes" / "malignant" / "7f3e" / "000002.png"
    written = out / "images" / "malignant" / "7f3e" / "000002.jpg"
    with Image.open(written) as image, Image.open(source) as original:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", original.size)
        difference = np.abs(np.asarray(image, dtype=int) - np.asarray(original.convert("RGB"), dtype=int))
        assert difference.mean() < 3  # the same picture, through JPEG


def test_a_truncated_jpeg_is_caught_although_it_would_be_copied(tmp_path):
    build_sunseg(tmp_path / "sun")
    broken = _sunseg_sources(tmp_path / "sun")[("case2_1", 1)]
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(V2IError, match=rf"^{broken}: unreadable image"):
        extract(
            str(tmp_path / "sun"), tmp_path / "out", ExtractConfig(format="sun-seg", val_fraction=0), progress=False
        )
    assert not (tmp_path / "out").exists()
