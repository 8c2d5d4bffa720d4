"""What distillation needs before any training starts: a teacher that fits the student's data, and settings that
make sense together. Checked by the engine when it builds a student's task, so a mismatch stops the step with one
line before any epoch runs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from v2i_core.config import AugmentConfig, DistillConfig
from v2i_core.errors import V2IError

if TYPE_CHECKING:  # annotations only: distill sits below the engine and does not import it
    from v2i_core.engine.model_dir import ModelSpec


def check_distillation(
    cfg: DistillConfig,
    augment: AugmentConfig,
    input_size: tuple[int, int],
    categories: list[dict],
    frames_dir: Path,
    teacher_spec: ModelSpec,
    teacher_dir: Path,
) -> None:
    """Refuse a teacher that is not one, whose classes differ from those of the student's frames (`categories`)
    or whose input size differs from the student's (`input_size`, [height, width]: TFD compares their features
    cell by cell), and a clean teacher view without hard-frame augmentation (`augment.hard_frames`), which would
    have no degraded frame to show the teacher clean."""
    if teacher_spec.role != "teacher":
        raise V2IError(f"{teacher_dir}: role is '{teacher_spec.role}', expected a teacher")
    if [c["name"] for c in teacher_spec.categories] != [c["name"] for c in categories]:
        raise V2IError(f"{teacher_dir}: teacher classes differ from those of {frames_dir}")
    if tuple(teacher_spec.model.input_size) != tuple(input_size):
        raise V2IError(f"{teacher_dir}: teacher input_size differs from distill.model.input_size")
    if cfg.teacher_view == "clean" and not augment.hard_frames:
        raise V2IError("params: distill.teacher_view 'clean' needs distill.train.augment.hard_frames > 0")
