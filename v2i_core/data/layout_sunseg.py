"""The SUN-SEG layout: `<split>/Frame/<case>/*.jpg` with `<split>/Detection/bbox_annotation.json`.

Split folders are `TrainDataset`, `TestEasyDataset` and `TestHardDataset`; a test folder may hold its
frames directly or in `Seen` / `Unseen` sub-folders (each with its own `Frame`, and `Detection` there or
one level up). The annotation file lists `images` (`id`, `file_name` without extension, `case_name`) and
`annotation` entries (`id` of the image, `bbox`). The order of the four bbox numbers is documented as
[min_x, min_y, max_x, max_y] yet public loaders read it as [min_y, min_x, width, height]: when `GT` masks
are present (`<split>/GT/<case>/<name>.png`) the order is taken from whichever reading matches the masks;
without masks the loaders' reading is assumed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from v2i_core.data.annotations import Box, FrameAnnotation, is_bbox
from v2i_core.data.source import (
    IMAGE_SUFFIXES,
    SourceDataset,
    SourceVideo,
    check_unique_ids,
    natural_key,
    shower,
)
from v2i_core.errors import V2IError
from v2i_core.storage import read_json

log = logging.getLogger(__name__)

SPLITS = {"TrainDataset": "train", "TestEasyDataset": "test_easy", "TestHardDataset": "test_hard"}
LABEL = "polyp"
# bbox field orders: each maps the four numbers to (x, y, w, h)
ORDERS = {
    "y,x,w,h": lambda a, b, c, d: (b, a, c, d),
    "x,y,w,h": lambda a, b, c, d: (a, b, c, d),
    "x0,y0,x1,y1": lambda a, b, c, d: (a, b, c - a, d - b),
    "y,x,h,w": lambda a, b, c, d: (b, a, d, c),
}
ASSUMED_ORDER = "y,x,w,h"  # what public SUN-SEG loaders use when no mask says otherwise
MASK_CHECKS = 50  # annotated frames compared with their masks per annotation file
MIN_MASK_IOU = 0.5


def read_sunseg(root: Path, src: str) -> SourceDataset:
    shown = shower(root, src)
    videos: list[SourceVideo] = []
    found = []
    for folder, split in SPLITS.items():
        base = root / folder
        if not base.is_dir():
            continue
        parts = [base] if (base / "Frame").is_dir() else sorted(p for p in base.iterdir() if (p / "Frame").is_dir())
        if not parts:
            raise V2IError(f"{shown(base)}: no Frame folder (expected {folder}/Frame or {folder}/Seen/Frame)")
        found.append(split)
        for part in parts:
            videos.extend(_read_part(part, base, split, shown))
    if not found:
        raise V2IError(f"{shown(root)}: no SUN-SEG split folders ({', '.join(SPLITS)})")
    check_unique_ids(videos, shown(root))
    return SourceDataset(videos, [LABEL], layout_splits=tuple(found))


def _read_part(part: Path, base: Path, split: str, shown) -> list[SourceVideo]:
    ann_path = part / "Detection" / "bbox_annotation.json"
    if not ann_path.is_file() and (base / "Detection" / "bbox_annotation.json").is_file():
        ann_path = base / "Detection" / "bbox_annotation.json"
    if not ann_path.is_file():
        raise V2IError(f"{shown(part / 'Detection' / 'bbox_annotation.json')}: annotation file missing")
    cases = sorted((p for p in (part / "Frame").iterdir() if p.is_dir()), key=lambda p: natural_key(p.name))
    frames = {
        case.name: sorted(
            (f for f in case.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES), key=lambda f: natural_key(f.name)
        )
        for case in cases
    }
    for case in cases:
        _check_one_file_per_frame(case, frames[case.name], shown)
    shared = ann_path.parent.parent != part  # one file for both Seen and Unseen
    raw_boxes = _parse(ann_path, shown(ann_path), frames, part if shared else None)
    order = _field_order(raw_boxes, part, shown(ann_path))
    videos = []
    for case in cases:
        files = frames[case.name]
        if not files:
            raise V2IError(f"{shown(case)}: no frames")
        position = {f.stem: i for i, f in enumerate(files)}
        annotations: dict[int, FrameAnnotation] = {}
        for (case_name, stem), numbers in raw_boxes.items():
            if case_name == case.name:
                boxes = [Box(*(float(v) for v in ORDERS[order](*n)), LABEL) for n in numbers]
                annotations[position[stem]] = FrameAnnotation(boxes)
        videos.append(
            SourceVideo(
                video_id=case.name,
                annotation_file=shown(ann_path),
                annotations=annotations,
                split=split,
                images=list(enumerate(files)),
            )
        )
    return videos


def _check_one_file_per_frame(case: Path, files: list[Path], shown) -> None:
    """The annotation file names a frame without its extension, so `a.jpg` beside `a.png` (or `a.JPG`) would be two
    frames of which only one gets the box: refuse, naming the files."""
    names: dict[str, list[str]] = {}
    for file in files:
        names.setdefault(file.stem, []).append(file.name)
    for stem, clash in names.items():
        if len(clash) > 1:
            raise V2IError(
                f"{shown(case)}: {', '.join(sorted(clash))} are all frame '{stem}' (annotations name frames without "
                "their extension); keep one of them"
            )


def _parse(path: Path, shown: str, frames: dict[str, list[Path]], shared_by: Path | None) -> dict:
    """{(case, frame stem): [four bbox numbers, ...]} for the frames of this part, validated.

    `shared_by`: the part being read when the file also covers its Seen/Unseen siblings.
    """
    raw = read_json(path, shown)
    entries = raw.get("annotation", raw.get("annotations")) if isinstance(raw, dict) else None
    if not isinstance(raw, dict) or not isinstance(raw.get("images"), list) or not isinstance(entries, list):
        raise V2IError(f"{shown}: expected an object with 'images' and 'annotation' lists")
    images = {}
    for image in raw["images"]:
        if not isinstance(image, dict) or not isinstance(image.get("id"), str) or "file_name" not in image:
            raise V2IError(f"{shown}: every image needs a string 'id' and a 'file_name'")
        case = image.get("case_name") or image["id"].split("-")[0]
        stem = (
            Path(str(image["file_name"])).stem
            if Path(str(image["file_name"])).suffix.lower() in IMAGE_SUFFIXES
            else str(image["file_name"])
        )
        images[image["id"]] = (case, stem)
    stems = {case: {f.stem for f in files} for case, files in frames.items()}
    boxes: dict[tuple[str, str], list] = {}
    for entry in entries:
        if not isinstance(entry, dict) or "bbox" not in entry:
            raise V2IError(f"{shown}: every annotation needs an image 'id' and a 'bbox'")
        image_id = entry.get("image_id", entry.get("id"))
        if image_id not in images:
            raise V2IError(f"{shown}: annotation for image id {json.dumps(image_id)}, which 'images' does not list")
        bbox = entry["bbox"]
        case, stem = images[image_id]
        if not is_bbox(bbox):
            raise V2IError(
                f"{shown}: image {image_id} (frame {case}/{stem}): bbox must be four finite numbers, "
                f"got {json.dumps(bbox)}"
            )
        if case not in stems:
            if shared_by is not None and _in_sibling(shared_by, case):
                continue  # the sibling part reads this one
            raise V2IError(f"{shown}: annotation for case '{case}', which has no folder of frames")
        if stem not in stems[case]:
            raise V2IError(f"{shown}: annotation for frame {case}/{stem}, which the video does not have")
        boxes.setdefault((case, stem), []).append(bbox)
    return boxes


def _in_sibling(part: Path, case: str) -> bool:
    return any((sibling / "Frame" / case).is_dir() for sibling in part.parent.iterdir() if sibling != part)


def _field_order(boxes: dict[tuple[str, str], list], part: Path, shown: str) -> str:
    """The bbox field order that agrees with the GT masks, or the assumed one when there are none."""
    checks = []
    for (case, stem), numbers in sorted(boxes.items()):
        mask_path = part / "GT" / case / f"{stem}.png"
        if mask_path.is_file():
            checks.append((numbers, mask_box(mask_path)))
        if len(checks) == MASK_CHECKS:
            break
    checks = [(n, m) for n, m in checks if m is not None]
    if not checks:
        log.info("%s: no GT masks to check the bbox field order against; assuming [%s]", shown, ASSUMED_ORDER)
        return ASSUMED_ORDER
    scores = {name: float(np.mean([iou(_union(n, read), mask) for n, mask in checks])) for name, read in ORDERS.items()}
    best = max(scores, key=scores.get)
    if scores[best] < MIN_MASK_IOU:
        raise V2IError(
            f"{shown}: no bbox field order matches the GT masks (best: [{best}], mean IoU {scores[best]:.2f})"
        )
    log.info("%s: bbox fields read as [%s] (mean IoU %.2f with %d GT masks)", shown, best, scores[best], len(checks))
    return best


def mask_box(path: Path) -> tuple[float, float, float, float] | None:
    """(x0, y0, x1, y1) of a mask's foreground in pixel-edge coordinates; None for an empty mask."""
    with Image.open(path) as image:
        mask = np.asarray(image.convert("L")) > 127
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def _union(numbers: list, read) -> tuple[float, float, float, float]:
    boxes = [read(*n) for n in numbers]
    return (
        min(x for x, _, _, _ in boxes),
        min(y for _, y, _, _ in boxes),
        max(x + w for x, _, w, _ in boxes),
        max(y + h for _, y, _, h in boxes),
    )


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = max(a[2] - a[0], 0) * max(a[3] - a[1], 0) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
