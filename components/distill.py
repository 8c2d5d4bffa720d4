"""Step `distill`: distil the video teacher into an image student with TFD + CQD (`v2i distill`).

Like the training steps, it keeps its checkpoint on the data volume and resumes from it when retried.
"""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def distill_op(
    teacher: Input[Model],
    frames_dir: str,
    data_version: str,
    data_root: str,
    overrides: list,
    params_file: str,
    gpus: int,
    model: Output[Model],
    metrics: Output[Metrics],
    pretrained: Input[Artifact] = None,
):
    """Train the student on the frames in `frames_dir` under `teacher` into the model directory `model`, its
    backbone from the `pretrained` weights file when given; log its last epoch."""
    from v2i_core.engine.launch import run_training
    from v2i_core.step import checkpoint_dir, set_file_args
    from v2i_core.tracking import require_tracking_uri

    require_tracking_uri()
    args = ["distill", "--teacher", teacher.path, "--data", frames_dir]
    args += ["--checkpoint-dir", checkpoint_dir(data_root, "student", data_version), *set_file_args(params_file)]
    sets = [f"distill.model.pretrained={pretrained.path}"] if pretrained is not None else []
    summary = run_training(args, model.path, gpus, [*overrides, *sets])
    model.metadata.update(role="student", epochs=summary["epochs_completed"], gpus=gpus, data_version=data_version)
    for key, value in summary["final"].items():
        if key != "epoch":
            metrics.log_metric(key, value)
