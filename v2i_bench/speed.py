"""`v2i bench speed`: the frames/s of the Table I models and the student ratios, at the bench's size or the paper's.

Speed does not depend on what a network learned, so the models are built with untrained weights from the same
specs the bench trains them with: no data, no training, a minute on a CPU and seconds on a GPU. That also makes the
paper's size measurable (ResNet-50, 6 + 6 layers, 100 queries: `--size paper`), which this project cannot train on
a CPU. A student is saved as the image detector of its architecture (distillation adds nothing to its network), so
its ratio to the baseline is that of one network timed twice: the spread of the measurement itself.

`v2i bench paper` times its trained models of the first seed with the same interleaved rounds (`time_models`).
Writes <out>/speed.json and <out>/speed.md, and prints the table.

`--peer hf` times instead the Deformable DETR student against the library a user would otherwise pick: Hugging Face
transformers' `DeformableDetrForObjectDetection` built at the same size (its own ResNet of the same depth, the same
d_model, heads, layers, queries, feature levels and frame; random weights), eager, beside ours eager and ours
exported to ONNX and run by ONNX Runtime (on the CPU), in the same interleaved rounds on the same frame; on a GPU
ONNX Runtime's row gives way to ours replayed from a CUDA graph (v2i_core.cuda_graph, as `v2i infer` runs a frame
there). transformers is an optional extra of the bench (`pip install 'v2i-core[peers]'`). Writes <out>/peer-hf.json
and <out>/peer-hf.md.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import statistics
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from v2i_bench.cli import command_line as rebuilt_command
from v2i_bench.config import BenchConfig, row_model, row_msi
from v2i_bench.paper_tables import (
    MAIN_ROWS,
    NOT_RUN,
    ROWS,
    markdown,
    median_interval,
    speed_ratio_ranges,
    speed_ratios,
    speed_table,
)
from v2i_bench.params import paper_config
from v2i_core.config import ModelConfig, MSIConfig, Params, SpeedConfig
from v2i_core.cuda_graph import capture, precision
from v2i_core.engine.model_dir import ModelSpec, build_network
from v2i_core.errors import V2IError
from v2i_core.eval.speed import count_parameters, device_name, measure_fps, others_cpu_load, speed_input
from v2i_core.storage import atomic_file

log = logging.getLogger(__name__)

BUSY_CORES = 0.5  # other processes' average CPU load (in cores) from which a speed measurement is flagged
CATEGORIES = [{"id": 1, "name": "lesion"}]
PAPER_INPUT_SIZE = (320, 400)  # [height, width] of the paper's GPU size (configs/gpu-paper.yaml)


def time_models(
    models: dict[str, tuple[nn.Module, ModelSpec]],
    cfg: SpeedConfig,
    device: torch.device,
    params_m: dict[str, float] | None = None,
) -> dict:
    """Frames/s of each model at batch 1, in `cfg.repeats` interleaved rounds so every model sees the same machine
    load; medians over rounds, parameter counts (`params_m`, else counted), and the student ratios (paired by round).
    Every other round runs the models in reverse (A, B, C, C, B, A, ...): a student timed just after its baseline in
    one round is timed just before it in the next, so a machine that slows down or speeds up within a round favours
    neither."""
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
            "params_m": params_m[name] if params_m else count_parameters(models[name][0]),
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
    if args.peer:
        words += ["--peer", args.peer]
    return rebuilt_command(args, *words)


def run(args, params: Params, cfg: BenchConfig) -> int:
    """`v2i bench speed [--size bench|paper] [--input-size H W] [--device D] [--out DIR]`."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise V2IError(f"--device {args.device}: torch sees no CUDA GPU here")
    if args.input_size and min(args.input_size) < 32:
        h, w = args.input_size
        raise V2IError(f"--input-size {h} {w}: height and width must be at least 32 pixels")
    if args.peer:
        return run_peer(args, params, cfg, device)
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


# --peer hf: our student eager and under ONNX Runtime (CPU) or from a CUDA graph (GPU) against HF transformers'
# Deformable DETR of the same size.
PEER_ROWS = {
    "ours_onnxruntime": "Ours, exported, ONNX Runtime",
    "ours_captured": "Ours, CUDA graph",
    "ours_torch": "Ours, eager PyTorch",
    "hf_torch": "HF transformers, eager PyTorch",
}
PEER_RATIOS = (
    ("ours_onnxruntime", "hf_torch"),
    ("ours_captured", "hf_torch"),
    ("ours_torch", "hf_torch"),
    ("ours_onnxruntime", "ours_torch"),
    ("ours_captured", "ours_torch"),
)
PEER_TARGET = {"ours_onnxruntime/hf_torch": 1.5}  # issue 45: the exported CPU path at least 1.5 times HF's eager model
_RESNETS = {  # torchvision name -> transformers ResNetConfig: blocks per stage, channels out of each, block type
    "resnet18": ([2, 2, 2, 2], [64, 128, 256, 512], "basic"),
    "resnet34": ([3, 4, 6, 3], [64, 128, 256, 512], "basic"),
    "resnet50": ([3, 4, 6, 3], [256, 512, 1024, 2048], "bottleneck"),
}


def hf_deformable_detr(model: ModelConfig) -> nn.Module:
    """transformers' DeformableDetrForObjectDetection at the size `model` describes, random weights: a transformers
    ResNet (not timm's) cut after the same stage, read at the same stages, then the same d_model, heads, layers,
    feed-forward width, sampling points, queries, feature levels and classes; single-stage, no box refinement, as
    ours."""
    try:
        from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection, ResNetConfig
    except ImportError:
        raise V2IError("--peer hf: needs transformers, an extra of the bench (pip install 'v2i-core[peers]')") from None
    from v2i_core.models.build import deformable_stages

    depths, widths, block = _RESNETS[model.backbone]
    backbone = ResNetConfig(
        depths=depths[: model.last_layer],
        hidden_sizes=widths[: model.last_layer],
        layer_type=block,
        out_features=[f"stage{stage}" for stage in deformable_stages(model)],
    )
    config = DeformableDetrConfig(
        backbone_config=backbone,
        d_model=model.d_model,
        encoder_attention_heads=model.nheads,
        decoder_attention_heads=model.nheads,
        encoder_layers=model.enc_layers,
        decoder_layers=model.dec_layers,
        encoder_ffn_dim=model.dim_feedforward,
        decoder_ffn_dim=model.dim_feedforward,
        encoder_n_points=model.enc_n_points,
        decoder_n_points=model.dec_n_points,
        num_queries=model.num_queries,
        num_feature_levels=model.num_feature_levels,
        num_labels=model.num_classes,
        dropout=model.dropout,
    )
    return DeformableDetrForObjectDetection(config)


def weights_m(network: nn.Module) -> float:
    """Weights in millions: parameters and the scales and shifts of frozen batch norm (which both libraries keep as
    buffers), so that a network counts the same whether its batch norm is frozen or not."""
    frozen = sum(t.numel() for name, t in network.named_buffers() if name.endswith((".weight", ".bias")))
    return (sum(p.numel() for p in network.parameters()) + frozen) / 1e6


class OnnxRuntimeCall:
    """A session called like the network on one batch: what measure_fps times."""

    def __init__(self, session):
        self.session = session

    def __call__(self, images: torch.Tensor):
        from v2i_core.export import INPUT

        return self.session.run(None, {INPUT: images.numpy()})


def peer_ratios(fps_rounds: dict[str, list[float]]) -> dict[str, list[float]]:
    """paper_tables.paired_ratios for PEER_RATIOS: each round's ratio, two consecutive rounds by their geometric
    mean (they run the models in opposite orders)."""
    paired = {}
    for a, b in PEER_RATIOS:
        if a in fps_rounds and b in fps_rounds:
            per_round = [x / y for x, y in zip(fps_rounds[a], fps_rounds[b], strict=True)]
            pairs = [per_round[i : i + 2] for i in range(0, len(per_round), 2)]
            paired[f"{a}/{b}"] = [math.prod(pair) ** (1 / len(pair)) for pair in pairs]
    return paired


def peer_table(speed: dict) -> str:
    rows = [
        [PEER_ROWS[name], f"{m['fps']:.1f}", f"{m['ms_median']:.2f}", f"{m['params_m']:.2f}"]
        for name, m in speed["models"].items()
    ]
    ratios = []
    for pair, value in speed["ratios"].items():
        a, b = pair.split("/")
        low, high = speed["ratio_ranges"][pair]
        target = PEER_TARGET.get(pair)
        cells = [f"{PEER_ROWS[a]} / {PEER_ROWS[b]}", f"{value:.2f}", f"{low:.2f}-{high:.2f}"]
        ratios.append([*cells, f">= {target:g}" if target else NOT_RUN])
    return "\n\n".join(
        [
            markdown(["Model", "Frames/s (median)", "ms/frame", "Weights (M)"], rows),
            markdown(["Frames/s ratio", "Measured", "95% interval", "Target"], ratios),
        ]
    )


def render_peer(doc: dict) -> str:
    speed = doc["speed"]
    weights = doc["weights_m"]
    same = "equal" if weights["ours"] == weights["hf"] else "**they differ**"
    return "\n".join(
        [
            f"# Our Deformable DETR student against HF transformers' at the {doc['size']} size, batch 1, untrained",
            "",
            f"- Command: `{doc['command']}`",
            f"- Date: {doc['date']}; device: {speed['device']}; torch {doc['torch']}, transformers "
            f"{doc['transformers']}, onnxruntime {doc['onnxruntime']} ({doc['onnx_threads']} intra-op threads)",
            f"- Models: {doc['models']}; HF's with a transformers ResNet of the same depth (use_timm_backbone off)"
            + (f"; ours from a {doc['captured']}" if doc.get("captured") else ""),
            f"- Weights (parameters and frozen batch norm's scales and shifts): ours {weights['ours']:,}, HF's "
            f"{weights['hf']:,}: {same}",
            f"- {rounds_line(speed)} {load_line(speed)}",
            "",
            peer_table(speed),
            "",
        ]
    )


def run_peer(args, params: Params, cfg: BenchConfig, device: torch.device) -> int:
    """`v2i bench speed --peer hf`: the student of the size asked for against HF's of the same size."""
    import tempfile

    spec = table_specs(params, cfg, args.size, args.input_size)["deformable_v2i"]  # Deformable DETR by its row
    graph = None  # what the CUDA graph row runs, when there is one
    torch.manual_seed(0)
    ours = build_network(spec).eval()
    peer = hf_deformable_detr(spec.model).eval()
    counts = {"ours": round(weights_m(ours) * 1e6), "hf": round(weights_m(peer) * 1e6)}
    models = {"ours_torch": (ours.to(device), spec), "hf_torch": (peer.to(device), spec)}
    params_m = {"ours_torch": weights_m(ours), "hf_torch": weights_m(peer)}
    threads = params.eval.onnx_threads or torch.get_num_threads()  # as many as torch's, unless set
    with tempfile.TemporaryDirectory(prefix="v2i-peer-") as tmp:
        if device.type == "cpu":
            from v2i_core.export import export_onnx
            from v2i_core.onnx_engine import open_session

            log.info("exporting the student to ONNX")
            export_onnx(ours, spec, Path(tmp) / "student.onnx", params.eval.score_threshold)
            session = open_session(Path(tmp) / "student.onnx", threads)
            models = {"ours_onnxruntime": (OnnxRuntimeCall(session), spec), **models}
            params_m["ours_onnxruntime"] = params_m["ours_torch"]  # the same network
        else:
            log.warning("--peer hf on %s: ONNX Runtime runs on the CPU here, so it is left out", device.type)
            captured = capture(ours, speed_input(spec).to(device))
            if captured is not None:
                models = {"ours_captured": (captured, spec), **models}
                params_m["ours_captured"] = params_m["ours_torch"]
                graph = precision(captured)
        speed = time_models(models, cfg.speed, device, params_m)
    fps_rounds = {name: m["fps_rounds"] for name, m in speed["models"].items()}
    paired = peer_ratios(fps_rounds)
    speed["ratios"] = {pair: statistics.median(values) for pair, values in paired.items()}
    speed["ratio_ranges"] = {pair: median_interval(values) for pair, values in paired.items()}
    import onnxruntime
    import transformers

    doc = {
        "command": command_line(args),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnx_threads": threads,
        "size": args.size,
        "models": describe(spec),
        "weights_m": counts,
        "captured": graph,
        "speed": speed,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "peer-hf.json") as handle:
        json.dump(doc, handle, indent=2)
    text = render_peer(doc)
    with atomic_file(out / "peer-hf.md") as handle:
        handle.write(text)
    print(text, end="")
    return 0
