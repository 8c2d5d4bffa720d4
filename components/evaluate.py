"""Step `evaluate`: compare baseline, teacher and student on the test split (`v2i evaluate`).

Outputs the whole report directory (for `register` and for downloads), its figures as KFP metrics, the
comparison table as Markdown and an HTML page with the table and the plots for the KFP UI.
"""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate_op(
    frames: Input[Dataset],
    baseline: Input[Model],
    teacher: Input[Model],
    student: Input[Model],
    overrides: list,
    report: Output[Artifact],
    metrics: Output[Metrics],
    table: Output[Markdown],
    summary: Output[HTML],
):
    """Run `v2i evaluate` on the three models; the models are named by role in the table and metrics."""
    import base64
    import html
    import json
    import os
    import subprocess
    import sys
    import tempfile

    sets = [arg for item in overrides for arg in ("--set", item)]
    params = os.environ.get("V2I_PARAMS", "params.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        # every model artifact is a folder named after its output ("model"): links give them their role's name
        models = []
        for name, artifact in (("baseline", baseline), ("teacher", teacher), ("student", student)):
            os.symlink(artifact.path, os.path.join(tmp, name))
            models += ["--model", os.path.join(tmp, name)]
        subprocess.run(
            [sys.executable, "-m", "v2i_core.cli", "evaluate", *models, "--data", frames.path, "--split", "test",
             "--out", report.path, "--params", params, *sets],
            check=True,
        )
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
