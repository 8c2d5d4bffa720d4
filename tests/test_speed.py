"""Speed measurement: batch-1 timing under inference mode, the device named, parameter counts."""

from __future__ import annotations

import math
import resource
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from v2i_core.errors import V2IError
from v2i_core.eval.speed import count_parameters, measure_fps, others_cpu_load


class Recorder(nn.Module):
    """A tiny conv net that records each call's batch size and whether inference mode was on."""

    def __init__(self, pause_s: float = 0.0):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.pause_s = pause_s
        self.calls: list[tuple[int, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, 4, H-2, W-2)
        self.calls.append((x.shape[0], torch.is_inference_mode_enabled()))
        if self.pause_s:
            time.sleep(self.pause_s)  # a known lower bound on the call's time
        return self.conv(x)


def test_measure_fps_on_cpu():
    model = Recorder()
    result = measure_fps(model, torch.rand(1, 3, 32, 32), warmup=3, iters=7, device="cpu")
    assert set(result) == {"fps", "ms_median", "ms_p90", "device"}
    assert math.isfinite(result["fps"]) and result["fps"] > 0
    assert result["fps"] == pytest.approx(1000 / result["ms_median"])
    assert 0 < result["ms_median"] <= result["ms_p90"]
    assert result["device"].startswith("cpu: ") and result["device"].endswith(f"x{torch.get_num_threads()} threads")
    assert model.calls == [(1, True)] * 10  # warm-up plus timed calls, all batch 1 under inference mode


def test_slower_function_measures_slower():
    # Sleeping 30 ms bounds the slow call from below, whatever the machine's load; the fast conv takes
    # well under a millisecond, so the order cannot flip on a noisy machine.
    fast = measure_fps(Recorder(), torch.rand(1, 3, 16, 16), warmup=1, iters=5, device="cpu")
    slow = measure_fps(Recorder(pause_s=0.03), torch.rand(1, 3, 16, 16), warmup=1, iters=5, device="cpu")
    assert slow["ms_median"] >= 30 and slow["fps"] <= 1000 / 30
    assert fast["fps"] > slow["fps"]


def test_input_moved_to_device_and_bad_counts_rejected():
    seen = []
    measure_fps(lambda batch: seen.append(batch["image"].device), {"image": torch.rand(1, 3)}, 0, 2, "cpu")
    assert seen == [torch.device("cpu")] * 2
    with pytest.raises(V2IError, match="iters >= 1"):
        measure_fps(Recorder(), torch.rand(1, 3, 8, 8), warmup=0, iters=0, device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_measure_fps_on_cuda_names_the_gpu():
    model = Recorder().cuda()
    result = measure_fps(model, torch.rand(1, 3, 64, 64), warmup=2, iters=5, device="cuda")
    assert result["device"] == f"cuda: {torch.cuda.get_device_name(0)}"
    assert math.isfinite(result["fps"]) and result["fps"] > 0


def test_count_parameters_in_millions():
    model = nn.Sequential(nn.Linear(1000, 500), nn.Linear(500, 1000, bias=False))
    assert count_parameters(model) == pytest.approx((1000 * 500 + 500 + 500 * 1000) / 1e6)
    shared = nn.Linear(100, 100)
    assert count_parameters(nn.Sequential(shared, shared)) == pytest.approx(10100 / 1e6)  # counted once


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # of the children already waited for
    return usage.ru_utime + usage.ru_stime


def test_others_cpu_load_counts_other_processes_not_this_one():
    with others_cpu_load() as own_work:
        _spin(1.0)
    spin_a_second = "import time\nend = time.monotonic() + 1.0\nwhile time.monotonic() < end: pass"
    children_before, started = _children_cpu_seconds(), time.monotonic()
    with others_cpu_load() as others_work:
        subprocess.run([sys.executable, "-c", spin_a_second], check=True)
    # the child's share is measured, not assumed to be a core: other processes may already keep the machine busy
    spinner_cores = (_children_cpu_seconds() - children_before) / (time.monotonic() - started)
    assert own_work["cores"] == others_work["cores"] >= 1
    # the child spinning beside us is counted, our own spinning is not
    assert others_work["others_cores"] - own_work["others_cores"] > 0.5 * spinner_cores > 0
