"""`v2i bench speed`: the frames/s of the Table I models and the student ratios, at the bench's size or the paper's.

Speed does not depend on what a network learned, so the models are built with untrained weights from the same
specs the bench trains them with: no data, no training, a minute on a CPU and seconds on a GPU. That also makes the
paper's size measurable (ResNet-50, 6 + 6 layers, 100 queries: `--size paper`), which this project cannot train on
a CPU. A student is saved as the image detector of its architecture (distillation adds nothing to its network), so
its ratio to the baseline is that of one network timed twice: the spread of the measurement itself.

`v2i bench paper` times its trained models of the first seed with the same interleaved rounds (`time_models`).
Writes <out>/speed.json and <out>/speed.md, and prints the table.
"""

from __future__ import annotations

import datetime
import json
import logging
import statistics
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from v2i_bench.cli import command_line as rebuilt_command
from v2i_bench.config import BenchConfig, row_model, row_msi
from v2i_bench.paper_tables import MAIN_ROWS, ROWS, speed_ratio_ranges, speed_ratios, speed_table
from v2i_bench.params import paper_config
from v2i_core.config import MSIConfig, Params, SpeedConfig
from v2i_core.engine.model_dir import ModelSpec, build_network
from v2i_core.errors import V2IError
from v2i_core.eval.speed import count_parameters, device_name, measure_fps, others_cpu_load, speed_input
from v2i_core.storage import atomic_file

log = logging.getLogger(__name__)

BUSY_CORES = 0.5  # other processes' average CPU load (in cores) from which a speed measurement is flagged
CATEGORIES = [{"id": 1, "name": "lesion"}]
PAPER_INPUT_SIZE = (320, 400)  # [height, width] of the paper's GPU size (configs/gpu-paper.yaml)


def time_models(models: dict[str, tuple[nn.Module, ModelSpec]], cfg: SpeedConfig, device: torch.device) -> dict:
    """Frames/s of each model at batch 1, in `cfg.repeats` interleaved rounds so every model sees the same machine
    load; medians over rounds, parameter counts, and the student ratios (paired by round). Every other round runs
    the models in reverse (A, B, C, C, B, A, ...): a student timed just after its baseline in one round is timed
    just before it in the next, so a machine that slows down or speeds up within a round favours neither."""
    rounds: dict[str, list[dict]] = {name: [] for name in models}
    with others_cpu_load() as load:
        for index in tqdm(range(cfg.repeats), desc="speed", unit="round"):
            order = list(models) if index % 2 == 0 else list(reversed(models))
            for name in order:
                network, spec = models[name]
                rounds[name].append(measure_fps(network, speed_input(spec), cfg.warmup, cfg.iters, device))
    if load["others_cores"] >= BUSY_CORES:
        log.warning(
            "speed: other processes kept %.1f of %d cores busy while the models were timed: the frames/s are low "
            "and the ratios noisy; rerun on an idle machine",
            load["others_cores"],
            load["cores"],
        )
    measured = {
        name: {
            "fps": statistics.median(r["fps"] for r in timings),
            "ms_median": statistics.median(r["ms_median"] for r in timings),
            "fps_rounds": [r["fps"] for r in timings],
            "params_m": count_parameters(models[name][0]),
        }
        for name, timings in rounds.items()
    }
    fps_rounds = {name: m["fps_rounds"] for name, m in measured.items()}
    return {
        "device": device_name(device),
        "warmup": cfg.warmup,
        "iters": cfg.iters,
        "repeats": cfg.repeats,
        **load,
        "models": measured,
        "ratios": speed_ratios(fps_rounds),
        "ratio_ranges": speed_ratio_ranges(fps_rounds),
    }


def load_line(speed: dict) -> str:
    """How busy the machine was while the models were timed, flagged in bold when it makes the figures doubtful."""
    line = f"Other processes kept {speed['others_cores']:.1f} of {speed['cores']} cores busy meanwhile"
    if speed["others_cores"] >= BUSY_CORES:
        return f"**{line}: these frames/s are low and the ratios noisy; rerun on an idle machine.**"
    return line + "."


def rounds_line(speed: dict) -> str:
    """How the frames/s and the ratios were taken (time_models, paired_ratios, median_interval)."""
    return (
        f"Median over {speed['repeats']} interleaved rounds of {speed['iters']} timed frames each (after "
        f"{speed['warmup']} untimed ones), every other round in reverse order; ratios: the median over each two rounds "
        "of the two models' ratio within a round, with a 95% interval for that median that assumes no distribution."
    )


def table_specs(
    params: Params, cfg: BenchConfig, size: str, input_size: tuple[int, int] | None
) -> dict[str, ModelSpec]:
    """The spec of each Table I row at the bench's size (each row's model from its stage section, at
    bench.input_size: v2i_bench.config.row_model) or at the paper's (ResNet-50, d_model 256, 6 + 6 layers, 100
    queries, PAPER_INPUT_SIZE); `input_size` overrides."""
    specs = {}
    for name in MAIN_ROWS:
        row = ROWS[name]
        if size == "paper":
            model, msi = paper_config(row.arch, num_classes=1), MSIConfig() if row.role == "teacher" else None
            model = model.model_copy(update={"input_size": PAPER_INPUT_SIZE})
        else:
            model, msi = row_model(params, cfg, row), row_msi(params, row)
        update = {"pretrained": None} | ({"input_size": tuple(input_size)} if input_size else {})
        specs[name] = ModelSpec(role=row.role, model=model.model_copy(update=update), categories=CATEGORIES, msi=msi)
    return specs


def describe(spec: ModelSpec) -> str:
    m = spec.model
    h, w = m.input_size
    return (
        f"{m.backbone}, d_model {m.d_model}, {m.enc_layers} + {m.dec_layers} layers, {m.num_queries} queries, "
        f"{m.num_feature_levels} feature level(s), {h}x{w} input"
    )


def render(doc: dict) -> str:
    speed = doc["speed"]
    return "\n".join(
        [
            f"# Speed of the Table I models at the {doc['size']} size, batch 1, untrained weights",
            "",
            f"- Command: `{doc['command']}`",
            f"- Date: {doc['date']}; device: {speed['device']}; torch {doc['torch']}",
            f"- Models: {doc['models']}; the teacher takes clips of T={doc['frames']} frames",
            f"- {rounds_line(speed)} {load_line(speed)}",
            "",
            speed_table(speed),
            "",
        ]
    )


def command_line(args) -> str:
    """The invocation, rebuilt from the parsed flags."""
    words = ["speed", "--params", args.params, "--size", args.size, "--out", args.out]
    if args.input_size:
        words += ["--input-size", *map(str, args.input_size)]
    if args.device:
        words += ["--device", args.device]
    return rebuilt_command(args, *words)


def run(args, params: Params, cfg: BenchConfig) -> int:
    """`v2i bench speed [--size bench|paper] [--input-size H W] [--device D] [--out DIR]`."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise V2IError(f"--device {args.device}: torch sees no CUDA GPU here")
    if args.input_size and min(args.input_size) < 32:
        h, w = args.input_size
        raise V2IError(f"--input-size {h} {w}: height and width must be at least 32 pixels")
    specs = table_specs(params, cfg, args.size, args.input_size)
    torch.manual_seed(0)  # the same untrained weights on every run
    models = {name: (build_network(spec).to(device).eval(), spec) for name, spec in specs.items()}
    speed = time_models(models, cfg.speed, device)
    doc = {
        "command": command_line(args),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "size": args.size,
        "models": describe(specs["deformable"]),
        "frames": specs["teacher"].msi.frames,
        "speed": speed,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "speed.json") as handle:
        json.dump(doc, handle, indent=2)
    text = render(doc)
    with atomic_file(out / "speed.md") as handle:
        handle.write(text)
    print(text, end="")
    return 0
