"""KFP components: one per pipeline step, each a thin typed wrapper that runs a `v2i` verb in the project image.

Every component is a lightweight Python component: its body is shipped as source and runs in `IMAGE`, which
holds v2i_core, so the same components run on a cluster and locally under `kfp.local.SubprocessRunner`.
A body may only use what it imports itself (KFP ships the function alone), hence the repeated imports.
"""

import os

# The project image. `python -m pipelines.compile` sets V2I_IMAGE to the image of the commit it compiles (by tag or
# digest) before it imports the components; the local runner ignores the image and runs this Python.
LOCAL_IMAGE = "v2i:local-python"
IMAGE = os.environ.get("V2I_IMAGE", LOCAL_IMAGE)
