"""The model directory: `model.pt` (a plain state dict), `config.yaml` (enough to rebuild the model without
params.yaml) and `metrics.json` (the training history). Every training step writes one; `v2i` runs any of them.
"""

from __future__ import annotations

import json
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from torch import nn

from v2i_core.config import ModelConfig, MSIConfig, section_from_dict
from v2i_core.errors import V2IError
from v2i_core.storage import atomic_file, atomic_path

ROLES = ("baseline", "teacher", "student")
MODEL_FILES = ("model.pt", "config.yaml", "metrics.json")


@dataclass
class ModelSpec:
    """What config.yaml says: enough to rebuild the network and read its outputs."""

    role: str
    model: ModelConfig
    categories: list[dict]
    msi: MSIConfig | None = None
    provenance: dict = field(default_factory=dict)

    @property
    def is_video(self) -> bool:
        return self.role == "teacher"

    def to_dict(self) -> dict:
        out = {
            "role": self.role,
            "model": self.model.model_dump(mode="json"),
            "categories": self.categories,
            "provenance": self.provenance,
        }
        if self.msi is not None:
            out["msi"] = self.msi.model_dump(mode="json")
        return out

    @classmethod
    def from_dict(cls, raw: dict, source: str) -> ModelSpec:
        if not isinstance(raw, dict) or raw.get("role") not in ROLES:
            raise V2IError(f"{source}: 'role' must be one of {', '.join(ROLES)}")
        msi = section_from_dict(MSIConfig, raw["msi"], source) if raw.get("msi") is not None else None
        return cls(
            role=raw["role"],
            model=section_from_dict(ModelConfig, raw.get("model", {}), source),
            categories=list(raw.get("categories", [])),
            msi=msi,
            provenance=dict(raw.get("provenance", {})),
        )


def build_network(spec: ModelSpec) -> nn.Module:
    """The network a spec describes: the video teacher, or an image detector (baseline and student alike)."""
    if spec.role == "teacher":
        from v2i_core.models.teacher import build_teacher

        return build_teacher(spec.model, spec.msi or MSIConfig())
    from v2i_core.models.build import build_detector

    return build_detector(spec.model)


def write_model_dir(out: Path, network: nn.Module, spec: ModelSpec, metrics: dict) -> None:
    """Write (or replace) the three files of a model directory, each atomically."""
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "model.pt") as tmp:
        torch.save(network.state_dict(), tmp)
    with atomic_file(out / "config.yaml") as handle:
        yaml.safe_dump(spec.to_dict(), handle, sort_keys=False)
    with atomic_file(out / "metrics.json") as handle:
        json.dump(metrics, handle, indent=2, sort_keys=True)


def read_spec(model_dir: str | Path) -> ModelSpec:
    path = Path(model_dir) / "config.yaml"
    if not path.exists():
        raise V2IError(f"{model_dir}: not a model directory (no config.yaml)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise V2IError(f"{path}: not valid YAML") from exc
    return ModelSpec.from_dict(raw, str(path))


def load_model_dir(model_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelSpec]:
    """Rebuild a model from its directory alone, in eval mode."""
    spec = read_spec(model_dir)
    # model.pt already holds any pretrained weights: the original weights file need not exist here.
    network = build_network(ModelSpec(**{**vars(spec), "model": spec.model.model_copy(update={"pretrained": None})}))
    weights = Path(model_dir) / "model.pt"
    if not weights.exists():
        raise V2IError(f"{model_dir}: no model.pt (training did not finish?)")
    state = read_weights(weights)
    try:
        network.load_state_dict(state)
    except (RuntimeError, ValueError) as exc:
        raise V2IError(f"{weights}: weights do not match config.yaml ({str(exc).splitlines()[0]})") from exc
    return network.to(device).eval(), spec


def read_weights(path: Path) -> dict:
    """model.pt's state dict, read with weights_only=True: a file that holds other pickled Python objects (a whole
    pickled model, say) could run code when unpickled, so it is refused, never unpickled."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about the file's pickle protocol before it refuses it
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:  # pickled objects, or bytes that are no checkpoint at all
            raise V2IError(
                f"{path}: not a weights-only checkpoint (a state dict of tensors); it will not be unpickled, as that "
                "can run code (save the model's state_dict() instead)"
            ) from exc
        except Exception as exc:  # torch raises several types (RuntimeError, KeyError, EOFError ...) for a bad file
            raise V2IError(f"{path}: unreadable weights file ({exc.__class__.__name__})") from exc
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise V2IError(f"{path}: not a state dict (expected parameter names mapped to tensors)")
    return state
