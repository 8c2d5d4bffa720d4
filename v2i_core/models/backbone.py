"""ResNet backbones (torchvision 18/34/50) cut after the deepest stage the detector uses.

Pretrained weights come from the file v2i_core.models.weights resolves (a torchvision weights name, an s3://
object or a local path) and load with weights_only=True. With frozen batch norm and pretrained weights the stem and
layer1 are frozen as in DETR; from scratch, plain batch norm trains.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from v2i_core.errors import V2IError
from v2i_core.models.weights import resolve_weights

_EXPANSION = {"resnet18": 1, "resnet34": 1, "resnet50": 4}


class Backbone(nn.Module):
    """A torchvision ResNet trunk returning the feature maps of `stages` (ResNet stage numbers 1..4)."""

    def __init__(self, name: str, stages: list[int], norm: str = "bn", pretrained: str | None = None):
        super().__init__()
        norm_layer = FrozenBatchNorm2d if norm == "frozen_bn" else nn.BatchNorm2d
        resnet = getattr(torchvision.models, name)(weights=None, norm_layer=norm_layer)
        # torchvision's own attribute names, so a torchvision state dict loads without renaming.
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.depth = max(stages)
        for stage in range(1, self.depth + 1):
            setattr(self, f"layer{stage}", getattr(resnet, f"layer{stage}"))
        self.stages = list(stages)
        self.strides = [2 ** (stage + 1) for stage in stages]
        self.num_channels = [64 * 2 ** (stage - 1) * _EXPANSION[name] for stage in stages]
        if pretrained:
            self.load_weights(resolve_weights(pretrained, name), name)
            if norm == "frozen_bn":
                self.freeze_stem()

    def freeze_stem(self) -> None:
        """Stop training the stem and layer1, as DETR does on top of ImageNet weights (generic low-level filters)."""
        for module in (self.conv1, self.bn1, self.layer1):
            module.requires_grad_(False)

    def load_weights(self, path: Path, name: str) -> None:
        """Load the stages this trunk has from a torchvision ResNet state dict; other keys (fc, cut stages) are
        ignored, a missing or misshapen tensor is an error naming the file."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError) as exc:
            raise V2IError(f"{path}: not a torch weights file ({exc.__class__.__name__}: {exc})") from exc
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise V2IError(f"{path}: expected a plain state dict of tensors (a torchvision {name})")
        own = self.state_dict()
        # Files saved before PyTorch 0.4.1 lack num_batches_tracked; batch norm fills it in itself.
        missing = [key for key in own if key not in state and not key.endswith("num_batches_tracked")]
        if missing:
            raise V2IError(f"{path}: not {name} weights: {len(missing)} tensors missing, e.g. '{missing[0]}'")
        for key, value in own.items():
            if key in state and state[key].shape != value.shape:
                raise V2IError(
                    f"{path}: '{key}' has shape {tuple(state[key].shape)}, {name} needs {tuple(value.shape)}"
                )
        self.load_state_dict({key: state[key] for key in own if key in state})

    def forward(self, images: Tensor) -> list[Tensor]:
        """images: [B, 3, H, W] -> one [B, C_l, H / stride_l, W / stride_l] per stage in `self.stages`."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        out = []
        for stage in range(1, self.depth + 1):
            x = getattr(self, f"layer{stage}")(x)
            if stage in self.stages:
                out.append(x)
        return out
