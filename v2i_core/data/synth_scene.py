"""Geometry and timing shared by both synthetic flavours: camera paths, blob shapes, the per-frame plan.

A video is a window sliding slowly over a large still canvas (the camera), so a lesion painted on the
canvas moves smoothly and its neighbouring frames show it at almost the same place. The plan decides,
per frame, whether the lesion is in view, whether the frame is degraded ("hard") and whether a transient
distractor appears; the flavour renderers only paint what the plan says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from v2i_core.config import SynthConfig


@dataclass(frozen=True)
class Shape:
    """A blob on the canvas: an ellipse whose radius is modulated by a few harmonics (lobes, spicules)."""

    cx: float
    cy: float
    rx: float
    ry: float
    angle: float
    harmonics: tuple[tuple[int, float, float], ...] = ()  # (order k, relative amplitude, phase)

    def radius(self, theta: np.ndarray) -> np.ndarray:
        t = theta - self.angle
        r = self.rx * self.ry / np.sqrt((self.ry * np.cos(t)) ** 2 + (self.rx * np.sin(t)) ** 2)
        wobble = sum(a * np.cos(k * theta + p) for k, a, p in self.harmonics) if self.harmonics else 0.0
        return r * (1.0 + wobble)

    def bbox(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the half-coverage contour, in continuous canvas coordinates."""
        theta = np.linspace(0.0, 2 * math.pi, 1440, endpoint=False)
        r = self.radius(theta)
        xs, ys = self.cx + r * np.cos(theta), self.cy + r * np.sin(theta)
        return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())

    def coverage(self, shape_hw: tuple[int, int], edge: float) -> tuple[np.ndarray, np.ndarray]:
        """(alpha [H, W] in [0, 1], normalised radius [H, W]) over a canvas; `edge` is the ramp width in px."""
        h, w = shape_hw
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5  # pixel centres
        dx, dy = xs - self.cx, ys - self.cy
        dist = np.hypot(dx, dy)
        boundary = self.radius(np.arctan2(dy, dx)).astype(np.float32)
        alpha = np.clip((boundary - dist) / max(edge, 1e-3) + 0.5, 0.0, 1.0)
        return alpha, dist / np.maximum(boundary, 1e-3)


def lesion_visibility(kind: str | None, strength: float) -> float:
    """How much of a lesion's contrast survives a hard frame of this kind: low contrast and blur also fade it."""
    if kind == "low_contrast":
        return 1 - 0.75 * strength
    if kind in ("motion_blur", "defocus"):
        return 1 - 0.35 * strength
    return 1.0


def camera_path(rng: np.random.Generator, frames: int, speed: float, vertical: float = 1.0) -> np.ndarray:
    """Offsets [T, 2] (x, y) of the view on the canvas, >= 0: a slow drift whose velocity wanders smoothly."""
    heading = rng.uniform(0, 2 * math.pi)
    velocity = speed * rng.uniform(0.4, 1.0) * np.array([math.cos(heading), math.sin(heading) * vertical])
    positions = np.zeros((frames, 2))
    for t in range(1, frames):
        velocity = 0.9 * velocity + 0.1 * speed * rng.normal(0, 1.0, 2) * np.array([1.0, vertical])
        norm = np.linalg.norm(velocity)
        if norm > 1.5 * speed:  # cap the speed: neighbouring frames must stay nearly aligned
            velocity *= 1.5 * speed / norm
        positions[t] = positions[t - 1] + velocity
    return positions - positions.min(axis=0)


def bilinear_crop(canvas: np.ndarray, ox: float, oy: float, h: int, w: int) -> np.ndarray:
    """The [h, w, ...] view whose top-left lies at (ox, oy) on the canvas, sampled bilinearly."""
    ix, iy = int(math.floor(ox)), int(math.floor(oy))
    fx, fy = ox - ix, oy - iy
    patch = canvas[iy : iy + h + 1, ix : ix + w + 1]
    top = patch[:h, :w] * (1 - fx) + patch[:h, 1 : w + 1] * fx
    bottom = patch[1 : h + 1, :w] * (1 - fx) + patch[1 : h + 1, 1 : w + 1] * fx
    return (top * (1 - fy) + bottom * fy).astype(canvas.dtype)


@dataclass
class Layer:
    """Something painted on the canvas: colour (or, for ultrasound, an echo factor) [H, W, C], coverage [H, W]."""

    colour: np.ndarray
    alpha: np.ndarray


@dataclass
class FramePlan:
    """What one frame shows: the lesion or not, a degradation or not, a distractor or not."""

    lesion: bool = False
    hard_kind: str | None = None
    distractor: int | None = None  # index of the distractor event visible in this frame


def plan_video(rng: np.random.Generator, cfg: SynthConfig, hard_kinds: tuple[str, ...]) -> list[FramePlan]:
    """Per-frame plan: one lesion stretch, short hard events inside it, 1-2 frame distractor events."""
    n = cfg.frames
    plan = [FramePlan() for _ in range(n)]
    n_empty = min(n, round(cfg.empty_fraction * n))
    before = int(rng.integers(0, n_empty + 1))
    for t in range(before, n - (n_empty - before)):
        plan[t].lesion = True
    _place_hard_events(rng, plan, cfg.hard_fraction, hard_kinds)
    event, t = 0, 0
    while t < n:
        if rng.random() < cfg.distractor_rate:
            length = 1 + int(rng.random() < 0.5)
            for k in range(t, min(n, t + length)):
                plan[k].distractor = event
            event += 1
            t += length + 1  # a gap: a distractor never lasts longer than two frames
        else:
            t += 1
    return plan


def _place_hard_events(
    rng: np.random.Generator, plan: list[FramePlan], fraction: float, kinds: tuple[str, ...]
) -> None:
    """Hard events of 1-2 frames, each with clean lesion frames on both sides (the teacher's evidence)."""
    present = [t for t, p in enumerate(plan) if p.lesion]
    target = round(fraction * len(present))
    if not present or target == 0:
        return
    first, last = present[0], present[-1]
    placed, attempts = 0, 0
    while placed < target and attempts < 50 * len(plan):
        attempts += 1
        length = min(1 + int(rng.random() < 0.5), target - placed)
        start = int(rng.integers(first + 1, max(first + 2, last - length + 1)))
        window = range(start - 1, start + length + 1)  # the event plus one clean frame each side
        if window.start < first or window.stop - 1 > last or any(plan[t].hard_kind for t in window):
            continue
        kind = kinds[int(rng.integers(len(kinds)))]
        for t in range(start, start + length):
            plan[t].hard_kind = kind
        placed += length


def place_lesion_centre(
    rng: np.random.Generator,
    offsets: np.ndarray,
    frames: list[int],
    half_extent: tuple[float, float],
    view_hw: tuple[int, int],
    margin: float = 3.0,
) -> tuple[float, float] | None:
    """A canvas point where a blob of the given half extent stays inside the view in all `frames`."""
    h, w = view_hw
    ex, ey = half_extent
    sel = offsets[frames] if frames else offsets
    x_lo, x_hi = sel[:, 0].max() + ex + margin, sel[:, 0].min() + w - ex - margin
    y_lo, y_hi = sel[:, 1].max() + ey + margin, sel[:, 1].min() + h - ey - margin
    if x_lo > x_hi or y_lo > y_hi:
        return None
    return float(rng.uniform(x_lo, x_hi)), float(rng.uniform(y_lo, y_hi))


def random_harmonics(rng: np.random.Generator, orders: range, amplitude: float) -> tuple:
    return tuple((k, float(rng.uniform(0, amplitude) / k**0.5), float(rng.uniform(0, 2 * math.pi))) for k in orders)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian noise low-passed at `sigma` px, rescaled to zero mean and unit std."""
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.normal(size=shape).astype(np.float32), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-6)
