"""Step `register`: register the student in the MLflow registry as `challenger`, optionally promote it.

Calls v2i_core.registry directly (as `v2i register` does) to hand the version and the gate's verdict on as
outputs: a promotion refused by the gate is a result, not a failure of the step.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Input, Model

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register_op(
    model: Input[Model], report: Input[Artifact], registry_name: str, promote: bool, overrides: list
) -> NamedTuple("Registration", version=str, champion=bool, gate=str):
    """Register the student `model` with its evaluate entry; with `promote`, move `champion` if it passes the gate.

    Outputs: the version, whether it is the champion after this step, and the gate's message.
    """
    import json
    import os
    from collections import namedtuple

    from v2i_core.config import load_params
    from v2i_core.registry import promote as promote_version
    from v2i_core.registry import register

    params = load_params(os.environ.get("V2I_PARAMS", "params.yaml"), overrides)
    name = registry_name or params.register.name
    with open(os.path.join(report.path, "metrics.json")) as handle:
        entry = json.load(handle)["models"]["student"]  # evaluate_op names the models by role
    version, created = register(model.path, entry, name, params.eval.score_threshold, params.register.primary_metric)
    print(f"{name} version {version} ({'new' if created else 'already registered'}); alias challenger")
    gate, champion = "promotion not asked", False
    if promote:
        verdict = promote_version(name, version, params.register.primary_metric, params.register.min_delta)
        gate, champion = verdict.message, verdict.passed
        print(gate)
    Registration = namedtuple("Registration", ["version", "champion", "gate"])
    return Registration(version, champion, gate)
