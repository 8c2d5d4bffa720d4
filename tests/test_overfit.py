"""Overfit a handful of frames with a plain torch loop: the loss must collapse and the boxes land on the blobs.

This is the end-to-end check that backbone, transformer, matcher, criterion and heads fit together: any wiring
mistake (swapped box coordinates, a wrong normaliser, a detached head) keeps the loss up or the boxes off.
"""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

from v2i_core.config import LossConfig, ModelConfig
from v2i_core.models.box_ops import box_cxcywh_to_xyxy
from v2i_core.models.build import build_detector
from v2i_core.models.criterion import build_criterion

SIZE, STEPS = 64, 120


def blob_frames(n: int = 4, seed: int = 0) -> tuple[torch.Tensor, list[dict]]:
    """n frames [n, 3, 64, 64]: one bright ellipse each on a striped, noisy background; targets in cxcywh."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
    images, targets = [], []
    for _ in range(n):
        freq = 0.2 + 0.3 * torch.rand(2, generator=g)
        background = 0.3 + 0.1 * torch.sin(xx * freq[0]) * torch.cos(yy * freq[1])
        background = background + 0.05 * torch.rand(SIZE, SIZE, generator=g)
        w, h = (10 + 14 * torch.rand(2, generator=g)).tolist()
        cx = w / 2 + (SIZE - w) * torch.rand(1, generator=g).item()
        cy = h / 2 + (SIZE - h) * torch.rand(1, generator=g).item()
        inside = ((xx - cx) / (w / 2)) ** 2 + ((yy - cy) / (h / 2)) ** 2 <= 1
        gray = torch.where(inside, torch.tensor(0.9), background)
        images.append(torch.stack([gray, 0.8 * gray, 0.6 * gray]))
        box = torch.tensor([[cx, cy, w, h]]) / SIZE
        targets.append({"boxes": box, "labels": torch.zeros(1, dtype=torch.long)})
    return torch.stack(images), targets


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["deformable_detr", "detr", "sam_detr"])
def test_overfits_a_handful_of_frames(arch):
    torch.manual_seed(0)
    cfg = ModelConfig(
        arch=arch,
        backbone="resnet18",
        last_layer=3,
        num_feature_levels=2,
        input_size=(SIZE, SIZE),
        d_model=64,
        nheads=4,
        enc_layers=1,
        dec_layers=2,
        dim_feedforward=128,
        num_queries=5,
    )
    model = build_detector(cfg)
    criterion = build_criterion(cfg.num_classes, LossConfig())
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    # A 10x smaller step for the last sixth lets the boxes settle instead of jittering.
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[STEPS * 5 // 6], gamma=0.1)
    images, targets = blob_frames()
    history = []
    for _ in range(STEPS):
        loss = sum(criterion(model(images), targets).values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        schedule.step()
        history.append(loss.item())
    final = sum(history[-5:]) / 5
    assert final < history[0] / 10, f"loss {history[0]:.2f} -> {final:.2f}"

    model.eval()  # batch norm now uses the running statistics gathered on these frames
    with torch.no_grad():
        out = model(images)
    scores = out["pred_logits"][..., 0].sigmoid()  # [4, Q]
    best = scores.argmax(1)
    for i, target in enumerate(targets):
        box = box_cxcywh_to_xyxy(out["pred_boxes"][i, best[i]][None])
        iou = box_iou(box, box_cxcywh_to_xyxy(target["boxes"])).item()
        assert iou > 0.5, f"frame {i}: top box IoU {iou:.2f}"
        assert scores[i, best[i]] > 0.3, f"frame {i}: top score {scores[i, best[i]]:.2f}"
