"""Step `evaluate`: compare baseline, teacher and student on the test split (`v2i evaluate`).

Outputs the whole report directory (for `register` and for downloads), its figures as KFP metrics, the
comparison table as Markdown and an HTML page with the table and the plots for the KFP UI.
"""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Markdown, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate_op(
    frames_dir: str,
    data_version: str,
    baseline: Input[Model],
    teacher: Input[Model],
    student: Input[Model],
    overrides: list,
    params_file: str,
    report: Output[Artifact],
    metrics: Output[Metrics],
    table: Output[Markdown],
    summary: Output[HTML],
):
    """Run `v2i evaluate` on the three models (on a GPU when the step has one: the FPS column names the device);
    the models are named by role in the table and metrics."""
    import base64
    import html
    import json
    import os
    import tempfile

    from v2i_core.step import params_args, run_verb
    from v2i_core.tracking import require_tracking_uri

    require_tracking_uri()
    with tempfile.TemporaryDirectory() as tmp:
        # every model artifact is a folder named after its output ("model"): links give them their role's name
        models = []
        for name, artifact in (("baseline", baseline), ("teacher", teacher), ("student", student)):
            os.symlink(artifact.path, os.path.join(tmp, name))
            models += ["--model", os.path.join(tmp, name)]
        run_verb(["evaluate", *models, "--data", frames_dir, "--split", "test", "--out", report.path,
                  *params_args(overrides, params_file)])
    with open(os.path.join(report.path, "metrics.json")) as handle:
        results = json.load(handle)
    for name, entry in results["models"].items():
        for key, value in entry.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                metrics.log_metric(f"{name}_{key}", value)
    with open(os.path.join(report.path, "table.md")) as handle:
        markdown = handle.read()
    with open(table.path, "w") as handle:
        handle.write(markdown)
    images = []
    for plot in ("pr_curve.png", "f1_threshold.png", "disagreement.png"):
        with open(os.path.join(report.path, plot), "rb") as handle:
            data = base64.b64encode(handle.read()).decode()
        images.append(f'<h3>{plot}</h3><img alt="{plot}" src="data:image/png;base64,{data}">')
    with open(summary.path, "w") as handle:
        handle.write(f"<html><body><h2>V2I evaluation</h2><pre>{html.escape(markdown)}</pre>{''.join(images)}"
                     "</body></html>")
