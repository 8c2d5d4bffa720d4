"""Step `distill`: distil the video teacher into an image student with TFD + CQD (`v2i distill`)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def distill_op(teacher: Input[Model], frames: Input[Dataset], overrides: list, gpus: int, model: Output[Model],
               metrics: Output[Metrics]):
    """Train the student on `frames` under `teacher` into the model directory `model`; log its last epoch."""
    from v2i_core.engine.launch import run_training

    summary = run_training(["distill", "--teacher", teacher.path, "--data", frames.path], model.path, gpus, overrides)
    model.metadata.update(role="student", epochs=summary["epochs_completed"], gpus=gpus)
    for key, value in summary["final"].items():
        if key != "epoch":
            metrics.log_metric(key, value)
