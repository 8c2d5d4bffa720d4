"""The V2I distillation objective (paper II-E, Eq. 6): L = L_det + lambda_bk * L_bk + lambda_qe * L_qe.

`DistillationTask` holds the student (`.model`, the only thing saved as the model), the distillation heads (the
projections of TFD and CQD, trainable, part of the task's own state) and the frozen video teacher. The teacher is
kept in a plain list, not as a submodule, so it is in neither `parameters()` nor `state_dict()`: the optimizer
never sees it and checkpoints never carry it (it is rebuilt from its own model directory). It is frozen
(requires_grad False), always in eval mode (`train()` is overridden), and follows the task's device and dtype
moves (`_apply` is overridden), so `task.to(device)` is all the engine needs.

Ablation switches (Tables III and IV), all in DistillConfig:
- tfd.enabled / tfd.mask: L_bk with the Gaussian mask (TFD), the hard ground-truth mask, or none (plain FD).
- cqd.enabled / cqd.mode: L_qe with n = floor(N/T), T*floor(N/T)/2 or T*floor(N/T) cross-view queries.
- use_msi: TFD distils the teacher's MSI-enhanced Y_t^3 (on) or the teacher's own backbone feature F_t^3 of the
  current frame (off), the "no MSI" rows of Table III. CQD is unchanged by it: its targets are the teacher's
  decoded queries, and a teacher trained with MSI has only the MSI-enhanced decoding (running its decoder on raw
  features it was never trained on would distil noise). use_msi has no effect when TFD is off.
- tfd.own_boxes (not in the paper): the student's own detections from this score join the ground-truth boxes in
  TFD's mask. The paper's mask covers the lesions only, so where an image model fires wrongly (on the bench, both
  image models put boxes on a synthetic instrument's shaft, which only ever appears over a lesion; the teacher, which
  sees the lesion in the other frames, does not) nothing pulls its feature towards the teacher's.
- score_weight (not in the paper): L_sc, the student's class scores on the cross-view queries pulled towards the
  teacher's on the same queries (see cqd.py); needs CQD.
- teacher_view (not in the paper), with hard-frame augmentation: "clean" runs the teacher on the clip before the
  current frame was degraded and the student on the degraded frame (the dataset's target["student_frame"]), so TFD
  and CQD pull the student's view of a hard frame towards the teacher's view of the frame it was made from.

Widths, strides and query counts are read from the student and teacher modules themselves, not from cfg.model,
so the heads always fit the networks actually passed in (e.g. after a --arch override).

Detection terms come from the criterion on the student's own queries for the current frame clips[:, T // 2]; the
cross-view queries are decoded in the same pass but never reach those terms.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from v2i_core.config import DistillConfig
from v2i_core.distill.cqd import CQDLoss, score_consistency
from v2i_core.distill.tfd import TFDLoss
from v2i_core.errors import V2IError
from v2i_core.models.teacher import VideoTeacher


class DistillationTask(nn.Module):
    """Student + distillation heads + frozen teacher; forward(clips, targets) returns the weighted loss terms."""

    def __init__(self, student: nn.Module, teacher: VideoTeacher, criterion: nn.Module, cfg: DistillConfig):
        super().__init__()
        self.model = student
        self.criterion = criterion
        self.cfg = cfg
        teacher.requires_grad_(False)
        teacher.eval()
        self._teacher = [teacher]  # a plain list hides it from parameters(), state_dict() and train()
        s_backbone, t_backbone = student.backbone, teacher.detector.backbone
        self.tfd = None
        if cfg.tfd.enabled:
            if s_backbone.strides[-1] != t_backbone.strides[-1]:
                raise V2IError(
                    f"params: distill.model: the student's last stage has stride {s_backbone.strides[-1]}, the "
                    f"teacher's {t_backbone.strides[-1]}; TFD needs the same (set distill.model.last_layer)"
                )
            self.tfd = TFDLoss(s_backbone.num_channels[-1], t_backbone.num_channels[-1], cfg.tfd.mask)
        if cfg.score_weight is not None and not cfg.cqd.enabled:
            raise V2IError("params: distill.score_weight scores the cross-view queries: it needs distill.cqd.enabled")
        self.cqd = None
        if cfg.cqd.enabled:
            self.cqd = CQDLoss(
                teacher.detector.query_embed.num_embeddings,
                teacher.frames,
                cfg.cqd.mode,
                query_dims=(teacher.detector.query_dim, student.query_dim),
                decoder_dims=(student.transformer.d_model, teacher.detector.transformer.d_model),
            )

    @property
    def teacher(self) -> VideoTeacher:
        return self._teacher[0]

    def train(self, mode: bool = True) -> DistillationTask:
        """Train mode for the student and heads; the teacher stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def _apply(self, fn, recurse: bool = True):
        # .to(), .cuda(), .double() ... move the hidden teacher along with the task
        self.teacher._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The student's and the heads' parameters: what the optimizer trains (the teacher is not among them)."""
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, clips: Tensor, targets: list[dict]) -> dict[str, Tensor]:
        # clips: [B, T, 3, H, W], current frame at T // 2; targets: the current frames' -> {name: scalar}
        frames = self.teacher.frames
        if clips.dim() != 5 or clips.shape[1] != frames:
            raise ValueError(f"distill: expected clips [B, {frames}, 3, H, W], got {tuple(clips.shape)}")
        with torch.no_grad():
            taught = self.teacher.run(clips)
        current = student_view(clips[:, frames // 2], targets)  # [B, 3, H, W]
        features = self.model.backbone_features(current)  # per level [B, C_l, h_l, w_l]
        idx = extra = None
        if self.cqd is not None:
            idx, extra = self.cqd.sample(self.teacher.detector.query_embed.weight, clips.shape[0])  # [B, n, q_s]
        outputs = self.model.detect(features, extra)
        extra_hs = outputs.pop("extra_hs", None)  # [B, n, d_s]: for L_qe only, never for the detection loss
        losses = dict(self.criterion(outputs, targets))
        if self.tfd is not None:
            target = taught.enhanced[-1] if self.cfg.use_msi else taught.current_raw[-1]  # [B, C_t, h, w]
            own = self.cfg.tfd.own_boxes
            guide = targets if own is None else with_own_boxes(targets, outputs, own)
            losses["loss_bk"] = self.cfg.tfd.weight * self.tfd(features[-1], target, guide)
        if self.cqd is not None:
            losses["loss_qe"] = self.cfg.cqd.weight * self.cqd(extra_hs, taught.outputs["hs"], idx)
        if self.cfg.score_weight is not None:
            student_logits = self.model.class_embed(extra_hs)  # [B, n, C]
            teacher_logits = taught.outputs["pred_logits"][:, idx]
            losses["loss_sc"] = self.cfg.score_weight * score_consistency(student_logits, teacher_logits)
        return losses


def student_view(current: Tensor, targets: list[dict]) -> Tensor:
    """The clips' current frames [B, 3, H, W], each replaced by its target's "student_frame" where the dataset kept
    the clip clean for the teacher and gave the student's degraded frame apart."""
    views = [t.get("student_frame") for t in targets]
    if all(v is None for v in views):
        return current
    return torch.stack([current[b] if v is None else v.to(current) for b, v in enumerate(views)])


def with_own_boxes(targets: list[dict], outputs: dict, min_score: float) -> list[dict]:
    """The targets with the detector's own boxes whose top class score reaches min_score added to each image's
    "boxes" (detached, cxcywh normalised like the labelled ones): TFD's mask then covers where the student fires."""
    confident, _ = confident_queries(outputs, min_score)
    return [
        {**target, "boxes": torch.cat([target["boxes"].to(keep.device), outputs["pred_boxes"][b, keep].detach()])}
        for b, (target, keep) in enumerate(zip(targets, confident, strict=True))
    ]


def confident_queries(outputs: dict, min_score: float) -> tuple[Tensor, Tensor]:
    """A detector's queries whose top class score reaches min_score, [B, N] bool, and each query's top class
    [B, N], both detached."""
    scores, classes = outputs["pred_logits"].detach().float().sigmoid().max(dim=-1)
    return scores >= min_score, classes
