"""Steps `baseline` and `teacher`: train an image detector or the video teacher (`v2i train`).

With more than one GPU the step runs under `torchrun --standalone`, one process per GPU on the node.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_op(role: str, frames: Input[Dataset], overrides: list, gpus: int, model: Output[Model],
             metrics: Output[Metrics]):
    """Train `role` (baseline | teacher) on `frames` into the model directory `model`; log its last epoch."""
    import json
    import os
    import subprocess
    import sys

    launcher = [sys.executable, "-m"]
    if gpus > 1:
        launcher += ["torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}", "-m"]
    sets = [arg for item in overrides for arg in ("--set", item)]
    params = os.environ.get("V2I_PARAMS", "params.yaml")
    subprocess.run(
        [*launcher, "v2i_core.cli", "train", "--role", role, "--data", frames.path, "--out", model.path,
         "--params", params, *sets],
        check=True,
    )
    with open(os.path.join(model.path, "metrics.json")) as handle:
        summary = json.load(handle)
    model.metadata.update(role=role, epochs=summary["epochs_completed"], gpus=gpus)
    for key, value in summary["final"].items():
        if key != "epoch":
            metrics.log_metric(key, value)
