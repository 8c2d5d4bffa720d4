"""The V2I Kubeflow pipeline: the same DAG as dvc.yaml, one component per step, each in the project image.

    source_uri == ""  : synth -> extract ─┐
    source_uri given  : extract (retried) ┴─> teacher ─> distill ─┐
                                           └─> baseline ──────────┴─> evaluate -> register (-> champion)

Training steps ask for `gpus` GPUs (torchrun inside the step when more than one); the others ask for CPU and
memory. S3 and MLflow credentials come from the Kubernetes secret `v2i-credentials` and endpoints from the
ConfigMap `v2i-config`, never from pipeline parameters, so they do not appear in run records.
"""

from kfp import dsl, kubernetes
from kfp.dsl import Dataset, Input

from components.distill import distill_op
from components.evaluate import evaluate_op
from components.extract import extract_op
from components.register import register_op
from components.synth import synth_op
from components.train import train_op

SECRET_NAME = "v2i-credentials"
SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
CONFIG_MAP_NAME = "v2i-config"
CONFIG_MAP_KEYS = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL")
GPU_RESOURCE = "nvidia.com/gpu"


def with_credentials(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Inject S3/MLflow credentials (secret) and endpoints (ConfigMap) as environment variables.

    Both are optional per key, so a cluster with IAM roles or an MLflow server without auth leaves keys out.
    """
    kubernetes.use_secret_as_env(task, SECRET_NAME, {key: key for key in SECRET_KEYS}, optional=True)
    kubernetes.use_config_map_as_env(task, CONFIG_MAP_NAME, {key: key for key in CONFIG_MAP_KEYS}, optional=True)
    return task


def cpu_step(task: dsl.PipelineTask, name: str, cpu: str, memory: str) -> dsl.PipelineTask:
    return task.set_display_name(name).set_cpu_request(cpu).set_memory_request(memory).set_caching_options(True)


def gpu_step(task: dsl.PipelineTask, name: str, gpus) -> dsl.PipelineTask:
    """A training step: `gpus` GPUs on one node, a toleration for GPU-tainted nodes, shared memory for loaders."""
    cpu_step(task, name, cpu="4", memory="16G")
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(gpus)
    kubernetes.add_toleration(task, key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")
    # DataLoader workers and NCCL exchange tensors through /dev/shm, which is 64 MB in a default pod
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory")
    return with_credentials(task)


def retried(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Steps that talk to S3 or the MLflow server are retried through transient network errors."""
    return task.set_retry(num_retries=3, backoff_duration="30s", backoff_factor=2.0, backoff_max_duration="300s")


@dsl.pipeline(name="v2i-train-evaluate-register")
def train_evaluate_register(frames: Input[Dataset], overrides: list, gpus: int, registry_name: str, promote: bool):
    """Everything after extraction: teacher and baseline, the distilled student, the comparison, the registry."""
    teacher = gpu_step(train_op(role="teacher", frames=frames, overrides=overrides, gpus=gpus), "teacher", gpus)
    baseline = gpu_step(train_op(role="baseline", frames=frames, overrides=overrides, gpus=gpus), "baseline", gpus)
    student = gpu_step(
        distill_op(teacher=teacher.outputs["model"], frames=frames, overrides=overrides, gpus=gpus), "distill", gpus
    )
    evaluation = evaluate_op(
        frames=frames,
        baseline=baseline.outputs["model"],
        teacher=teacher.outputs["model"],
        student=student.outputs["model"],
        overrides=overrides,
    )
    with_credentials(cpu_step(evaluation, "evaluate", cpu="4", memory="8G"))
    registration = register_op(
        model=student.outputs["model"],
        report=evaluation.outputs["report"],
        registry_name=registry_name,
        promote=promote,
        overrides=overrides,
    )
    # the gate reads the registry's current champion, external state the KFP cache cannot see
    with_credentials(retried(cpu_step(registration, "register", cpu="1", memory="2G"))).set_caching_options(False)


@dsl.pipeline(
    name="v2i",
    description="V2I-DETR: extract lesion videos, train a video teacher and an image baseline, distil an image "
    "student, evaluate the three and register the student in MLflow.",
)
def v2i_pipeline(
    source_uri: str = "",
    source_format: str = "sun-seg",
    overrides: list = [],  # noqa: B006 - KFP reads it as the parameter's default; never mutated
    gpus: int = 1,
    registry_name: str = "v2i-student",
    promote: bool = False,
):
    """Run the V2I DAG.

    Args:
        source_uri: s3://bucket/prefix of the raw dataset; empty: synthetic videos from the `synth` step.
        source_format: layout of source_uri: videos, sun-seg, buv or synthetic.
        overrides: params overrides, KEY=VALUE as for `v2i --set`, e.g. ["teacher.train.epochs=50"].
        gpus: GPUs per training step, on one node (torchrun runs one process per GPU when more than one).
        registry_name: MLflow registered model name of the student.
        promote: move alias champion to the new version if it passes the gate (it beats its own baseline by
            register.min_gain and the champion by register.min_delta).
    """
    with dsl.If(source_uri == "", name="synthetic-data"):
        raw = cpu_step(synth_op(overrides=overrides), "synth", cpu="1", memory="2G")
        synthetic = cpu_step(
            extract_op(source_uri="", source_format="synthetic", overrides=overrides, raw=raw.outputs["raw"]),
            "extract",
            cpu="2",
            memory="4G",
        )
        train_evaluate_register(
            frames=synthetic.outputs["frames"], overrides=overrides, gpus=gpus, registry_name=registry_name,
            promote=promote,
        )
    with dsl.Else(name="source-data"):
        extracted = extract_op(source_uri=source_uri, source_format=source_format, overrides=overrides)
        with_credentials(retried(cpu_step(extracted, "extract", cpu="2", memory="4G")))
        train_evaluate_register(
            frames=extracted.outputs["frames"], overrides=overrides, gpus=gpus, registry_name=registry_name,
            promote=promote,
        )
