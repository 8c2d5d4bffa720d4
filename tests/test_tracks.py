"""Lesion tracks and frame rates in the frames index: overlap linking on hand-made sequences, the source's own ids
(synthetic `track`, BUV `instance_id`) carried through extraction, COCO-VID instance ids, fps divided by the stride,
and an index written before tracks still read."""

import json
import logging
import re

import pandas as pd
import pyarrow.parquet as pq
import pytest
from pycocotools.coco import COCO

from tests.fixtures_layouts import build_buv, build_sunseg, build_videos, moving_square_frames
from v2i_core.cli import main
from v2i_core.config import ExtractConfig, SynthConfig
from v2i_core.data.annotations import Box
from v2i_core.data.datasets import load_index
from v2i_core.data.extract import extract
from v2i_core.data.source import DEFAULT_FPS
from v2i_core.data.synth import LESION_TRACK, synthesize
from v2i_core.data.tracks import LINK_IOU, box_iou, link_by_overlap
from v2i_core.data.video import write_video
from v2i_core.errors import V2IError


def box(x, y, w=10, h=10, label="polyp") -> Box:
    return Box(float(x), float(y), float(w), float(h), label)


def _tracks(out) -> dict:
    """{(video_id, frame_idx): [track id of each box]} as the index has them."""
    df = pd.read_parquet(out / "index.parquet")
    return {(r.video_id, int(r.frame_idx)): [int(t) for t in r.track_ids] for r in df.itertuples()}


def _extract(src, out, **cfg):
    return extract(src, out, ExtractConfig(**cfg), workers=1, progress=False)


# --- linking by overlap, on hand-made sequences -----------------------------------------------------------------


def test_two_lesions_crossing_keep_their_tracks():
    """a moves right, b moves left 2 px lower; around the crossing each overlaps the other's previous box (IoU up
    to 0.47, above LINK_IOU) less than its own (0.67), so each keeps its track, whichever comes first in a frame."""
    a = [box(10 + 2 * t, 20) for t in range(13)]
    b = [box(34 - 2 * t, 22) for t in range(13)]
    assert max(box_iou(a[t - 1], b[t]) for t in range(1, 13)) > LINK_IOU  # a wrong link was on offer
    frames = [[a[t], b[t]] if t % 2 == 0 else [b[t], a[t]] for t in range(13)]
    assert link_by_overlap(frames) == [[1, 2] if t % 2 == 0 else [2, 1] for t in range(13)]


def test_a_lesion_leaving_and_a_new_one_appearing_start_new_tracks():
    a, elsewhere = box(10, 10), box(60, 40)
    frames = [[a], [box(11, 10)], [], [box(12, 10)], [elsewhere], [box(61, 40), box(12, 11)]]
    # a is gone in frame 2, so its return in frame 3 is a new track (only the source could say it is the same);
    # frame 4 loses it and shows another lesion; frame 5 keeps that one and brings a back once more
    assert link_by_overlap(frames) == [[1], [1], [], [2], [3], [3, 4]]


def test_linking_needs_the_overlap_and_the_same_label():
    a = box(0, 0, 10, 10)
    just = box(0, 0, 10, 10 / LINK_IOU)  # IoU exactly LINK_IOU
    below = box(0, 0, 10, 10 / LINK_IOU + 1)
    assert box_iou(a, just) == pytest.approx(LINK_IOU)
    assert link_by_overlap([[a], [just]]) == [[1], [1]]
    assert link_by_overlap([[a], [below]]) == [[1], [2]]
    assert link_by_overlap([[a], [box(0, 0, label="adenoma")]]) == [[1], [2]]


def test_each_previous_box_continues_one_track_only_the_best_overlap_first():
    """One box splits into two: the closer keeps the track, the other starts one; the order of boxes in the
    frame does not decide it."""
    before = [box(10, 10, 20, 10)]
    assert link_by_overlap([before, [box(10, 10, 9, 10), box(12, 10, 18, 10)]]) == [[1], [2, 1]]
    assert link_by_overlap([before, [box(12, 10, 18, 10), box(10, 10, 9, 10)]]) == [[1], [1, 2]]


# --- the source's own tracks through extraction ---------------------------------------------------------------------


def test_synthetic_tracks_survive_extract_and_fps_is_divided_by_the_stride(tmp_path):
    cfg = SynthConfig(videos=3, frames=9, width=64, height=48, fps=12, empty_fraction=0.3, seed=3)
    synthesize(cfg, tmp_path / "synth")
    written = {}
    for path in sorted((tmp_path / "synth").glob("*_*.json")):
        for entry in json.loads(path.read_text())["annotations"]:
            written[(path.stem, entry["frame"])] = [b["track"] for b in entry["boxes"]]
    assert any(written.values()) and {t for ts in written.values() for t in ts} == {LESION_TRACK}

    _extract(tmp_path / "synth", tmp_path / "frames", stride=2, val_fraction=0.3, test_fraction=0.3)
    kept = {key: tracks for key, tracks in written.items() if key[1] % 2 == 0}
    assert _tracks(tmp_path / "frames") == kept
    index = load_index(tmp_path / "frames")
    assert set(index["fps"]) == {6.0} and set(index["source_fps"]) == {12.0}
    videos = [v for p in (tmp_path / "frames").glob("coco_*.json") for v in json.loads(p.read_text())["videos"]]
    assert len(videos) == 3 and all(v["fps"] == 6.0 and v["source_fps"] == 12.0 for v in videos)


def _named_tracks_video(root):
    """One video, a square that stays put in frames 0-1, is gone in 2, back in 3-4; another square appears at
    the very same place in frame 5. Overlap would say three tracks; the file says two (a returns; b is new)."""
    root.mkdir()
    at = {0: "a", 1: "a", 3: "a", 4: "a", 5: "b"}
    write_video(root / "v.mp4", moving_square_frames(6, lambda t: (10, 10, 12, 10) if t in at else None), fps=10)
    annotations = [
        {"frame": t, "boxes": [{"x": 10, "y": 10, "w": 12, "h": 10, "label": "lesion", "track": name}]}
        for t, name in at.items()
    ]
    (root / "v.json").write_text(json.dumps({"annotations": annotations}))


def test_a_videos_file_with_tracks_is_taken_at_its_word(tmp_path):
    _named_tracks_video(tmp_path / "src")
    _extract(tmp_path / "src", tmp_path / "frames", format="videos", val_fraction=0, test_fraction=0)
    assert _tracks(tmp_path / "frames") == {("v", 0): [1], ("v", 1): [1], ("v", 2): [], ("v", 3): [1],
                                           ("v", 4): [1], ("v", 5): [2]}  # fmt: skip
    # the same file with null tracks (as if absent): linked by overlap, a's return is a new track and b, where a
    # was in frame 4, continues it
    doc = json.loads((tmp_path / "src" / "v.json").read_text())
    for entry in doc["annotations"]:
        entry["boxes"][0]["track"] = None
    (tmp_path / "src" / "v.json").write_text(json.dumps(doc))
    _extract(tmp_path / "src", tmp_path / "frames", format="videos", val_fraction=0, test_fraction=0)
    assert _tracks(tmp_path / "frames") == {("v", 0): [1], ("v", 1): [1], ("v", 2): [], ("v", 3): [2],
                                           ("v", 4): [2], ("v", 5): [2]}  # fmt: skip


def test_videos_layout_fps_from_the_container_divided_by_the_stride(tmp_path):
    build_videos(tmp_path / "src", {"a": 8, "b": 6})  # written at 10 fps
    _extract(tmp_path / "src", tmp_path / "f1", format="videos", val_fraction=0, test_fraction=0.3)
    _extract(tmp_path / "src", tmp_path / "f3", format="videos", val_fraction=0, test_fraction=0.3, stride=3)
    _extract(tmp_path / "src", tmp_path / "fx", format="videos", val_fraction=0, test_fraction=0.3, fps=50)
    assert set(load_index(tmp_path / "f1")["fps"]) == {10.0}
    index = load_index(tmp_path / "f3")
    assert set(index["fps"]) == {10 / 3} and set(index["source_fps"]) == {10.0}
    assert set(load_index(tmp_path / "fx")["fps"]) == {10.0}  # extract.fps is for sources that state no rate
    # every 4th frame is empty: the square comes back as a new track each time (overlap linking)
    assert _tracks(tmp_path / "f1")[("a", 2)] == [1] and _tracks(tmp_path / "f1")[("a", 4)] == [2]


def _with_ids(path, ids: dict, key="instance_id"):
    """Give the BUV file's annotations ids: {(video, frame number): id}."""
    doc = json.loads(path.read_text())
    images = {i["id"]: (i["file_name"].rsplit("/", 1)[0], int(i["file_name"][-10:-4])) for i in doc["images"]}
    for ann in doc["annotations"]:
        ann[key] = ids[images[ann["image_id"]]]
    path.write_text(json.dumps(doc))


BUV_TRAIN_IDS = {  # global ids as ImageNet-VID converters write them; 7f3e's frame 1 is another lesion
    ("benign/x1a2b", 0): 11, ("benign/x1a2b", 1): 11,
    ("malignant/7f3e", 0): 12, ("malignant/7f3e", 1): 13, ("malignant/7f3e", 2): 12,
    ("benign/c0ffee", 0): 14, ("benign/c0ffee", 1): 14,
}  # fmt: skip


@pytest.mark.parametrize("key", ["instance_id", "track_id"])
def test_buv_instance_ids_are_kept_and_its_fps_is_the_param(tmp_path, key):
    build_buv(tmp_path / "buv")
    _with_ids(tmp_path / "buv" / "imagenet_vid_train_15frames.json", BUV_TRAIN_IDS, key)
    _extract(tmp_path / "buv", tmp_path / "frames", format="buv", val_fraction=0, fps=30)
    tracks = _tracks(tmp_path / "frames")
    # overlap would make 7f3e one track (its boxes barely move): the ids say lesion 12, then 13, then 12 again
    assert [tracks[("malignant/7f3e", i)] for i in range(3)] == [[1], [2], [1]]
    assert [tracks[("benign/x1a2b", i)] for i in (0, 1, 3)] == [[1], [1], []]
    assert tracks[("malignant/9d9d", 0)] == tracks[("malignant/9d9d", 1)] == [1]  # the val file: linked
    assert set(load_index(tmp_path / "frames")["fps"]) == {30.0}


def test_buv_without_ids_is_linked_and_gets_the_default_fps(tmp_path):
    build_buv(tmp_path / "buv")
    _extract(tmp_path / "buv", tmp_path / "frames", format="buv", val_fraction=0)
    assert [_tracks(tmp_path / "frames")[("malignant/7f3e", i)] for i in range(3)] == [[1], [1], [1]]
    assert set(load_index(tmp_path / "frames")["fps"]) == {DEFAULT_FPS}


def test_sunseg_boxes_are_linked_by_overlap(tmp_path):
    build_sunseg(tmp_path / "sun")
    _extract(tmp_path / "sun", tmp_path / "frames", format="sun-seg", val_fraction=0, fps=30)
    tracks = _tracks(tmp_path / "frames")
    assert [tracks[("case1_1", i)] for i in range(3)] == [[1], [1], []]
    assert [tracks[("case9_2", i)] for i in range(2)] == [[1], [2]]  # far apart: two lesions
    assert set(load_index(tmp_path / "frames")["fps"]) == {30.0}


# --- COCO-VID instance ids ----------------------------------------------------------------------------------------


def test_coco_instance_ids_are_the_tracks_unique_across_every_file(tmp_path):
    build_buv(tmp_path / "buv")
    _with_ids(tmp_path / "buv" / "imagenet_vid_train_15frames.json", BUV_TRAIN_IDS)
    _extract(tmp_path / "buv", tmp_path / "frames", format="buv", val_fraction=0.4)
    index = load_index(tmp_path / "frames")
    track_of = {
        int(r.image_id): [(r.video_id, int(t)) for t in r.track_ids] for r in index.itertuples()
    }  # image id -> the (video, track) of each box, in box order
    instance_to_track: dict = {}
    files = sorted((tmp_path / "frames").glob("coco_*.json"))
    assert len(files) == 3
    for path in files:
        coco = COCO(str(path))
        videos = {v["id"]: v["name"] for v in coco.dataset["videos"]}
        for image in coco.dataset["images"]:
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
            assert [(videos[a["video_id"]], a["instance_id"]) for a in anns] == [
                (videos[image["video_id"]], a["instance_id"]) for a in anns
            ]
            for ann, track in zip(anns, track_of[image["id"]], strict=True):
                assert isinstance(ann["instance_id"], int)
                assert instance_to_track.setdefault(ann["instance_id"], track) == track
    # one instance id per (video, track), and back: ids are unique across the files, not only within a video
    tracks = {t for ts in track_of.values() for t in ts}
    assert len(instance_to_track) == len(tracks) and set(instance_to_track.values()) == tracks
    assert sorted(instance_to_track) == list(range(1, len(tracks) + 1))


# --- bad input: one line naming the file ---------------------------------------------------------------------------


def _edit(path, change):
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _set_track(value, frame=0):
    def change(doc):
        next(a for a in doc["annotations"] if a["frame"] == frame)["boxes"][0]["track"] = value

    return change


def _two_boxes_one_track(doc):
    entry = doc["annotations"][0]
    entry["boxes"].append({**entry["boxes"][0], "x": 30})
    for b in entry["boxes"]:
        b["track"] = 7
    for other in doc["annotations"][1:]:
        other["boxes"][0]["track"] = 7


def _all_tracks(value):
    def change(doc):
        for entry in doc["annotations"]:
            for b in entry["boxes"]:
                b["track"] = value

    return change


@pytest.mark.parametrize(
    "change, message",
    [
        (_all_tracks(True), r"a\.json: frame 0 'track': a track must be an integer or a non-empty string, got true"),
        (_all_tracks(1.5), r"a\.json: frame 0 'track': a track must be an integer or a non-empty string, got 1\.5"),
        (_all_tracks(""), r"a\.json: frame 0 'track': a track must be an integer or a non-empty string"),
        (_set_track(3), r"a\.json: 1 boxes have a 'track' and 5 do not; give every box one, or none"),
        (_two_boxes_one_track, r"a\.json: frame 0: track 7 is given to two boxes of the same frame"),
    ],
)
def test_bad_tracks_in_a_videos_file_are_one_line_and_leave_no_output(tmp_path, capsys, change, message):
    build_videos(tmp_path / "src", {"a": 8})
    _edit(tmp_path / "src" / "a.json", change)
    code = main(["extract", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--format", "videos"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and re.search(message, err[0]), err
    assert not (tmp_path / "out").exists()


def test_buv_ids_on_some_annotations_only_is_an_error_naming_the_file(tmp_path):
    build_buv(tmp_path / "buv")
    path = tmp_path / "buv" / "imagenet_vid_val.json"
    _edit(path, lambda doc: doc["annotations"][0].update(instance_id=4))
    with pytest.raises(V2IError, match=r"imagenet_vid_val\.json: 1 boxes have an 'instance_id' or 'track_id' and 1"):
        _extract(tmp_path / "buv", tmp_path / "frames", format="buv")


# --- an index written before tracks and frame rates --------------------------------------------------------------


def test_an_index_without_tracks_or_fps_is_linked_and_given_the_default_rate_when_read(tmp_path, caplog):
    _named_tracks_video(tmp_path / "src")
    _extract(tmp_path / "src", tmp_path / "frames", format="videos", val_fraction=0, test_fraction=0, stride=1)
    path = tmp_path / "frames" / "index.parquet"
    table = pq.read_table(path)
    pq.write_table(table.drop_columns(["track_ids", "fps", "source_fps"]), path)
    with caplog.at_level(logging.WARNING):
        index = load_index(tmp_path / "frames")
    assert "no track_ids" in caplog.text and "no frame rates" in caplog.text
    # linked by overlap at read time: the file's own names are lost with the column
    assert [list(t) for t in index.sort_values("frame_idx")["track_ids"]] == [[1], [1], [], [2], [2], [2]]
    assert set(index["fps"]) == {DEFAULT_FPS}
