"""Steps `baseline` and `teacher`: train an image detector or the video teacher (`v2i train`).

With more than one GPU the step runs under `torchrun --standalone`, one process per GPU on the node. Its
checkpoint is kept on the data volume, so a retried step resumes from the last epoch the lost pod finished.
"""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_op(
    role: str,
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
    """Train `role` (baseline | teacher) on the frames in `frames_dir` into the model directory `model`, its
    backbone from the `pretrained` weights file when given; log its last epoch."""
    from v2i_core.engine.launch import run_training
    from v2i_core.step import checkpoint_dir, set_file_args
    from v2i_core.tracking import require_tracking_uri

    require_tracking_uri()
    args = ["train", "--role", role, "--data", frames_dir]
    args += ["--checkpoint-dir", checkpoint_dir(data_root, role, data_version), *set_file_args(params_file)]
    sets = [f"{role}.model.pretrained={pretrained.path}"] if pretrained is not None else []
    summary = run_training(args, model.path, gpus, [*overrides, *sets])
    model.metadata.update(role=role, epochs=summary["epochs_completed"], gpus=gpus, data_version=data_version)
    for key, value in summary["final"].items():
        if key != "epoch":
            metrics.log_metric(key, value)
