"""`v2i bench loader`: training images/s with the frames read in the training process (num_workers 0) and by the
default number of loader processes (train.num_workers: null; --workers N: by N), at the bench's size.

Both settings train the same model with the engine's own pieces: its DataLoader (one per setting, its worker
processes kept between epochs, as in a run: `training_loader`) and its `train_one_epoch`. A round trains one short
epoch (`--batches` steps) with each, every other round in reverse order (A, B, B, A, ...), so that both see the same
machine load; an untimed round first starts the workers and warms the caches. The table gives each setting's median
images/s over the rounds and the median of the per-round ratios. Scratch data (the bench's colonoscopy set,
synthesised and extracted) goes to a temporary folder under ./build, removed afterwards.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from v2i_bench.config import BenchConfig, row_model, row_msi
from v2i_bench.paper_tables import ROWS
from v2i_core.config import Params, TrainConfig
from v2i_core.data.datasets import ClipDataset, FrameDataset, load_categories
from v2i_core.data.extract import extract
from v2i_core.data.synth import synthesize
from v2i_core.engine.distributed import DistContext
from v2i_core.engine.model_dir import ModelSpec, build_network
from v2i_core.engine.predict import worker_count
from v2i_core.engine.train import DetectionTask, train_one_epoch, training_loader
from v2i_core.errors import V2IError
from v2i_core.eval.speed import device_name, others_cpu_load
from v2i_core.models.criterion import build_criterion

log = logging.getLogger(__name__)

SCRATCH = Path("build")  # beside the project's other build outputs, as `v2i bench extract`
BUSY_CORES = 0.5  # other processes' average load (in cores) from which the figures are flagged
ROLE_ROWS = {"baseline": "deformable", "teacher": "teacher"}  # what each --role trains: its Table I row


def bench_frames(params: Params, cfg: BenchConfig, work: Path) -> Path:
    """The bench's colonoscopy training videos, synthesised and extracted into `work`."""
    synthesize(cfg.datasets.colonoscopy, work / "raw")
    extract(work / "raw", work / "frames", cfg.extract, progress=False)
    return work / "frames"


def build(params: Params, cfg: BenchConfig, role: str, frames: Path, device: torch.device):
    """(training task, its spec, training dataset, train config) of `role` at the bench's size."""
    row = ROWS[ROLE_ROWS[role]]
    section = params.baseline if role == "baseline" else params.teacher
    categories = load_categories(frames)
    model = row_model(params, cfg, row).model_copy(update={"num_classes": len(categories), "pretrained": None})
    spec = ModelSpec(role, model, categories, row_msi(params, row))
    size, train = tuple(spec.model.input_size), section.train
    if spec.msi is not None:
        dataset = ClipDataset(frames, "train", size, spec.msi.frames, spec.msi.ref_stride, train.augment)
    else:
        dataset = FrameDataset(frames, "train", size, train.augment)
    torch.manual_seed(0)
    task = DetectionTask(build_network(spec), build_criterion(spec.model.num_classes, train.loss)).to(device)
    return task, spec, dataset, train


def measure(
    task, dataset, train: TrainConfig, device: torch.device, batches: int, rounds: int, workers: int | None = None
) -> dict:
    """Samples/s (images, or clips) of each setting per round, interleaved: in process, and `workers` loader
    processes (None: the default, worker_count()); medians and the median per-round ratio."""
    steps = min(batches, len(dataset) // train.batch_size)
    if steps < 1:
        raise V2IError(f"bench loader: {len(dataset)} training frames make no batch of {train.batch_size}")
    # rank 1 of 1: train_one_epoch draws no progress bar of its own (the rounds have theirs)
    ctx = DistContext(rank=1, world_size=1, local_rank=0, device=device)
    other = f"{worker_count()} (default)" if workers is None else str(workers)
    settings = {"0 (in process)": 0, other: workers}
    loaders = {}
    for name, workers in settings.items():
        cfg = train.model_copy(update={"num_workers": workers, "max_train_frames": steps * train.batch_size})
        loaders[name] = training_loader(dataset, cfg, train.batch_size, ctx)
    optimizer = torch.optim.AdamW(task.parameters(), lr=train.lr)
    samples = steps * train.batch_size
    runs: dict[str, list[float]] = {name: [] for name in loaders}
    with others_cpu_load() as load:
        for index in tqdm(range(rounds + 1), desc="loader", unit="round"):
            order = list(loaders) if index % 2 == 0 else list(reversed(loaders))
            for name in order:
                loaders[name].sampler.set_epoch(index)
                started = time.perf_counter()
                train_one_epoch(task, loaders[name], optimizer, device, index, ctx=ctx)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if index > 0:  # round 0 starts the workers and warms up: untimed
                    runs[name].append(samples / (time.perf_counter() - started))
    names = list(loaders)
    return {
        "steps": steps,
        "batch_size": train.batch_size,
        "rounds": rounds,
        "runs": runs,
        "median": {name: statistics.median(values) for name, values in runs.items()},
        "ratio": statistics.median(b / a for a, b in zip(runs[names[0]], runs[names[1]], strict=True)),
        **load,
    }


def report(result: dict, spec: ModelSpec, device: torch.device) -> str:
    m = spec.model
    h, w = m.input_size
    clip = f", clips of {spec.msi.frames} frames" if spec.msi else ""
    unit = "clips/s" if spec.msi else "images/s"
    lines = [
        f"loader benchmark: {spec.role} ({m.arch}, {m.backbone}, d_model {m.d_model}), {h}x{w} input{clip}, "
        f"batch {result['batch_size']}, {result['steps']} steps a round, median of {result['rounds']} interleaved "
        f"rounds; {device_name(device)}, {result['cores']} cores, {torch.get_num_threads()} torch threads",
        f"  {'num_workers':<16} {unit:>9}  rounds",
    ]
    for name, values in result["runs"].items():
        runs = ", ".join(f"{v:.1f}" for v in values)
        lines.append(f"  {name:<16} {result['median'][name]:9.1f}  ({runs})")
    lines.append(f"  {list(result['runs'])[1].split()[0]} / 0: {result['ratio']:.2f} (median of the per-round ratios)")
    lines.append(f"  other processes kept {result['others_cores']:.1f} of {result['cores']} cores busy meanwhile")
    return "\n".join(lines)


def run(args, params: Params, cfg: BenchConfig) -> int:
    """`v2i bench loader [--role baseline|teacher] [--batches N] [--rounds N] [--workers N] [--device D]`."""
    if args.batches < 1 or args.rounds < 1:
        raise V2IError(f"--batches {args.batches} --rounds {args.rounds}: both must be at least 1")
    if args.workers is not None and args.workers < 1:
        raise V2IError(f"--workers {args.workers}: must be at least 1 (0 is always measured)")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise V2IError(f"--device {args.device}: torch sees no CUDA GPU here")
    SCRATCH.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-loader-", dir=SCRATCH) as tmp:
        frames = bench_frames(params, cfg, Path(tmp))
        task, spec, dataset, train = build(params, cfg, args.role, frames, device)
        result = measure(task, dataset, train, device, args.batches, args.rounds, args.workers)
    print(report(result, spec, device))
    if result["others_cores"] >= BUSY_CORES:
        log.warning(
            "loader: other processes kept %.1f of %d cores busy while it ran: the images/s are low and the ratio "
            "noisy; rerun on an idle machine",
            result["others_cores"],
            result["cores"],
        )
    return 0
