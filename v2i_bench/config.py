"""The bench's own settings, and every table row's configs built from the pipeline's stage sections.

Every model the bench trains is one the pipeline trains: a baseline row is the `baseline` section (model, train), the
teacher the `teacher` section (model, train, msi), a student row the `distill` section (model, train and its loss
settings), read from params.yaml, --set-file and --set as `v2i train` and `v2i distill` read them. Per row only what
the paper varies changes: the architecture (DETR or Deformable DETR), and for a student which of TFD, MSI and CQD it
uses (Table III). What the bench adds is its own and lives in `bench.yaml` beside this module, under `bench:`: the
synthetic datasets, the seeds, the rows, the held-out videos, the workers, the frame size every row trains at and
the speed measurement's rounds. A --set-file's `bench:` section merges over it and `--set bench.KEY=VALUE` overrides
it, with the same mechanics as the params; every other section goes to the params.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from v2i_bench.paper_tables import ROWS, Row
from v2i_core.config import (
    DistillConfig,
    ExtractConfig,
    ModelConfig,
    MSIConfig,
    Params,
    SpeedConfig,
    Strict,
    SynthConfig,
    TrainConfig,
    apply_overrides,
    merge_params,
    read_params_file,
    section_from_dict,
)
from v2i_core.errors import V2IError

BENCH_FILE = Path(__file__).with_name("bench.yaml")
SECTION = "bench"  # the bench's section of its own file and of a set file; the prefix of its --set keys
DATASETS = ("colonoscopy", "ultrasound")
ROW_NAMES = tuple(ROWS)


class BenchDatasets(Strict):
    """One synthetic dataset per task (its own synth seed), shared by every model and seed."""

    colonoscopy: SynthConfig = Field(default_factory=lambda: SynthConfig(flavour="colonoscopy"))
    ultrasound: SynthConfig = Field(default_factory=lambda: SynthConfig(flavour="ultrasound"))

    @model_validator(mode="before")
    @classmethod
    def _flavour_from_name(cls, raw):
        # a partial entry (e.g. only `videos`) takes its flavour from its name, not from SynthConfig's default
        if not isinstance(raw, dict):
            return raw
        return {k: {"flavour": k, **v} if k in DATASETS and isinstance(v, dict) else v for k, v in raw.items()}

    @model_validator(mode="after")
    def _flavour_matches_name(self):
        for name in DATASETS:
            if getattr(self, name).flavour != name:
                raise ValueError(f"datasets.{name}.flavour must be {name}")
        return self


class BenchConfig(Strict):
    """`v2i bench paper`: the paper's Tables I-III on synthetic data; the models and their training: the stage
    sections."""

    datasets: BenchDatasets = Field(default_factory=BenchDatasets)
    extract: ExtractConfig = Field(default_factory=ExtractConfig, description="the training videos' split")
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="train.seed of each repetition of a row")
    input_size: tuple[int, int] | None = Field(
        None, description="[height, width] every row trains and is tested at; None: each stage section's model's"
    )
    val_videos: int = Field(
        12,
        ge=0,
        description="colonoscopy: videos synthesised apart (another synth seed) to pick each model's score "
        "threshold on; 0: every model is scored at eval.score_threshold only",
    )
    test_videos: int = Field(
        36,
        ge=0,
        description="videos synthesised apart (another synth seed) that every model is tested on, per dataset; "
        "0: the extract split's test videos",
    )
    rows: list[Literal[ROW_NAMES]] = Field(
        list(ROW_NAMES), description="table rows to run (the teacher added if a student needs it)"
    )
    workers: int = Field(
        1,
        ge=1,
        description="runs trained at once, each in a process of its own with an equal share of the CPU threads and "
        "its progress in the run's train.log; a student starts once its teacher is done",
    )
    speed: SpeedConfig = Field(
        default_factory=SpeedConfig, description="interleaved rounds of the speed measurement; default: eval.speed"
    )


class _BenchFile(Strict):
    """A params file's bench section, so that errors name its keys as `bench.KEY`."""

    bench: BenchConfig = Field(default_factory=BenchConfig)


def load_bench(
    params_path: str | Path | None = "params.yaml",
    overrides: list[str] | None = None,
    set_files: list[str | Path] | None = None,
    bench_file: str | Path = BENCH_FILE,
) -> tuple[Params, BenchConfig]:
    """The params (params.yaml, missing: all defaults) and the bench's settings (bench_file's `bench` section), each
    set file's `bench` section merged over the latter and its other sections over the former, then the overrides:
    `bench.KEY=VALUE` to the bench, the rest to the params. The bench's speed rounds default to eval.speed's."""
    raw = read_params_file(Path(params_path)) if params_path and Path(params_path).exists() else {}
    bench = read_params_file(Path(bench_file)).get(SECTION) or {}
    for path in set_files or []:
        if not Path(path).is_file():
            raise V2IError(f"{path}: no such params file")
        extra = read_params_file(Path(path))
        merge_params(bench, extra.pop(SECTION, None) or {})
        merge_params(raw, extra)
    ours = [item for item in overrides or [] if item.startswith(f"{SECTION}.")]
    apply_overrides(raw, [item for item in overrides or [] if item not in ours])
    apply_overrides(bench, [item.removeprefix(f"{SECTION}.") for item in ours])
    sources = " + ".join(str(part) for part in [params_path or "params", *(set_files or [])])
    params = section_from_dict(Params, raw, sources)
    if isinstance(bench.get("speed"), dict):
        bench["speed"] = {**params.eval.speed.model_dump(), **bench["speed"]}
    elif "speed" not in bench:
        bench["speed"] = params.eval.speed.model_dump()
    cfg = section_from_dict(_BenchFile, {SECTION: bench}, " + ".join([str(bench_file), *map(str, set_files or [])]))
    check_rows(params, cfg.bench)
    return params, cfg.bench


def row_model(params: Params, cfg: BenchConfig, row: Row) -> ModelConfig:
    """The model of a row: its stage section's, in the row's architecture, at the bench's frame size if it sets one."""
    section = {"baseline": params.baseline, "teacher": params.teacher, "student": params.distill}[row.role]
    update = {"arch": row.arch} | ({"input_size": cfg.input_size} if cfg.input_size else {})
    return section.model.model_copy(update=update)


def row_train(params: Params, row: Row, seed: int) -> TrainConfig:
    """The training of a row: its stage section's, under the run's seed, for its epochs (never a wall-time budget:
    the tables compare models trained for the same epochs, whatever the machine's load)."""
    section = {"baseline": params.baseline, "teacher": params.teacher, "student": params.distill}[row.role]
    return section.train.model_copy(update={"seed": seed, "max_minutes": None})


def row_msi(params: Params, row: Row) -> MSIConfig | None:
    """The teacher's MSI (the teacher section's); None for an image model."""
    return params.teacher.msi if row.role == "teacher" else None


def row_distill(params: Params, row: Row) -> DistillConfig | None:
    """A student row's distillation: the distill section's loss settings with the row's own choice of TFD, MSI and
    CQD (Table III); None for a baseline or the teacher."""
    if row.role != "student":
        return None
    d = params.distill
    return d.model_copy(
        update={
            "use_msi": row.msi,
            "tfd": d.tfd.model_copy(update={"enabled": row.tfd}),
            "cqd": d.cqd.model_copy(update={"enabled": row.cqd}),
            "score_weight": d.score_weight if row.cqd else None,  # its targets are CQD's cross-view queries
        }
    )


def check_rows(params: Params, cfg: BenchConfig) -> None:
    """What a student needs of its teacher, checked before the first run rather than an hour into the bench: frames
    of one size, and features of one stride for TFD."""
    teacher, student = (row_model(params, cfg, ROWS[name]) for name in ("teacher", "deformable_v2i"))
    if tuple(teacher.input_size) != tuple(student.input_size):
        raise V2IError(
            "params: teacher.model.input_size must equal distill.model.input_size (the students learn on the "
            "teacher's frames), or set bench.input_size"
        )
    if teacher.last_layer != student.last_layer:
        raise V2IError(
            "params: teacher.model.last_layer must equal distill.model.last_layer (TFD needs features of one stride)"
        )
