"""Step `extract`: decode the raw dataset (s3:// or a path the pod sees; synthetic videos when none is given) into
frames + index on the run's data volume."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def extract_op(
    source_uri: str, source_format: str, overrides: list, params_file: str, data_root: str, index: Output[Dataset]
) -> NamedTuple("Frames", frames_dir=str, data_version=str):
    """Extract `source_uri` in layout `source_format` into `data_root`/frames; without a source, `v2i synth` writes
    synthetic videos first. Outputs where the frames are and their version (the md5 of the frame index), which the
    later steps take as an input so that KFP's cache reruns them when the data changes; `index` is a copy of the
    frame index and its COCO files, for the run's lineage (the frames themselves stay on the volume).
    """
    import os
    import shutil
    import tempfile
    from collections import namedtuple

    import pandas as pd

    from v2i_core.step import frames_dir, params_args, run_verb
    from v2i_core.tracking import data_version

    params = params_args(overrides, params_file)
    out = frames_dir(data_root)
    with tempfile.TemporaryDirectory() as tmp:
        src, fmt = source_uri, source_format
        if not src:
            src, fmt = os.path.join(tmp, "raw"), "synthetic"
            run_verb(["synth", "--out", src, *params])
        run_verb(["extract", "--src", src, "--out", out, "--format", fmt, *params])
    os.makedirs(index.path, exist_ok=True)
    for name in os.listdir(out):
        if name.endswith((".parquet", ".json")):
            shutil.copy(os.path.join(out, name), index.path)
    table = pd.read_parquet(os.path.join(out, "index.parquet"), columns=["video_id", "split"])
    index.metadata.update(source=source_uri or "synthetic", videos=int(table["video_id"].nunique()))
    index.metadata.update({f"frames_{split}": int(n) for split, n in table["split"].value_counts().items()})
    Frames = namedtuple("Frames", ["frames_dir", "data_version"])
    return Frames(out, data_version(out))
