"""Frame degradations for hard frames. Each weakens the lesion's evidence but leaves a faint cue.

All take and return float32 images [H, W, C] in [0, 1]; `box` is the lesion's (x0, y0, x1, y1) in the
frame and `strength` in [0, 1] scales how much of the lesion's evidence is taken away.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import convolve, gaussian_filter


def motion_blur(img: np.ndarray, length: float, angle: float) -> np.ndarray:
    """Camera shake: a line kernel of `length` px at `angle`."""
    size = int(math.ceil(length)) | 1
    kernel = np.zeros((size, size), np.float32)
    c = size // 2
    for s in np.linspace(-length / 2, length / 2, 4 * size):
        kernel[int(round(c + s * math.sin(angle))), int(round(c + s * math.cos(angle)))] += 1
    kernel /= kernel.sum()
    return np.stack([convolve(img[..., i], kernel, mode="nearest") for i in range(img.shape[2])], axis=2)


def defocus(img: np.ndarray, sigma: float) -> np.ndarray:
    return gaussian_filter(img, (sigma, sigma, 0), mode="nearest")


def haze(img: np.ndarray, amount: float) -> np.ndarray:
    """Flatten contrast towards the frame's mean (fogged lens, gain drop)."""
    return img * (1 - amount) + img.mean(axis=(0, 1), keepdims=True) * amount


def fade(img: np.ndarray, box, amount: float) -> np.ndarray:
    """A lesion losing contrast against what surrounds it, on a frame already rendered (the synthesiser fades the
    lesion's own layer instead): the box's ellipse blended by `amount` towards a blur as wide as the box."""
    if amount <= 0:
        return img
    x0, y0, x1, y1 = box
    rx, ry = max((x1 - x0) / 2, 1.0), max((y1 - y0) / 2, 1.0)
    xs, ys = _grid(img)
    inside = ((xs - (x0 + x1) / 2) / rx) ** 2 + ((ys - (y0 + y1) / 2) / ry) ** 2
    mask = (amount * np.clip(1.5 - inside, 0, 1))[..., None]  # full in the ellipse's core, none past 1.5x it
    return img * (1 - mask) + gaussian_filter(img, (ry, rx, 0), mode="nearest") * mask


def _grid(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0 : img.shape[0], 0 : img.shape[1]].astype(np.float32) + 0.5
    return xs, ys


def glare(img: np.ndarray, box, rng: np.random.Generator, strength: float) -> np.ndarray:
    """A saturated light flare over part of the lesion."""
    x0, y0, x1, y1 = box
    size = max(x1 - x0, y1 - y0)
    cx = rng.uniform(x0 + 0.25 * (x1 - x0), x1 - 0.25 * (x1 - x0))
    cy = rng.uniform(y0 + 0.25 * (y1 - y0), y1 - 0.25 * (y1 - y0))
    xs, ys = _grid(img)
    sigma = size * (0.25 + 0.15 * strength)
    flare = (0.45 + 0.4 * strength) * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2))
    return img * (1 - flare[..., None]) + flare[..., None]


def bubbles(img: np.ndarray, box, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Translucent air bubbles with bright rims over part of the lesion."""
    x0, y0, x1, y1 = box
    size = max(x1 - x0, y1 - y0)
    xs, ys = _grid(img)
    out = img.copy()
    count = 2 + int(round(4 * strength))
    for _ in range(count):
        r = rng.uniform(0.15, 0.3) * size + 2
        cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
        d = np.hypot(xs - cx, ys - cy)
        inside = np.clip(r - d + 0.5, 0, 1)[..., None]
        rim = np.exp(-((d - r) ** 2) / 1.2)[..., None]
        fill = 0.35 + 0.35 * strength  # how much the bubble hides what is behind it
        out = out * (1 - inside * fill) + inside * fill * 0.85
        out = out * (1 - 0.8 * rim) + 0.8 * rim
        spot = np.exp(-((xs - cx + 0.4 * r) ** 2 + (ys - cy + 0.4 * r) ** 2) / (0.08 * r * r + 0.5))[..., None]
        out = out * (1 - spot) + spot
    return out


def instrument(img: np.ndarray, box, rng: np.random.Generator, strength: float) -> np.ndarray:
    """An opaque metal shaft entering from the frame's edge; its tip covers part of the lesion."""
    x0, y0, x1, y1 = box
    h, w = img.shape[:2]
    size = max(x1 - x0, y1 - y0)
    # tip inside the box, entry point on a random edge
    tx, ty = rng.uniform(x0, x1), rng.uniform(y0, y1)
    edge = int(rng.integers(4))
    ex, ey = [
        (rng.uniform(0, w), 0.0),
        (rng.uniform(0, w), float(h)),
        (0.0, rng.uniform(0, h)),
        (float(w), rng.uniform(0, h)),
    ][edge]
    xs, ys = _grid(img)
    vx, vy = tx - ex, ty - ey
    length = math.hypot(vx, vy) + 1e-6
    along = ((xs - ex) * vx + (ys - ey) * vy) / length
    across = ((xs - ex) * -vy + (ys - ey) * vx) / length
    half = (0.2 + 0.25 * strength) * size
    mask = np.clip(half - np.abs(across) + 0.5, 0, 1) * np.clip(length - along + 0.5, 0, 1) * (along > 0)
    shade = 0.45 + 0.25 * np.cos(np.clip(across / half, -1, 1) * math.pi / 2)  # a cylinder lit from the front
    metal = np.stack([shade * 0.95, shade, shade * 1.05], axis=-1)[..., : img.shape[2]]
    return img * (1 - mask[..., None]) + metal * mask[..., None]


def acoustic_shadow(img: np.ndarray, box, rng: np.random.Generator, strength: float) -> np.ndarray:
    """A dark vertical band (rib shadow, poor probe contact) over part of the lesion and everything below."""
    x0, y0, x1, y1 = box
    xs, ys = _grid(img)
    width = (0.35 + 0.3 * strength) * (x1 - x0)
    centre = rng.uniform(x0 + width / 2, max(x0 + width / 2, x1 - width / 2))
    band = np.clip(width / 2 - np.abs(xs - centre) + 1.0, 0, 1) * np.clip(ys - y0 + 4, 0, 1)
    darken = 1 - (0.35 + 0.4 * strength) * band
    return img * darken[..., None]


def reverberation(img: np.ndarray, box, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Bright repeated horizontal echoes washing over the lesion (the ultrasound counterpart of glare)."""
    x0, y0, x1, y1 = box
    xs, ys = _grid(img)
    period = rng.uniform(4, 7)
    lines = 0.5 + 0.5 * np.cos(2 * math.pi * (ys - y0) / period)
    region = np.exp(-(((xs - (x0 + x1) / 2) / (0.8 * (x1 - x0) + 1)) ** 2))
    region = region * np.exp(-(((ys - (y0 + y1) / 2) / (0.8 * (y1 - y0) + 1)) ** 2))
    wash = ((0.35 + 0.4 * strength) * region * (0.5 + 0.5 * lines))[..., None]
    return img * (1 - wash) + 0.9 * wash
