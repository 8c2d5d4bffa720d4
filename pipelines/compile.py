"""Compile the pipeline to the committed YAML: `python -m pipelines.compile [--out PATH]`.

The image named in the YAML is components.IMAGE (env V2I_IMAGE); the committed file uses the default.
"""

import argparse
from pathlib import Path

from kfp import compiler

from pipelines.pipeline import v2i_pipeline

COMPILED = Path(__file__).with_name("v2i_pipeline.yaml")


def compile_pipeline(out: str | Path = COMPILED) -> Path:
    compiler.Compiler().compile(v2i_pipeline, package_path=str(out))
    return Path(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(COMPILED), help="YAML to write (default: %(default)s)")
    print(compile_pipeline(parser.parse_args(argv).out))


if __name__ == "__main__":
    main()
