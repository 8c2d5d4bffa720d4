"""Step `extract`: decode a raw dataset (local, s3:// or the `synth` step's output) into frames + index."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def extract_op(
    source_uri: str, source_format: str, overrides: list, frames: Output[Dataset], raw: Input[Dataset] = None
):
    """Extract `raw` when given, else `source_uri` (s3://bucket/prefix or a path the pod sees) into `frames`.

    `source_format` is a layout name (videos, sun-seg, buv, synthetic), or "" for params' extract.format.
    """
    import os
    import subprocess
    import sys

    import pandas as pd

    src = raw.path if raw is not None else source_uri
    if not src:
        raise ValueError("extract_op: give a raw dataset or a source_uri")
    sets = [arg for item in overrides for arg in ("--set", item)]
    fmt = ["--format", source_format] if source_format else []
    params = os.environ.get("V2I_PARAMS", "params.yaml")
    subprocess.run(
        [sys.executable, "-m", "v2i_core.cli", "extract", "--src", src, "--out", frames.path, *fmt, "--params", params,
         *sets],
        check=True,
    )
    index = pd.read_parquet(os.path.join(frames.path, "index.parquet"), columns=["video_id", "split"])
    frames.metadata["source"] = src if raw is None else "synth"
    frames.metadata["videos"] = int(index["video_id"].nunique())
    frames.metadata.update({f"frames_{split}": int(n) for split, n in index["split"].value_counts().items()})
