"""The bench's commands: `v2i bench extract|filter|loader|params|paper|s3|speed`, and the same as `v2i-bench ...`.

`v2i` finds them through the entry point group `v2i.commands` (pyproject.toml): `add_parser` adds the `bench` verb
to its parser, so the library's command line never names this package. `v2i-bench` is the same commands on their
own (`main`), for an install whose entry points are not registered. Each command's work lives in its own module,
imported only when it runs, so `v2i --help` does not import torch through this one.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import shlex
import signal
import sys

from v2i_core.errors import V2IError

# command -> "module:function"; each function takes (args, params, bench): the parsed flags, the pipeline's
# params and the bench's own settings (v2i_bench.config.load_bench).
COMMANDS = {
    "extract": "v2i_bench.extract:run",
    "filter": "v2i_bench.filter_sweep:run",
    "loader": "v2i_bench.loader:run",
    "params": "v2i_bench.params:run",
    "paper": "v2i_bench.paper:run",
    "s3": "v2i_bench.s3:run",
    "speed": "v2i_bench.speed:run",
}
DATASETS = ("colonoscopy", "ultrasound")


class Terminated(BaseException):
    """SIGTERM, raised like Ctrl-C so that temporary outputs are removed on the way out (in `v2i-bench` and in the
    bench's worker processes; under `v2i` its own handler raises its own)."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated


def common_flags() -> argparse.ArgumentParser:
    """The flags every `v2i` verb takes, for `v2i-bench` (under `v2i` its own parent parser is used)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    parent.add_argument(
        "--set-file",
        dest="set_files",
        action="append",
        default=[],
        metavar="FILE",
        help="YAML params merged over --params key by key; its `bench` section over v2i_bench/bench.yaml "
        "(repeatable; --set applies after)",
    )
    parent.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a param, e.g. --set baseline.train.epochs=3 or --set bench.seeds=[0] (repeatable)",
    )
    return parent


def shared_flags(args: argparse.Namespace) -> list[str]:
    """The --set-file and --set words of a parsed command line, in their order, to rebuild the command with."""
    files = [word for path in args.set_files for word in ("--set-file", path)]
    return files + [word for override in args.overrides for word in ("--set", override)]


def add_parser(verbs, common: argparse.ArgumentParser) -> None:
    """The `v2i.commands` entry point: add `bench` and its commands to `v2i`'s verbs."""
    bench = verbs.add_parser(
        "bench", help="the research bench: the paper's tables on synthetic data, speed, parameter counts"
    )
    add_commands(bench.add_subparsers(dest="bench", required=True, metavar="BENCH"), common)


def add_commands(commands, common: argparse.ArgumentParser) -> None:
    """The bench's commands, each with `handler` set to run it (see v2i_core.cli.PLUGIN_GROUP)."""
    p = commands.add_parser("extract", parents=[common], help="extraction frames/s against decode-only frames/s")
    p.add_argument("--src", help="videos to extract (default: synthesise a small set)")
    p.add_argument("--format", default="synthetic", choices=["videos", "synthetic"], help="source layout")
    p.set_defaults(handler=Handler("extract"))
    p = commands.add_parser("filter", parents=[common], help="the temporal filter's settings swept on a split")
    p.add_argument("--model", action="append", required=True, help="image model directory (repeatable)")
    p.add_argument("--data", required=True, help="frames directory")
    p.add_argument("--split", default="val", help="split to sweep on (default: %(default)s; never test)")
    p.set_defaults(handler=Handler("filter"))
    p = commands.add_parser(
        "loader", parents=[common], help="training images/s with the frames read in process against loader processes"
    )
    p.add_argument("--role", default="baseline", choices=["baseline", "teacher"], help="what to train (%(default)s)")
    p.add_argument("--batches", type=int, default=12, help="training steps a round (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=6, help="timed rounds of each setting (default: %(default)s)")
    p.add_argument("--workers", type=int, help="loader processes to set against 0 (default: the default count)")
    p.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: the GPU when there is one)")
    p.set_defaults(handler=Handler("loader"))
    p = commands.add_parser("params", parents=[common], help="parameter counts at the paper's settings vs its Table I")
    p.set_defaults(handler=Handler("params"))
    p = commands.add_parser(
        "paper", parents=[common], help="the paper's Tables I-III and speed ratios (the stage sections + bench.yaml)"
    )
    p.add_argument("--out", default="reports/bench", help="output directory, resumable (default: %(default)s)")
    p.add_argument("--seeds", type=int, help="use only the first N of bench.seeds")
    p.add_argument("--only", choices=DATASETS, help="run one dataset only")
    p.set_defaults(handler=Handler("paper"))
    p = commands.add_parser(
        "s3", parents=[common], help="objects/s of extract's S3 download: one at a time against many at once"
    )
    p.add_argument("--src", help="an s3:// prefix to download (default: objects on a moto server started on loopback)")
    p.add_argument("--objects", type=int, default=500, help="objects to upload to moto (default: %(default)s)")
    p.add_argument("--size", type=int, default=40_000, help="bytes per object (default: %(default)s)")
    p.add_argument("--workers", type=int, help="objects in flight for the parallel run (default: extract's)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds (default: %(default)s)")
    p.set_defaults(handler=Handler("s3"))
    p = commands.add_parser(
        "speed", parents=[common], help="frames/s of the Table I models, untrained, and the student ratios"
    )
    p.add_argument("--size", default="bench", choices=["bench", "paper"], help="the bench's models or the paper's")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="frame size (default: the size's)")
    p.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: the GPU when there is one)")
    p.add_argument("--out", default="reports/speed", help="output directory (default: %(default)s)")
    p.add_argument(
        "--peer",
        choices=["hf"],
        help="instead, time the Deformable DETR student (eager, and exported under ONNX Runtime) against HF "
        "transformers' of the same size (needs the extra v2i-core[peers])",
    )
    p.set_defaults(handler=Handler("speed"))


class Handler:
    """Runs one bench command on parsed flags: reads the params and the bench's settings, then the command."""

    def __init__(self, command: str):
        self.command = command

    def __call__(self, args: argparse.Namespace) -> int:
        from v2i_bench.config import load_bench

        params, bench = load_bench(args.params, args.overrides, args.set_files)
        module_name, _, function = COMMANDS[self.command].partition(":")
        return getattr(importlib.import_module(module_name), function)(args, params, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="v2i-bench",
        description="The V2I research bench (also `v2i bench`): the paper's tables on synthetic data, speed against "
        "peers, parameter counts, extraction speed.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_commands(parser.add_subparsers(dest="bench", required=True, metavar="BENCH"), common_flags())
    return parser


def main(argv: list[str] | None = None) -> int:
    """`v2i-bench COMMAND ...`: errors as one line and exit 1, Ctrl-C and SIGTERM as one line too."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
        )
        return int(args.handler(args) or 0)
    except V2IError as exc:
        print(f"v2i-bench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("v2i-bench: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("v2i-bench: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)


def command_line(args: argparse.Namespace, *words: str) -> str:
    """`v2i bench <command> ...` rebuilt from the parsed flags: the command's own words, then the shared ones."""
    return shlex.join(["v2i", "bench", *words, *shared_flags(args)])


if __name__ == "__main__":
    sys.exit(main())
