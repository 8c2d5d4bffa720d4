"""MLflow run helpers: where runs go, what every run is tagged with, and flat params.

The default store is a SQLite file in the project folder; `MLFLOW_TRACKING_URI` points elsewhere (a server).
Only configuration is logged as params: credentials live in the environment and are never read here.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import yaml

EXPERIMENT = os.environ.get("V2I_EXPERIMENT", "v2i")
log = logging.getLogger(__name__)


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def require_tracking_uri() -> str:
    """The tracking server a pipeline step must log to. A pod without `MLFLOW_TRACKING_URI` would log to a SQLite
    file that dies with it, so a step stops at once, with one line and no traceback (the ConfigMap `v2i-config`
    sets it on a cluster)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        raise SystemExit(
            "v2i: MLFLOW_TRACKING_URI is not set: a pipeline step logs to an MLflow server (set it in the ConfigMap "
            "v2i-config), not to a file inside its pod"
        )
    return uri


def display_uri(uri: str | None = None) -> str:
    """The tracking URI without any user:password part, for messages and logs."""
    from urllib.parse import urlsplit, urlunsplit

    uri = uri or tracking_uri()
    parts = urlsplit(uri)
    if not (parts.username or parts.password):
        return uri
    return urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))


def use_experiment() -> None:
    """Select the experiment, creating it first; a SQLite store keeps its artifacts beside the database
    (not in whatever directory the command ran from)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    uri = tracking_uri()
    if uri.startswith("sqlite:///") and mlflow.get_experiment_by_name(EXPERIMENT) is None:
        database = Path(uri[len("sqlite:///") :]).resolve()
        mlflow.create_experiment(EXPERIMENT, artifact_location=(database.parent / "mlartifacts").as_uri())
    mlflow.set_experiment(EXPERIMENT)


def git_commit() -> str:
    """The commit of the code that ran: from git, or from V2I_GIT_COMMIT inside a container without .git."""
    if os.environ.get("V2I_GIT_COMMIT"):
        return os.environ["V2I_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def data_version(data_dir: str | Path) -> str:
    """The DVC hash of a data directory when dvc.lock records it, else an md5 of its frame index."""
    data_dir = Path(data_dir)
    lock = Path("dvc.lock")
    if lock.exists():
        wanted = os.path.normpath(str(data_dir))
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        for stage in stages.values():
            for out in stage.get("outs", []):
                if os.path.normpath(out.get("path", "")) == wanted and out.get("md5"):
                    return f"dvc:{out['md5']}"
    index = data_dir / "index.parquet"
    if index.exists():
        return "md5:" + _md5(index)
    return "unknown"


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def log_frames_input(frames_dir: str | Path, context: str, source: str | None = None) -> None:
    """Record in the active run the frames it used (`context`: "training" or "evaluation") as an MLflow dataset:
    the rows of the frames' index.parquet, named after the directory, its digest the index file's md5 and its
    source the frames directory (or `source`, e.g. the s3:// URI `frames_dir` is a local copy of); tagged with
    `data_version`."""
    import warnings

    import mlflow
    import pandas as pd

    index = Path(frames_dir) / "index.parquet"
    source = source or str(Path(frames_dir).resolve())
    with warnings.catch_warnings():  # MLflow's advice on the schema it infers, and on its own two local sources
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
        name = source.rstrip("/").rsplit("/", 1)[-1]
        dataset = mlflow.data.from_pandas(pd.read_parquet(index), source=source, name=name, digest=_md5(index))
        mlflow.log_input(dataset, context=context, tags={"data_version": data_version(frames_dir)})


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """{'a': {'b': 1}} -> {'a.b': 1}: MLflow params are flat."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class RunLogger:
    """The active MLflow run, or a no-op on non-main ranks so callers need no branches."""

    def __init__(self, run=None):
        self.run = run

    @property
    def run_id(self) -> str | None:
        return self.run.info.run_id if self.run else None

    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        if self.run:
            import mlflow

            mlflow.log_metrics({k: float(v) for k, v in values.items()}, step=step)

    def artifacts(self, path: Path, artifact_path: str | None = None) -> None:
        if self.run:
            import mlflow

            if Path(path).is_dir():
                mlflow.log_artifacts(str(path), artifact_path=artifact_path)
            else:
                mlflow.log_artifact(str(path), artifact_path=artifact_path)


@contextlib.contextmanager
def mlflow_run(
    run_name: str, params: dict, tags: dict[str, str], enabled: bool = True, run_id: str | None = None
) -> Iterator[RunLogger]:
    """Start (or, given run_id, continue) an MLflow run with flat params and tags; yields a RunLogger."""
    if not enabled:
        yield RunLogger()
        return
    import mlflow

    use_experiment()
    if run_id and mlflow.tracking.MlflowClient().search_runs(
        [mlflow.get_experiment_by_name(EXPERIMENT).experiment_id], f"attributes.run_id = '{run_id}'"
    ):
        with mlflow.start_run(run_id=run_id) as run:  # a resumed training continues its run
            yield RunLogger(run)
        return
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in flatten(params).items()})
        mlflow.set_tags({"git_commit": git_commit(), **tags})
        log.info("MLflow run %s (%s)", run.info.run_id, display_uri())
        yield RunLogger(run)
