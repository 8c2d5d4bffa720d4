"""An image model (baseline or student) as a detector of RGB frames, and as an MLflow pyfunc model that serves.

`ImageDetector` is shared by the pyfunc model (`mlflow models serve`, `mlflow.pyfunc.load_model`) and by
`v2i infer`, so a served model and the real-time path preprocess and postprocess frames the same way as
evaluation does (`FrameDataset` without augmentation, then `postprocess`).

The pyfunc model's artifacts are the model directory itself; its input is a DataFrame with a column `image`
of base64-encoded PNG/JPEG bytes, its output one list of detections per row
(`{"bbox": [x, y, w, h] pixels, "score", "category_id", "category"}`), and its params `threshold` and `filter`.
With `filter: true` the rows are taken as consecutive frames of one video, in order, and each row's detections are
what the causal temporal filter shows for that frame (`v2i_core.temporal_filter`, as `v2i infer --stream`), with
the filter settings recorded in the model when it was logged (the params `filter` section of that run).
It carries its own code (the v2i_core package, as `code_paths`) and pins the exact versions of what that code
imports, so `mlflow models serve` runs it where the project is not installed.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from v2i_core.config import FilterConfig
from v2i_core.cuda_graph import CapturedForward, capture, precision
from v2i_core.data.transforms import apply_frames, identity
from v2i_core.engine.model_dir import ModelSpec, load_model_dir, read_spec
from v2i_core.errors import V2IError
from v2i_core.models.postprocess import postprocess
from v2i_core.temporal_filter import CausalFilter, build_filter

log = logging.getLogger(__name__)

MAX_BATCH = 16  # rows per forward pass: bounds memory for large requests


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class ImageDetector:
    """Frames (uint8 RGB [H, W, 3], any size) -> detections above a threshold, in the frames' own pixels."""

    def __init__(self, network: nn.Module, spec: ModelSpec, device: torch.device):
        if spec.is_video:
            raise V2IError(f"role {spec.role}: a video model needs clips; serving and infer run image models")
        self.network = network.eval()
        self.spec = spec
        self.device = device
        self.input_size = (int(spec.model.input_size[0]), int(spec.model.input_size[1]))
        self.names = {int(c["id"]): str(c["name"]) for c in spec.categories}
        # batch-1 calls on CUDA: replayed from a CUDA graph (cuda_graph.capture), decided on the first such call
        self.captured: CapturedForward | None = None
        self.capture_tried = False
        self._capturing = threading.Lock()  # a server's threads may ask for the first frame at once

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, device: torch.device | None = None) -> ImageDetector:
        device = device or default_device()
        spec = read_spec(model_dir)
        if spec.is_video:  # refused before its weights are loaded
            raise V2IError(f"{model_dir}: role {spec.role} is a video model; use an image model (student, baseline)")
        network, spec = load_model_dir(model_dir, device)
        return cls(network, spec, device)

    def preprocess(self, frame: np.ndarray) -> torch.Tensor:
        """uint8 RGB [H, W, 3] -> normalised float [3, h, w] at the model's input size, exactly as FrameDataset."""
        return apply_frames([Image.fromarray(frame)], identity(frame.shape[:2]), self.input_size)[0]

    def forward(self, batch: torch.Tensor) -> dict:
        """batch: [B, 3, h, w] preprocessed -> the network's outputs (pred_logits, pred_boxes ...). On CUDA a single
        frame runs from a CUDA graph captured on the first one (eagerly where it cannot be captured)."""
        batch = batch.to(self.device)
        if batch.shape[0] == 1 and self.device.type == "cuda":
            with self._capturing:
                if not self.capture_tried:
                    self.captured = capture(self.network, batch)
                    self.capture_tried = True
            if self.captured is not None:
                return self.captured(batch)
        return self.network(batch)

    def to(self, device: torch.device) -> ImageDetector:
        """The detector on `device` (a graph captured on another device is dropped, to be captured anew)."""
        if device != self.device:
            self.network.to(device)
            self.device, self.captured, self.capture_tried = device, None, False
        return self

    @property
    def runtime(self) -> str:
        """What runs the network, for messages: the device, and on CUDA whether batch-1 calls replay a graph."""
        from v2i_core.eval.speed import device_name

        if self.capture_tried:
            return f"{device_name(self.device)} ({precision(self.captured)} at batch 1)"
        return device_name(self.device)

    @torch.inference_mode()
    def detect_batch(self, batch: torch.Tensor, sizes: list[tuple[int, int]], threshold: float) -> list[list[dict]]:
        """batch: [B, 3, h, w] preprocessed; sizes: (height, width) of each original frame."""
        outputs = self.forward(batch)
        orig = torch.tensor(sizes, dtype=torch.long, device=self.device)  # [B, 2]
        results: list[list[dict]] = [[] for _ in sizes]
        for det in postprocess(outputs, orig, list(range(len(sizes)))):
            if det["score"] >= threshold:
                results[det["image_id"]].append(
                    {
                        "bbox": [float(v) for v in det["bbox"]],
                        "score": float(det["score"]),
                        "category_id": int(det["category_id"]),
                        "category": self.names.get(int(det["category_id"]), str(det["category_id"])),
                    }
                )
        return results

    def detect(self, frames: list[np.ndarray], threshold: float) -> list[list[dict]]:
        """One list of detections (score >= threshold, best first) per frame."""
        results: list[list[dict]] = []
        for start in range(0, len(frames), MAX_BATCH):
            chunk = frames[start : start + MAX_BATCH]
            batch = torch.stack([self.preprocess(f) for f in chunk])
            results.extend(self.detect_batch(batch, [f.shape[:2] for f in chunk], threshold))
        return results


def decode_image(value, row: int) -> np.ndarray:
    """A base64 PNG/JPEG (str or bytes) -> uint8 RGB [H, W, 3]; anything else is a V2IError naming the row."""
    try:
        raw = base64.b64decode(value, validate=True)
        with Image.open(io.BytesIO(raw)) as image:
            return np.asarray(image.convert("RGB"))
    except (binascii.Error, TypeError, ValueError) as exc:
        raise V2IError(f"request row {row}: 'image' is not base64 ({exc})") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise V2IError(f"request row {row}: 'image' is not a PNG or JPEG image ({exc.__class__.__name__})") from None


def encode_image(frame: np.ndarray, fmt: str = "PNG") -> str:
    """uint8 RGB [H, W, 3] -> base64 text of a PNG (or JPEG): what the served model takes in column `image`."""
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class V2IDetectorModel(mlflow.pyfunc.PythonModel):
    """The pyfunc model: artifacts["model_dir"] is a model directory of an image model; `register` adds its ONNX
    graph there (model.onnx and its sidecar). Its model_config `engine` picks what runs it: torch, or onnxruntime
    with `threads` intra-op threads (`mlflow.pyfunc.load_model(uri, model_config={"engine": "onnxruntime"})`, or
    MLFLOW_PYFUNC_INFERENCE_CONFIG='{"engine": "onnxruntime"}' for `mlflow models serve`).

    Param `filter` (default false) applies the causal temporal filter: the request's rows are then consecutive
    frames of one video, in order, and row t's detections are those the filter shows at frame t, decided from rows
    0..t only (a later row never changes an earlier row's answer). The server keeps no state between requests: each
    request is a clip of its own, and its filter starts afresh at its first row, so an object first seen there is
    shown k-1 rows later (k of the settings below). Send a video in one request, or use `v2i infer --stream` for a
    live one. The filter's settings (k, n, hold, iou) are `filter_settings`, the params `filter` section of the run
    that logged the model. An instance pickled before they were recorded has none and uses FilterConfig's defaults,
    those of params.yaml and of `v2i infer --stream` without a `filter` section: the filter post-processes detections
    and owes nothing to the weights, so the defaults suit that model as well as any, whereas refusing would leave its
    registered version unable to filter for good (registering the same weights again returns that version).
    `mlflow models serve` runs the code logged with a model, though: one logged before `filter` was a param of its
    signature answers unfiltered, MLflow dropping the param with a warning.
    """

    def __init__(self, threshold: float, filter_settings: FilterConfig | None = None):
        self.threshold = float(threshold)
        # a plain dict in the pickle: it loads whatever the served code's FilterConfig looks like
        self.filter_settings = (filter_settings or FilterConfig()).model_dump()
        self.detector: ImageDetector | None = None

    def load_context(self, context) -> None:
        model_dir = Path(context.artifacts["model_dir"])
        config = {**ENGINE_CONFIG, **(context.model_config or {})}
        if config["engine"] == "onnxruntime":
            from v2i_core.export import ONNX_FILE
            from v2i_core.onnx_engine import OnnxDetector

            if not (model_dir / ONNX_FILE).exists():
                raise V2IError("this model holds no ONNX graph (registered before `v2i register` exported one)")
            self.detector = OnnxDetector.from_file(model_dir / ONNX_FILE, int(config["threads"]))
        elif config["engine"] == "torch":
            self.detector = ImageDetector.from_model_dir(model_dir)
        else:
            raise V2IError(f"model_config engine {config['engine']!r}: expected torch or onnxruntime")

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> list[list[dict]]:
        """DataFrame with column `image` -> [[detection, ...] per row]; params {"threshold": float, "filter": bool}
        (filter true: the rows are one video's frames in order, each answered as the causal filter shows it)."""
        if self.detector is None:
            self.load_context(context)
        if "image" not in getattr(model_input, "columns", []):
            raise V2IError("request: expected a DataFrame with a column 'image' (base64 PNG/JPEG)")
        params = params or {}
        threshold = float(params.get("threshold", self.threshold))
        apply_filter = params.get("filter", False)
        if not isinstance(apply_filter, bool | np.bool_):
            raise V2IError(f"request: param 'filter' must be true or false, got {apply_filter!r}")
        frames = [decode_image(value, row) for row, value in enumerate(model_input["image"])]
        detections = self.detector.detect(frames, threshold)
        if not apply_filter:
            return detections
        temporal = self.temporal_filter()
        return [temporal.update(row) for row in detections]  # row t's answer is decided before row t+1 is seen

    def temporal_settings(self) -> FilterConfig:
        """This model's recorded filter settings (FilterConfig's defaults where none are)."""
        return FilterConfig(**(getattr(self, "filter_settings", None) or {}))

    def temporal_filter(self) -> CausalFilter:
        """A fresh causal filter with this model's recorded settings."""
        return build_filter(self.temporal_settings())


def signature(threshold: float):
    """Input: column `image` (string); output: a list of detection objects per row; params `threshold` (the
    recorded one by default) and `filter` (boolean, default false: MLflow refuses anything but true or false)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Object, ParamSchema, ParamSpec, Property, Schema

    detection = Object(
        [
            Property("bbox", Array("double")),
            Property("score", "double"),
            Property("category_id", "long"),
            Property("category", "string"),
        ]
    )
    return ModelSignature(
        inputs=Schema([ColSpec("string", "image")]),
        outputs=Schema([ColSpec(Array(detection))]),
        params=ParamSchema([ParamSpec("threshold", "double", float(threshold)), ParamSpec("filter", "boolean", False)]),
    )


# The served model's engine unless the loader says otherwise (its model_config; threads 0: ONNX Runtime's default).
ENGINE_CONFIG = {"engine": "torch", "threads": 0}
# The distributions the served code imports (v2i_core's serving path and what it loads), pinned at logging time.
SERVING_PACKAGES = (
    "torch",
    "torchvision",
    "numpy",
    "pillow",
    "pandas",
    "scipy",
    "pyyaml",
    "pydantic",
    "cloudpickle",
    "tqdm",
    "mlflow",
    "onnxruntime",
)
CODE_PATH = Path(__file__).resolve().parent  # the v2i_core package, carried by the model


def requirements() -> list[str]:
    """`SERVING_PACKAGES` pinned to the versions installed here (a local build tag such as +cu130 dropped)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in SERVING_PACKAGES:
        try:
            pins.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            raise V2IError(f"cannot log a served model: {package} is not installed here") from None
    return pins


def log_pyfunc(model_dir: Path, threshold: float, filter_settings: FilterConfig, tags: dict[str, str] | None = None):
    """Log `model_dir` as the pyfunc model `model` of the active run, serving with score `threshold` and, when a
    request asks for param `filter`, the causal filter of `filter_settings` (the run's params `filter` section); with
    `tags` on the logged model. Returns MLflow's ModelInfo.

    The input example (one grey frame) is stored with the model, so a user sees the request format, and
    MLflow checks at logging time that the model loads and answers it.
    """
    example = pd.DataFrame({"image": [encode_image(np.full((32, 32, 3), 128, np.uint8))]})
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=V2IDetectorModel(threshold, filter_settings),
        artifacts={"model_dir": str(model_dir)},
        code_paths=[str(CODE_PATH)],
        signature=signature(threshold),
        input_example=example,
        pip_requirements=requirements(),
        model_config=ENGINE_CONFIG,
        tags=tags,
    )


@dataclass(frozen=True)
class Opened:
    """What open_detector found: the detector, and what was recorded with the model (None: nothing recorded, so
    the params decide): the score threshold (at registration or export) and the temporal filter's settings (at
    registration, what the served model's `filter` param applies)."""

    detector: ImageDetector
    threshold: float | None = None
    filter_settings: FilterConfig | None = None


def open_detector(model: str, device: torch.device, engine: str = "torch", threads: int = 0) -> Opened:
    """The detector of a model directory, a registered model (`models:/NAME@ALIAS` or `models:/NAME/V`) or, for
    engine onnxruntime, an exported graph (FILE.onnx), with what was recorded with it. Engine onnxruntime runs on the
    CPU with `threads` intra-op threads; a model directory is exported for it first, into a temporary file."""
    if model.startswith("models:/"):
        return _registered_detector(model, device, engine, threads)
    if model.endswith(".onnx"):
        if engine != "onnxruntime":
            raise V2IError(f"{model}: an exported graph runs with --engine onnxruntime")
        from v2i_core.onnx_engine import OnnxDetector

        detector = OnnxDetector.from_file(model, threads)
        return Opened(detector, detector.threshold)
    if engine == "onnxruntime":
        from v2i_core.export import temporary_export
        from v2i_core.onnx_engine import OnnxDetector

        read_spec(model)  # not a model directory: say so before exporting anything
        log.info("exporting %s to ONNX for this run (`v2i export` writes it once)", model)
        with temporary_export(model, threshold=0.0) as path:  # the threshold comes from the params, not the sidecar
            return Opened(OnnxDetector.from_file(path, threads))  # the session holds the graph: the file may go
    return Opened(ImageDetector.from_model_dir(model, device))


def _registered_detector(model: str, device: torch.device, engine: str, threads: int) -> Opened:
    """open_detector of `models:/...`: its pyfunc model, loaded through MLflow with the engine asked for."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from v2i_core.tracking import display_uri, tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    try:
        # torch is the default: a model logged before its model_config named an engine loads without a warning
        config = {"engine": engine, "threads": threads} if engine != "torch" else None
        wrapper = mlflow.pyfunc.load_model(model, model_config=config).unwrap_python_model()
    except MlflowException as exc:
        raise V2IError(f"{model}: cannot load from the registry at {display_uri()} ({exc.message})") from None
    except V2IError as exc:
        raise V2IError(f"{model}: {exc}") from None
    if not isinstance(wrapper, V2IDetectorModel) or wrapper.detector is None:
        raise V2IError(f"{model}: not a model registered by `v2i register`")
    detector = wrapper.detector
    if engine == "onnxruntime":
        from v2i_core.onnx_engine import OnnxDetector

        if not isinstance(detector, OnnxDetector):  # logged before its model_config named an engine
            raise V2IError(f"{model}: logged without an engine choice; run it with --engine torch")
    else:
        detector = detector.to(device)
    return Opened(detector, wrapper.threshold, wrapper.temporal_settings())
