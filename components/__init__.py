"""KFP components: one per pipeline step, each a thin typed wrapper that runs a `v2i` verb in the project image.

Every component is a lightweight Python component: its body is shipped as source and runs in `IMAGE`, which
holds v2i_core, so the same components run on a cluster and locally under `kfp.local.SubprocessRunner`.
A body may only use what it imports itself (KFP ships the function alone), hence the repeated imports.
"""

import os

from v2i_core import __version__

# The project image (see Dockerfile); compile with V2I_IMAGE=<registry>/v2i:<tag> to point the pipeline at yours.
DEFAULT_IMAGE = f"ghcr.io/v2i-project/v2i:{__version__}"
IMAGE = os.environ.get("V2I_IMAGE", DEFAULT_IMAGE)
