"""The `v2i` command: one verb per pipeline step.

Each verb's work lives in its own module, imported only when the verb runs, so `v2i --help` stays fast
and a verb's heavy dependencies (torch, mlflow) load only where needed.

Other installed packages may add verbs (entry point group `v2i.commands`, e.g. the research bench's `v2i bench`):
this module finds them by that group and never names them, so the library imports nothing of theirs.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import os
import signal
import sys

from v2i_core.errors import V2IError

DEFAULT_PARAMS = "params.yaml"  # read when present and --params is not given (v2i_core.config.DEFAULT_PARAMS)
# verb -> "module:function"; each function takes (args, params).
HANDLERS = {
    "synth": "v2i_core.data.synth:run",
    "extract": "v2i_core.data.extract:run",
    "score": "v2i_core.eval.score:run",
    "train": "v2i_core.training:run",
    "distill": "v2i_core.training:run_distill",
    "predict": "v2i_core.engine.predict:run",
    "evaluate": "v2i_core.eval.evaluate:run",
    "register": "v2i_core.registry:run_register",
    "promote": "v2i_core.registry:run_promote",
    "infer": "v2i_core.infer:run",
    "export": "v2i_core.export:run",
}
# Entry points of this group are functions add_parser(verbs, common): each adds its verb to `verbs` (the
# subparsers), with `common` as a parent for the shared flags, and sets `handler` as a default of its parser: a
# callable taking the parsed arguments and returning the exit status, which reads its own params.
PLUGIN_GROUP = "v2i.commands"


def _common() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--params",
        help=f'params file (default: {DEFAULT_PARAMS} if present, else the built-in defaults; "": the defaults)',
    )
    parent.add_argument(
        "--set-file",
        dest="set_files",
        action="append",
        default=[],
        metavar="FILE",
        help="YAML params merged over --params key by key, e.g. configs/gpu-paper.yaml (repeatable; "
        "--set applies after)",
    )
    parent.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a param, e.g. --set baseline.train.epochs=3 (repeatable)",
    )
    return parent


def _add_training_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", choices=["detr", "deformable_detr", "sam_detr"], help="image detector architecture")
    parser.add_argument("--data", required=True, help="frames directory written by `v2i extract`")
    parser.add_argument("--out", required=True, help="model directory to write")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the last checkpoint (in --out, or in --checkpoint-dir)"
    )
    parser.add_argument(
        "--checkpoint-dir",
        metavar="DIR",
        help="keep the per-epoch checkpoint in this folder or s3://bucket/prefix instead of --out; a checkpoint "
        "found there at start is resumed (a retried pipeline step reruns the same command)",
    )
    parser.add_argument("--max-minutes", type=float, help="stop after this wall time, checkpoint kept")


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="v2i",
        description="V2I-DETR pipeline: synthetic data, frame extraction, training, distillation, "
        "evaluation and registration of medical video lesion detectors.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("synth", parents=[common], help="write synthetic lesion videos with annotations")
    p.add_argument("--out", required=True, help="directory for the videos and annotation files")
    p.add_argument("--flavour", choices=["colonoscopy", "ultrasound"], help="kind of video (params: synth)")
    p.add_argument("--videos", type=int, help="number of videos")
    p.add_argument("--frames", type=int, help="frames per video")
    p.add_argument("--seed", type=int, help="random seed: same seed, same videos")

    p = verbs.add_parser("extract", parents=[common], help="decode a dataset into frames + index + COCO files")
    p.add_argument("--format", choices=["videos", "sun-seg", "buv", "synthetic"], help="source layout")
    p.add_argument("--src", required=True, help="local path or s3://bucket/prefix")
    p.add_argument("--out", required=True, help="frames directory to write")
    p.add_argument("--stride", type=int, help="keep every n-th frame")
    p.add_argument("--resize", type=int, nargs=2, metavar=("W", "H"), help="resize frames (boxes scaled)")
    p.add_argument("--seed", type=int, help="seed of the by-video split")

    p = verbs.add_parser("score", parents=[common], help="score detections against ground truth")
    p.add_argument("--gt", required=True, help="COCO ground-truth JSON (coco_<split>.json)")
    p.add_argument("--pred", required=True, help="COCO results JSON")
    p.add_argument(
        "--protocol",
        choices=["sun", "iou", "coco", "lesion"],
        help="SUN centre-hit, IoU>=0.5, COCO AP, or lesion-level (sensitivity, alarms/min, delay)",
    )
    p.add_argument("--score-threshold", type=float, help="keep detections with at least this score")
    p.add_argument("--out", help="write the metrics JSON here")

    p = verbs.add_parser("train", parents=[common], help="train a baseline image detector or the video teacher")
    p.add_argument("--role", choices=["baseline", "teacher"], default="baseline", help="what to train")
    _add_training_args(p)

    p = verbs.add_parser("distill", parents=[common], help="distil a video teacher into an image student")
    p.add_argument("--teacher", required=True, help="teacher model directory")
    _add_training_args(p)

    p = verbs.add_parser("predict", parents=[common], help="run a model directory over a split")
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--data", required=True, help="frames directory")
    p.add_argument("--split", default="test", help="split to run (default: %(default)s)")
    p.add_argument("--out", required=True, help="detections JSON to write")

    p = verbs.add_parser("evaluate", parents=[common], help="compare models: metrics, speed, plots, table")
    p.add_argument("--model", action="append", required=True, help="model directory (repeatable)")
    p.add_argument("--data", required=True, help="frames directory")
    p.add_argument("--split", default="test", help="split to evaluate (default: %(default)s)")
    p.add_argument("--out", required=True, help="report directory")

    p = verbs.add_parser("register", parents=[common], help="register a model in the MLflow registry")
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--metrics", required=True, help="metrics.json from `v2i evaluate`")
    p.add_argument("--name", help="registered model name (params: register.name)")
    p.add_argument("--promote", action="store_true", help="then promote it if it passes the gate")

    p = verbs.add_parser("promote", parents=[common], help="move alias champion to a version that passes the gate")
    p.add_argument("--name", help="registered model name (params: register.name)")
    p.add_argument("--version", help="version to promote (default: the challenger)")

    p = verbs.add_parser("infer", parents=[common], help="detect lesions in a video in real time")
    p.add_argument(
        "--model", required=True, help="model directory, models:/NAME@ALIAS, or FILE.onnx (--engine onnxruntime)"
    )
    p.add_argument(
        "--engine",
        choices=["torch", "onnxruntime"],
        default="torch",
        help="what runs the model: torch, or ONNX Runtime on the CPU with eval.onnx_threads threads; a model "
        "directory is exported first (default: %(default)s)",
    )
    p.add_argument("--video", required=True, help="input video file; with --stream also -, a URL or FORMAT:DEVICE")
    p.add_argument("--out", help="output directory (annotated video + detections); not with --stream")
    p.add_argument(
        "--stream",
        action="store_true",
        help="live: one JSON line per frame on stdout as soon as it is decided, through the filter",
    )
    p.add_argument("--no-filter", action="store_true", help="with --stream: the detector's boxes, unfiltered")
    p.add_argument(
        "--score-threshold",
        type=float,
        help="keep detections with at least this score (default: a registered model's threshold from registration, "
        "a model directory's eval.score_threshold)",
    )

    p = verbs.add_parser("export", parents=[common], help="write an image model as ONNX for a deployment")
    p.add_argument("--model", required=True, help="model directory or models:/NAME@ALIAS (a student or baseline)")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="graph format (default: %(default)s)")
    p.add_argument("--out", required=True, help="FILE.onnx to write (its sidecar: FILE.onnx.json)")

    _add_plugins(verbs, common)
    return parser


def _add_plugins(verbs, common: argparse.ArgumentParser) -> None:
    """The verbs installed packages add (PLUGIN_GROUP), each once; one that cannot be loaded (a package removed since
    it was installed) is skipped with a warning, so that the pipeline's own verbs keep working."""
    seen = set(HANDLERS)
    for entry in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        if entry.name in seen:  # the same package found twice on the path
            continue
        seen.add(entry.name)
        try:
            add_parser = entry.load()
        except Exception as exc:  # any failure of another package's import: skip its verb, keep ours
            print(f"v2i: warning: verb '{entry.name}' ({entry.value}) not loaded: {exc}", file=sys.stderr)
            continue
        add_parser(verbs, common)


def _handler(args: argparse.Namespace):
    module_name, _, function = HANDLERS[args.verb].partition(":")
    return getattr(importlib.import_module(module_name), function)


class Terminated(BaseException):
    """SIGTERM, raised like Ctrl-C so that every temporary output is removed on the way out: DVC, KFP and
    Kubernetes stop a step with SIGTERM, which would otherwise end the process without running any cleanup."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return _main(argv)
    except KeyboardInterrupt:  # caught here, not in _main, so that one arriving while it parses and imports is too
        print("v2i: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("v2i: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    named = getattr(args, "params", None) is not None  # --params given: the file must exist
    if hasattr(args, "params") and not named:
        args.params = DEFAULT_PARAMS  # what other packages' verbs read as the params path
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    from v2i_core.config import load_params

    try:
        if named and args.params and not os.path.isfile(args.params):  # for every verb, the bench's too
            raise V2IError(f"{args.params}: no such params file")
        if getattr(args, "handler", None) is not None:  # a verb another package added: it reads its own params
            result = args.handler(args)
        else:
            params = load_params(args.params, args.overrides, args.set_files, named=named)
            result = _handler(args)(args, params)
    except V2IError as exc:
        print(f"v2i: error: {exc}", file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
