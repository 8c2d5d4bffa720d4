"""MLflow model registry: `v2i register` registers a model directory's serving pyfunc model as the `challenger`;
`v2i promote` moves alias `champion` to a version only if it passes the gate (DESIGN.md).

A finished training logs its pyfunc model in its own run (`log_to_training_run`), so a registered version's run
is the run that trained it; register logs a copy in its own run only when there is no such model (a model trained
before, or outside this tracking server) or it was logged with another score threshold or temporal filter settings
(params `filter`) than the ones registered: the threshold is the served default and the filter settings what param
`filter` applies, both inside the model, so a version's model always carries its own. Register adds
the model's ONNX graph (`v2i export`) to that model's directory, so a version serves with torch or ONNX Runtime.

Aliases and tags only (stages are deprecated). A version carries its evaluation metrics as `metric.<name>`
tags, its baseline's from the same evaluation as `baseline.<name>` and the student's lead over it as `gain.<name>`
(the method exists to beat that baseline), plus `git_commit`, `data_version`, `score_threshold`, `training_run_id`
and `model_md5`; the last two identify it, so registering the same model twice returns the existing version. Every
promotion leaves tags on the promoted version and a `promotion.<n>` record on the registered model. Nothing from
the environment is ever logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from v2i_core.config import FilterConfig
from v2i_core.engine.model_dir import MODEL_FILES, ModelSpec, read_spec
from v2i_core.errors import V2IError
from v2i_core.storage import read_json
from v2i_core.tracking import display_uri, log_frames_input, mlflow_run, tracking_uri, use_experiment

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
METRIC_TAG = "metric."
BASELINE_TAG = "baseline."
GAIN_TAG = "gain."
# the figures a version records of its baseline: the SUN F1 and COCO AP50 the demo's table leads with
GAIN_METRICS = ("f1", "AP50")


def _client():
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri())
    return MlflowClient()


def model_md5(model_dir: str | Path) -> str:
    """md5 of model.pt: with the training run id, the identity of a registered model."""
    weights = Path(model_dir) / "model.pt"
    if not weights.exists():
        raise V2IError(f"{model_dir}: no model.pt (training did not finish?)")
    digest = hashlib.md5()
    with weights.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pick_metrics(metrics_path: str | Path, model_dir: str | Path) -> dict:
    """The entry of an evaluate metrics.json for `model_dir`: the one whose model_dir matches, or the only one."""
    path = Path(metrics_path)
    data = read_json(path)
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict) or not models or not all(isinstance(m, dict) for m in models.values()):
        raise V2IError(f"{path}: expected {{'models': {{name: metrics}}}} as written by `v2i evaluate`")
    wanted = Path(model_dir).resolve()
    matching = [m for m in models.values() if m.get("model_dir") and Path(m["model_dir"]).resolve() == wanted]
    if matching:
        return matching[0]
    if len(models) == 1:
        return next(iter(models.values()))
    raise V2IError(f"{path}: no entry for model directory {model_dir} (entries: {', '.join(sorted(models))})")


def pick_baseline(metrics_path: str | Path, student: dict) -> dict | None:
    """The baseline entry of the same evaluate metrics.json as `student`: the only `role: baseline` entry, or the
    one of the student's architecture; None when the evaluation had no baseline."""
    models = read_json(Path(metrics_path))["models"]
    baselines = [m for m in models.values() if m.get("role") == "baseline"]
    if len(baselines) > 1:
        baselines = [m for m in baselines if m.get("arch") and m.get("arch") == student.get("arch")]
    if len(baselines) > 1:
        raise V2IError(f"{metrics_path}: {len(baselines)} baselines of the student's architecture; evaluate one")
    return baselines[0] if baselines else None


def baseline_figures(student: dict, baseline: dict | None, primary_metric: str) -> dict[str, float]:
    """{baseline.<m>: value, gain.<m>: student - baseline} for F1, AP50 and the primary metric; {} without one."""
    if baseline is None:
        return {}
    own, base = numeric_metrics(student), numeric_metrics(baseline)
    figures = {}
    for metric in dict.fromkeys((*GAIN_METRICS, primary_metric)):
        if metric in own and metric in base:
            figures[f"{BASELINE_TAG}{metric}"] = base[metric]
            figures[f"{GAIN_TAG}{metric}"] = own[metric] - base[metric]
    return figures


def numeric_metrics(entry: dict) -> dict[str, float]:
    """The numeric metrics of an evaluate entry (booleans and strings such as role and manner left out)."""
    return {
        k: float(v)
        for k, v in entry.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


def find_version(client, name: str, training_run_id: str, md5: str):
    """The version of `name` already holding this model (same training run and weights), or None."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    for version in versions:
        if version.tags.get("model_md5") == md5 and version.tags.get("training_run_id") == training_run_id:
            return version
    return None


def version_tags(
    spec: ModelSpec,
    metrics: dict[str, float],
    md5: str,
    threshold: float,
    primary_metric: str,
    baseline: dict[str, float] | None = None,
) -> dict[str, str]:
    """Tags of a new version: provenance from config.yaml, the served score threshold, metrics as metric.<name>,
    the baseline's figures and the gain over it (`baseline_figures`); no environment values."""
    provenance = spec.provenance
    tags = {
        "role": spec.role,
        "git_commit": str(provenance.get("git_commit", "unknown")),
        "data_version": str(provenance.get("data_version", "unknown")),
        "training_run_id": str(provenance.get("mlflow_run_id") or "unknown"),
        "model_md5": md5,
        "score_threshold": repr(float(threshold)),
        "primary_metric": primary_metric,
    }
    tags.update({f"{METRIC_TAG}{k}": repr(v) for k, v in sorted(metrics.items())})
    tags.update({k: repr(v) for k, v in sorted((baseline or {}).items())})
    return tags


@contextlib.contextmanager
def _model_artifacts(model_dir: Path):
    """A temporary copy of the files a served model needs (the training checkpoint stays behind)."""
    import shutil

    with tempfile.TemporaryDirectory(prefix="v2i-register-") as tmp:
        target = Path(tmp) / "model_dir"
        target.mkdir()
        for name in MODEL_FILES:
            if (model_dir / name).exists():
                shutil.copy2(model_dir / name, target / name)
        yield target


def model_tags(md5: str, threshold: float, filter_settings: FilterConfig) -> dict[str, str]:
    """Tags of a logged pyfunc model: which weights it holds, the score threshold it serves with and the settings of
    the temporal filter its param `filter` applies."""
    settings = json.dumps(filter_settings.model_dump(), sort_keys=True)
    return {"model_md5": md5, "score_threshold": repr(float(threshold)), "temporal_filter": settings}


def log_to_training_run(
    model_dir: str | Path, frames_dir: str | Path, threshold: float, filter_settings: FilterConfig | None = None
) -> str | None:
    """At the end of a finished training, add to its MLflow run (the one config.yaml records) the frames it trained
    on and, for an image model, its pyfunc model for `register` (serving with `threshold` and the temporal filter
    `filter_settings`, FilterConfig's defaults if not given); returns that model's URI, or None (the video teacher
    is not served; a model directory that records no run logs nothing)."""
    import mlflow

    from v2i_core.serving import log_pyfunc

    model_dir = Path(model_dir)
    filter_settings = filter_settings or FilterConfig()
    spec = read_spec(model_dir)
    run_id = spec.provenance.get("mlflow_run_id")
    if not run_id:
        return None
    use_experiment()
    with mlflow.start_run(run_id=run_id):
        log_frames_input(frames_dir, "training")
        if spec.is_video:
            return None
        with _model_artifacts(model_dir) as artifacts:
            tags = model_tags(model_md5(model_dir), threshold, filter_settings)
            info = log_pyfunc(artifacts, threshold, filter_settings, tags)
    log.info("logged the pyfunc model %s in training run %s", info.model_uri, run_id)
    return info.model_uri


def training_model(client, run_id: str, md5: str, threshold: float, filter_settings: FilterConfig) -> str | None:
    """The URI of the pyfunc model that training run `run_id` logged of these weights (md5) with this threshold and
    these filter settings; None when this tracking server has no such run or the run no such model (one logged
    before models recorded their filter settings is not such a model)."""
    from mlflow.entities import LoggedModelStatus
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
        models = client.search_logged_models([run.info.experiment_id], f"source_run_id = '{run_id}'")
    except MlflowException:
        return None
    wanted = model_tags(md5, threshold, filter_settings)
    for model in models:
        if model.status == LoggedModelStatus.READY and all(model.tags.get(k) == v for k, v in wanted.items()):
            return model.model_uri
    return None


def add_onnx(client, model_uri: str, onnx_dir: Path) -> None:
    """Put the ONNX graph in `onnx_dir` (model.onnx and its sidecar) into the model directory of the logged pyfunc
    model `model_uri`, beside model.pt: the version registered from it carries both, and serves with either."""
    from mlflow.models import get_model_info

    info = get_model_info(model_uri)
    model_dir = info.flavors["python_function"]["artifacts"]["model_dir"]["path"]  # within the model's artifacts
    client.log_model_artifacts(info.model_id, str(onnx_dir), model_dir)


def register(
    model_dir: str | Path,
    metrics: dict,
    name: str,
    threshold: float,
    primary_metric: str,
    baseline: dict | None = None,
    filter_settings: FilterConfig | None = None,
) -> tuple[str, bool]:
    """Register the pyfunc model of `model_dir` under `name` with alias challenger: the one its training run
    logged, or else a copy logged in the register run, with the model's ONNX graph added to it (add_onnx);
    `baseline` is its baseline's entry of the same evaluation, recorded beside its own figures with the gain;
    `filter_settings` (params `filter`; FilterConfig's defaults if not given) are what the served model's param
    `filter` applies.

    Returns (version, created); created is False when this model (training run + weights) is already
    registered, in which case nothing is changed.
    """
    import mlflow

    from v2i_core.export import ONNX_FILE, export_model_dir
    from v2i_core.serving import log_pyfunc

    model_dir = Path(model_dir)
    filter_settings = filter_settings or FilterConfig()
    spec = read_spec(model_dir)
    md5 = model_md5(model_dir)
    values = numeric_metrics(metrics)
    if primary_metric not in values:
        raise V2IError(f"metrics for {model_dir}: no numeric '{primary_metric}' (register.primary_metric)")
    client = _client()
    training_run = str(spec.provenance.get("mlflow_run_id") or "unknown")
    existing = find_version(client, name, training_run, md5)
    if existing is not None:
        return str(existing.version), False
    figures = baseline_figures(metrics, baseline, primary_metric)
    tags = version_tags(spec, values, md5, threshold, primary_metric, figures)
    run_params = {"registered_model": name, "model_dir": str(model_dir), "score_threshold": threshold}
    run_tags = {"step": "register", "training_run_id": tags["training_run_id"], "data_version": tags["data_version"]}
    source = training_model(client, training_run, md5, threshold, filter_settings)
    with tempfile.TemporaryDirectory(prefix="v2i-onnx-") as onnx_dir:
        # exported before anything is logged: a model that does not export registers nothing
        export_model_dir(model_dir, Path(onnx_dir) / ONNX_FILE, threshold)
        with mlflow_run(f"register:{name}", run_params, run_tags):
            mlflow.log_metrics({**values, **figures})
            if source is None:
                logged_tags = model_tags(md5, threshold, filter_settings)  # `tags` are the version's
                what = f"threshold {threshold:g} and filter {logged_tags['temporal_filter']}"
                log.info("%s: no model of its training run with %s; logging a copy", model_dir, what)
                with _model_artifacts(model_dir) as artifacts:
                    source = log_pyfunc(artifacts, threshold, filter_settings, logged_tags).model_uri
            add_onnx(client, source, Path(onnx_dir))
            version = mlflow.register_model(source, name, tags=tags)
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    return str(version.version), True


@dataclass(frozen=True)
class Gate:
    """The outcome of the promotion gate for one version, with the figures it was decided on."""

    passed: bool
    metric: str
    version: str
    value: float
    champion_version: str | None
    champion_value: float | None
    min_delta: float
    baseline_value: float | None = None  # None: the version is not a student (no baseline to beat)
    min_gain: float = 0.0
    beats_baseline: bool = True

    @property
    def unchanged(self) -> bool:
        """The version is already the champion: nothing to move."""
        return self.champion_version == self.version

    @property
    def message(self) -> str:
        figure = f"{self.metric} {self.value:.3f} (version {self.version})"
        if self.unchanged:
            return f"version {self.version} is already the champion ({figure}); nothing changed"
        if not self.beats_baseline:
            if self.baseline_value is None:
                return (
                    f"gate failed: version {self.version} records no baseline {self.metric} to beat (register it "
                    "with the metrics.json of an evaluation that included its baseline); nothing changed"
                )
            return (
                f"gate failed: student {figure} does not beat its baseline's {self.metric} "
                f"{self.baseline_value:.3f} by min_gain {self.min_gain:g}; nothing changed"
            )
        if self.champion_version is None:
            return f"gate passed: no champion yet, so the first version passes; {figure}"
        champion = f"champion version {self.champion_version} {self.metric} {self.champion_value:.3f}"
        if self.passed:
            return f"gate passed: {figure} beats {champion} by at least min_delta {self.min_delta:g}"
        return f"gate failed: {figure} does not beat {champion} by min_delta {self.min_delta:g}; nothing changed"


def improvement(value: float, other: float, metric: str) -> float:
    """How much `value` betters `other` in `metric`: the difference, turned round for a lesion-level figure where
    less is better (false alarms per minute, delay, flicker, missed lesions, each also `filtered_`)."""
    from v2i_core.eval.lesion import LOWER_IS_BETTER

    return other - value if metric.removeprefix("filtered_") in LOWER_IS_BETTER else value - other


def passes_gate(value: float, champion_value: float | None, min_delta: float, metric: str = "f1") -> bool:
    """Beat the champion in `metric`, by at least min_delta (a tie never passes); no champion: pass."""
    if champion_value is None:
        return True
    gain = improvement(value, champion_value, metric)
    return gain > 0 and gain >= min_delta - 1e-12


def _metric_of(version, metric: str, name: str) -> float:
    raw = version.tags.get(f"{METRIC_TAG}{metric}")
    if raw is None:
        raise V2IError(f"model {name} version {version.version}: no '{METRIC_TAG}{metric}' tag to gate on")
    return float(raw)


def _baseline_of(version, metric: str) -> float | None:
    raw = version.tags.get(f"{BASELINE_TAG}{metric}")
    return None if raw is None else float(raw)


def _get_version(client, name: str, version: str | None):
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        raise V2IError(f"model registry {display_uri()}: no registered model '{name}'") from None
    try:
        if version is None:
            return client.get_model_version_by_alias(name, CHALLENGER)
        return client.get_model_version(name, str(version))
    except MlflowException:
        wanted = f"version {version}" if version else f"alias {CHALLENGER} (pass --version)"
        raise V2IError(f"model registry {display_uri()}: model '{name}' has no {wanted}") from None


def _champion(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def promote(name: str, version: str | None, metric: str, min_delta: float, min_gain: float = 0.0) -> Gate:
    """Move alias champion to `version` (default: the challenger) if it passes the gate; else change nothing.

    The gate: a student must beat its own baseline (recorded at registration) by `min_gain`, and every version
    the current champion by `min_delta`; each a strict gain."""
    client = _client()
    candidate = _get_version(client, name, version)
    value = _metric_of(candidate, metric, name)
    champion = _champion(client, name)
    champion_value = _metric_of(champion, metric, name) if champion is not None else None
    already = champion is not None and str(champion.version) == str(candidate.version)
    baseline_value = _baseline_of(candidate, metric)
    is_student = candidate.tags.get("role", "student") == "student"
    beats_baseline = not is_student or (
        baseline_value is not None and passes_gate(value, baseline_value, min_gain, metric)
    )
    gate = Gate(
        passed=already or (beats_baseline and passes_gate(value, champion_value, min_delta, metric)),
        metric=metric,
        version=str(candidate.version),
        value=value,
        champion_version=str(champion.version) if champion is not None else None,
        champion_value=champion_value,
        min_delta=min_delta,
        baseline_value=baseline_value,
        min_gain=min_gain,
        beats_baseline=beats_baseline,
    )
    if gate.passed and not gate.unchanged:
        _record_promotion(client, name, gate)
        client.set_registered_model_alias(name, CHAMPION, gate.version)
    return gate


def _record_promotion(client, name: str, gate: Gate) -> None:
    """The tag trail: when, from which version, on which figures (on the version and the registered model)."""
    when = datetime.now(UTC).isoformat(timespec="seconds")
    record = {
        "at": when,
        "version": gate.version,
        "from_version": gate.champion_version,
        "metric": gate.metric,
        "value": gate.value,
        "champion_value": gate.champion_value,
        "min_delta": gate.min_delta,
        "baseline_value": gate.baseline_value,
        "min_gain": gate.min_gain,
    }
    client.set_model_version_tag(name, gate.version, "promoted_at", when)
    client.set_model_version_tag(name, gate.version, "promoted_from", gate.champion_version or "none")
    client.set_model_version_tag(name, gate.version, "promotion_figures", json.dumps(record, sort_keys=True))
    existing = client.get_registered_model(name).tags
    number = 1 + sum(1 for key in existing if key.startswith("promotion."))
    client.set_registered_model_tag(name, f"promotion.{number:04d}", json.dumps(record, sort_keys=True))


def _report_gate(gate: Gate) -> int:
    print(gate.message)
    if gate.passed and not gate.unchanged:
        print(f"alias {CHAMPION} -> version {gate.version}")
    return 0 if gate.passed else 1


def run_register(args, params) -> int:
    """`v2i register --model DIR --metrics metrics.json [--name N] [--promote]`."""
    name = args.name or params.register.name
    cfg = params.register
    metrics = pick_metrics(args.metrics, args.model)
    baseline = pick_baseline(args.metrics, metrics) if metrics.get("role", "student") == "student" else None
    version, created = register(
        args.model, metrics, name, params.eval.score_threshold, cfg.primary_metric, baseline, params.filter
    )
    if created:
        print(f"registered {args.model} as {name} version {version}; alias {CHALLENGER} -> version {version}")
    else:
        print(f"{args.model} is already registered as {name} version {version} (same training run and weights)")
    print(gain_line(metrics, baseline))
    if not args.promote:
        return 0
    return _report_gate(promote(name, version, cfg.primary_metric, cfg.min_delta, cfg.min_gain))


def gain_line(student: dict, baseline: dict | None) -> str:
    """One line: the student against its baseline in F1 and AP50, in points."""
    if baseline is None:
        return "no baseline in this evaluation: the gate will refuse to promote this version"
    figures = baseline_figures(student, baseline, "f1")
    parts = [
        f"{m} {100 * numeric_metrics(student)[m]:.1f} vs {100 * figures[BASELINE_TAG + m]:.1f} "
        f"({100 * figures[GAIN_TAG + m]:+.1f})"
        for m in GAIN_METRICS
        if BASELINE_TAG + m in figures
    ]
    return "student vs its baseline: " + ", ".join(parts)


def run_promote(args, params) -> int:
    """`v2i promote [--name N] [--version V]`: exit 1, changing nothing, when the gate fails."""
    name = args.name or params.register.name
    cfg = params.register
    return _report_gate(promote(name, args.version, cfg.primary_metric, cfg.min_delta, cfg.min_gain))
