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
    from v2i_core.engine.launch import run_training

    summary = run_training(["train", "--role", role, "--data", frames.path], model.path, gpus, overrides)
    model.metadata.update(role=role, epochs=summary["epochs_completed"], gpus=gpus)
    for key, value in summary["final"].items():
        if key != "epoch":
            metrics.log_metric(key, value)
