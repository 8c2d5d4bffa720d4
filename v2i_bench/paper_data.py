"""The data of `v2i bench paper`: per dataset the training videos, the test videos every model is scored on, and
(colonoscopy) the validation videos the score thresholds are picked on; each synthesised and extracted once.

Test and validation videos are the dataset's generator under other seeds (synth seed + 2000 and + 1000), so
neither is a training video and each set can hold as many videos as a stable figure needs;
extracted whole, they land in the one split the extractor always fills. With bench.test_videos 0 the models are
tested on the extract split's own test videos instead, as the bench did before held-out test videos existed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from v2i_bench.config import BenchConfig
from v2i_core.config import ExtractConfig, SynthConfig
from v2i_core.data.datasets import load_index
from v2i_core.data.extract import extract
from v2i_core.data.synth import synthesize
from v2i_core.errors import V2IError
from v2i_core.eval.score import match_detections, read_ground_truth, subset_recall
from v2i_core.storage import atomic_file, read_json

SPLIT = "test"  # the extract split's test videos
APART_SPLIT = "train"  # where videos synthesised apart land, extracted whole
VAL_SEED_OFFSET = 1000
TEST_SEED_OFFSET = 2000
CLEAR = "clear"  # the kind of a frame the synthesiser did not degrade


@dataclass(frozen=True)
class TestSet:
    """The frames every model of one dataset is scored on."""

    frames: Path
    split: str
    made_with: dict | None  # the held-out videos' settings; None: the extract split's test videos

    # Read once per test set, not once per run: the bench scores every run of a dataset on the same set.
    @cached_property
    def gt(self) -> dict:
        return read_json(self.frames / f"coco_{self.split}.json")

    @cached_property
    def frames_by_kind(self) -> dict[str, set[int]]:
        """Image ids of the frames by how the synthesiser left them: CLEAR, or the hard kind that degraded them;
        {} for data without the flags."""
        return frames_by_kind(self.frames, self.split)

    @cached_property
    def hard_frames(self) -> set[int]:
        """Image ids of the frames the synthesiser degraded: the lesion's evidence is in their neighbours."""
        return set().union(*(ids for kind, ids in self.frames_by_kind.items() if kind != CLEAR))


def check_settings(path: Path, settings: dict) -> bool:
    """True when `path` records these settings, False when absent; an error when it records others."""
    if not path.exists():
        return False
    if json.loads(path.read_text()) != settings:
        raise V2IError(
            f"{path}: made with other settings than this run's; use another --out, or remove {path.parent} to redo it"
        )
    return True


def write_json(path: Path, value) -> None:
    with atomic_file(path) as handle:
        json.dump(value, handle, indent=2)  # insertion order: rows stay in table order
        handle.write("\n")


def synthesised_frames(root: Path, settings: dict, split: str, where: str, remedy: str) -> Path:
    """root/frames, synthesised and extracted from `settings` ({"synth", "extract"}) once and reused while they
    hold; a `split` left without videos is an error that names the params (`where`) and what to change."""
    if check_settings(root / "settings.json", settings):
        return root / "frames"
    synthesize(SynthConfig.model_validate(settings["synth"]), root / "raw")
    extract_cfg = ExtractConfig.model_validate(settings["extract"])
    summary = extract(root / "raw", root / "frames", extract_cfg, progress=False)
    if not summary["splits"].get(split):
        raise V2IError(f"params: {where}: no {split} videos among {summary['videos']}; {remedy}")
    write_json(root / "settings.json", settings)  # last: the data counts as ready only once this exists
    return root / "frames"


def prepare_data(cfg: BenchConfig, dataset: str, out: Path) -> Path:
    """The frames directory of one dataset: synthesised and extracted once, reused while its settings hold."""
    synth = getattr(cfg.datasets, dataset)
    settings = {"synth": synth.model_dump(mode="json"), "extract": cfg.extract.model_dump(mode="json")}
    needed = "train" if cfg.test_videos else SPLIT  # held-out test videos leave the split's test part optional
    remedy = "raise videos" + ("" if cfg.test_videos else " or bench.extract.test_fraction")
    return synthesised_frames(out / "data" / dataset, settings, needed, f"bench.datasets.{dataset}", remedy)


def _apart_settings(cfg: BenchConfig, dataset: str, videos: int, seed_offset: int) -> dict:
    synth = getattr(cfg.datasets, dataset)
    synth = synth.model_copy(update={"videos": videos, "seed": synth.seed + seed_offset})
    split_off_none = cfg.extract.model_copy(update={"val_fraction": 0.0, "test_fraction": 0.0})
    return {"synth": synth.model_dump(mode="json"), "extract": split_off_none.model_dump(mode="json")}


def validation_settings(cfg: BenchConfig, dataset: str) -> dict | None:
    """What the validation videos of a dataset are made with; None when the bench picks no threshold on them."""
    if not cfg.val_videos or dataset != "colonoscopy":  # COCO AP (ultrasound) needs no threshold
        return None
    return _apart_settings(cfg, dataset, cfg.val_videos, VAL_SEED_OFFSET)


def prepare_validation(cfg: BenchConfig, dataset: str, out: Path) -> Path | None:
    """The frames directory of a dataset's validation videos (in split APART_SPLIT), made once; None when unused."""
    settings = validation_settings(cfg, dataset)
    if settings is None:
        return None
    root = out / "data" / f"{dataset}-val"
    return synthesised_frames(root, settings, APART_SPLIT, "bench.val_videos", "raise bench.val_videos")


def prepare_test(cfg: BenchConfig, dataset: str, out: Path, frames: Path) -> TestSet:
    """The test set of a dataset: its held-out videos, made once, or without them the split's test videos."""
    if not cfg.test_videos:
        return TestSet(frames, SPLIT, None)
    settings = _apart_settings(cfg, dataset, cfg.test_videos, TEST_SEED_OFFSET)
    root = out / "data" / f"{dataset}-test"
    held_out = synthesised_frames(root, settings, APART_SPLIT, "bench.test_videos", "raise bench.test_videos")
    return TestSet(held_out, APART_SPLIT, settings)


def split_test_set(frames: Path) -> TestSet | None:
    """The extract split's own test videos, or None when the split holds none (the extractor writes no file)."""
    return TestSet(frames, SPLIT, None) if (frames / f"coco_{SPLIT}.json").exists() else None


def frames_by_kind(frames: Path, split: str) -> dict[str, set[int]]:
    """Image ids of a split's frames by kind: the `hard_kind` of those the synthesiser degraded ("hard"), CLEAR for
    the rest; {} for data without those columns."""
    index = load_index(frames)
    if "hard_kind" not in index:
        return {}
    rows = index[index["split"] == split]
    kinds = rows["hard_kind"].where(rows["hard"], CLEAR)
    return {kind: set(ids.tolist()) for kind, ids in rows.groupby(kinds)["image_id"]}


def hard_frame_recall(test: TestSet, detections: list[dict], score_threshold: float) -> float | None:
    """SUN recall on the test set's hard frames, where a video model should beat an image one."""
    return subset_recall(test.gt, detections, test.hard_frames, score_threshold)


def recall_by_kind(test: TestSet, detections: list[dict], score_threshold: float) -> dict[str, float]:
    """SUN recall on the test set's lesion frames of each kind ({CLEAR: ..., "motion_blur": ..., ...}): where, hard
    frame by kind, a video model's lead over an image model lies."""
    recalls = {
        kind: subset_recall(test.gt, detections, ids, score_threshold) for kind, ids in test.frames_by_kind.items()
    }
    return {kind: recall for kind, recall in recalls.items() if recall is not None}


def counts_by_video(gt: dict, detections: list[dict], thresholds: list[float]) -> dict[str, list[list[int]]]:
    """SUN [TP, FP, FN] on each video at each threshold, {video id: [[TP, FP, FN] per threshold]}: F1 follows from
    summed counts, so these give a model's F1 on any resampling of the videos without its detections; {} when the
    frames name no video."""
    videos = [image.get("video_id") for image in gt["images"]]  # in the order the matcher indexes frames
    if None in videos:
        return {}
    matches = match_detections(read_ground_truth(gt), detections, "sun")
    ids, of_frame = np.unique(videos, return_inverse=True)
    table = np.stack(  # [videos, thresholds, 3]
        [
            np.stack([np.bincount(of_frame, weights=c, minlength=len(ids)) for c in matches.per_frame(t)], axis=1)
            for t in thresholds
        ],
        axis=1,
    ).astype(int)
    return {str(video): table[i].tolist() for i, video in enumerate(ids.tolist())}


def frame_counts(frames: Path, test: TestSet) -> dict[str, int]:
    """Frames the tables rest on: {"train", "test" and "test_videos" (the test set's), "hard" (its degraded ones)}."""
    images = test.gt["images"]
    return {
        "train": len(read_json(frames / "coco_train.json")["images"]),
        "test": len(images),
        "test_videos": len({image["video_id"] for image in images}),
        "hard": len(test.hard_frames),
    }
