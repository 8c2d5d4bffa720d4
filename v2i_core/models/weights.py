"""Pretrained backbone weights: what `model.pretrained` names, resolved to one local, verified file.

`model.pretrained` is one of
  - a torchvision weights name, `ResNet50_Weights.IMAGENET1K_V1` (or `IMAGENET1K_V1` for the configured backbone):
    its file is taken from the torch hub cache (torch.hub.get_dir()/checkpoints, where torchvision keeps it too)
    and downloaded there only when absent;
  - an `s3://bucket/key` object: downloaded once into the same cache, under checkpoints/s3/bucket/key;
  - a local path, or the name of a file in that cache.
A downloaded or cached file whose name carries torch's `-<sha256 prefix>` suffix (resnet50-0676ba61.pth) is checked
against it every time it is used, as torchvision checks its downloads, so that a truncated or swapped file in the
cache is refused instead of loaded. Only the path is resolved here; the backbone loads it with weights_only=True.
"""

from __future__ import annotations

import hashlib
import logging
import re
import urllib.error
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import torch
import torchvision
from torchvision.models import WeightsEnum

from v2i_core.errors import V2IError
from v2i_core.storage import atomic_path, is_s3, s3_client, split_s3

log = logging.getLogger(__name__)

# `ResNet50_Weights.IMAGENET1K_V1` or `IMAGENET1K_V1`: an enum member, which no weights file is named like.
_WEIGHTS_NAME = re.compile(r"(?:\w+_Weights\.)?[A-Z][A-Z0-9_]*")
# torch hub's naming convention, `name-<first 8 or more hex digits of the file's sha256>.ext`.
_HASH_SUFFIX = re.compile(r"-([0-9a-f]{8,64})\.")


def resolve_weights(pretrained: str, arch: str) -> Path:
    """The local weights file for `model.pretrained` on an `arch` backbone (e.g. resnet50), fetched if need be."""
    if is_s3(pretrained):
        return _from_s3(pretrained)
    if _WEIGHTS_NAME.fullmatch(pretrained):
        return _from_hub(pretrained, torchvision_weights(pretrained, arch))
    return _local(pretrained)


def torchvision_weights(name: str, arch: str) -> WeightsEnum:
    """The torchvision weights `name` (full, or the member of `arch`'s enum) denotes; refused if they are another
    architecture's, whose tensors would not fit this backbone."""
    own = torchvision.models.get_model_weights(arch)
    try:
        weights = torchvision.models.get_weight(name) if "." in name else own[name]
    except (KeyError, ValueError):
        choices = ", ".join(f"{own.__name__}.{member}" for member in own.__members__)
        raise V2IError(f"model.pretrained: {name!r} is not a torchvision weights name ({arch} has {choices})") from None
    if not isinstance(weights, own):
        raise V2IError(f"model.pretrained: {name} are not {arch} weights (the backbone is {arch}: use {own.__name__})")
    return weights


def hub_cache() -> Path:
    """torch hub's checkpoints directory (TORCH_HOME, ~/.cache/torch by default), where torchvision caches too."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _from_hub(name: str, weights: WeightsEnum) -> Path:
    cached = hub_cache() / Path(urlparse(weights.url).path).name
    if cached.is_file():
        _check_cached(cached)
        return cached
    log.info("downloading %s (%s) to %s", name, weights.url, cached)
    try:
        # As torch.hub.load_state_dict_from_url(check_hash=True) downloads, without loading the file twice: into a
        # temporary file beside `cached`, renamed to it only once its sha256 begins with the name's hex suffix.
        with atomic_path(cached) as tmp:
            torch.hub.download_url_to_file(weights.url, str(tmp), progress=False)
            if mismatch := hash_mismatch(tmp, cached.name):
                raise V2IError(
                    f"{weights.url}: wrong sha256: the name expects {mismatch[0]}, the download has {mismatch[1]}"
                )
    except urllib.error.URLError as exc:
        raise V2IError(
            f"{name}: no {cached} in the torch hub cache, and {weights.url} cannot be downloaded ({exc.reason}); "
            f"put the file there (or set TORCH_HOME to a cache that has it)"
        ) from None
    except OSError as exc:
        raise V2IError(f"{name}: downloading {weights.url} to {cached} failed ({exc})") from None
    return cached


def _from_s3(uri: str) -> Path:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(uri)
    parts = PurePosixPath(key).parts
    if not parts or ".." in parts:
        raise V2IError(f"{uri}: not an S3 object URI (expected s3://bucket/key of a weights file)")
    cached = hub_cache() / "s3" / bucket / Path(*parts)
    if cached.is_file():  # downloaded before: the cache is keyed by URI, as torch hub's is by URL
        _check_cached(cached)
        return cached
    log.info("downloading %s to %s", uri, cached)
    try:
        with atomic_path(cached) as tmp:
            s3_client().download_file(bucket, key, str(tmp))
            if mismatch := hash_mismatch(tmp, cached.name):  # checked before the rename: never enters the cache
                raise V2IError(f"{uri}: wrong sha256: the name expects {mismatch[0]}, the object has {mismatch[1]}")
    except (BotoCoreError, ClientError, OSError) as exc:
        raise V2IError(f"{uri}: cannot download the weights file to {cached} ({exc})") from None
    return cached


def _local(pretrained: str) -> Path:
    path = Path(pretrained).expanduser()
    if path.is_file():
        return path
    cached = hub_cache() / path.name
    if cached.is_file():
        return cached
    raise V2IError(f"{pretrained}: no such weights file (not in the torch hub cache {cached.parent} either)")


def _expected_hash(name: str) -> str | None:
    match = _HASH_SUFFIX.search(name)
    return match.group(1) if match else None


def hash_mismatch(path: Path, name: str) -> tuple[str, str] | None:
    """(expected, actual) sha256 prefixes when `name` carries a `-<hex>` suffix that does not begin the sha256 of
    the file at `path` (torch hub's rule); None when it does, or when the name carries none."""
    expected = _expected_hash(name)
    if expected is None:
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    actual = digest.hexdigest()[: len(expected)]
    return None if actual == expected else (expected, actual)


def _check_cached(path: Path) -> None:
    if mismatch := hash_mismatch(path, path.name):
        raise V2IError(
            f"{path}: wrong sha256: the name expects {mismatch[0]}, the file has {mismatch[1]} "
            f"(damaged, or another file: delete it to download it again)"
        )
