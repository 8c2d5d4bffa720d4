"""Box-aware augmentation drawn once per sample and applied identically to every frame of a clip.

The random draws come from a torch.Generator when one is given (else torch's global generator, which the
training loop seeds per epoch), in a fixed order, so an epoch's augmentation is reproducible and a resumed
run sees the same samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from v2i_core.config import AugmentConfig
from v2i_core.data.hard_frames import KINDS as HARD_KINDS

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True)
class Augment:
    """One draw: crop (left, top, width, height) in source pixels, flip, brightness and contrast factors, and the
    hard-frame degradation of the current frame, (kind, seed) or None."""

    crop: tuple[int, int, int, int]
    hflip: bool = False
    brightness: float = 1.0
    contrast: float = 1.0
    hard: tuple[str, int] | None = None


def _uniform(lo: float, hi: float, generator: torch.Generator | None) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


def sample_augment(
    cfg: AugmentConfig, size_hw: tuple[int, int], boxes: torch.Tensor, generator: torch.Generator | None
) -> Augment:
    """Draw an augmentation whose crop keeps every box ([n, 4] x0, y0, x1, y1 pixels) whole."""
    h, w = size_hw
    area = _uniform(*cfg.scale, generator) * h * w
    aspect = w / h * math.exp(_uniform(math.log(0.9), math.log(1.1), generator))
    cw = min(w, max(1, round(math.sqrt(area * aspect))))
    ch = min(h, max(1, round(area / cw)))
    if len(boxes):  # grow the crop until it holds all boxes, then slide it over them
        bx0, by0 = math.floor(float(boxes[:, 0].min())), math.floor(float(boxes[:, 1].min()))
        bx1, by1 = math.ceil(float(boxes[:, 2].max())), math.ceil(float(boxes[:, 3].max()))
        cw, ch = min(w, max(cw, bx1 - bx0)), min(h, max(ch, by1 - by0))
        x_lo, x_hi = max(0, bx1 - cw), min(bx0, w - cw)
        y_lo, y_hi = max(0, by1 - ch), min(by0, h - ch)
    else:
        x_lo, x_hi, y_lo, y_hi = 0, w - cw, 0, h - ch
    left = x_lo + int(torch.randint(0, max(x_hi - x_lo, 0) + 1, (), generator=generator))
    top = y_lo + int(torch.randint(0, max(y_hi - y_lo, 0) + 1, (), generator=generator))
    hflip = bool(torch.rand((), generator=generator) < cfg.hflip)
    brightness = max(0.0, _uniform(1 - cfg.brightness, 1 + cfg.brightness, generator))
    contrast = max(0.0, _uniform(1 - cfg.contrast, 1 + cfg.contrast, generator))
    hard = None
    # drawn only when enabled, so the draws above (and runs without it) stay as they were
    if cfg.hard_frames > 0 and len(boxes) and float(torch.rand((), generator=generator)) < cfg.hard_frames:
        kind = list(HARD_KINDS)[int(torch.randint(len(HARD_KINDS), (), generator=generator))]
        hard = (kind, int(torch.randint(2**31 - 1, (), generator=generator)))
    return Augment((left, top, cw, ch), hflip, brightness, contrast, hard)


def identity(size_hw: tuple[int, int]) -> Augment:
    return Augment((0, 0, size_hw[1], size_hw[0]))


def apply_frames(frames: list[Image.Image], aug: Augment, out_hw: tuple[int, int]) -> torch.Tensor:
    """RGB frames (same size) -> normalised float [T, 3, out_h, out_w], all under the same augmentation.

    Pillow and numpy rather than torch ops: per-sample tensors are small, and torch's intra-op threads
    would fight the training loop's for the cores.
    """
    left, top, cw, ch = aug.crop
    out_h, out_w = out_hw
    arrays = []
    for image in frames:
        if (left, top, cw, ch) != (0, 0, *image.size) or image.size != (out_w, out_h):
            image = image.resize((out_w, out_h), Image.Resampling.BILINEAR, box=(left, top, left + cw, top + ch))
        if aug.hflip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        arrays.append(np.asarray(image))
    x = np.stack(arrays).astype(np.float32) / 255.0  # [T, H, W, 3]
    if aug.brightness != 1.0 or aug.contrast != 1.0:
        x *= aug.brightness
        gray = (x @ GRAY_WEIGHTS).mean(axis=(1, 2)).reshape(-1, 1, 1, 1)
        x = np.clip((x - gray) * aug.contrast + gray, 0.0, 1.0)
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def apply_boxes(boxes: torch.Tensor, aug: Augment) -> torch.Tensor:
    """[n, 4] x0, y0, x1, y1 source pixels -> [n, 4] (cx, cy, w, h) normalised to the augmented image."""
    left, top, cw, ch = aug.crop
    b = boxes.clone()
    b[:, 0::2] = ((b[:, 0::2] - left) / cw).clamp(0, 1)
    b[:, 1::2] = ((b[:, 1::2] - top) / ch).clamp(0, 1)
    if aug.hflip:
        b[:, [0, 2]] = 1 - b[:, [2, 0]]
    return torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], -1)
