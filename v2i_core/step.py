"""What every KFP step shares: the params arguments of a `v2i` verb, and where the data volume keeps things.

A step runs in the project image, where `V2I_PARAMS` names the base params file (/opt/v2i/params.yaml); a pipeline
run adds a params file shipped in the image (`configs/gpu-paper.yaml`) and `--set` overrides on top. The frames and
the training checkpoints live on the run's data volume (a PersistentVolumeClaim mounted at the same path in every
step), so no step downloads the frames and a retried training pod finds its checkpoint.
"""

from __future__ import annotations

import os
import subprocess
import sys


def base_params() -> str:
    return os.environ.get("V2I_PARAMS", "params.yaml")


def set_file_args(params_file: str) -> list[str]:
    """`--set-file FILE` for a params file merged over the base one (none for ""); a relative FILE is read beside
    the base params file, so `configs/gpu-paper.yaml` names the image's copy."""
    if not params_file:
        return []
    return ["--set-file", os.path.join(os.path.dirname(os.path.abspath(base_params())), params_file)]


def params_args(overrides: list[str], params_file: str = "") -> list[str]:
    """`--params BASE [--set-file FILE] [--set KEY=VALUE ...]`: the params every verb of a step reads."""
    sets = [arg for item in overrides for arg in ("--set", item)]
    return ["--params", base_params(), *set_file_args(params_file), *sets]


def frames_dir(data_root: str) -> str:
    """Where extract writes the frames on the data volume, and every later step reads them."""
    return os.path.join(data_root, "frames")


def checkpoint_dir(data_root: str, role: str, data_version: str) -> str:
    """A training step's checkpoints on the data volume: the same for a retry of the step (same role, same data), so
    the retried pod resumes where the lost one stopped."""
    digest = data_version.partition(":")[2][:12] or data_version
    return os.path.join(data_root, "checkpoints", f"{role}-{digest}")


def run_verb(args: list[str]) -> None:
    """Run `v2i ARGS` in a child process: its one-line errors and exit status become the step's."""
    subprocess.run([sys.executable, "-m", "v2i_core.cli", *args], check=True)
