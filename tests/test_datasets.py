"""Torch datasets over a frames directory: targets, clips and their clamping, one augmentation per clip,
box-safe crops, reproducibility from a generator, hard-frame degradation of the current frame only, collate."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tests.fixtures_layouts import build_videos
from v2i_core.config import AugmentConfig, ExtractConfig
from v2i_core.data.datasets import (
    ClipDataset,
    FrameDataset,
    clip_offsets,
    collate,
    load_categories,
    load_index,
)
from v2i_core.data.extract import extract
from v2i_core.data.hard_frames import KINDS, degrade
from v2i_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD, apply_boxes, apply_frames, sample_augment
from v2i_core.errors import V2IError

SIZE = (48, 64)  # the frames' own size: no resampling, so pixels can be compared exactly
STRONG = AugmentConfig(hflip=0.5, brightness=0.3, contrast=0.3, scale=(0.5, 0.9), hard_frames=0.0)


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    build_videos(root / "raw", {"a": 9, "b": 7, "c": 6})
    extract(
        str(root / "raw"),
        root / "frames",
        ExtractConfig(format="videos", val_fraction=0.0, test_fraction=0.3),
        progress=False,
    )
    return root / "frames"


def _pixels(image: torch.Tensor) -> np.ndarray:
    """A normalised [3, H, W] image back to uint8 [H, W, 3]."""
    rgb = image.permute(1, 2, 0).numpy() * IMAGENET_STD + IMAGENET_MEAN
    return np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)


def test_frame_item_is_the_jpeg_normalised_with_its_target(frames_dir):
    ds = FrameDataset(frames_dir, "train", SIZE, augment=None)
    index = load_index(frames_dir)
    train = index[index.split == "train"].reset_index(drop=True)
    assert len(ds) == len(train)
    for i in range(len(ds)):
        image, target = ds[i]
        row = train.iloc[i]
        assert image.shape == (3, *SIZE) and image.dtype == torch.float32
        jpeg = np.asarray(Image.open(frames_dir / row.file_name).convert("RGB"))
        assert np.abs(_pixels(image).astype(int) - jpeg).max() <= 1
        assert target["image_id"] == row.image_id
        assert target["orig_size"].tolist() == [row.height, row.width]
        expected = [
            [(b["x"] + b["w"] / 2) / 64, (b["y"] + b["h"] / 2) / 48, b["w"] / 64, b["h"] / 48] for b in row.boxes
        ]
        assert torch.allclose(target["boxes"], torch.tensor(expected).reshape(-1, 4))
        assert target["labels"].tolist() == [0] * len(row.boxes)


def test_categories_and_labels_follow_the_coco_ids(frames_dir):
    assert load_categories(frames_dir) == [{"id": 1, "name": "lesion"}]


@pytest.mark.parametrize(
    ("frames", "stride", "offsets"),
    [(3, 1, [-1, 0, 1]), (3, 2, [-2, 0, 2]), (4, 1, [-2, -1, 0, 1]), (2, 1, [-1, 0]), (1, 3, [0])],
)
def test_clip_offsets_put_the_current_frame_at_t_half(frames, stride, offsets):
    assert clip_offsets(frames, stride) == offsets
    assert offsets[frames // 2] == 0


def test_clips_are_the_video_neighbours_clamped_at_the_ends(frames_dir):
    clips = ClipDataset(frames_dir, "train", SIZE, frames=3, ref_stride=2, augment=None)
    single = FrameDataset(frames_dir, "train", SIZE, augment=None)
    rows = clips.rows
    for i in range(len(clips)):
        clip, target = clips[i]
        assert clip.shape == (3, 3, *SIZE)
        video = rows[rows.video_id == rows.video_id[i]].sort_values("frame_idx")
        pos = video.index.get_loc(i)
        for t, off in enumerate([-2, 0, 2]):
            j = video.index[min(max(pos + off, 0), len(video) - 1)]
            assert torch.equal(clip[t], single[j][0])
        assert target["image_id"] == rows.image_id[i]


def test_one_augmentation_for_every_frame_of_a_clip_and_boxes_follow_it(frames_dir):
    clips = ClipDataset(frames_dir, "train", (40, 56), 3, 1, augment=STRONG, generator=torch.Generator())
    raw = ClipDataset(frames_dir, "train", (48, 64), 3, 1, augment=None)
    for i in range(0, len(clips), 3):
        clips.generator.manual_seed(100 + i)
        clip, target = clips[i]
        # the same draw, made again, applied by hand to each raw frame separately
        boxes = raw.boxes[i]
        aug = sample_augment(STRONG, (48, 64), boxes, torch.Generator().manual_seed(100 + i))
        originals = [Image.fromarray(_pixels(f)) for f in raw[i][0]]
        for t in range(3):
            assert torch.allclose(clip[t], apply_frames([originals[t]], aug, (40, 56))[0], atol=1e-5)
        assert torch.allclose(target["boxes"], apply_boxes(boxes, aug))


def test_crops_keep_every_box_whole_and_flips_mirror_it():
    gen = torch.Generator().manual_seed(0)
    cfg = AugmentConfig(hflip=0.5, brightness=0.0, contrast=0.0, scale=(0.3, 0.6), hard_frames=0.0)
    flips = 0
    for _ in range(300):
        x0, y0 = torch.randint(0, 50, (2,), generator=gen).tolist()
        w, h = torch.randint(2, 30, (2,), generator=gen).tolist()
        boxes = torch.tensor([[x0, y0, min(x0 + w, 80), min(y0 + h, 60)]], dtype=torch.float32)
        aug = sample_augment(cfg, (60, 80), boxes, gen)
        left, top, cw, ch = aug.crop
        assert left >= 0 and left + cw <= 80 and top >= 0 and top + ch <= 60
        assert left <= boxes[0, 0] and boxes[0, 2] <= left + cw and top <= boxes[0, 1] and boxes[0, 3] <= top + ch
        cx, cy, bw, bh = apply_boxes(boxes, aug)[0].tolist()
        assert bw * cw == pytest.approx(float(boxes[0, 2] - boxes[0, 0]), abs=1e-4)  # nothing cut off
        assert bh * ch == pytest.approx(float(boxes[0, 3] - boxes[0, 1]), abs=1e-4)
        centre = (float(boxes[0, 0] + boxes[0, 2]) / 2 - left) / cw
        assert cx == pytest.approx(1 - centre if aug.hflip else centre, abs=1e-5)
        flips += aug.hflip
    assert 100 < flips < 200
    # with no box to keep, the crop area follows the scale range
    areas = [np.prod(sample_augment(cfg, (60, 80), torch.zeros((0, 4)), gen).crop[2:]) / 4800 for _ in range(200)]
    assert min(areas) > 0.27 and max(areas) < 0.66


def test_augmentation_is_reproducible_from_the_generator(frames_dir):
    ds = FrameDataset(frames_dir, "train", SIZE, augment=STRONG, generator=torch.Generator())
    ds.generator.manual_seed(7)
    first = [ds[i] for i in range(4)]
    ds.generator.manual_seed(7)
    again = [ds[i] for i in range(4)]
    ds.generator.manual_seed(8)
    other = [ds[i] for i in range(4)]
    for (a, ta), (b, tb) in zip(first, again, strict=True):
        assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"])
    assert any(not torch.equal(a, c) for (a, _), (c, _) in zip(first, other, strict=True))
    torch.manual_seed(3)  # without a generator: torch's global one, as the training loop seeds it per epoch
    ds.generator = None
    x = ds[0][0]
    torch.manual_seed(3)
    assert torch.equal(x, ds[0][0])


def test_hard_frames_degrade_the_current_frame_only_and_only_frames_with_a_lesion(frames_dir):
    plain = AugmentConfig(hflip=0.0, brightness=0.0, contrast=0.0, scale=(1.0, 1.0), hard_frames=0.0)
    hard = plain.model_copy(update={"hard_frames": 1.0})
    clips = ClipDataset(frames_dir, "train", SIZE, 3, 1, augment=hard, generator=torch.Generator())
    raw = ClipDataset(frames_dir, "train", SIZE, 3, 1, augment=plain, generator=torch.Generator())
    singles = FrameDataset(frames_dir, "train", SIZE, augment=hard, generator=torch.Generator())
    for i in range(len(clips)):
        for ds in (clips, raw, singles):
            ds.generator.manual_seed(i)  # the same crop for all three (its aspect is still drawn)
        clip, target = clips[i]
        original, raw_target = raw[i]
        assert torch.equal(clip[0], original[0]) and torch.equal(clip[2], original[2])  # references stay clean
        degraded = not torch.equal(clip[1], original[1])
        assert degraded == bool(len(clips.boxes[i]))  # every frame with a lesion, none without
        assert torch.equal(target["boxes"], raw_target["boxes"])  # the labels stay: the lesion is still there
        assert torch.equal(singles[i][0], original[1]) != degraded  # single frames too


def test_a_clean_teacher_view_keeps_the_clip_clean_and_gives_the_degraded_frame_apart(frames_dir):
    plain = AugmentConfig(hflip=0.5, brightness=0.2, contrast=0.2, scale=(0.8, 1.0), hard_frames=0.0)
    hard = plain.model_copy(update={"hard_frames": 1.0})
    kept = ClipDataset(frames_dir, "train", SIZE, 3, 1, hard, torch.Generator(), keep_clean=True)
    degraded = ClipDataset(frames_dir, "train", SIZE, 3, 1, hard, torch.Generator())
    raw = ClipDataset(frames_dir, "train", SIZE, 3, 1, plain, torch.Generator())
    for i in range(len(kept)):
        for ds in (kept, degraded, raw):
            ds.generator.manual_seed(i)  # the same draw: crop, flip, colour, and the hard kind after them
        clip, target = kept[i]
        assert torch.equal(clip, raw[i][0])  # the teacher's clip, as if no degradation was drawn
        if len(kept.boxes[i]):
            student_clip, student_target = degraded[i]
            assert torch.equal(target["student_frame"], student_clip[1])  # the very frame the paper's view shows
            assert not torch.equal(target["student_frame"], clip[1])
            assert torch.equal(target["boxes"], student_target["boxes"])
        else:
            assert "student_frame" not in target  # nothing drawn: the student sees the clip's own frame


def test_hard_frames_draw_nothing_when_off_so_older_runs_replay():
    boxes = torch.tensor([[4.0, 6.0, 16.0, 16.0]])
    half = STRONG.model_copy(update={"hard_frames": 0.5})
    off = [sample_augment(STRONG, (48, 64), boxes, torch.Generator().manual_seed(s)) for s in range(20)]
    on = [sample_augment(half, (48, 64), boxes, torch.Generator().manual_seed(s)) for s in range(20)]
    for a, b in zip(off, on, strict=True):
        assert a.hard is None and a == dataclasses.replace(b, hard=None)
    assert 3 < sum(b.hard is not None for b in on) < 17
    assert {b.hard[0] for b in on if b.hard} <= set(KINDS)


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_hard_kind_weakens_the_lesion_and_replays_from_its_seed(kind):
    # a bright square lesion on flat tissue: what a kind takes away shows as less contrast inside the box
    frame = np.full((48, 64, 3), 90, np.uint8)
    frame[14:30, 20:40] = 200
    image, boxes = Image.fromarray(frame), torch.tensor([[20.0, 14.0, 40.0, 30.0]])
    hard = degrade(image, boxes, kind, seed=3, strength=0.8)
    assert hard.size == image.size and hard.mode == "RGB"
    assert np.array_equal(np.asarray(hard), np.asarray(degrade(image, boxes, kind, seed=3, strength=0.8)))
    before, after = frame.astype(float), np.asarray(hard, float)
    lesion = (slice(16, 28), slice(22, 38))
    assert np.abs(after[lesion] - before[lesion]).mean() > 10  # the lesion's evidence is changed
    assert np.abs(after - before).mean() < np.abs(after[lesion] - before[lesion]).mean()  # most of it over the lesion


def test_collate_stacks_frames_and_clips_and_keeps_targets(frames_dir):
    frames = FrameDataset(frames_dir, "test", SIZE)
    clips = ClipDataset(frames_dir, "test", SIZE, 3, 1)
    x, targets = collate([frames[0], frames[1], frames[2]])
    assert x.shape == (3, 3, *SIZE) and [t["image_id"] for t in targets] == [frames[i][1]["image_id"] for i in range(3)]
    x, targets = collate([clips[0], clips[1]])
    assert x.shape == (2, 3, 3, *SIZE) and len(targets) == 2


def test_empty_frames_have_empty_targets(frames_dir):
    ds = FrameDataset(frames_dir, "train", SIZE)
    empty = [i for i in range(len(ds)) if len(ds.rows.boxes[i]) == 0]
    assert empty
    _, target = ds[empty[0]]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


def test_missing_index_or_split_is_a_clear_error(frames_dir, tmp_path):
    with pytest.raises(V2IError, match="index.parquet: missing"):
        load_index(tmp_path)
    with pytest.raises(V2IError, match="coco_<split>.json"):
        load_categories(tmp_path)
    with pytest.raises(V2IError, match="no split 'val'"):
        FrameDataset(frames_dir, "val", SIZE)
    assert isinstance(load_index(frames_dir), pd.DataFrame)
