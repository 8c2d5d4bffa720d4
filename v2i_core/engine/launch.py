"""Run a training verb as a pipeline step: one process, or `torchrun` with one process per GPU on the node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def run_training(verb_args: list[str], out: str, gpus: int, overrides: list[str]) -> dict:
    """`v2i <verb_args> --out OUT` with the image's params ($V2I_PARAMS) and `--set` overrides; returns the
    model directory's training metrics."""
    launcher = [sys.executable, "-m"]
    if gpus > 1:
        launcher += ["torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}", "-m"]
    sets = [arg for item in overrides for arg in ("--set", item)]
    params = os.environ.get("V2I_PARAMS", "params.yaml")
    subprocess.run([*launcher, "v2i_core.cli", *verb_args, "--out", out, "--params", params, *sets], check=True)
    return json.loads((Path(out) / "metrics.json").read_text())
