"""ONNX Runtime as the engine of an exported image model (`v2i export`), on the CPU.

`OnnxDetector` is an `ImageDetector` whose forward pass is the ONNX graph: frames are preprocessed and detections
postprocessed by the same code as the torch engine's, with the input size and categories of the graph's sidecar.
"""

from __future__ import annotations

from pathlib import Path

import torch

from v2i_core.errors import V2IError
from v2i_core.export import FORMAT, INPUT, OUTPUTS, sidecar_path
from v2i_core.serving import ImageDetector
from v2i_core.storage import read_json


def open_session(path: str | Path, threads: int = 0):
    """An ONNX Runtime CPU session of the graph at `path` with `threads` intra-op threads (0: ONNX Runtime's
    default, one per physical core). A missing or unloadable file is a V2IError naming it."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise V2IError(f"{path}: no such ONNX file")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # one graph at a time: its operators run in sequence
    # Idle threads sleep rather than spin: infer's decode and encode threads, and other processes, share the cores,
    # and a thread spinning on one of them delays the thread that has work.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: its warnings about unused initialisers are not the user's concern
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime raises its own types (InvalidProtobuf, Fail, InvalidGraph ...)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise V2IError(f"{path}: not an ONNX model ONNX Runtime can load ({reason[:200]})") from None


def read_sidecar(onnx_path: str | Path) -> dict:
    """The sidecar `v2i export` wrote beside the graph, checked for what running it needs."""
    path = sidecar_path(onnx_path)
    if not path.is_file():
        raise V2IError(f"{path}: no such file (the sidecar `v2i export` writes beside {Path(onnx_path).name})")
    meta = read_json(path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise V2IError(f"{path}: not the sidecar of a `v2i export` graph (no 'format': '{FORMAT}')")
    size, categories = meta.get("input_size"), meta.get("categories")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise V2IError(f"{path}: 'input_size' must be [height, width] in pixels, got {size!r}")
    named = isinstance(categories, list) and all(isinstance(c, dict) and {"id", "name"} <= c.keys() for c in categories)
    if not named:
        raise V2IError(f"{path}: 'categories' must be a list of {{id, name}}")
    if not isinstance(meta.get("score_threshold"), int | float):
        raise V2IError(f"{path}: 'score_threshold' must be a number")
    return meta


class OnnxDetector(ImageDetector):
    """Frames -> detections through ONNX Runtime: an ImageDetector without torch's network."""

    def __init__(self, session, meta: dict, threads: int):
        self.session, self.threads = session, threads
        self.device = torch.device("cpu")
        self.input_size = (int(meta["input_size"][0]), int(meta["input_size"][1]))
        self.names = {int(c["id"]): str(c["name"]) for c in meta["categories"]}
        self.threshold = float(meta["score_threshold"])

    @classmethod
    def from_file(cls, path: str | Path, threads: int = 0) -> OnnxDetector:
        """The graph at `path` (FILE.onnx) with its sidecar (FILE.onnx.json)."""
        if not Path(path).is_file():
            raise V2IError(f"{path}: no such ONNX file")
        meta = read_sidecar(path)
        session = open_session(path, threads)
        inputs = session.get_inputs()
        h, w = meta["input_size"]
        if len(inputs) != 1 or inputs[0].name != INPUT or list(inputs[0].shape[1:]) != [3, h, w]:
            got = ", ".join(f"{i.name} {i.shape}" for i in inputs)
            raise V2IError(f"{path}: takes {got}, not the {INPUT} [batch, 3, {h}, {w}] its sidecar describes")
        return cls(session, meta, threads)

    def forward(self, batch: torch.Tensor) -> dict:
        """batch: [B, 3, h, w] preprocessed -> {"pred_logits": [B, Q, C], "pred_boxes": [B, Q, 4]}."""
        logits, boxes = self.session.run(list(OUTPUTS), {INPUT: batch.cpu().contiguous().numpy()})
        return {"pred_logits": torch.from_numpy(logits), "pred_boxes": torch.from_numpy(boxes)}

    @property
    def runtime(self) -> str:
        import onnxruntime as ort

        threads = f"x{self.threads} threads" if self.threads else "its default threads"
        return f"onnxruntime {ort.__version__} cpu, {threads}"
