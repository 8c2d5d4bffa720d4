"""Where a batch-1 forward's time goes on a GPU: the wall time of one call against the time its kernels run.

`v2i bench speed` gives frames/s; this says why a ratio of frames/s can be far from the ratio of the work done.
For each Table I network (teacher, DETR, Deformable DETR; a student is its baseline's network) at batch 1 and 8:
wall ms per call, the GPU kernels' ms per call (torch.profiler) and their share of the wall time, and the kernels
launched per call. A share well under 100% means the GPU waits on the Python that launches the kernels. The image
networks at batch 1 are then timed again as `v2i infer` runs them there, replayed from a CUDA graph in the precision
v2i_core.cuda_graph picks ("captured" rows).

    python -m v2i_bench.gpu_kernel_share [--params params.yaml] [--set-file F] [--set K=V] [--size bench|paper]
        [--input-size H W]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from v2i_bench.cli import common_flags
from v2i_bench.config import load_bench
from v2i_bench.speed import table_specs
from v2i_core.cuda_graph import capture, precision
from v2i_core.engine.model_dir import build_network
from v2i_core.eval.speed import speed_input

NETWORKS = ("teacher", "detr", "deformable")
WARMUP, TIMED, PROFILED = 5, 20, 5


def share(network: torch.nn.Module, batch: torch.Tensor) -> tuple[float, float, float]:
    """(wall ms per call, kernel ms per call, kernels per call)."""
    with torch.inference_mode():
        for _ in range(WARMUP):
            network(batch)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(TIMED):
            network(batch)
        torch.cuda.synchronize()
        wall = (time.perf_counter() - start) / TIMED * 1000
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(PROFILED):
                network(batch)
            torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    kernel_ms = sum(e.device_time_total for e in kernels) / PROFILED / 1000
    return wall, kernel_ms, sum(e.count for e in kernels) / PROFILED


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m v2i_bench.gpu_kernel_share", description=__doc__.splitlines()[0], parents=[common_flags()]
    )
    parser.add_argument("--size", default="bench", choices=["bench", "paper"])
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_kernel_share: torch sees no CUDA GPU here")
    params, bench = load_bench(args.params, args.overrides, args.set_files)
    specs = table_specs(params, bench, args.size, args.input_size)
    device = torch.device("cuda")
    print(
        f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, {args.size} size, "
        f"{'x'.join(map(str, specs['teacher'].model.input_size))} input"
    )
    for name in NETWORKS:
        spec = specs[name]
        network = build_network(spec).to(device).eval()
        frame = speed_input(spec).to(device)
        for size in (1, 8):
            wall, kernel, launched = share(network, frame.expand(size, *frame.shape[1:]).contiguous())
            print(
                f"{name:10s} batch {size}: {wall:7.2f} ms/call, {size * 1000 / wall:7.1f} frames/s, "
                f"kernels {kernel:6.2f} ms ({kernel / wall:4.0%}), {launched:.0f} launched/call"
            )
        if spec.is_video:
            continue
        captured = capture(network, frame)
        if captured is None:
            print(f"{name:10s} batch 1 captured: not capturable, runs eagerly")
            continue
        wall, kernel, launched = share(captured, frame)
        print(
            f"{name:10s} batch 1 captured ({precision(captured)}): {wall:7.2f} ms/call, {1000 / wall:7.1f} "
            f"frames/s, kernels {kernel:6.2f} ms ({kernel / wall:4.0%}), {launched:.0f} launched/call"
        )
        del captured


if __name__ == "__main__":
    main()
