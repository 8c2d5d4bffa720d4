"""`v2i synth`: synthetic lesion videos (mp4) with one annotation file each, and a `synth.json` manifest.

Each video is deterministic for (seed, video index): its own numpy Generator draws the camera path, the
scene, the lesion, the plan of hard frames and distractors, and the per-frame noise, in a fixed order.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import numpy as np
from pydantic import ValidationError
from tqdm import tqdm

from v2i_core.config import SynthConfig
from v2i_core.data.annotations import MANIFEST, Box, FrameAnnotation, annotation_document
from v2i_core.data.synth_colonoscopy import ColonoscopyScene
from v2i_core.data.synth_scene import camera_path, lesion_visibility, place_lesion_centre, plan_video
from v2i_core.data.synth_ultrasound import UltrasoundScene
from v2i_core.data.video import write_video
from v2i_core.errors import V2IError
from v2i_core.storage import atomic_dir

log = logging.getLogger(__name__)

SCENES = {"colonoscopy": ColonoscopyScene, "ultrasound": UltrasoundScene}
LESION_TRACK = 1  # a video shows one lesion: every box is its track, written as each box's `track`


@dataclasses.dataclass
class SynthVideo:
    video_id: str
    frames: list[np.ndarray]  # uint8 RGB [H, W, 3]
    annotations: list[FrameAnnotation]


def video_id(cfg: SynthConfig, index: int) -> str:
    return f"{cfg.flavour}_{index:03d}"


def synthesize_video(cfg: SynthConfig, index: int) -> SynthVideo:
    """Render one video and its per-frame annotations."""
    rng = np.random.default_rng([cfg.seed, index])
    h, w = cfg.height, cfg.width
    us = cfg.flavour == "ultrasound"
    offsets = camera_path(rng, cfg.frames, cfg.camera_speed * min(h, w) / 128, vertical=0.15 if us else 1.0)
    canvas_hw = (h + math.ceil(offsets[:, 1].max()) + 2, w + math.ceil(offsets[:, 0].max()) + 2)
    scene = SCENES[cfg.flavour](rng, canvas_hw, (h, w))
    plan = plan_video(rng, cfg, scene.hard_kinds)
    present = [t for t, p in enumerate(plan) if p.lesion]

    lesion = None
    if present:
        for _ in range(50):
            shape, label, size = scene.lesion_shape(rng)
            x0, y0, x1, y1 = shape.bbox()
            centre = place_lesion_centre(rng, offsets, present, (max(-x0, x1), max(-y0, y1)), (h, w))
            if centre and scene.accepts(*centre, size, offsets):
                break
        else:  # the camera drifted too far for this lesion to stay in view: take the smallest that fits
            shape = dataclasses.replace(shape, rx=shape.rx / 2, ry=shape.ry / 2)
            x0, y0, x1, y1 = shape.bbox()
            centre = place_lesion_centre(rng, offsets, present, (max(-x0, x1), max(-y0, y1)), (h, w), margin=0)
            if centre is None:
                raise V2IError(f"synth: camera_speed {cfg.camera_speed} is too fast to keep a lesion in view")
        shape = dataclasses.replace(shape, cx=centre[0], cy=centre[1])
        lesion = (scene.lesion_layer(rng, shape, label), shape.bbox(), label)

    distractors = {}
    for event in sorted({p.distractor for p in plan if p.distractor is not None}):
        visible = [t for t, p in enumerate(plan) if p.distractor == event]
        distractors[event] = _distractor(rng, scene, offsets, visible, lesion, (h, w))

    frames, annotations = [], []
    for t, step in enumerate(plan):
        layers, boxes, box_xyxy = [], [], None
        if step.lesion and lesion is not None:
            layer, (x0, y0, x1, y1), label = lesion
            ox, oy = offsets[t]
            box_xyxy = (x0 - ox, y0 - oy, x1 - ox, y1 - oy)
            layers.append((layer, lesion_visibility(step.hard_kind, cfg.hard_strength)))
            boxes.append(Box(*(round(float(v), 2) for v in (x0 - ox, y0 - oy, x1 - x0, y1 - y0)), label))
        distractor = distractors.get(step.distractor)
        if distractor is not None:
            layers.append((distractor, 1.0))
        frames.append(scene.render(t, offsets[t], layers, step.hard_kind, box_xyxy, rng, cfg.hard_strength))
        tracks = [LESION_TRACK] * len(boxes)
        annotations.append(
            FrameAnnotation(boxes, step.hard_kind is not None, step.hard_kind, distractor is not None, tracks)
        )
    return SynthVideo(video_id(cfg, index), frames, annotations)


def _distractor(rng, scene, offsets, frames, lesion, view_hw):
    """A distractor layer visible in `frames`, clear of the lesion so it never hides it; None if none fits."""
    size = rng.uniform(0.05, 0.14) * min(view_hw)
    reach = 1.6 * size  # the widest a distractor outline gets (aspect and lobes)
    for _ in range(50):
        centre = place_lesion_centre(rng, offsets, frames, (reach, reach), view_hw)
        if centre is None:
            continue
        if lesion is not None:
            x0, y0, x1, y1 = lesion[1]
            if (
                math.hypot(centre[0] - (x0 + x1) / 2, centre[1] - (y0 + y1) / 2)
                < math.hypot(x1 - x0, y1 - y0) / 2 + reach + 2
            ):
                continue
        return scene.distractor_layer(rng, centre, size)
    return None


def synthesize(cfg: SynthConfig, out: Path) -> dict:
    """Write every video, its annotation file and the manifest into `out`, atomically; returns the manifest."""
    if cfg.width % 2 or cfg.height % 2:
        raise V2IError(f"synth: width and height must be even for H.264 (got {cfg.width}x{cfg.height})")
    categories = list(SCENES[cfg.flavour].categories)
    manifest = {
        "format_version": 1,
        "flavour": cfg.flavour,
        "seed": cfg.seed,
        "categories": categories,
        "config": cfg.model_dump(mode="json"),
        "videos": [],
    }
    with atomic_dir(out) as tmp:
        for index in tqdm(range(cfg.videos), desc=f"synth {cfg.flavour}", unit="video"):
            video = synthesize_video(cfg, index)
            write_video(tmp / f"{video.video_id}.mp4", video.frames, cfg.fps)
            doc = annotation_document(video.annotations, cfg.width, cfg.height, categories)
            (tmp / f"{video.video_id}.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
            anns = video.annotations
            manifest["videos"].append(
                {
                    "video_id": video.video_id,
                    "file": f"{video.video_id}.mp4",
                    "annotation": f"{video.video_id}.json",
                    "frames": len(anns),
                    "lesion_frames": sum(bool(a.boxes) for a in anns),
                    "hard_frames": sum(a.hard for a in anns),
                    "distractor_frames": sum(a.distractor for a in anns),
                }
            )
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def run(args, params) -> int:
    overrides = {
        k: getattr(args, k) for k in ("flavour", "videos", "frames", "seed") if getattr(args, k, None) is not None
    }
    try:
        cfg = SynthConfig.model_validate({**params.synth.model_dump(), **overrides})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise V2IError(f"synth: '{'.'.join(map(str, first['loc']))}': {first['msg']}") from exc
    manifest = synthesize(cfg, Path(args.out))
    totals = {k: sum(v[k] for v in manifest["videos"]) for k in ("frames", "lesion_frames", "hard_frames")}
    log.info(
        "%d %s videos -> %s (%d frames, %d with a lesion, %d hard)",
        len(manifest["videos"]),
        cfg.flavour,
        args.out,
        totals["frames"],
        totals["lesion_frames"],
        totals["hard_frames"],
    )
    return 0
