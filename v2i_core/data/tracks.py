"""Lesion tracks: which boxes of a video show the same lesion.

Every box in the frame index belongs to a track, numbered 1, 2, ... within its video in the order the tracks
first appear (by frame, then by the box's place in its frame). Where the source names its lesions (the `track`
of a box in a videos-format annotation file, BUV's `instance_id` / `track_id`), boxes with the same name are
one track, however far apart their frames: a lesion that leaves the view and returns stays one track. Where it
does not, boxes are linked frame to frame by overlap (`link_by_overlap`): a box continues the track of the box
of the previous frame that it overlaps most (IoU >= LINK_IOU, same label, greedily by IoU); a box that overlaps
none starts a new track. Linking looks one frame back only, so a lesion that leaves the view and returns comes
back as a new track: only the source can say it is the same lesion.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

from v2i_core.data.annotations import Box, FrameAnnotation

LINK_IOU = 0.3  # the overlap with the previous frame's box that continues its track


def box_iou(a: Box, b: Box) -> float:
    """IoU of two (x, y, w, h) boxes."""
    iw = max(0.0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    ih = max(0.0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    inter = iw * ih
    union = a.w * a.h + b.w * b.h - inter
    return inter / union if union > 0 else 0.0


def link_by_overlap(frames: Iterable[Sequence[Box]], min_iou: float = LINK_IOU) -> list[list[int]]:
    """Track ids for the boxes of one video's frames, given in order, a frame without lesion as [].

    Pairs of (previous-frame box, box) with the same label and IoU >= min_iou are taken from the highest IoU
    down, each box used once; ties go to the earlier boxes, so the result depends on the input only.
    """
    tracks: list[list[int]] = []
    previous: list[tuple[Box, int]] = []
    next_id = 1
    for boxes in frames:
        pairs = sorted(
            (-iou, i, j)
            for i, (before, _) in enumerate(previous)
            for j, box in enumerate(boxes)
            if before.label == box.label and (iou := box_iou(before, box)) >= min_iou
        )
        ids = [0] * len(boxes)
        taken = set()
        for _, i, j in pairs:
            if i not in taken and not ids[j]:
                ids[j] = previous[i][1]
                taken.add(i)
        for j, track in enumerate(ids):
            if not track:
                ids[j] = next_id
                next_id += 1
        tracks.append(ids)
        previous = list(zip(boxes, ids, strict=True))
    return tracks


def number_tracks(frames: Iterable[Sequence[Hashable]]) -> list[list[int]]:
    """The source's own track names (per box, per frame in order) as 1, 2, ... in order of first appearance."""
    numbers: dict[Hashable, int] = {}
    return [[numbers.setdefault(name, len(numbers) + 1) for name in names] for names in frames]


def assign_tracks(annotations: dict[int, FrameAnnotation], sequence: Iterable[int]) -> None:
    """Number the tracks of one video's annotations in place: each FrameAnnotation's `tracks` becomes the track
    id of each of its boxes.

    `sequence` is the video's frames in order as the source annotates them (every frame of a video or image
    folder, only the listed ones where the source lists frames); a frame absent from `annotations` has no
    lesion, so it breaks overlap links. The source's own names are used when its boxes carry them.
    """
    order = sorted(set(sequence) | set(annotations))
    frames = [annotations.get(index, FrameAnnotation()) for index in order]
    named = any(frame.tracks is not None for frame in frames if frame.boxes)
    if named:
        ids = number_tracks(frame.tracks or [] for frame in frames)
    else:
        ids = link_by_overlap(frame.boxes for frame in frames)
    for index, frame_ids in zip(order, ids, strict=True):
        if index in annotations:
            annotations[index].tracks = frame_ids
