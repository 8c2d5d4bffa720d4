"""The Deformable DETR student's share of the teacher's F1 lead, estimated every way the two held-out draws of
videos allow, from a finished `v2i bench paper --out OUT` (colonoscopy, with validation videos).

The bench reports two of these (test videos at the threshold the validation videos pick; validation videos at
each model's best threshold there); this prints them beside the others, so that a difference between the two is
read as a difference of estimators or of draws: the same estimator on both draws (fixed threshold, each model's
best threshold), the swap (thresholds picked on the test videos, scored on the validation videos), both draws
each scored at the threshold the other picks (a two-fold cross-fit: every model at a threshold picked on videos
it is not scored on, as in use), and both draws pooled at each model's best threshold. Each with the 5-95% range
of the share over resamplings of the videos it is computed on.

    python -m v2i_bench.share_estimators OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from v2i_bench.paper import THRESHOLDS
from v2i_bench.paper_data import counts_by_video
from v2i_bench.paper_tables import f1_of_counts, video_resampled_gaps

ROWS = ("teacher", "deformable", "deformable_v2i")


def sweeps(out: Path) -> tuple[dict, dict]:
    """{row: {seed: {video: [[TP, FP, FN] per threshold]}}} on the test videos (from the stored detections) and
    on the validation videos (as the bench kept them)."""
    gt = json.loads((out / "data/colonoscopy-test/frames/coco_train.json").read_text())
    test, val = {}, {}
    for result in json.loads((out / "results.json").read_text())["runs"]:
        if result["dataset"] != "colonoscopy" or result["row"] not in ROWS:
            continue
        folder = out / "runs/colonoscopy" / result["row"] / f"seed{result['seed']}"
        detections = json.loads((folder / "detections.json").read_text())
        test.setdefault(result["row"], {})[result["seed"]] = counts_by_video(gt, detections, list(THRESHOLDS))
        val.setdefault(result["row"], {})[result["seed"]] = result["metrics"]["video_counts"]["val_f1"]
    return test, val


def f1_curve(per_video: dict) -> np.ndarray:
    return f1_of_counts(np.sum(list(per_video.values()), axis=0))


def at(counts: dict, index: dict) -> dict:
    """The counts kept at one threshold per run: index {(row, seed): threshold position}."""
    return {
        row: {seed: {v: [c[index[row, seed]]] for v, c in per_video.items()} for seed, per_video in by_seed.items()}
        for row, by_seed in counts.items()
    }


def best(counts: dict) -> dict:
    return {(row, seed): int(np.argmax(f1_curve(c))) for row, by_seed in counts.items() for seed, c in by_seed.items()}


def transfer_cost(counts: dict, row: str, picked: dict) -> float:
    """Mean over seeds, in points, of a row's best F1 on one draw minus its F1 there at the threshold picked on the
    other draw (picked: {(row, seed): threshold position})."""
    curves = {seed: f1_curve(per_video) for seed, per_video in counts[row].items()}
    return float(np.mean([(curve.max() - curve[picked[row, seed]]) * 100 for seed, curve in curves.items()]))


def pooled(*draws: dict) -> dict:
    """Several draws as one set of videos (each video named by its draw too)."""
    return {
        row: {
            seed: {f"{i}:{video}": c for i, draw in enumerate(draws) for video, c in draw[row][seed].items()}
            for seed in draws[0][row]
        }
        for row in ROWS
    }


def line(name: str, counts: dict) -> str:
    seeds = sorted(counts["teacher"])
    f1 = {row: [f1_curve(counts[row][k]).max() for k in seeds] for row in ROWS}
    gained = np.mean(np.subtract(f1["deformable_v2i"], f1["deformable"])) * 100
    led = np.mean(np.subtract(f1["teacher"], f1["deformable"])) * 100
    drawn = video_resampled_gaps(counts)["deformable_v2i"]
    share = f"{gained / led:6.0%}" if led > 0 else "     –"  # no lead, nothing to share
    spread = "5-95% {:6.0%} to {:5.0%}".format(*drawn["closed"][::2]) if drawn["closed"] else "no draw with a lead"
    return (f"{name:52s} student {gained:+.1f}  teacher {led:+.1f}  share {share}  "
            f"{spread}  half or more in {drawn['half']:4.0%} of draws")


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m v2i_bench.share_estimators OUT", file=sys.stderr)
        return 2
    out = Path(args[0])
    test, val = sweeps(out)
    fixed = {key: THRESHOLDS.index(0.3) for key in best(test)}
    print(f"{len(test['teacher'])} seeds; F1 in points, mean over seeds; share: student gain / teacher lead")
    print(line("test videos, threshold 0.3", at(test, fixed)))
    print(line("validation videos, threshold 0.3", at(val, fixed)))
    print(line("test videos, each model's best threshold there", test))
    print(line("validation videos, each model's best threshold there", val))
    print(line("test videos, threshold picked on validation", at(test, best(val))))
    print(line("validation videos, threshold picked on test", at(val, best(test))))
    print(line("both draws, each at the threshold the other picks", pooled(at(test, best(val)), at(val, best(test)))))
    print(line("both draws pooled, each model's best threshold", pooled(test, val)))
    print("F1 a threshold picked on the other draw costs each model against its own best there, mean over seeds:")
    for row in ROWS:
        costs = [transfer_cost(counts, row, best(other)) for counts, other in ((test, val), (val, test))]
        print(f"  {row:15s} test videos {costs[0]:.2f}, validation videos {costs[1]:.2f} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
