"""Detectors: shapes for every configuration, the extra-query contract, gradients, weights loading, outputs."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

from v2i_bench import params as bench_params
from v2i_core.config import LossConfig, ModelConfig, load_params
from v2i_core.errors import V2IError
from v2i_core.models.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh, generalized_box_iou
from v2i_core.models.build import build_detector
from v2i_core.models.criterion import build_criterion
from v2i_core.models.position_encoding import PositionEmbeddingSine
from v2i_core.models.postprocess import postprocess

H, W = 64, 96  # divisible by 32, and not square so that h and w cannot be swapped unnoticed


def tiny(**overrides) -> ModelConfig:
    base = dict(d_model=32, nheads=4, enc_layers=1, dec_layers=2, dim_feedforward=64, num_queries=4, input_size=(H, W))
    return ModelConfig(**{**base, **overrides})


def check_outputs(model, cfg: ModelConfig, batch: int = 2) -> list[list[int]]:
    """Run a forward pass, assert every documented shape, and return the level shapes the transformer saw."""
    seen = []

    def record(module, args, out):  # DETR's transformer takes one map, Deformable DETR's a list of levels
        srcs = [args[0]] if torch.is_tensor(args[0]) else args[0]
        seen.append([list(s.shape[2:]) for s in srcs])

    model.transformer.register_forward_hook(record)
    images = torch.rand(batch, 3, H, W)
    features = model.backbone_features(images)
    assert len(features) == len(model.backbone.stages) == len(model.backbone.strides)
    for f, c, s in zip(features, model.backbone.num_channels, model.backbone.strides, strict=True):
        assert list(f.shape) == [batch, c, H // s, W // s]
    out = model.detect(features)
    q, c, d = cfg.num_queries, cfg.num_classes, cfg.d_model
    assert out["pred_logits"].shape == (batch, q, c)
    assert out["pred_boxes"].shape == (batch, q, 4)
    assert ((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)).all()
    assert out["hs"].shape == (batch, q, d)
    assert len(out["aux_outputs"]) == cfg.dec_layers - 1
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == (batch, q, c) and aux["pred_boxes"].shape == (batch, q, 4)
    assert "extra_hs" not in out
    assert model.query_embed.weight.shape == (q, model.query_dim)
    return seen[0]


@pytest.mark.parametrize("last_layer", [2, 3, 4])
@pytest.mark.parametrize("num_queries", [1, 5])
def test_detr_shapes(last_layer, num_queries):
    cfg = tiny(arch="detr", last_layer=last_layer, num_queries=num_queries, num_classes=2)
    model = build_detector(cfg)
    levels = check_outputs(model, cfg)
    assert model.backbone.stages == [last_layer] and model.query_dim == cfg.d_model
    assert levels == [[H // 2 ** (last_layer + 1), W // 2 ** (last_layer + 1)]]


@pytest.mark.parametrize("last_layer", [2, 3, 4])
@pytest.mark.parametrize("levels", [1, 2, 3, 4])
def test_deformable_shapes(last_layer, levels):
    cfg = tiny(arch="deformable_detr", last_layer=last_layer, num_feature_levels=levels, num_classes=3)
    model = build_detector(cfg)
    seen = check_outputs(model, cfg)
    stages = list(range(max(2, last_layer - levels + 1), last_layer + 1))
    assert model.backbone.stages == stages and model.query_dim == 2 * cfg.d_model
    expected = [[H // 2 ** (s + 1), W // 2 ** (s + 1)] for s in stages]
    while len(expected) < levels:  # extra levels: stride-2 convs, each halving (rounding up) the last one
        expected.append([math.ceil(n / 2) for n in expected[-1]])
    assert seen == expected


@pytest.mark.parametrize(
    ("arch", "backbone", "channels"),
    [("detr", "resnet34", [256]), ("deformable_detr", "resnet50", [512, 1024, 2048]), ("sam_detr", "resnet50", [1024])],
)
def test_deeper_backbones(arch, backbone, channels):
    cfg = tiny(arch=arch, backbone=backbone, last_layer=4 if arch == "deformable_detr" else 3, num_feature_levels=4)
    model = build_detector(cfg)
    assert model.backbone.num_channels == channels
    check_outputs(model, cfg, batch=1)


@pytest.mark.parametrize("arch", ["detr", "deformable_detr", "sam_detr"])
def test_extra_queries_do_not_change_the_models_outputs(arch):
    torch.manual_seed(0)
    model = build_detector(tiny(arch=arch, dropout=0.1, dec_layers=3)).eval()
    features = model.backbone_features(torch.rand(2, 3, H, W))
    plain = model.detect(features)
    extra = torch.randn(2, 3, model.query_dim)
    with_extra = model.detect(features, extra)
    assert with_extra["extra_hs"].shape == (2, 3, 32)
    for key in ("pred_logits", "pred_boxes", "hs"):
        torch.testing.assert_close(with_extra[key], plain[key], rtol=1e-5, atol=1e-5)
    for a, b in zip(with_extra["aux_outputs"], plain["aux_outputs"], strict=True):
        torch.testing.assert_close(a["pred_boxes"], b["pred_boxes"], rtol=1e-5, atol=1e-5)
    # The extra queries do see each other (attention is live; only own -> extra is masked).
    changed = extra.clone()
    changed[:, 2] += 1.0
    other = model.detect(features, changed)
    assert not torch.allclose(other["extra_hs"][:, 0], with_extra["extra_hs"][:, 0], atol=1e-4)
    torch.testing.assert_close(other["pred_logits"], plain["pred_logits"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["detr", "deformable_detr", "sam_detr"])
def test_gradients_reach_the_backbone_and_empty_frames_train(arch):
    model = build_detector(tiny(arch=arch))
    targets = [
        {"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.4, 0.3, 0.2]])},
        {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)},
    ]
    losses = build_criterion(1, LossConfig())(model(torch.rand(2, 3, H, W)), targets)
    assert len(losses) == 3 * 2 and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.backbone.conv1.weight.grad.abs().sum() > 0
    assert model.query_embed.weight.grad.abs().sum() > 0


def test_all_empty_batch_trains_the_classifier_only():
    model = build_detector(tiny(arch="deformable_detr"))
    empty = [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}] * 2
    losses = build_criterion(1, LossConfig())(model(torch.rand(2, 3, H, W)), empty)
    assert losses["loss_bbox"].item() == 0 and losses["loss_ce"].item() > 0
    sum(losses.values()).backward()
    assert model.class_embed.weight.grad.abs().sum() > 0
    assert model.bbox_embed.layers[-1].weight.grad is None or model.bbox_embed.layers[-1].weight.grad.abs().sum() == 0


@pytest.fixture()
def resnet18_weights(tmp_path):
    torch.manual_seed(1)
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def test_pretrained_weights_load_and_freeze_the_stem(resnet18_weights):
    state = torch.load(resnet18_weights, weights_only=True)
    model = build_detector(tiny(arch="detr", pretrained=str(resnet18_weights), backbone_norm="frozen_bn"))
    backbone = model.backbone
    torch.testing.assert_close(backbone.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    torch.testing.assert_close(backbone.bn1.running_var, state["bn1.running_var"])
    assert not backbone.conv1.weight.requires_grad and not backbone.layer1[0].conv1.weight.requires_grad
    assert backbone.layer2[0].conv1.weight.requires_grad
    assert not hasattr(backbone, "layer4")  # cut after last_layer 3: the file's layer4 is ignored
    # From-scratch-style batch norm with the same weights trains everything.
    trainable = build_detector(tiny(arch="detr", pretrained=str(resnet18_weights), backbone_norm="bn")).backbone
    assert all(p.requires_grad for p in trainable.parameters())


def test_pretrained_from_the_hub_cache(resnet18_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    resnet18_weights.rename(cache / "resnet18-test.pth")
    model = build_detector(tiny(arch="detr", pretrained="resnet18-test.pth"))
    state = torch.load(cache / "resnet18-test.pth", weights_only=True)
    torch.testing.assert_close(model.backbone.conv1.weight, state["conv1.weight"])


def test_bad_weights_files_are_errors_naming_the_file(resnet18_weights, tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(V2IError, match="nope.pth: no such weights file"):
        build_detector(tiny(pretrained=str(missing)))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(V2IError, match="garbage.pth: not a torch weights file"):
        build_detector(tiny(pretrained=str(garbage)))
    with pytest.raises(V2IError, match=r"resnet18.pth: .*needs \(64, 64, 1, 1\)|resnet18.pth: not resnet50 weights"):
        build_detector(tiny(backbone="resnet50", pretrained=str(resnet18_weights)))
    not_a_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_a_dict)
    with pytest.raises(V2IError, match="list.pth: expected a plain state dict"):
        build_detector(tiny(pretrained=str(not_a_dict)))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"nheads": 5}, "not divisible by nheads"), ({"d_model": 30, "nheads": 3}, "multiple of 4")],
)
def test_impossible_sizes_are_errors(overrides, message):
    with pytest.raises(V2IError, match=message):
        build_detector(tiny(**overrides))


def test_position_encoding():
    pos = PositionEmbeddingSine(num_pos_feats=8)(torch.zeros(2, 5, 3, 4))
    assert pos.shape == (2, 16, 3, 4)
    # Channel 0 is sin(2*pi * (row centre) / h); the first half varies with y only, the second with x only.
    rows = (torch.arange(3) + 0.5) / 3 * 2 * math.pi
    torch.testing.assert_close(pos[0, 0, :, 0], rows.sin())
    assert torch.equal(pos[:, :8], pos[:, :8, :, :1].expand_as(pos[:, :8]))
    assert torch.equal(pos[:, 8:], pos[:, 8:, :1, :].expand_as(pos[:, 8:]))
    assert len({tuple(pos[0, :, i, j].tolist()) for i in range(3) for j in range(4)}) == 12  # all distinct


def test_box_ops():
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.1, 0.2, 0.2, 0.2]])
    xyxy = box_cxcywh_to_xyxy(boxes)
    torch.testing.assert_close(xyxy[0], torch.tensor([0.4, 0.3, 0.6, 0.7]))
    torch.testing.assert_close(box_xyxy_to_cxcywh(xyxy), boxes)
    giou = generalized_box_iou(xyxy, xyxy)
    assert giou.shape == (2, 2) and torch.allclose(giou.diag(), torch.ones(2))
    assert (giou[0, 1] < 0).item()  # disjoint boxes: negative GIoU


def test_postprocess_returns_coco_results():
    logits = torch.tensor([[[2.0, -3.0], [-1.0, 0.5], [-4.0, -4.0]]])  # 1 image, 3 queries, 2 classes
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.95, 0.1, 0.2, 0.4], [0.2, 0.2, 0.1, 0.1]]])
    results = postprocess(
        {"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[100, 200]]), image_ids=[7], top_k=2
    )
    assert [r["category_id"] for r in results] == [1, 2]
    assert [r["score"] for r in results] == pytest.approx([torch.sigmoid(torch.tensor(v)).item() for v in (2.0, 0.5)])
    assert all(r["image_id"] == 7 for r in results)
    assert results[0]["bbox"] == pytest.approx([80.0, 30.0, 40.0, 40.0])
    # Query 1 spills over the right and top edges (x 0.85..1.05, y -0.1..0.3): clamped to the 200 x 100 frame.
    assert results[1]["bbox"] == pytest.approx([170.0, 0.0, 30.0, 30.0])
    # k is capped at queries x classes, and several images keep their own ids and sizes.
    many = postprocess(
        {"pred_logits": logits.repeat(2, 1, 1), "pred_boxes": boxes.repeat(2, 1, 1)},
        torch.tensor([[100, 200], [50, 50]]),
        image_ids=[1, 2],
    )
    assert len(many) == 12 and [r["image_id"] for r in many] == [1] * 6 + [2] * 6
    assert many[6]["bbox"] == pytest.approx([20.0, 15.0, 10.0, 20.0])


@pytest.mark.slow
def test_bench_params_reproduces_the_reference_counts(capsys):
    """At the reference code's layout and COCO's heads our modules count what Table I reports."""
    detr, deform, sam = bench_params.rows(num_classes=1)
    assert (detr.paper_millions, deform.paper_millions, sam.paper_millions) == (41, 40, 58)
    assert round(detr.reference / 1e6) == 41 and round(deform.reference / 1e6) == 40
    assert round(sam.reference / 1e6) == 58
    # One lesion class: 90 logits of 257 weights fewer than COCO's head.
    assert detr.reference - detr.ours == 91 * 257
    # Same layout as the reference (stages 2-4 + a stride-2 conv); only the class head and query count differ:
    # one class head shared by the decoder layers (90 classes x 257 weights) and 200 queries x 512.
    assert deform.reference - deform.ours == 90 * 257 + 200 * 512
    # SAM-DETR: 90 classes and 200 reference boxes of 4; the official layout's class (91 x 257) and box heads
    # (256 -> 256 -> 256 -> 4) cloned for 5 more decoder layers, and one more 256 x 256 projection in each of the 6
    # layers' self-attention.
    assert sam.reference - sam.ours == 90 * 257 + 200 * 4 + 5 * (91 * 257 + 2 * 256 * 257 + 4 * 257) + 6 * 256 * 257
    bench_params.run(None, load_params(None))
    printed = capsys.readouterr().out
    assert all(f"{row.ours / 1e6:.2f}" in printed for row in (detr, deform, sam))
