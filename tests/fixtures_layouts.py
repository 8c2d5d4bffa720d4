"""Hand-built raw layouts (SUN-SEG, BUV, videos), drawn with PIL from the documented layouts, not by `v2i synth`.

Each builder returns what extraction should make of the layout: {(video_id, frame_idx): [(x, y, w, h, label)]}
for every frame that must appear in the index (frames without lesions map to an empty list).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from v2i_core.data.video import write_video

W, H = 64, 48


def _frame(box: tuple[int, int, int, int] | None, shade: int) -> Image.Image:
    image = Image.new("RGB", (W, H), (120 + shade, 60, 60))
    if box:
        x, y, w, h = box
        ImageDraw.Draw(image).ellipse([x, y, x + w - 1, y + h - 1], fill=(200, 40, 40))
    return image


def _mask(box: tuple[int, int, int, int] | None) -> Image.Image:
    mask = Image.new("L", (W, H), 0)
    if box:
        x, y, w, h = box
        ImageDraw.Draw(mask).rectangle([x, y, x + w - 1, y + h - 1], fill=255)
    return mask


# case -> frame names (natural order 1, 2, 10) -> box (x, y, w, h) or None
SUNSEG_CASES = {
    ("TrainDataset", "case1_1"): {"image1": (5, 6, 20, 12), "image2": (7, 6, 20, 13), "image10": None},
    ("TrainDataset", "case2_1"): {"image1": (30, 20, 10, 15), "image2": (31, 21, 10, 15)},
    ("TrainDataset", "case2_4"): {"image1": (1, 2, 8, 8), "image2": (2, 2, 8, 8)},
    ("TestEasyDataset/Seen", "case1_3"): {"image5": (40, 10, 12, 22), "image6": None},
    ("TestEasyDataset/Unseen", "case7_1"): {"image1": (10, 30, 30, 10)},
    ("TestHardDataset", "case9_2"): {"image3": (0, 0, 16, 16), "image4": (48, 32, 16, 16)},
}


def build_sunseg(root: Path, order: str = "y,x,w,h", masks: bool = True) -> dict:
    """SUN-SEG layout; bbox numbers written in `order`; GT masks drawn from the true boxes when `masks`."""
    expected: dict = {}
    files: dict[Path, dict] = {}
    for (split_dir, case), frames in SUNSEG_CASES.items():
        part = root / split_dir
        # TestEasy: Seen has its own Detection folder, Unseen shares TestEasyDataset/Detection
        ann_dir = part.parent / "Detection" if split_dir.endswith("Unseen") else part / "Detection"
        doc = files.setdefault(ann_dir / "bbox_annotation.json", {"info": {}, "images": [], "annotation": []})
        for idx, (name, box) in enumerate(frames.items()):
            stem = f"case_M_2018_{case}_{name}"
            (part / "Frame" / case).mkdir(parents=True, exist_ok=True)
            _frame(box, 5 * idx).save(part / "Frame" / case / f"{stem}.jpg", quality=95)
            if masks:
                (part / "GT" / case).mkdir(parents=True, exist_ok=True)
                _mask(box).save(part / "GT" / case / f"{stem}.png")
            expected[(case, idx)] = [(*box, "polyp")] if box else []
            if box:
                image_id = f"{case}-a2-{name}"
                doc["images"].append({"id": image_id, "width": W, "height": H, "case_name": case, "file_name": stem})
                x, y, w, h = box
                numbers = {"y,x,w,h": [y, x, w, h], "x,y,w,h": [x, y, w, h], "x0,y0,x1,y1": [x, y, x + w, y + h]}
                doc["annotation"].append({"id": image_id, "bbox": numbers[order]})
    for path, doc in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc))
    return expected


# video -> {frame number: box or None}; unlisted frames exist on disk but are not in the JSON
BUV_VIDEOS = {
    "train": {
        "benign/x1a2b": {0: (10, 8, 20, 14), 1: (11, 8, 20, 14), 3: None},
        "malignant/7f3e": {0: (30, 5, 25, 30), 1: (29, 6, 25, 30), 2: (28, 6, 26, 30)},
        "benign/c0ffee": {0: (2, 3, 5, 6), 1: (3, 3, 5, 6)},
    },
    "val": {"malignant/9d9d": {0: (5, 20, 40, 20), 1: (6, 20, 40, 21)}},
}
BUV_UNLISTED = [("benign/x1a2b", 2)]


def build_buv(root: Path) -> dict:
    """CVA-Net's BUV layout: rawframes/<class>/<video>/NNNNNN.png, imagenet_vid_{train_15frames,val}.json."""
    expected: dict = {}
    categories = [{"id": 1, "name": "benign"}, {"id": 2, "name": "malignant"}]
    for split, videos in BUV_VIDEOS.items():
        doc = {"images": [], "annotations": [], "categories": categories, "videos": []}
        for vnum, (video, frames) in enumerate(videos.items(), 1):
            doc["videos"].append({"id": vnum, "name": video})
            label = video.split("/")[0]
            folder = root / "rawframes" / video
            folder.mkdir(parents=True, exist_ok=True)
            for index, box in frames.items():
                _frame(box, 3 * index).save(folder / f"{index:06d}.png")
                image_id = len(doc["images"]) + 1
                doc["images"].append(
                    {
                        "id": image_id,
                        "file_name": f"{video}/{index:06d}.png",
                        "height": H,
                        "width": W,
                        "video_id": vnum,
                        "frame_id": index,
                    }
                )
                if box:
                    doc["annotations"].append(
                        {
                            "id": len(doc["annotations"]) + 1,
                            "image_id": image_id,
                            "category_id": 1 if label == "benign" else 2,
                            "bbox": list(box),
                            "area": box[2] * box[3],
                            "iscrowd": 0,
                        }
                    )
                expected[(video, index)] = [(*box, label)] if box else []
        name = "imagenet_vid_train_15frames.json" if split == "train" else "imagenet_vid_val.json"
        (root / name).write_text(json.dumps(doc))
    for video, index in BUV_UNLISTED:
        _frame(None, 0).save(root / "rawframes" / video / f"{index:06d}.png")
    return expected


def moving_square_frames(n: int, box_at, size=(W, H)) -> list[np.ndarray]:
    """n RGB frames of a bright square on a dark field; box_at(t) -> (x, y, w, h) or None."""
    frames = []
    for t in range(n):
        frame = np.full((size[1], size[0], 3), 40, np.uint8)
        box = box_at(t)
        if box:
            x, y, w, h = box
            frame[y : y + h, x : x + w] = (220, 200, 60)
        frames.append(frame)
    return frames


def build_videos(root: Path, videos: dict[str, int], label: str = "lesion") -> dict:
    """`videos` layout: one mp4 + one annotation file per video, a square moving one pixel per frame."""
    root.mkdir(parents=True, exist_ok=True)
    expected = {}
    for name, n in videos.items():
        box_at = lambda t: (4 + t, 6, 12, 10) if t % 4 != 3 else None  # noqa: E731 - every 4th frame empty
        write_video(root / f"{name}.mp4", moving_square_frames(n, box_at), fps=10)
        annotations = []
        for t in range(n):
            box = box_at(t)
            if box:
                x, y, w, h = box
                annotations.append({"frame": t, "boxes": [{"x": x, "y": y, "w": w, "h": h, "label": label}]})
            expected[(name, t)] = [(*box, label)] if box else []
        (root / f"{name}.json").write_text(json.dumps({"frames": n, "annotations": annotations}))
    return expected
