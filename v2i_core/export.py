"""`v2i export`: an image model (baseline or student, DETR or Deformable DETR) as an ONNX graph that ONNX Runtime,
TensorRT or Triton serve without PyTorch or this project.

The graph is the network alone, with a dynamic batch axis:

    images  float32 [B, 3, H, W]  RGB frames resized to the model's input size and normalised (below)
    logits  float32 [B, Q, C]     each query's class logits; a score is their sigmoid
    boxes   float32 [B, Q, 4]     each query's box as (cx, cy, w, h), fractions of the frame

Pre- and post-processing stay at the graph's boundary, written down in a sidecar JSON beside it
(`FILE.onnx.json`: input size, mean and std, categories, score threshold, the model's config), and done by the same
Python code for both engines (`serving.ImageDetector`, `onnx_engine.OnnxDetector`). Not in the graph, because:

- the resize is Pillow's bilinear one on uint8 frames of any size, what the model was trained on; ONNX's Resize does
  not reproduce it to the pixel, and a deployment resizes where it decodes (on the GPU, or in Triton's ensemble);
- post-processing needs each frame's own size and the caller's threshold, and keeps a different number of
  detections per frame, which a batched output cannot hold without padding.

So the graph is checked against the eager network to `TOLERANCE` at every export. Deformable attention samples with
`grid_sample`, which ONNX has as GridSample from opset 16; the graph is opset `OPSET`, made by torch.onnx's
exporter on torch.export (dynamo=True; the TorchScript exporter is deprecated).
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from v2i_core.engine.model_dir import ModelSpec
from v2i_core.errors import V2IError
from v2i_core.storage import atomic_file, atomic_path

log = logging.getLogger(__name__)

OPSET = 18  # GridSample needs 16; 18 is read by ONNX Runtime 1.14+ and TensorRT 8.6+
FORMAT = "v2i-onnx/1"  # the sidecar's format, checked by the reader
INPUT = "images"
OUTPUTS = ("logits", "boxes")
ONNX_FILE = "model.onnx"  # its name inside a registered model's model directory
TOLERANCE = 1e-4  # largest |ONNX Runtime - eager| of a score or a box coordinate an export may have
TOP_K = 100  # detections kept per frame before the threshold (postprocess's top_k)


class GraphOutputs(nn.Module):
    """The network with the two outputs a deployment reads, as a tuple: the graph's outputs."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images: [B, 3, H, W] -> logits [B, Q, C], boxes [B, Q, 4]."""
        outputs = self.network(images)
        return outputs["pred_logits"], outputs["pred_boxes"]


def sidecar_path(onnx_path: str | Path) -> Path:
    """FILE.onnx -> FILE.onnx.json."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(onnx_path.name + ".json")


def sidecar(spec: ModelSpec, threshold: float, md5: str | None) -> dict:
    """What a deployment needs around the graph: pre-processing, post-processing, categories, the model's config."""
    from v2i_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    h, w = (int(v) for v in spec.model.input_size)
    return {
        "format": FORMAT,
        "opset": OPSET,
        "input": {"name": INPUT, "shape": ["batch", 3, h, w], "dtype": "float32"},
        "outputs": {
            OUTPUTS[0]: "[batch, queries, classes] logits; score = sigmoid(logit)",
            OUTPUTS[1]: "[batch, queries, 4] (cx, cy, w, h) as fractions of the frame",
        },
        "input_size": [h, w],
        "resize": "the whole RGB frame to input_size [height, width], bilinear (Pillow), aspect ratio not kept",
        "scale": 1 / 255,
        "mean": [float(v) for v in IMAGENET_MEAN],
        "std": [float(v) for v in IMAGENET_STD],
        "postprocess": (
            f"the {TOP_K} best (query, class) pairs by score; box to pixels of the original frame (x, y, w, h), "
            "clamped to it; category_id = class index + 1; kept when score >= score_threshold"
        ),
        "top_k": TOP_K,
        "score_threshold": float(threshold),
        "categories": spec.categories,
        "model": spec.to_dict(),
        "model_md5": md5,
        "torch": torch.__version__,
    }


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's graph passes log every constant they fold or leave and every node they remove: not the user's
    concern."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _write_graph(module: nn.Module, example: Tensor, path: Path) -> None:
    """torch.export, then ONNX: one self-contained file (weights inside), batch axis dynamic."""
    batch = torch.export.Dim("batch", min=1)
    with _quiet_exporter():
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[INPUT],
            output_names=list(OUTPUTS),
            dynamic_shapes={"images": {0: batch}},
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )


def graph_difference(path: Path, module: nn.Module, images: Tensor) -> float:
    """The largest |ONNX Runtime - eager| over the scores (sigmoid of the logits) and box coordinates of `images`."""
    from v2i_core.onnx_engine import open_session

    logits, boxes = open_session(path).run(list(OUTPUTS), {INPUT: images.numpy()})
    with torch.inference_mode():
        want_logits, want_boxes = module(images)
    return max(
        float((torch.from_numpy(logits).sigmoid() - want_logits.sigmoid()).abs().max()),
        float((torch.from_numpy(boxes) - want_boxes).abs().max()),
    )


def export_onnx(network: nn.Module, spec: ModelSpec, out: Path, threshold: float, md5: str | None = None) -> dict:
    """Write `out` (the graph) and its sidecar once ONNX Runtime's outputs on a random batch of two frames match the
    eager network's within TOLERANCE; returns the sidecar. Nothing is written when a step fails."""
    if spec.is_video:
        raise V2IError(f"role {spec.role}: a video model needs clips; only image models (student, baseline) export")
    module = GraphOutputs(network.to("cpu")).eval()
    h, w = spec.model.input_size
    # two frames: an example of one would let torch.export fix the batch axis at 1
    example = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    meta = sidecar(spec, threshold, md5)
    with atomic_path(out) as tmp, atomic_file(sidecar_path(out)) as handle:
        _write_graph(module, example, tmp)
        difference = graph_difference(tmp, module, example)
        if difference > TOLERANCE:
            raise V2IError(
                f"{out}: ONNX Runtime's outputs differ from the model's by {difference:.2g} (more than {TOLERANCE:g});"
                " nothing written"
            )
        json.dump(meta, handle, indent=2)
    return meta


def export_model_dir(model_dir: str | Path, out: Path, threshold: float) -> dict:
    """export_onnx of a model directory's image model, its weights' md5 in the sidecar."""
    from v2i_core.registry import model_md5
    from v2i_core.serving import ImageDetector

    detector = ImageDetector.from_model_dir(model_dir, torch.device("cpu"))
    return export_onnx(detector.network, detector.spec, out, threshold, model_md5(model_dir))


@contextlib.contextmanager
def temporary_export(model_dir: str | Path, threshold: float) -> Iterator[Path]:
    """A model directory exported into a temporary folder for the block: the ONNX file's path."""
    with tempfile.TemporaryDirectory(prefix="v2i-onnx-") as tmp:
        out = Path(tmp) / ONNX_FILE
        export_model_dir(model_dir, out, threshold)
        yield out


def run(args, params) -> int:
    """`v2i export --model DIR|models:/NAME@ALIAS [--format onnx] --out FILE.onnx`."""
    out = Path(args.out)
    if out.suffix != ".onnx":
        raise V2IError(f"--out {out}: name the ONNX file to write, ending in .onnx")
    started = time.perf_counter()
    if args.model.startswith("models:/"):
        from v2i_core.serving import open_detector

        opened = open_detector(args.model, torch.device("cpu"))
        meta = export_onnx(opened.detector.network, opened.detector.spec, out, opened.threshold)
    else:
        meta = export_model_dir(args.model, out, params.eval.score_threshold)
    h, w = meta["input_size"]
    role, arch = meta["model"]["role"], meta["model"]["model"]["arch"]
    print(
        f"exported {args.model} ({role}, {arch}) in {time.perf_counter() - started:.0f} s -> {out} "
        f"(opset {OPSET}, input {INPUT} [batch, 3, {h}, {w}]; ONNX Runtime within {TOLERANCE:g} of the model) and "
        f"{sidecar_path(out)} (pre- and post-processing, categories, score threshold {meta['score_threshold']:g})"
    )
    return 0
