"""Breast-ultrasound flavour: layered speckled tissue seen by a sliding linear probe; dark lesions of two classes.

Benign lesions are oval, wider than tall, smooth-margined, with a thin bright capsule and posterior
enhancement; malignant ones are irregular and spiculated, taller than wide, heterogeneous, with an echogenic
halo and posterior shadowing. Distractors are anechoic round structures (cysts, vessels in cross-section):
darker, sharp-edged and free of internal echoes. Speckle moves with the tissue and partly decorrelates from
frame to frame, as real speckle does.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import gaussian_filter

from v2i_core.data import synth_effects as fx
from v2i_core.data.synth_scene import Layer, Shape, bilinear_crop, random_harmonics, smooth_noise

FRESH_SPECKLE = 0.25  # share of the speckle that changes from one frame to the next


def speckle(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Fully developed speckle: the magnitude of low-passed complex noise, grain elongated laterally, mean 1."""
    re = gaussian_filter(rng.normal(size=shape).astype(np.float32), (0.6, 1.2))
    im = gaussian_filter(rng.normal(size=shape).astype(np.float32), (0.6, 1.2))
    mag = np.hypot(re, im)
    return mag / mag.mean()


class UltrasoundScene:
    categories = ("benign", "malignant")
    hard_kinds = ("motion_blur", "defocus", "shadow", "low_contrast", "reverberation")
    channels = 1

    def __init__(self, rng: np.random.Generator, canvas_hw: tuple[int, int], view_hw: tuple[int, int]):
        self.canvas_hw, self.view_hw = canvas_hw, view_hw
        self.echo = self._tissue(rng)
        self.speckle = speckle(rng, canvas_hw)
        h = view_hw[0]
        depth = np.arange(h, dtype=np.float32)[:, None, None] + 0.5
        self.gain = 1.1 * np.exp(-0.5 * depth / h)  # attenuation with depth, partly compensated
        self.flicker = 1.0 + 0.03 * np.sin(rng.uniform(0, 2 * math.pi) + np.arange(10_000) * rng.uniform(0.05, 0.2))

    def _tissue(self, rng: np.random.Generator) -> np.ndarray:
        h, w = self.canvas_hw
        vh = self.view_hw[0]
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
        wave = lambda base, amp: base + amp * smooth_noise(rng, (w,), 12)[None, :]  # noqa: E731
        skin, fat, gland = wave(0.05 * vh, 0.6), wave(0.25 * vh, 3.0), wave(0.75 * vh, 4.0)
        fat_tex = 0.22 + 0.07 * smooth_noise(rng, (h, w), 3)
        gland_tex = 0.55 + 0.15 * smooth_noise(rng, (h, w), 4)
        muscle = 0.35 + 0.12 * np.sin(2 * math.pi * ys / rng.uniform(4, 7) + 2 * smooth_noise(rng, (h, w), 6))
        echo = np.where(ys < skin, 0.9, np.where(ys < fat, fat_tex, np.where(ys < gland, gland_tex, muscle)))
        for _ in range(int(rng.integers(3, 7))):  # Cooper's ligaments: thin bright curved lines
            cx, cy = rng.uniform(-w, 2 * w), rng.uniform(2 * h, 4 * h)
            d = np.hypot(xs - cx, ys - cy) - math.hypot(cx - rng.uniform(0, w), cy - rng.uniform(0.2 * vh, 0.7 * vh))
            echo = echo + 0.3 * np.exp(-((d / 0.8) ** 2))
        return np.clip(echo, 0.02, 1.2).astype(np.float32)

    def lesion_shape(self, rng: np.random.Generator) -> tuple[Shape, str, float]:
        r = rng.uniform(0.07, 0.19) * min(self.view_hw)
        if rng.random() < 0.5:
            a = rng.uniform(1.15, 1.5)  # wider than tall, smooth
            shape = Shape(0.0, 0.0, r * a, r / a, rng.uniform(-0.25, 0.25), random_harmonics(rng, range(2, 4), 0.05))
            return shape, "benign", r
        a = rng.uniform(1.0, 1.3)  # taller than wide, spiculated
        shape = Shape(0.0, 0.0, r / a, r * a, rng.uniform(-0.3, 0.3), random_harmonics(rng, range(3, 10), 0.22))
        return shape, "malignant", r

    def accepts(self, cx: float, cy: float, r: float, offsets: np.ndarray) -> bool:
        """Lesions lie in the glandular layer, below the subcutaneous fat."""
        depth = cy - offsets[:, 1].mean()
        return 0.3 * self.view_hw[0] + r * 0.5 < depth < 0.85 * self.view_hw[0]

    def lesion_layer(self, rng: np.random.Generator, shape: Shape, label: str) -> Layer:
        """The lesion as an echo factor over the canvas (`colour` holds the factor; `alpha` its outline)."""
        h, w = self.canvas_hw
        malignant = label == "malignant"
        alpha, rn = shape.coverage((h, w), edge=0.8 if malignant else 1.3)
        ys = np.mgrid[0:h, 0:w][0].astype(np.float32) + 0.5
        inside = (
            (0.22 + 0.06 * smooth_noise(rng, (h, w), 1.5)) if malignant else (0.3 + 0.03 * smooth_noise(rng, (h, w), 2))
        )
        factor = 1 + alpha * (np.clip(inside, 0.05, 1) - 1)
        if malignant:
            factor += 0.35 * np.exp(-(((rn - 1.12) / 0.12) ** 2)) * (1 - alpha)  # echogenic halo
        else:
            factor += 0.5 * np.exp(-(((rn - 1.0) / 0.06) ** 2))  # thin capsule
        below = np.maximum.accumulate(alpha, axis=0) * (1 - alpha)
        fade = np.exp(-np.clip(ys - shape.cy, 0, None) / (0.35 * self.view_hw[0]))
        factor *= 1 + (-0.45 if malignant else 0.35) * below * fade  # posterior shadow / enhancement
        return Layer(factor[..., None].astype(np.float32), alpha)

    def distractor_layer(self, rng: np.random.Generator, centre: tuple[float, float], size: float) -> Layer:
        h, w = self.canvas_hw
        shape = Shape(*centre, size, size * rng.uniform(0.8, 1.0), 0.0)
        alpha, _ = shape.coverage((h, w), edge=0.5)
        below = np.maximum.accumulate(alpha, axis=0) * (1 - alpha)
        factor = (1 - 0.88 * alpha) * (1 + 0.25 * below)
        return Layer(factor[..., None].astype(np.float32), alpha)

    def render(
        self,
        t: int,
        offset: np.ndarray,
        layers: list[tuple[Layer, float]],
        kind: str | None,
        box: tuple[float, float, float, float] | None,
        rng: np.random.Generator,
        strength: float,
    ) -> np.ndarray:
        h, w = self.view_hw
        ox, oy = float(offset[0]), float(offset[1])
        echo = bilinear_crop(self.echo, ox, oy, h, w)[..., None]
        for layer, visibility in layers:  # layers are echo factors: they multiply, so they stack
            echo = echo * (1 + visibility * (bilinear_crop(layer.colour, ox, oy, h, w) - 1))
        grain = (1 - FRESH_SPECKLE) * bilinear_crop(self.speckle, ox, oy, h, w) + FRESH_SPECKLE * speckle(rng, (h, w))
        img = echo * grain[..., None] * self.gain * self.flicker[t]
        img = img / (0.6 + img)  # log-like compression of the echo amplitude
        if kind is not None and box is not None:
            img = self.degrade(img, kind, box, rng, strength)
        img = img + rng.normal(0, 0.01, img.shape).astype(np.float32)
        gray = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
        return np.repeat(gray, 3, axis=2)

    @staticmethod
    def degrade(img: np.ndarray, kind: str, box, rng: np.random.Generator, s: float) -> np.ndarray:
        if kind == "motion_blur":
            return fx.motion_blur(img, 3 + 9 * s, rng.normal(0, 0.2))  # the probe slides sideways
        if kind == "defocus":
            return fx.defocus(img, 0.6 + 2.4 * s)
        if kind == "shadow":
            return fx.acoustic_shadow(img, box, rng, s)
        if kind == "low_contrast":
            return fx.haze(img, 0.35 * s)
        if kind == "reverberation":
            return fx.reverberation(img, box, rng, s)
        raise ValueError(f"unknown degradation {kind}")
