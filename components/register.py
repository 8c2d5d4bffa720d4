"""Step `register`: register the student in the MLflow registry as `challenger`, optionally promote it.

Calls v2i_core.registry directly (as `v2i register` does) to hand the version, the student's gain over its
baseline and the gate's verdict on as outputs: a promotion refused by the gate is a result, not a failure of
the step.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Input, Model

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register_op(
    model: Input[Model], report: Input[Artifact], registry_name: str, promote: bool, overrides: list, params_file: str
) -> NamedTuple("Registration", version=str, champion=bool, gain=float, gate=str):
    """Register the student `model` with its and its baseline's evaluate entries; with `promote`, move `champion`
    if it passes the gate.

    Outputs: the version, whether it is the champion after this step, the student's gain over its baseline in
    register.primary_metric, and the gate's verdict (one line).
    """
    import json
    import os
    from collections import namedtuple

    from v2i_core.config import load_params
    from v2i_core.registry import baseline_figures, gain_line, register
    from v2i_core.registry import promote as promote_version
    from v2i_core.step import base_params, set_file_args
    from v2i_core.tracking import require_tracking_uri

    require_tracking_uri()
    params = load_params(base_params(), overrides, set_file_args(params_file)[1:])
    cfg = params.register
    name = registry_name or cfg.name
    with open(os.path.join(report.path, "metrics.json")) as handle:
        models = json.load(handle)["models"]  # evaluate_op names the models by role
    entry, baseline = models["student"], models["baseline"]
    version, created = register(
        model.path, entry, name, params.eval.score_threshold, cfg.primary_metric, baseline, params.filter
    )
    print(f"{name} version {version} ({'new' if created else 'already registered'}); alias challenger")
    print(gain_line(entry, baseline))
    gain = baseline_figures(entry, baseline, cfg.primary_metric)[f"gain.{cfg.primary_metric}"]
    gate, champion = "promotion not asked", False
    if promote:
        verdict = promote_version(name, version, cfg.primary_metric, cfg.min_delta, cfg.min_gain)
        gate, champion = verdict.message, verdict.passed
        print(gate)
    Registration = namedtuple("Registration", ["version", "champion", "gain", "gate"])
    return Registration(version, champion, gain, gate)
