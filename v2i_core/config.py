"""`params.yaml` as typed config: one section per pipeline step, unknown keys rejected by name.

Every float must be finite (YAML reads `.nan` and `.inf`, an override `nan`): a NaN learning rate or loss weight
would otherwise train for hours and fail late, or silently produce a NaN model. Ranges are checked here too, so a
bad value stops the command before any run starts, with a message naming its key.

Every knob of the pipeline lives here with its default, so `params.yaml` only has to say what differs,
and DVC can track each stage's own section.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from v2i_core.errors import V2IError


class Strict(BaseModel):
    """A config section: unknown keys are an error, floats must be finite, values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class SynthConfig(Strict):
    flavour: Literal["colonoscopy", "ultrasound"] = "colonoscopy"
    videos: int = Field(40, ge=1)
    frames: int = Field(16, ge=2, description="frames per video")
    width: int = Field(120, ge=32)
    height: int = Field(96, ge=32)
    fps: int = Field(25, ge=1)
    hard_fraction: float = Field(0.4, ge=0, le=1, description="share of lesion frames made hard for one frame")
    distractor_rate: float = Field(0.05, ge=0, le=1, description="chance per frame of a transient distractor")
    empty_fraction: float = Field(0.2, ge=0, le=1, description="share of frames with no lesion")
    hard_strength: float = Field(0.8, ge=0, le=1, description="how much of a lesion's evidence a hard frame removes")
    camera_speed: float = Field(0.8, ge=0, le=3, description="mean camera drift, px per frame at 128 px")
    seed: int = 0


class ExtractConfig(Strict):
    format: Literal["videos", "sun-seg", "buv", "synthetic"] = "synthetic"
    stride: int = Field(1, ge=1, description="keep every n-th frame")
    fps: float | None = Field(
        None, gt=0, description="frame rate of videos whose source states none (SUN-SEG, BUV); None: 25"
    )
    resize: tuple[int, int] | None = Field(None, description="[width, height] of written frames")
    val_fraction: float = Field(0.15, ge=0, lt=1)
    test_fraction: float = Field(0.25, ge=0, lt=1)
    seed: int = 0


class ModelConfig(Strict):
    arch: Literal["detr", "deformable_detr", "sam_detr"] = "deformable_detr"
    backbone: Literal["resnet18", "resnet34", "resnet50"] = "resnet18"
    pretrained: str | None = Field(
        None,
        description="backbone weights: a torchvision weights name (ResNet50_Weights.IMAGENET1K_V1, or IMAGENET1K_V1 "
        "for this backbone; from the torch hub cache, downloaded there if absent), an s3://bucket/key file (cached "
        "once) or a local torchvision ResNet state dict; hash-checked where the file name has torch's -<sha256> suffix",
    )
    backbone_norm: Literal["frozen_bn", "bn"] = Field(
        "bn", description="frozen_bn with pretrained weights (as DETR); bn when training from scratch"
    )
    last_layer: int = Field(3, ge=2, le=4, description="deepest ResNet stage used (3: stride 16, 4: stride 32)")
    num_feature_levels: int = Field(2, ge=1, le=4, description="Deformable DETR: backbone levels used")
    input_size: tuple[int, int] = Field((96, 120), description="[height, width] frames are resized to")
    d_model: int = 128
    nheads: int = 8
    enc_layers: int = 2
    dec_layers: int = 2
    dim_feedforward: int = 512
    dropout: float = Field(0.0, ge=0, lt=1)
    num_queries: int = 10
    enc_n_points: int = 4
    dec_n_points: int = 4
    num_classes: int = Field(1, ge=1, description="set from the data at training time")


class LossConfig(Strict):
    cls: float = Field(2.0, ge=0, description="weight of the focal classification loss (and matching cost)")
    bbox: float = Field(5.0, ge=0, description="weight of the L1 box loss")
    giou: float = Field(2.0, ge=0, description="weight of the GIoU loss")
    focal_alpha: float = Field(0.25, ge=0, le=1)
    focal_gamma: float = Field(2.0, ge=0)


class AugmentConfig(Strict):
    hflip: float = Field(0.5, ge=0, le=1)
    brightness: float = Field(0.2, ge=0)
    contrast: float = Field(0.2, ge=0)
    scale: tuple[float, float] = Field((0.8, 1.0), description="random crop area range, boxes kept inside")
    hard_frames: float = Field(
        0.3,
        ge=0,
        le=1,
        description="chance that a sample with a lesion has its current frame degraded afresh like a synthetic hard "
        "frame (blur, lost contrast, glare, shadow), its reference frames left clean (0: never, as the paper)",
    )
    hard_strength: float = Field(0.8, ge=0, le=1, description="how much of the lesion's evidence that takes away")


class TrainConfig(Strict):
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(2e-4, gt=0)
    lr_backbone: float = Field(
        2e-4, ge=0, description="the backbone trains from scratch at the full rate (1e-5 pretrained; 0: frozen)"
    )
    weight_decay: float = Field(1e-4, ge=0)
    lr_drop: list[int] = Field([7], description="epochs after which lr is multiplied by 0.1")
    clip_max_norm: float = Field(0.1, ge=0, description="gradient norm clip (0: not clipped)")
    amp: bool = Field(True, description="mixed precision, GPU only")
    num_workers: int | None = Field(
        None,
        ge=0,
        description="data loader processes per training process (None: its share of the node's CPUs, at most 8)",
    )
    seed: int = 0
    max_train_frames: int | None = Field(None, description="cap on training frames per epoch (random subset)")
    max_minutes: float | None = Field(None, gt=0, description="wall-time budget: stop, keeping the model, when reached")
    loss: LossConfig = Field(default_factory=LossConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


class MSIConfig(Strict):
    frames: int = Field(3, ge=1, description="T: the current frame and T-1 reference frames")
    ref_stride: int = Field(1, ge=1, description="frames between consecutive clip frames")
    local_kernel: int = Field(3, ge=1, description="3D convolution kernel of the local interactor")
    global_heads: int = 8
    ffn_ratio: int = 2
    identity_init: bool = Field(
        True, description="start MSI as the identity (branches' last layers at zero): teacher starts as its detector"
    )


class BaselineConfig(Strict):
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)


class TeacherConfig(Strict):
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    msi: MSIConfig = Field(default_factory=MSIConfig)


# Soft scores, not in the paper: CQD pulls the decoded cross-view queries towards the teacher's, and the teacher's
# class scores on those queries carry its doubt about a hard frame, which a hard label (or "no lesion") loses.
SCORE_WEIGHT_HELP = (
    "lambda_sc: pull the student's class scores on the cross-view queries towards the teacher's scores on the same "
    "queries (KL divergence of the sigmoid scores; needs CQD; None: off, as the paper)"
)

# Clean teacher view, not in the paper: a degraded frame's own pixels hold less than the clip; the teacher that sees
# the frame before degradation shows the student what the feature should have been.
TEACHER_VIEW_HELP = (
    "with hard-frame augmentation (train.augment.hard_frames), what the teacher sees of a degraded sample: the clip "
    "with its current frame degraded as the student sees it (degraded, the paper's single view) or the clip before "
    "degradation (clean)"
)


# TFD over the student's own boxes, not in the paper: the image models fire on what only ever appears beside a lesion
# (a synthetic instrument's shaft), where the teacher, which sees the lesion in the other frames, does not; the
# ground-truth mask never reaches those places.
TFD_OWN_BOXES_HELP = (
    "score from which the student's own detections join the ground-truth boxes in TFD's mask, so its features are "
    "also pulled towards the teacher's where it fires wrongly (None: the ground truth alone, as the paper)"
)


class TFDConfig(Strict):
    enabled: bool = True
    mask: Literal["gaussian", "gt", "none"] = Field("gaussian", description="none: plain feature distillation")
    weight: float = Field(0.25, ge=0, description="lambda_bk (the paper: 1)")
    own_boxes: float | None = Field(0.1, gt=0, le=1, description=TFD_OWN_BOXES_HELP)


class CQDConfig(Strict):
    enabled: bool = True
    mode: Literal["sq", "half", "all"] = Field(
        "sq", description="cross-view query count: sq = floor(N/T), half = T*sq/2, all = T*sq"
    )
    weight: float = Field(5.0, ge=0, description="lambda_qe")


class DistillConfig(Strict):
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    use_msi: bool = Field(True, description="distil the teacher's MSI-enhanced feature (off: its raw backbone)")
    tfd: TFDConfig = Field(default_factory=TFDConfig)
    cqd: CQDConfig = Field(default_factory=CQDConfig)
    score_weight: float | None = Field(4.0, gt=0, description=SCORE_WEIGHT_HELP)
    teacher_view: Literal["degraded", "clean"] = Field("clean", description=TEACHER_VIEW_HELP)


class SpeedConfig(Strict):
    """Frames/s of a model at batch 1: untimed calls, then timed ones, in rounds; the median over rounds counts."""

    warmup: int = Field(5, ge=0, description="untimed calls before each timing")
    iters: int = Field(30, ge=1, description="timed calls per model and round")
    repeats: int = Field(
        1, ge=1, description="rounds (over the models in turn, where several are compared); the median is reported"
    )


class EvalConfig(Strict):
    # Sigmoid (focal-loss) scores of DETR-family detectors sit lower than softmax ones: on the synthetic test
    # split F1 plateaus for thresholds 0.2-0.4 and drops steeply at 0.5, where recall hangs on small shifts.
    score_threshold: float = Field(0.3, ge=0, le=1)
    protocol: Literal["sun", "iou", "coco"] = "sun"
    speed: SpeedConfig = Field(default_factory=SpeedConfig)
    disagreement_frames: int = 8
    lesion_min_hits: int = Field(1, ge=1, description="a lesion is found when at least this many of its frames are hit")
    onnx_threads: int = Field(
        0, ge=0, description="ONNX Runtime's intra-op threads (`v2i infer --engine onnxruntime`); 0: one per core"
    )


class FilterConfig(Strict):
    """The causal temporal filter for live video (`v2i_core.temporal_filter`): a box is shown once an overlapping
    detection was seen in `k` of the last `n` frames, and kept `hold` frames after it was last seen."""

    k: int = Field(2, ge=1, description="sightings needed in the window (adds k-1 frames of latency)")
    n: int = Field(3, ge=1, description="the window, in frames")
    hold: int = Field(2, ge=0, description="frames a shown box stays after the detector last saw it")
    iou: float = Field(0.3, gt=0, le=1, description="overlap that links a detection to a followed object")

    @model_validator(mode="after")
    def _k_within_n(self):
        if self.k > self.n:
            raise ValueError(f"k ({self.k}) must be at most n ({self.n})")
        return self


class RegisterConfig(Strict):
    name: str = "v2i-student"
    primary_metric: str = "f1"
    min_delta: float = Field(0.0, description="promotion: the least gain over the current champion")
    min_gain: float = Field(0.0, description="promotion: the least gain of a student over its own baseline")


# `register` shadows ABCMeta.register on the class only; on instances the field wins, so the name is kept.
warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)


class Params(Strict):
    synth: SynthConfig = Field(default_factory=SynthConfig)
    extract: ExtractConfig = Field(default_factory=ExtractConfig)
    baseline: BaselineConfig = Field(default_factory=BaselineConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    register: RegisterConfig = Field(default_factory=RegisterConfig)


def _describe(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'"
    return f"{source}: '{key}': {first['msg']}"


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise V2IError(f"override '{item}': expected KEY=VALUE, e.g. baseline.train.epochs=3")
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise V2IError(f"override '{item}': '{part}' is not a section")
        node[leaf] = yaml.safe_load(value)
    return raw


def merge_params(raw: dict, extra: dict) -> dict:
    """Merge `extra` over `raw` in place: mappings merge key by key, any other value replaces."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            merge_params(raw[key], value)
        else:
            raw[key] = value
    return raw


def read_params_file(path: Path) -> dict:
    """A params file's top-level mapping; one line naming the file when it is not YAML or not a mapping."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise V2IError(f"{path}: not valid YAML ({exc.__class__.__name__})") from exc
    if not isinstance(raw, dict):
        raise V2IError(f"{path}: expected a mapping of sections at the top level")
    return raw


DEFAULT_PARAMS = "params.yaml"


def load_params(
    path: str | Path | None = DEFAULT_PARAMS,
    overrides: list[str] | None = None,
    set_files: list[str | Path] | None = None,
    named: bool = False,
) -> Params:
    """Read the params file, merge each set file over it, then apply overrides; errors name the key.

    A missing params file means the built-in defaults, as does a path of None or "" - unless the user `named` it
    (`--params FILE`), when a missing file is an error: a mistyped name must not run on the defaults unnoticed.
    """
    if named and path and not Path(path).is_file():
        raise V2IError(f"{path}: no such params file")
    raw = read_params_file(Path(path)) if path and Path(path).exists() else {}
    for extra in set_files or []:
        if not Path(extra).is_file():
            raise V2IError(f"{extra}: no such params file")
        merge_params(raw, read_params_file(Path(extra)))
    apply_overrides(raw, overrides or [])
    source = " + ".join(str(part) for part in [path or "params", *(set_files or [])])
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise V2IError(_describe(exc, source)) from exc


def section_from_dict(model_type: type[Strict], raw: dict, source: str) -> Strict:
    """Validate one section (e.g. a model directory's config.yaml) with the same error wording."""
    try:
        return model_type.model_validate(raw)
    except ValidationError as exc:
        raise V2IError(_describe(exc, source)) from exc
