"""Batch-1 inference from a CUDA graph (v2i_core.cuda_graph): its tolerance check on any machine; the capture itself,
its agreement with the eager pass and its fallback where a GPU is present."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import TINY_MODEL
from v2i_core.config import ModelConfig
from v2i_core.cuda_graph import TOLERANCE, capture, deviation, within
from v2i_core.engine.model_dir import ModelSpec, build_network
from v2i_core.serving import ImageDetector

CATEGORIES = [{"id": 1, "name": "polyp"}]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def outputs(logits: torch.Tensor, boxes: torch.Tensor) -> dict:
    return {"pred_logits": logits, "pred_boxes": boxes}


def test_deviation_is_the_largest_score_and_box_gap():
    torch.manual_seed(0)
    logits, boxes = torch.randn(1, 5, 1), torch.rand(1, 5, 4)
    assert deviation(outputs(logits, boxes), outputs(logits, boxes)) == (0.0, 0.0)
    moved = boxes.clone()
    moved[0, 3, 2] += 0.004
    score, box = deviation(outputs(logits.bfloat16(), moved), outputs(logits, boxes))
    assert box == pytest.approx(0.004, abs=1e-6) and 0 < score < 0.01  # bf16 rounding of the logits, read as float32
    assert within((score, box))
    moved[0, 1, 0] += 2 * TOLERANCE.box
    assert not within(deviation(outputs(logits, moved), outputs(logits, boxes)))
    shifted = logits.clone()
    shifted[0, 2, 0] = 0.0 if abs(float(logits[0, 2, 0])) > 0.5 else 2.0  # its sigmoid moves by more than 0.1
    assert not within(deviation(outputs(shifted, boxes), outputs(logits, boxes)))


def detector(arch: str, device: str) -> ImageDetector:
    torch.manual_seed(0)
    spec = ModelSpec("student", ModelConfig(**{**TINY_MODEL, "arch": arch}), CATEGORIES, None, {})
    return ImageDetector(build_network(spec).to(device), spec, torch.device(device))


def frames(count: int) -> list[np.ndarray]:
    generator = np.random.default_rng(0)
    return [generator.integers(0, 256, (72, 90, 3), dtype=np.uint8) for _ in range(count)]


def test_a_cpu_detector_runs_eagerly_and_says_so():
    model = detector("deformable_detr", "cpu")
    (detections,) = model.detect(frames(1), threshold=0.0)
    assert detections and not model.capture_tried and model.captured is None
    assert "CUDA graph" not in model.runtime and "eager" not in model.runtime


@needs_cuda
@pytest.mark.parametrize("arch", ["deformable_detr", "detr", "sam_detr"])
def test_batch_one_replays_a_graph_that_agrees_with_the_eager_pass(arch):
    model = detector(arch, "cuda")
    first, second = (model.preprocess(frame)[None].cuda() for frame in frames(2))
    with torch.inference_mode():
        eager = [model.network(frame) for frame in (first, second)]
    replayed = [model.forward(frame) for frame in (first, second)]
    assert model.captured is not None, f"{arch}: not captured"
    assert "CUDA graph" in model.runtime
    for got, want in zip(replayed, eager, strict=True):
        assert within(deviation(got, want)), deviation(got, want)
    # the graph reads each call's frame (not the one it was captured on) and a call's outputs outlive the next call
    assert not torch.equal(replayed[0]["pred_boxes"], replayed[1]["pred_boxes"])
    assert within(deviation(replayed[0], eager[0]))
    # a batch of several frames runs eagerly, as before
    both = model.forward(torch.cat([first, second]))
    assert both["pred_boxes"].shape[0] == 2


class HostSync(nn.Module):
    """A network that reads a value back to the host mid-pass: a CUDA graph cannot capture that."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> dict:
        if float(images.mean()) > 1e9:  # never true; the read itself is what a capture refuses
            images = images * 0
        return self.network(images)


@needs_cuda
def test_a_network_that_cannot_be_captured_runs_eagerly(caplog):
    model = detector("deformable_detr", "cuda")
    model.network = HostSync(model.network).eval()
    frame = model.preprocess(frames(1)[0])[None].cuda()
    with caplog.at_level(logging.WARNING, logger="v2i_core.cuda_graph"):
        got = model.forward(frame)
    assert model.capture_tried and model.captured is None
    assert "CUDA graph capture failed" in caplog.text and "eager at batch 1" in model.runtime
    with torch.inference_mode():
        want = model.network(frame)
    torch.testing.assert_close(got["pred_boxes"], want["pred_boxes"])
    assert capture(model.network, frame) is None  # and asked again, it says so again rather than half-capturing
