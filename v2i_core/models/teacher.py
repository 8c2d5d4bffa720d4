"""The video teacher (paper II-A/B): an image detector whose backbone features of T frames pass through MSI.

Every frame of a clip [B, T, 3, H, W] goes through the detector's backbone (shared weights); MSI turns the T
frames' features of each level into the current frame's enhanced features Y_t^l; the detector's transformer and
heads then detect on those, exactly as they would on one image's features. The current frame is index T // 2 (the
data layer centres the clip on it), and its targets are the clip's targets.

The paper's teacher is Deformable DETR + MSI; DETR works too (MSI then sees only its last stage).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from v2i_core.config import ModelConfig, MSIConfig
from v2i_core.models.msi import MSI


@dataclass
class TeacherPass:
    """What one teacher pass over a clip yields, for the distillation objective."""

    outputs: dict  # detector outputs on the enhanced current frame (pred_logits, pred_boxes, aux_outputs, hs, ...)
    raw: list[Tensor]  # backbone features of all frames, per level [B, T, C_l, h_l, w_l] (F_t^l)
    enhanced: list[Tensor]  # MSI output, per level [B, C_l, h_l, w_l] (Y_t^l of the current frame)

    @property
    def current_raw(self) -> list[Tensor]:
        """The current frame's own backbone features, per level [B, C_l, h_l, w_l]."""
        return [f[:, f.shape[1] // 2] for f in self.raw]


class VideoTeacher(nn.Module):
    """detector + MSI over clips of `frames` frames; forward(clips) returns the detector's output dict."""

    def __init__(self, detector: nn.Module, msi: MSI, frames: int):
        super().__init__()
        self.detector = detector
        self.msi = msi
        self.frames = frames

    def backbone_features(self, clips: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """clips: [B, T, 3, H, W] -> (raw: per level [B, T, C_l, h_l, w_l], enhanced: per level [B, C_l, h_l, w_l])."""
        if clips.dim() != 5 or clips.shape[1] != self.frames:
            raise ValueError(f"teacher: expected clips [B, {self.frames}, 3, H, W], got {tuple(clips.shape)}")
        b, t = clips.shape[:2]
        flat = self.detector.backbone_features(clips.flatten(0, 1))  # per level [B*T, C_l, h_l, w_l]
        raw = [f.unflatten(0, (b, t)) for f in flat]
        return raw, self.msi(raw)

    def run(self, clips: Tensor, extra_queries: Tensor | None = None) -> TeacherPass:
        """clips: [B, T, 3, H, W] -> outputs, raw and enhanced features of one pass."""
        raw, enhanced = self.backbone_features(clips)
        return TeacherPass(self.detector.detect(enhanced, extra_queries), raw, enhanced)

    def forward(self, clips: Tensor) -> dict:
        """clips: [B, T, 3, H, W] -> pred_logits [B, Q, C], pred_boxes [B, Q, 4], aux_outputs, hs [B, Q, d]."""
        return self.run(clips).outputs


def build_teacher(model_cfg: ModelConfig, msi_cfg: MSIConfig) -> VideoTeacher:
    """The teacher a (model, msi) config pair describes; its state dict round-trips through this function."""
    from v2i_core.models.build import build_detector

    detector = build_detector(model_cfg)
    msi = MSI(detector.backbone.num_channels, detector.backbone.stages, msi_cfg)
    return VideoTeacher(detector, msi, msi_cfg.frames)
