"""Step `distill`: distil the video teacher into an image student with TFD + CQD (`v2i distill`)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def distill_op(teacher: Input[Model], frames: Input[Dataset], overrides: list, gpus: int, model: Output[Model],
               metrics: Output[Metrics]):
    """Train the student on `frames` under `teacher` into the model directory `model`; log its last epoch."""
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
        [*launcher, "v2i_core.cli", "distill", "--teacher", teacher.path, "--data", frames.path, "--out", model.path,
         "--params", params, *sets],
        check=True,
    )
    with open(os.path.join(model.path, "metrics.json")) as handle:
        summary = json.load(handle)
    model.metadata.update(role="student", epochs=summary["epochs_completed"], gpus=gpus)
    for key, value in summary["final"].items():
        if key != "epoch":
            metrics.log_metric(key, value)
