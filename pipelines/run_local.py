"""Run the very same pipeline on this machine through `kfp.local`, on tiny data: `python -m pipelines.run_local`.

Each step runs as a subprocess of this Python (the project's virtualenv plays the image), and <root>/data plays
the cluster's data volume (frames, checkpoints). Artifacts land in <root>/artifacts; MLflow goes to <root>/mlflow.db
unless MLFLOW_TRACKING_URI is set; the base params file is V2I_PARAMS (default: params.yaml here), with
TINY_OVERRIDES and any --set on top.
"""

import argparse
import os
import warnings
from pathlib import Path

from kfp import local

from pipelines.pipeline import local_pipeline

# Small enough for a 2-core CPU in about two minutes: a smoke test of the wiring, not a useful model.
_TINY_MODEL = ["input_size=[64,64]", "d_model=32", "nheads=4", "dim_feedforward=64", "enc_layers=1", "dec_layers=1",
               "num_queries=6", "num_feature_levels=1"]
_TINY_TRAIN = ["epochs=1", "batch_size=4", "max_train_frames=8", "max_minutes=null"]
TINY_OVERRIDES = [
    "synth.videos=3",
    "synth.frames=12",
    *[f"{section}.model.{item}" for section in ("baseline", "teacher", "distill") for item in _TINY_MODEL],
    *[f"{section}.train.{item}" for section in ("baseline", "teacher", "distill") for item in _TINY_TRAIN],
    "teacher.msi.frames=2",
    "teacher.msi.global_heads=4",
    "eval.speed.warmup=1",
    "eval.speed.iters=2",
    "eval.disagreement_frames=2",
]


def run(root: Path, source_uri: str = "", source_format: str = "sun-seg", overrides: list[str] | None = None,
        registry_name: str = "v2i-student", pretrained_uri: str = "") -> Path:
    """Run the pipeline with TINY_OVERRIDES (+ `overrides`) under `root`; returns the artifacts folder."""
    root = root.resolve()
    artifacts = root / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    os.environ.setdefault("V2I_PARAMS", str(Path("params.yaml").resolve()))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(artifacts), raise_on_error=True)
    with warnings.catch_warnings():
        # the project image is a Python image (SubprocessRunner guesses from "python" in its name), and
        # resources, GPUs and display names are for the cluster: the local runner says so once per step
        warnings.filterwarnings("ignore", message="You may be attemping to run a task", category=RuntimeWarning)
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner", category=UserWarning)
        local_pipeline(
            data_root=str(root / "data"),
            source_uri=source_uri,
            source_format=source_format,
            overrides=[*TINY_OVERRIDES, *(overrides or [])],
            gpus=0,
            registry_name=registry_name,
            promote=True,
            pretrained_uri=pretrained_uri,
        )
    return artifacts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="build/kfp-local", help="folder for artifacts and MLflow (%(default)s)")
    parser.add_argument("--source-uri", default="", help="s3://bucket/prefix or a local path; empty: synthetic")
    parser.add_argument("--source-format", default="sun-seg", help="layout of --source-uri (%(default)s)")
    parser.add_argument("--pretrained-uri", default="", help="a torchvision ResNet weights file for every backbone")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="params override on top of the tiny ones (repeatable)")
    args = parser.parse_args(argv)
    artifacts = run(Path(args.root), args.source_uri, args.source_format, args.overrides,
                    pretrained_uri=args.pretrained_uri)
    tables = sorted(artifacts.glob("*/evaluate-op/table"), key=lambda p: p.stat().st_mtime)
    if tables:
        print(tables[-1].read_text())
    print(f"artifacts: {artifacts}")


if __name__ == "__main__":
    main()
