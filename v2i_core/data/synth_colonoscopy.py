"""Colonoscopy flavour: pink mucosa with folds, vessels and a dark lumen; domed polyps; yellowish debris.

Polyps differ from the distractors (flat debris flakes) in a consistent, learnable way: a soft edge,
dome shading with a specular highlight and a pit texture, where debris is flat, sharp-edged and tinted
yellow. Hard frames weaken the polyp's evidence with blur, defocus, bubbles, an instrument, low contrast
or glare, never erase it.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import gaussian_filter

from v2i_core.data import synth_effects as fx
from v2i_core.data.synth_scene import Layer, Shape, bilinear_crop, random_harmonics, smooth_noise

# polyp colour offsets from the mucosa: reddish adenoma, pale hyperplastic, near-isochromatic flat lesion
POLYP_TINTS = (np.array([0.09, -0.08, -0.05]), np.array([0.10, 0.10, 0.08]), np.array([0.04, -0.02, -0.01]))
DEBRIS_TINT = np.array([0.08, 0.04, -0.05])


class ColonoscopyScene:
    categories = ("polyp",)
    hard_kinds = ("motion_blur", "defocus", "bubbles", "instrument", "low_contrast", "glare")
    channels = 3

    def __init__(self, rng: np.random.Generator, canvas_hw: tuple[int, int], view_hw: tuple[int, int]):
        self.canvas_hw, self.view_hw = canvas_hw, view_hw
        self.mucosa = np.array([0.80, 0.42, 0.40]) + rng.normal(0, 0.025, 3)
        self.background = self._background(rng)
        h, w = view_hw
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
        r2 = ((xs - w / 2) / (w / 2)) ** 2 + ((ys - h / 2) / (h / 2)) ** 2
        self.vignette = (1.0 - 0.35 * r2)[..., None]  # the scope's light falls off towards the corners
        self.flicker = 1.0 + 0.03 * np.sin(rng.uniform(0, 2 * math.pi) + np.arange(10_000) * rng.uniform(0.05, 0.2))

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        h, w = self.canvas_hw
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
        illum = 1 + 0.12 * smooth_noise(rng, (h, w), 18)
        grain = 0.035 * smooth_noise(rng, (h, w), 1.2)
        img = self.mucosa[None, None, :] * (illum * (1 + grain))[..., None]
        for _ in range(int(rng.integers(2, 5))):  # haustral folds: dark crease with a lit ridge
            cx, cy = rng.uniform(-w, 2 * w), rng.uniform(-h, 2 * h)
            radius = math.hypot(cx - w / 2, cy - h / 2) + rng.uniform(-0.3, 0.3) * min(h, w)
            d = np.hypot(xs - cx, ys - cy) - radius
            img *= (1 - 0.2 * np.exp(-((d / 2.5) ** 2)) + 0.1 * np.exp(-(((d - 3.5) / 2.0) ** 2)))[..., None]
        img = self._vessels(rng, img)
        lumen_r = rng.uniform(0.15, 0.3) * min(h, w)
        lx, ly = rng.uniform(0, w), rng.uniform(0, h)
        self.lumen = (lx, ly, lumen_r)
        img *= (1 - 0.8 * np.exp(-(((xs - lx) ** 2 + (ys - ly) ** 2) / (2 * lumen_r**2))))[..., None]
        for _ in range(int(rng.integers(4, 12))):  # small wet highlights on the mucosa
            sx, sy, sr = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.5, 1.3)
            spot = np.exp(-((xs - sx) ** 2 + (ys - sy) ** 2) / (2 * sr**2))[..., None]
            img = img * (1 - spot) + spot
        return np.clip(img, 0, 1).astype(np.float32)

    def _vessels(self, rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
        h, w = self.canvas_hw
        trace = np.zeros((h, w), np.float32)
        for _ in range(int(rng.integers(6, 14))):
            x, y = rng.uniform(0, w), rng.uniform(0, h)
            heading, turn = rng.uniform(0, 2 * math.pi), 0.0
            for _ in range(int(rng.integers(40, 140))):
                turn = 0.8 * turn + rng.normal(0, 0.12)
                heading += turn
                x, y = x + 0.7 * math.cos(heading), y + 0.7 * math.sin(heading)
                if 0 <= x < w and 0 <= y < h:
                    trace[int(y), int(x)] += 1.0
        vessels = np.clip(gaussian_filter(trace, 0.6) * 2.5, 0, 1)[..., None]
        colour = np.array([0.55, 0.17, 0.24], np.float32)
        return img * (1 - 0.45 * vessels) + colour * 0.45 * vessels

    def lesion_shape(self, rng: np.random.Generator) -> tuple[Shape, str, float]:
        """A polyp's outline at the origin (placed later), its label, and its half-extent."""
        r = rng.uniform(0.06, 0.2) * min(self.view_hw)
        aspect = rng.uniform(0.75, 1.3)
        shape = Shape(
            0.0, 0.0, r * aspect, r / aspect, rng.uniform(0, math.pi), random_harmonics(rng, range(2, 5), 0.12)
        )
        return shape, "polyp", r

    def accepts(self, cx: float, cy: float, r: float, offsets: np.ndarray) -> bool:
        """Polyps sit on the wall, not in the dark lumen."""
        lx, ly, lr = self.lumen
        return math.hypot(cx - lx, cy - ly) > 1.2 * lr + r

    def lesion_layer(self, rng: np.random.Generator, shape: Shape, label: str) -> Layer:
        h, w = self.canvas_hw
        alpha, rn = shape.coverage((h, w), edge=1.6)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
        dome = np.sqrt(np.clip(1 - rn**2, 0, 1))
        size = (shape.rx + shape.ry) / 2
        # light from the scope's upper left: the lower-right flank is in shade, the rim darkens
        slope = np.clip(((xs - shape.cx) + (ys - shape.cy)) / (1.5 * size), -1, 1)
        shading = 0.78 + 0.35 * dome - 0.12 * slope * (1 - dome) - 0.15 * np.exp(-(((rn - 1) / 0.15) ** 2))
        pits = 1 + rng.uniform(0.03, 0.08) * smooth_noise(rng, (h, w), rng.uniform(0.7, 1.4))
        tint = POLYP_TINTS[int(rng.integers(len(POLYP_TINTS)))] + rng.normal(0, 0.015, 3)
        colour = (self.mucosa + tint)[None, None, :] * (shading * pits)[..., None]
        hx, hy = shape.cx - 0.35 * shape.rx, shape.cy - 0.35 * shape.ry
        spec = 0.9 * np.exp(-((xs - hx) ** 2 + (ys - hy) ** 2) / (2 * (0.1 * size + 0.6) ** 2))[..., None]
        colour = colour * (1 - spec) + spec
        return Layer(np.clip(colour, 0, 1).astype(np.float32), alpha)

    def distractor_layer(self, rng: np.random.Generator, centre: tuple[float, float], size: float) -> Layer:
        """Debris: lesion-sized and reddish-yellow, but flat, sharp-edged and without a highlight."""
        h, w = self.canvas_hw
        aspect = rng.uniform(0.7, 1.4)
        shape = Shape(
            *centre, size * aspect, size / aspect, rng.uniform(0, math.pi), random_harmonics(rng, range(2, 6), 0.2)
        )
        alpha, rn = shape.coverage((h, w), edge=0.5)
        flat = 0.92 + 0.12 * np.sqrt(np.clip(1 - rn**2, 0, 1))
        colour = (self.mucosa + DEBRIS_TINT + rng.normal(0, 0.02, 3))[None, None, :] * flat[..., None]
        return Layer(np.clip(colour, 0, 1).astype(np.float32), 0.85 * alpha)

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
        """One uint8 RGB frame: the view at `offset`, layers over it at their visibility, then the degradation."""
        h, w = self.view_hw
        ox, oy = float(offset[0]), float(offset[1])
        img = bilinear_crop(self.background, ox, oy, h, w)
        for layer, visibility in layers:
            a = bilinear_crop(layer.alpha, ox, oy, h, w)[..., None] * visibility
            img = img * (1 - a) + bilinear_crop(layer.colour, ox, oy, h, w) * a
        if kind is not None and box is not None:
            img = self.degrade(img, kind, box, rng, strength)
        img = img * self.vignette * self.flicker[t] + rng.normal(0, 0.012, img.shape).astype(np.float32)
        return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)

    @staticmethod
    def degrade(img: np.ndarray, kind: str, box, rng: np.random.Generator, s: float) -> np.ndarray:
        if kind == "motion_blur":
            return fx.motion_blur(img, 3 + 9 * s, rng.uniform(0, math.pi))
        if kind == "defocus":
            return fx.defocus(img, 0.6 + 2.6 * s)
        if kind == "bubbles":
            return fx.bubbles(img, box, rng, s)
        if kind == "instrument":
            return fx.instrument(img, box, rng, s)
        if kind == "low_contrast":
            return fx.haze(img, 0.35 * s)
        if kind == "glare":
            return fx.glare(img, box, rng, s)
        raise ValueError(f"unknown degradation {kind}")
