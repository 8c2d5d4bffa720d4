"""Hard-frame augmentation (not in the paper): a training sample's current frame degraded afresh the way the
synthesiser degrades its hard frames, its reference frames left clean.

An image model sees the training set's few hard frames every epoch and fits them from their labels, so on them a
video teacher has nothing left to teach; its lead shows on new videos only. A fresh degradation each time gives the
model hard frames it cannot have memorised, and the teacher, whose reference frames still show the lesion, a lead on
them to pass on. The kinds are those that any modality has: blur, lost contrast, a flare or a shadow over the lesion.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from v2i_core.data import synth_effects as fx
from v2i_core.data.synth_colonoscopy import ColonoscopyScene
from v2i_core.data.synth_scene import lesion_visibility
from v2i_core.data.synth_ultrasound import UltrasoundScene

# each kind as the synthesiser renders it, from the scene that has it
KINDS = {
    "motion_blur": ColonoscopyScene,
    "defocus": ColonoscopyScene,
    "low_contrast": ColonoscopyScene,
    "glare": ColonoscopyScene,
    "shadow": UltrasoundScene,
}


def degrade(image: Image.Image, boxes: torch.Tensor, kind: str, seed: int, strength: float) -> Image.Image:
    """An RGB frame and its [n >= 1, 4] x0, y0, x1, y1 pixel boxes -> the frame made hard: every lesion faded as the
    synthesiser fades it for this kind, then the kind's degradation over the first."""
    rng = np.random.default_rng(seed)
    img = np.asarray(image, dtype=np.float32) / 255.0
    for box in boxes.tolist():
        img = fx.fade(img, box, 1 - lesion_visibility(kind, strength))
    img = KINDS[kind].degrade(img, kind, boxes[0].tolist(), rng, strength)
    return Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))
