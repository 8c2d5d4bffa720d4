"""Inference speed on single frames (batch 1) after warm-up, with the device named; parameter counts."""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Callable, Iterator

import numpy as np
import psutil
import torch

from v2i_core.engine.model_dir import ModelSpec
from v2i_core.errors import V2IError


def device_name(device: str | torch.device) -> str:
    """A human name: the GPU's model, or "cpu: <processor> x<threads> threads"."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        return f"cpu: {_cpu_model()} x{torch.get_num_threads()} threads"
    return device.type


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass  # not Linux: fall back on what the platform reports
    return platform.processor() or platform.machine() or "unknown processor"


def _to_device(value, device: torch.device):
    """Tensors (also inside tuples, lists and dicts) moved to `device`; anything else as it is."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple | list):
        return type(value)(_to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


def speed_input(spec: ModelSpec) -> torch.Tensor:
    """One input at batch 1: a frame [1, 3, H, W], or a clip [1, T, 3, H, W] for the teacher. Random, not zeros:
    zeros can take faster paths than real frames do."""
    h, w = spec.model.input_size
    shape = (1, 3, h, w)
    if spec.is_video:
        assert spec.msi is not None
        shape = (1, spec.msi.frames, 3, h, w)
    return torch.rand(shape, generator=torch.Generator().manual_seed(0))


def measure_fps(fn: Callable, example_input, warmup: int, iters: int, device: str | torch.device) -> dict:
    """Time fn(example_input) `iters` times after `warmup` untimed calls, under torch.inference_mode().

    example_input is one frame (batch 1); its tensors are moved to `device` first. On CUDA the device is
    synchronised before and after every call, so each time covers the whole forward pass, not its launch.
    Returns {"fps": frames/s at the median time, "ms_median", "ms_p90", "device": human-readable name}.
    """
    if warmup < 0 or iters < 1:
        raise V2IError(f"speed measurement: need warmup >= 0 and iters >= 1, got warmup={warmup}, iters={iters}")
    device = torch.device(device)
    example_input = _to_device(example_input, device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = np.empty(iters)
    with torch.inference_mode():
        for _ in range(warmup):
            fn(example_input)
        sync()
        for i in range(iters):
            start = time.perf_counter()
            fn(example_input)
            sync()
            times[i] = time.perf_counter() - start
    ms_median = float(np.median(times) * 1000)
    return {
        "fps": 1000.0 / ms_median,
        "ms_median": ms_median,
        "ms_p90": float(np.percentile(times, 90) * 1000),
        "device": device_name(device),
    }


@contextlib.contextmanager
def others_cpu_load() -> Iterator[dict]:
    """Yields a dict that on leaving the block holds "others_cores": how many cores, on average over the block,
    processes other than this one kept busy ("cores": how many there are). Timings taken while others load the
    machine are slowed, and unevenly: the number says whether a measurement can be trusted."""
    me = psutil.Process()
    machine, mine, started = psutil.cpu_times(), me.cpu_times(), time.monotonic()
    load: dict = {}
    yield load
    machine_now, mine_now = psutil.cpu_times(), me.cpu_times()
    busy = _busy_seconds(machine_now) - _busy_seconds(machine)
    own = (mine_now.user + mine_now.system) - (mine.user + mine.system)
    load["others_cores"] = max(0.0, busy - own) / max(time.monotonic() - started, 1e-9)
    load["cores"] = psutil.cpu_count()


def _busy_seconds(times) -> float:
    """CPU seconds, summed over cores, not spent idle or waiting for I/O. Linux counts guest time inside user
    time as well as apart, so the apart fields are left out."""
    not_busy = ("idle", "iowait", "guest", "guest_nice")
    return sum(getattr(times, field) for field in times._fields if field not in not_busy)


def count_parameters(model: torch.nn.Module) -> float:
    """Parameters of `model` in millions (shared tensors counted once, frozen ones included)."""
    return sum(p.numel() for p in model.parameters()) / 1e6
