"""Batch-1 inference on a GPU replayed from a CUDA graph, in reduced precision where its outputs stay close.

At batch 1 an image detector's forward pass on a GPU is bound by Python launching its kernels, hundreds a frame,
the GPU idle between them (the research bench measures the kernels' share of the call). A CUDA
graph records those launches once and replays them with one call. `capture` records the network on the first
frame it is given, under bfloat16 autocast, else float16, else float32, keeping the first whose outputs on that
frame stay within `TOLERANCE` of the eager float32 pass; a network that cannot be captured (an operation that
waits on the host, say) runs eagerly, as before, with one warning. `ImageDetector` (serving.py) uses it for every
batch-1 call on CUDA: `v2i infer`, `--stream`, and one-row requests to the served model.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

OUTPUTS = ("pred_logits", "pred_boxes")  # what postprocess reads; the rest (aux outputs) is not copied out
DTYPES = (torch.bfloat16, torch.float16, torch.float32)  # tried in this order
WARMUP = 3  # eager calls on a side stream before capture: cuDNN/cuBLAS pick and allocate their workspaces there


@dataclass(frozen=True)
class Tolerance:
    """How far a captured pass may be from the eager float32 one on the same frame: the scores postprocess ranks
    by (sigmoid of the logits, in [0, 1]) and the boxes (cx, cy, w, h as fractions of the frame)."""

    score: float = 0.02
    box: float = 0.01  # 1% of the frame's side: a pixel or two at the frame sizes this project serves


TOLERANCE = Tolerance()


def deviation(outputs: dict, reference: dict) -> tuple[float, float]:
    """(largest score gap, largest box gap) between two outputs of the same frames, in float32."""
    scores = (outputs["pred_logits"].float().sigmoid() - reference["pred_logits"].float().sigmoid()).abs().max()
    boxes = (outputs["pred_boxes"].float() - reference["pred_boxes"].float()).abs().max()
    return float(scores), float(boxes)


def within(gaps: tuple[float, float], tolerance: Tolerance = TOLERANCE) -> bool:
    score, box = gaps
    return score <= tolerance.score and box <= tolerance.box


class CapturedForward:
    """network(frame) for frames of `example`'s shape, replayed from a CUDA graph under `dtype` autocast.

    The graph reads its input from one static tensor and writes its outputs into static tensors: a call copies the
    frame in, replays, and copies the outputs out (float32), so a later call does not overwrite what an earlier one
    returned, and calls from several threads (a server's) take turns. The network's weights are read where they are:
    the eager pass shares them.
    """

    def __init__(self, network: nn.Module, example: Tensor, dtype: torch.dtype):
        self.dtype = dtype
        self.network = network
        self.turn = threading.Lock()
        with torch.inference_mode():
            self.static_input = example.detach().clone()  # [1, 3, h, w] on the GPU
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(WARMUP):
                    self._run()
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            # thread_local: infer's decode and encode threads may use CUDA while this thread captures
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                outputs = self._run()
        self.static_outputs = {name: outputs[name] for name in OUTPUTS}

    def _run(self) -> dict:
        # cache_enabled=False: autocast's cache of cast weights would be freed when the context exits, under the graph
        enabled = self.dtype != torch.float32
        with torch.autocast("cuda", dtype=self.dtype, enabled=enabled, cache_enabled=False):
            return self.network(self.static_input)

    def __call__(self, batch: Tensor) -> dict:
        """batch: [1, 3, h, w] on the GPU -> {"pred_logits": [1, Q, C], "pred_boxes": [1, Q, 4]} in float32."""
        with self.turn, torch.inference_mode():
            self.static_input.copy_(batch)
            self.graph.replay()
            return {name: value.to(torch.float32, copy=True) for name, value in self.static_outputs.items()}


def capture(network: nn.Module, example: Tensor, tolerance: Tolerance = TOLERANCE) -> CapturedForward | None:
    """The network captured on `example` ([1, 3, h, w] on the GPU) in the first of DTYPES whose outputs on it stay
    within `tolerance` of the eager float32 pass; None (run it eagerly) when it cannot be captured."""
    with torch.inference_mode():
        reference = network(example)
    for dtype in DTYPES:
        try:
            captured = CapturedForward(network, example, dtype)
        except Exception as exc:  # whatever stops the capture, the eager pass still works
            reason = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
            log.warning("CUDA graph capture failed (%s): running the network eagerly", reason[:200])
            torch.cuda.synchronize()  # a failed capture must not leave work in flight on the stream
            return None
        gaps = deviation(captured(example), reference)
        if within(gaps, tolerance):
            log.info("running batch-1 inference from %s (score gap %.1e, box gap %.1e)", precision(captured), *gaps)
            return captured
        log.info("%s is off by %.1e in scores, %.1e in boxes: beyond %s", precision(captured), *gaps, tolerance)
        del captured
    return None  # float32 itself out of tolerance: the replay differs from the eager pass, so trust neither graph


def precision(captured: CapturedForward | None) -> str:
    """What runs batch-1 calls, for messages: "CUDA graph, bfloat16", or "eager"."""
    return "eager" if captured is None else f"CUDA graph, {str(captured.dtype).removeprefix('torch.')}"
