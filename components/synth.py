"""Step `synth`: synthetic lesion videos with annotations (`v2i synth`), for runs without a data source."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def synth_op(overrides: list, raw: Output[Dataset]):
    """Write `synth.videos` synthetic videos and their annotation files into `raw`."""
    import os
    import subprocess
    import sys

    sets = [arg for item in overrides for arg in ("--set", item)]
    params = os.environ.get("V2I_PARAMS", "params.yaml")
    subprocess.run(
        [sys.executable, "-m", "v2i_core.cli", "synth", "--out", raw.path, "--params", params, *sets], check=True
    )
    raw.metadata["videos"] = sum(1 for name in os.listdir(raw.path) if name.endswith(".mp4"))
