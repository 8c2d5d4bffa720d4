"""A finished colonoscopy `v2i bench paper --out OUT` scored on one more draw of held-out videos, which nothing was
trained, tuned or chosen on: the check of whether the bench's two draws (test and validation videos) disagree by
chance or by what they ask.

The draw is the dataset's generator under another seed (synth seed + the offset), synthesised and extracted once
into OUT/data/colonoscopy-draw<offset>; every teacher, baseline and student run is predicted on it once, its counts
per video kept beside its result (draw<offset>_counts.json). It prints the student's share of the teacher's lead on
the new draw at the threshold each model's validation videos picked (the bench's protocol), at the one its test
videos picked and at its best there, then over all three draws, as v2i_bench.share_estimators does for two.

    python -m v2i_bench.fresh_draw OUT [--videos 72] [--seed-offset 4000]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from v2i_bench.paper import THRESHOLDS
from v2i_bench.paper_data import (
    APART_SPLIT,
    TEST_SEED_OFFSET,
    VAL_SEED_OFFSET,
    counts_by_video,
    synthesised_frames,
    write_json,
)
from v2i_bench.share_estimators import ROWS, at, best, line, pooled, sweeps
from v2i_core.engine.model_dir import load_model_dir
from v2i_core.engine.predict import dataset_for, predict_dataset
from v2i_core.errors import V2IError


def read_draws(out: Path) -> tuple[dict, dict]:
    """The bench's test and validation counts (share_estimators.sweeps), or why there are none."""
    if not (out / "results.json").exists():
        raise V2IError(f"{out}: no results.json; run `v2i bench paper --out {out}` to the end first")
    try:
        return sweeps(out)
    except (FileNotFoundError, KeyError) as error:
        raise V2IError(f"{out}: no colonoscopy runs with validation videos' counts ({error})") from error


USED_OFFSETS = {0, VAL_SEED_OFFSET, TEST_SEED_OFFSET}  # seed offsets of the videos the bench trains, tunes, tests on


def fresh_frames(out: Path, videos: int, offset: int) -> Path:
    """The new draw's frames directory, synthesised like the bench's test videos under another seed."""
    test_settings = out / "data/colonoscopy-test/settings.json"
    if not test_settings.exists():
        raise V2IError(f"{test_settings}: missing; run the colonoscopy bench with bench.test_videos first")
    if offset in USED_OFFSETS:
        raise V2IError(f"--seed-offset {offset}: the bench's runs saw those videos; take one they did not")
    settings = json.loads(test_settings.read_text())
    settings["synth"].update(videos=videos, seed=settings["synth"]["seed"] - TEST_SEED_OFFSET + offset)
    return synthesised_frames(
        out / "data" / f"colonoscopy-draw{offset}", settings, APART_SPLIT, "--videos", "raise --videos"
    )


def fresh_counts(out: Path, frames: Path, offset: int, seeds: dict[str, list[int]]) -> dict:
    """{row: {seed: {video: [[TP, FP, FN] per threshold]}}} on the new draw, predicted once per run."""
    gt = json.loads((frames / f"coco_{APART_SPLIT}.json").read_text())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    counts: dict = {}
    runs = [(row, seed) for row in ROWS for seed in seeds[row]]
    for row, seed in tqdm(runs, desc=f"draw {offset}", unit="run"):
        folder = out / "runs/colonoscopy" / row / f"seed{seed}"
        kept = folder / f"draw{offset}_counts.json"
        if not kept.exists():
            network, spec = load_model_dir(folder / "model", device)
            detections = predict_dataset(network, dataset_for(spec, frames, APART_SPLIT), device)
            write_json(kept, counts_by_video(gt, detections, list(THRESHOLDS)))
        counts.setdefault(row, {})[seed] = json.loads(kept.read_text())
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m v2i_bench.fresh_draw", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="a finished `v2i bench paper` output with validation videos")
    parser.add_argument("--videos", type=int, default=72, help="videos in the new draw (default 72)")
    parser.add_argument("--seed-offset", type=int, default=4000, help="synth seed offset of the new draw")
    args = parser.parse_args(argv)
    try:
        test, val = read_draws(args.out)
        frames = fresh_frames(args.out, args.videos, args.seed_offset)
        fresh = fresh_counts(args.out, frames, args.seed_offset, {row: sorted(test[row]) for row in ROWS})
    except V2IError as error:
        print(f"fresh_draw: {error}", file=sys.stderr)
        return 1
    print(f"{len(test['teacher'])} seeds; {args.videos} new videos (synth seed offset {args.seed_offset})")
    print(line("test videos, threshold picked on validation", at(test, best(val))))
    print(line("new draw, threshold picked on validation", at(fresh, best(val))))
    print(line("new draw, threshold picked on test", at(fresh, best(test))))
    print(line("new draw, each model's best threshold there", fresh))
    every_other = pooled(at(test, best(val)), at(fresh, best(val)), at(val, best(test)))
    print(line("three draws, each at a threshold picked on another", every_other))
    print(line("three draws pooled, each model's best threshold", pooled(test, fresh, val)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
