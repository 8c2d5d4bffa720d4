"""SAM-DETR: shapes, the Semantics Aligner's resampling and salient points checked by hand on made-up feature maps,
distillation into it (the student stays its baseline's network), and the `v2i` verbs end to end."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from v2i_core.config import CQDConfig, DistillConfig, LossConfig, ModelConfig, MSIConfig, TFDConfig
from v2i_core.distill.objective import DistillationTask
from v2i_core.models.build import build_detector
from v2i_core.models.criterion import build_criterion
from v2i_core.models.position_encoding import PositionEmbeddingSine
from v2i_core.models.sam_transformer import (
    ROI_SIZE,
    SemanticsAligner,
    point_positions,
    resample_regions,
    sample_points,
    sine_embedding,
)
from v2i_core.models.teacher import build_teacher

H, W = 64, 96  # not square, so h and w cannot be swapped unnoticed


def tiny(**overrides) -> ModelConfig:
    base = dict(
        arch="sam_detr", d_model=32, nheads=4, enc_layers=1, dec_layers=2, dim_feedforward=64, num_queries=4,
        input_size=(H, W),
    )
    return ModelConfig(**{**base, **overrides})


def coordinate_map(h: int, w: int, batch: int = 1) -> torch.Tensor:
    """[B, 2, h, w]: channel 0 is the x of each cell's centre in map units (j + 0.5), channel 1 its y (i + 0.5),
    and image b adds 100 b to both, so a value says where (and in which image) it was read."""
    y, x = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    grid = torch.stack([x, y])[None].repeat(batch, 1, 1, 1)
    return grid + 100 * torch.arange(batch, dtype=torch.float32)[:, None, None, None]


def bilinear(image: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """The textbook formula: image [C, h, w] at continuous (x, y) in map units, cell (i, j) centred at
    (j + 0.5, i + 0.5), read inside the centres' hull -> [C]."""
    u, v = x - 0.5, y - 0.5
    j0, i0 = math.floor(u), math.floor(v)
    j1, i1 = min(j0 + 1, image.shape[-1] - 1), min(i0 + 1, image.shape[-2] - 1)
    a, b = u - j0, v - i0
    top = (1 - a) * image[:, i0, j0] + a * image[:, i0, j1]
    bottom = (1 - a) * image[:, i1, j0] + a * image[:, i1, j1]
    return (1 - b) * top + b * bottom


@pytest.mark.parametrize("last_layer", [2, 3, 4])
@pytest.mark.parametrize("num_queries", [1, 5])
def test_output_shapes(last_layer, num_queries):
    cfg = tiny(last_layer=last_layer, num_queries=num_queries, num_classes=2, dec_layers=3)
    model = build_detector(cfg)
    assert model.backbone.stages == [last_layer] and model.query_dim == 4
    out = model(torch.rand(2, 3, H, W))
    assert out["pred_logits"].shape == (2, num_queries, 2) and out["pred_boxes"].shape == (2, num_queries, 4)
    assert ((out["pred_boxes"] > 0) & (out["pred_boxes"] < 1)).all()
    assert out["hs"].shape == (2, num_queries, 32) and len(out["aux_outputs"]) == 2
    # Each layer's boxes refine the layer before's: at initialisation the box head adds nothing, so every layer
    # predicts the learned reference boxes.
    first = model.query_embed.weight.sigmoid().expand(2, -1, -1)
    for aux in out["aux_outputs"]:
        torch.testing.assert_close(aux["pred_boxes"], first)


def test_sine_embedding_is_the_maps_position_encoding_at_cell_centres():
    pos = PositionEmbeddingSine(num_pos_feats=8)(torch.zeros(1, 1, 3, 5))[0]  # [16, 3, 5]
    centres = coordinate_map(3, 5)[0] / torch.tensor([5.0, 3.0])[:, None, None]  # normalised (x, y)
    embedded = sine_embedding(centres.permute(1, 2, 0), 8)  # [3, 5, 16]
    torch.testing.assert_close(embedded.permute(2, 0, 1), pos)


def test_resampling_reads_each_boxs_bins_at_their_centres():
    """On a map whose values are their own coordinates, RoIAlign's 7 x 7 bins read the bin centres of each box, in
    the right image; a random map gives the textbook bilinear values there (boxes under 7 cells: one sample a bin)."""
    h, w = 6, 8
    boxes = torch.tensor(
        [
            [[0.5, 0.5, 0.5, 0.5], [0.3, 0.6, 0.25, 0.5]],
            [[0.6, 0.4, 0.6, 0.4], [0.55, 0.45, 0.2, 0.3]],
        ]
    )  # [B=2, Q=2, 4] (cx, cy, w, h), every bin centre inside the cell centres' hull
    regions = resample_regions(coordinate_map(h, w, batch=2), boxes)
    assert regions.shape == (2, 2, 2, ROI_SIZE, ROI_SIZE)
    steps = (torch.arange(ROI_SIZE) + 0.5) / ROI_SIZE  # bin centres across the box, as a fraction of it
    generator = torch.Generator().manual_seed(0)
    feature = torch.rand(2, 3, h, w, generator=generator)
    random_regions = resample_regions(feature, boxes)
    for b in range(2):
        for q in range(2):
            cx, cy, bw, bh = boxes[b, q].tolist()
            xs = (cx - bw / 2 + steps * bw) * w  # map units
            ys = (cy - bh / 2 + steps * bh) * h
            torch.testing.assert_close(regions[b, q, 0], xs[None, :].expand(ROI_SIZE, -1) + 100 * b)
            torch.testing.assert_close(regions[b, q, 1], ys[:, None].expand(-1, ROI_SIZE) + 100 * b)
            for i in (0, 3, 6):
                for j in (0, 2, 5):
                    expected = bilinear(feature[b], xs[j].item(), ys[i].item())
                    torch.testing.assert_close(random_regions[b, q, :, i, j], expected)


def test_salient_points_sample_the_region_where_their_offsets_say():
    """sample_points reads a region bilinearly at (x, y) offsets in [-1, 1] across it, and point_positions puts those
    points in the image: on the coordinate map, the value read is the point's own position."""
    regions = torch.rand(1, 1, 3, ROI_SIZE, ROI_SIZE, generator=torch.Generator().manual_seed(1))
    offsets = torch.tensor([[[[0.0, 0.0], [-1.0, -1.0], [1.0, 1.0], [0.3, -0.55]]]])  # [1, 1, M=4, 2]
    sampled = sample_points(regions, offsets)  # [1, 1, 4, 3]
    torch.testing.assert_close(sampled[0, 0, 0], regions[0, 0, :, 3, 3])  # the centre bin
    torch.testing.assert_close(sampled[0, 0, 1], regions[0, 0, :, 0, 0])  # an edge reads the edge bin (border)
    torch.testing.assert_close(sampled[0, 0, 2], regions[0, 0, :, 6, 6])
    # offset o lies at (o + 1) / 2 of the region's width, i.e. (o + 1) / 2 * 7 in bin units (bin j centred at j + 0.5)
    x, y = ((0.3 + 1) / 2 * ROI_SIZE), ((-0.55 + 1) / 2 * ROI_SIZE)
    torch.testing.assert_close(sampled[0, 0, 3], bilinear(regions[0, 0], x, y))

    h, w = 6, 8
    boxes = torch.tensor([[[0.45, 0.55, 0.5, 0.6]]])
    inner = torch.tensor([[[[0.0, 0.0], [-0.8, 0.5], [0.6, -0.7]]]])  # within the outer bins' centres
    values = sample_points(resample_regions(coordinate_map(h, w), boxes), inner)[0, 0]  # [3, 2]: map (x, y)
    positions = point_positions(boxes, inner)[0, 0]  # [3, 2] normalised (x, y)
    torch.testing.assert_close(positions[0], boxes[0, 0, :2])
    torch.testing.assert_close(positions[1], torch.tensor([0.45 - 0.8 * 0.25, 0.55 + 0.5 * 0.3]))
    torch.testing.assert_close(values, positions * torch.tensor([w, h]))


def test_aligner_takes_the_points_features_and_positions_gated_by_the_previous_query():
    torch.manual_seed(0)
    d, points, h, w = 8, 2, 6, 8
    aligner = SemanticsAligner(d, points)
    offsets = torch.tensor([[0.5, -0.25], [-0.6, 0.4]])
    last = aligner.point_mlp[-1]
    with torch.no_grad():  # the point predictor outputs these offsets whatever the region holds
        last.weight.zero_()
        last.bias.copy_(offsets.flatten().atanh())
    feature = torch.rand(1, d, h, w)
    boxes = torch.tensor([[[0.5, 0.45, 0.6, 0.7]]])
    tgt = torch.randn(1, 1, d)
    content, positions = aligner(tgt, feature, boxes)  # [1, 1, M, d] each
    assert content.shape == positions.shape == (1, 1, points, d)
    content_gate = aligner.content_gate(tgt).view(points, d).sigmoid()
    position_gate = aligner.position_gate(tgt).view(points, d).sigmoid()
    where = point_positions(boxes, offsets[None, None])[0, 0]  # [M, 2] normalised (x, y)
    for m in range(points):
        # two bilinear steps (RoIAlign bins, then the point between bins) against one read of the map
        region = resample_regions(feature, boxes)[0, 0]
        x, y = ((offsets[m] + 1) / 2 * ROI_SIZE).tolist()
        torch.testing.assert_close(content[0, 0, m], content_gate[m] * bilinear(region, x, y))
        torch.testing.assert_close(positions[0, 0, m], position_gate[m] * sine_embedding(where[m], d // 2))


def test_salient_points_learn_to_go_where_the_feature_peaks():
    """The points are predicted, and gradients through the bilinear sampling move them: trained to read a strong
    feature, every point ends at the argmax of a single smooth peak inside the box."""
    torch.manual_seed(0)
    d, h, w = 4, 12, 12
    peak = (0.62, 0.4)  # (x, y) normalised
    y, x = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
    blob = torch.exp(-((x - peak[0]) ** 2 + (y - peak[1]) ** 2) / (2 * 0.12**2))
    feature = blob[None, None].repeat(1, d, 1, 1)
    boxes = torch.tensor([[[0.5, 0.5, 0.7, 0.7]]])
    aligner = SemanticsAligner(d, num_points=3)
    optimizer = torch.optim.Adam(aligner.point_mlp.parameters(), lr=1e-2)
    regions = resample_regions(feature, boxes)
    for _ in range(150):
        loss = -sample_points(regions, aligner.salient_offsets(regions)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    where = point_positions(boxes, aligner.salient_offsets(regions))[0, 0]  # [3, 2]
    torch.testing.assert_close(where, torch.tensor([peak] * 3), atol=0.04, rtol=0)


MODEL = ModelConfig(
    arch="deformable_detr", input_size=(64, 64), d_model=32, nheads=4, enc_layers=1, dec_layers=2,
    dim_feedforward=64, num_queries=6, num_classes=2,
)
TARGETS = [
    {"boxes": torch.tensor([[0.4, 0.5, 0.3, 0.4]]), "labels": torch.tensor([1])},
    {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
]


def test_distilled_student_is_its_baselines_network_and_the_cross_view_boxes_learn():
    """TFD on the last stage and CQD through the decoder: the task's heads hold everything distillation adds, the
    student's weights load into a plain SAM-DETR that predicts the same, and loss_qe trains the map that turns the
    teacher's queries into the student's reference boxes."""
    torch.manual_seed(0)
    teacher = build_teacher(MODEL, MSIConfig(frames=3, global_heads=4, identity_init=False))
    student_cfg = MODEL.model_copy(update={"arch": "sam_detr", "num_queries": 5})
    cfg = DistillConfig(
        model=student_cfg, tfd=TFDConfig(weight=1.0, own_boxes=None), cqd=CQDConfig(weight=5.0),
        score_weight=1.0, teacher_view="degraded",
    )
    task = DistillationTask(build_detector(student_cfg), teacher, build_criterion(2, LossConfig()), cfg).train()
    assert task.cqd.query_proj.in_features == 64 and task.cqd.query_proj.out_features == 4  # -> box logits
    clips = torch.randn(2, 3, 3, 64, 64)
    terms = task(clips, TARGETS)
    assert {"loss_bk", "loss_qe", "loss_sc"} <= set(terms) and all(torch.isfinite(v) for v in terms.values())
    terms["loss_qe"].backward()
    assert task.cqd.query_proj.weight.grad.abs().sum() > 0
    assert task.model.transformer.decoder[0].aligner.point_mlp[0].weight.grad.abs().sum() > 0

    baseline = build_detector(student_cfg)
    assert list(task.model.state_dict()) == list(baseline.state_dict()) and type(task.model) is type(baseline)
    assert all(k.startswith(("model.", "criterion.", "tfd.", "cqd.")) for k in task.state_dict())
    baseline.load_state_dict(task.model.state_dict())
    task.eval(), baseline.eval()
    images = clips[:, 1]
    with torch.no_grad():
        ours, theirs = task.model(images), baseline(images)
    for key in ("pred_logits", "pred_boxes", "hs"):
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0)


@pytest.mark.slow
def test_train_distill_and_predict_with_the_cli(tiny_frames, tmp_path, isolated_mlflow):
    """`v2i train --set baseline.model.arch=sam_detr`, `v2i distill --arch sam_detr` under a Deformable DETR teacher,
    and `v2i predict` on both model directories."""
    import json

    import yaml

    from tests.conftest import tiny_params
    from tests.test_engine import v2i

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params(epochs=1)))
    common = ["--params", str(params), "--data", str(tiny_frames)]
    done = v2i("train", *common, "--out", str(tmp_path / "baseline"), "--set", "baseline.model.arch=sam_detr")
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load((tmp_path / "baseline" / "config.yaml").read_text())["model"]["arch"] == "sam_detr"
    done = v2i("train", *common, "--role", "teacher", "--out", str(tmp_path / "teacher"))
    assert done.returncode == 0, done.stderr
    done = v2i("distill", *common, "--arch", "sam_detr", "--teacher", str(tmp_path / "teacher"), "--out",
               str(tmp_path / "student"))
    assert done.returncode == 0, done.stderr
    for name in ("baseline", "student"):
        out = tmp_path / f"{name}.json"
        done = v2i("predict", "--params", str(params), "--model", str(tmp_path / name), "--data", str(tiny_frames),
                   "--out", str(out))
        assert done.returncode == 0, done.stderr
        detections = json.loads(out.read_text())
        assert detections and {"image_id", "category_id", "bbox", "score"} <= detections[0].keys()
    # evaluated beside its baseline and registered as the pipeline's stages do, its ONNX graph on the version
    reports = tmp_path / "reports"
    done = v2i("evaluate", "--params", str(params), "--model", str(tmp_path / "baseline"), "--model",
               str(tmp_path / "student"), "--data", str(tiny_frames), "--out", str(reports))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert {m["arch"] for m in json.loads((reports / "metrics.json").read_text())["models"].values()} == {"sam_detr"}
    done = v2i("register", "--params", str(params), "--model", str(tmp_path / "student"), "--metrics",
               str(reports / "metrics.json"), "--name", "v2i-sam")  # fmt: skip
    assert done.returncode == 0, done.stderr
    import mlflow

    from v2i_core.onnx_engine import OnnxDetector

    local = Path(mlflow.artifacts.download_artifacts("models:/v2i-sam/1", dst_path=str(tmp_path / "download")))
    (held,) = [p.parent for p in local.rglob("model.onnx")]  # SAM-DETR's RoIAlign exports with the rest
    assert OnnxDetector.from_file(held / "model.onnx").session.get_outputs()[0].name == "logits"
