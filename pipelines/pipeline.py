"""The V2I Kubeflow pipeline: the same DAG as dvc.yaml, one component per step, each in the project image.

    data volume ─> extract (synth first without a source) ─┬─> teacher ─> distill ─┐
    pretrained_uri (importer) ·····························├─> baseline ───────────┴─> evaluate -> register

The frames live on a PersistentVolumeClaim the run creates (`volume_size`, `storage_class`), mounted at /v2i-data
in every step: extract writes them once, the training and evaluate steps read them in place, and the training steps
keep their checkpoints there, so a retried training pod resumes from the last epoch the lost one finished. The PVC
is ReadWriteMany (the teacher and the baseline train at once, on any node); a finished run deletes it, a failed one
keeps it for KFP's "Retry".

Training steps ask for `gpus` GPUs (torchrun inside the step when more than one) and evaluate for one when `gpus`
is above 0; the others ask for CPU and memory. S3 and MLflow credentials come from the Kubernetes secret
`v2i-credentials` and endpoints from the ConfigMap `v2i-config`, never from pipeline parameters, so they do not
appear in run records.

`kfp.local` cannot create volumes: `local_pipeline` is the same DAG on a local folder (pipelines/run_local.py).
"""

from kfp import dsl, kubernetes
from kfp.dsl import Artifact

from components.distill import distill_op
from components.evaluate import evaluate_op
from components.extract import extract_op
from components.register import register_op
from components.train import train_op

SECRET_NAME = "v2i-credentials"
SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
CONFIG_MAP_NAME = "v2i-config"
CONFIG_MAP_KEYS = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL")
GPU_RESOURCE = "nvidia.com/gpu"
DATA_MOUNT = "/v2i-data"
DESCRIPTION = (
    "V2I-DETR: extract lesion videos, train a video teacher and an image baseline, distil an image student, "
    "evaluate the three and register the student in MLflow."
)


def with_credentials(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Inject S3/MLflow credentials (secret) and endpoints (ConfigMap) as environment variables.

    Both are optional per key, so a cluster with IAM roles or an MLflow server without auth leaves keys out.
    """
    kubernetes.use_secret_as_env(task, SECRET_NAME, {key: key for key in SECRET_KEYS}, optional=True)
    kubernetes.use_config_map_as_env(task, CONFIG_MAP_NAME, {key: key for key in CONFIG_MAP_KEYS}, optional=True)
    return task


def cpu_step(task: dsl.PipelineTask, name: str, cpu: str, memory: str) -> dsl.PipelineTask:
    return task.set_display_name(name).set_cpu_request(cpu).set_memory_request(memory).set_caching_options(True)


def gpu_step(task: dsl.PipelineTask, name: str, gpus, memory: str = "16G") -> dsl.PipelineTask:
    """`gpus` GPUs on one node, a toleration for GPU-tainted nodes, shared memory for the data loader's workers."""
    cpu_step(task, name, cpu="4", memory=memory)
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(gpus)
    kubernetes.add_toleration(task, key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")
    # DataLoader workers and NCCL exchange tensors through /dev/shm, which is 64 MB in a default pod
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory")
    return with_credentials(task)


def retried(task: dsl.PipelineTask, retries: int = 3) -> dsl.PipelineTask:
    """Retry through transient failures: network errors, and for training a lost or preempted pod (it resumes)."""
    return task.set_retry(num_retries=retries, backoff_duration="30s", backoff_factor=2.0, backoff_max_duration="300s")


def on_volume(task: dsl.PipelineTask, pvc_name) -> dsl.PipelineTask:
    """Mount the run's data volume at DATA_MOUNT; the local runner has none (`pvc_name` None)."""
    return task if pvc_name is None else kubernetes.mount_pvc(task, pvc_name=pvc_name, mount_path=DATA_MOUNT)


def evaluate_and_register(trained: dict, common: dict, pvc_name, registry_name, promote, gpu: bool) -> None:
    """Compare the three models on the test frames (on one GPU when `gpu`), then gate and register the student."""
    evaluation = evaluate_op(**common, **trained)
    if gpu:
        gpu_step(evaluation, "evaluate", 1, memory="8G")
    else:
        with_credentials(cpu_step(evaluation, "evaluate", cpu="4", memory="8G"))
    on_volume(evaluation, pvc_name)
    registration = register_op(
        model=trained["student"], report=evaluation.outputs["report"], registry_name=registry_name, promote=promote,
        overrides=common["overrides"], params_file=common["params_file"],
    )  # fmt: skip
    # the gate reads the registry's current champion, external state the KFP cache cannot see
    with_credentials(retried(cpu_step(registration, "register", cpu="1", memory="2G"))).set_caching_options(False)
    if pvc_name is not None:  # done with frames and checkpoints: free the volume (a failed run keeps it for a retry)
        cleanup = kubernetes.DeletePVC(pvc_name=pvc_name).after(registration)
        cleanup.set_display_name("delete data volume").set_caching_options(False)


def train_evaluate_register(frames: dsl.PipelineTask, data_root: str, pvc_name, overrides, params_file, gpus,
                            registry_name, promote, pretrained=None) -> None:  # fmt: skip
    """Everything after extraction: teacher and baseline, the distilled student, the comparison, the registry; the
    backbones from the `pretrained` weights artifact when given."""
    common = dict(frames_dir=frames.outputs["frames_dir"], data_version=frames.outputs["data_version"],
                  overrides=overrides, params_file=params_file)  # fmt: skip
    weights = {} if pretrained is None else {"pretrained": pretrained}
    trained = {}
    for role in ("teacher", "baseline"):
        task = train_op(role=role, data_root=data_root, gpus=gpus, **common, **weights)
        trained[role] = on_volume(retried(gpu_step(task, role, gpus)), pvc_name).outputs["model"]
    task = distill_op(teacher=trained["teacher"], data_root=data_root, gpus=gpus, **common, **weights)
    trained["student"] = on_volume(retried(gpu_step(task, "distill", gpus)), pvc_name).outputs["model"]
    with dsl.If(gpus > 0, name="gpu-evaluate"):
        evaluate_and_register(trained, common, pvc_name, registry_name, promote, gpu=True)
    with dsl.Else(name="cpu-evaluate"):
        evaluate_and_register(trained, common, pvc_name, registry_name, promote, gpu=False)


def run_stages(frames: dsl.PipelineTask, pretrained_uri: str, **args) -> None:
    """The stages after `frames` (the extract task), with the `pretrained_uri` weights file imported as an artifact
    when one is given (an importer cannot take an empty URI, hence two branches of the same stages)."""
    with dsl.If(pretrained_uri != "", name="pretrained"):
        weights = dsl.importer(artifact_uri=pretrained_uri, artifact_class=Artifact, reimport=False)
        weights.set_display_name("pretrained weights")
        train_evaluate_register(frames, pretrained=weights.output, **args)
    with dsl.Else(name="from-scratch"):
        train_evaluate_register(frames, **args)


def extract_step(pvc_name, **args) -> dsl.PipelineTask:
    """Extract (or synthesise) onto the data root. Never cached: the volume is the run's own, so an earlier run's
    outputs would name frames that are not there; the steps after it are cached by the data version it outputs."""
    task = extract_op(**args)
    with_credentials(retried(cpu_step(task, "extract", cpu="2", memory="4G"))).set_caching_options(False)
    return on_volume(task, pvc_name)


@dsl.pipeline(name="v2i", description=DESCRIPTION)
def v2i_pipeline(
    source_uri: str = "",
    source_format: str = "sun-seg",
    overrides: list = [],  # noqa: B006 - KFP reads it as the parameter's default; never mutated
    params_file: str = "",
    pretrained_uri: str = "",
    gpus: int = 1,
    registry_name: str = "v2i-student",
    promote: bool = False,
    volume_size: str = "100Gi",
    storage_class: str = "",
):
    """Run the V2I DAG on a cluster.

    Args:
        source_uri: s3://bucket/prefix of the raw dataset; empty: synthetic videos (a smoke test of the cluster).
        source_format: layout of source_uri: videos, sun-seg, buv or synthetic.
        overrides: params overrides, KEY=VALUE as for `v2i --set`, e.g. ["teacher.train.epochs=50"].
        params_file: a params file in the image merged over its params.yaml, e.g. configs/gpu-paper.yaml.
        pretrained_uri: torchvision ResNet weights file (s3://...) imported as an artifact for every model's
            backbone; empty: the params' model.pretrained (e.g. ResNet50_Weights.IMAGENET1K_V1, read from the
            image's torch cache, downloaded there only where the pod reaches download.pytorch.org).
        gpus: GPUs per training step, on one node (torchrun runs one process per GPU when more than one).
        registry_name: MLflow registered model name of the student.
        promote: move alias champion to the new version if it passes the gate (it beats its own baseline by
            register.min_gain and the champion by register.min_delta).
        volume_size: size of the run's data volume (frames and checkpoints), e.g. 100Gi for SUN-SEG.
        storage_class: its StorageClass, one that offers ReadWriteMany (NFS, CephFS, EFS, Filestore); empty: the
            cluster's default.
    """
    volume = kubernetes.CreatePVC(
        pvc_name_suffix="-v2i-data", access_modes=["ReadWriteMany"], size=volume_size,
        storage_class_name=storage_class,
    ).set_display_name("data volume").set_caching_options(False)  # fmt: skip: a cached one names a deleted PVC
    pvc_name = volume.outputs["name"]
    common = dict(overrides=overrides, params_file=params_file, data_root=DATA_MOUNT)
    frames = extract_step(pvc_name, source_uri=source_uri, source_format=source_format, **common)
    run_stages(frames, pretrained_uri, pvc_name=pvc_name, gpus=gpus, registry_name=registry_name,
               promote=promote, **common)  # fmt: skip


@dsl.pipeline(name="v2i-local", description=DESCRIPTION)
def local_pipeline(
    data_root: str,
    source_uri: str = "",
    source_format: str = "sun-seg",
    overrides: list = [],  # noqa: B006 - as above
    params_file: str = "",
    pretrained_uri: str = "",
    gpus: int = 0,
    registry_name: str = "v2i-student",
    promote: bool = False,
):
    """The same DAG with the frames and checkpoints in the local folder `data_root` instead of a volume."""
    common = dict(overrides=overrides, params_file=params_file, data_root=data_root)
    frames = extract_step(None, source_uri=source_uri, source_format=source_format, **common)
    run_stages(frames, pretrained_uri, pvc_name=None, gpus=gpus, registry_name=registry_name,
               promote=promote, **common)  # fmt: skip
