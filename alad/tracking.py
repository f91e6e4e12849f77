"""MLflow runs with explicit run ids everywhere, and their no-op twin for tracking off.

    alad pipeline run --profile demo    # parent run + one nested run per stage

Where: `$MLFLOW_TRACKING_URI` (e.g. the `make up` server), else the SQLite store
`./mlflow/mlflow.db` with artifacts in `./mlflow/artifacts`. Every call names its run id: Prefect
runs tasks in threads and MLflow's "active run" is thread-local, so nothing here uses it. The
stages call `run_tracker(settings)`: a Tracker, or a NullTracker that does nothing, so no stage
asks whether tracking is on. The registry (register, gate, promote, rollback) is alad/registry.py;
pyfunc packaging is alad/pyfunc.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import numbers
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from mlflow.entities import LoggedModel, LoggedModelOutput, LoggedModelStatus, Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from alad.config import Settings
from alad.errors import RegistryError
from alad.provenance import git_commit
from alad.store import (  # where the store is and how to look in it: below the phases
    LOCAL_STORE,
    check_server,
    missing_store,
    no_store,
    tracking_uri,
)

LOCK_TIMEOUT_S = 600  # promotion takes well under a second; a holder that long is stuck
_MAX_PARAM = 6000  # MLflow's limit on a param value (characters)
_BAD_KEY = re.compile(r"[^\w\-. /:]")  # MLflow keys: alphanumerics, _ - . space / :


def artifact_root(uri: str | None = None) -> str:
    """file:// URI of the artifact folder for new experiments.

    Beside the database for a SQLite store (./mlflow/artifacts for the default one); for a
    server, ./mlflow/artifacts too, so the `make up` server (backend sqlite:///mlflow/mlflow.db)
    and the local store on this machine read and write the same files."""
    if uri and uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).resolve().parent / "artifacts"
    else:
        folder = (LOCAL_STORE / "artifacts").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder.as_uri()


def _is_sqlite(uri: str) -> bool:
    return uri.startswith("sqlite:")


def registry_lock(uri: str) -> Path:
    """The lock file that serialises promotions (and a fresh store's creation) for `uri`.

    SQLite: beside the database, so every process using that file shares it. A server or any
    other store: one file per URI in the system temp folder, which serialises the promoters on
    this machine only (MLflow's REST API has no compare-and-set for aliases)."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///")).resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
        return db.with_name(db.name + ".lock")
    folder = Path(tempfile.gettempdir()) / "alad-locks"
    folder.mkdir(exist_ok=True)
    return folder / f"registry-{hashlib.sha256(uri.encode()).hexdigest()[:16]}.lock"


def slug(text: str) -> str:
    """Lowercase; every run of characters outside [a-z0-9-] becomes one '-'."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "model"


def params_hash(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"phase1.lr": "0.0005", ...}, each value cut to MLflow's 6000 chars."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name))
        else:
            plain = isinstance(value, str | os.PathLike)  # no JSON quotes around text and paths
            text = str(value) if plain else json.dumps(value, default=str)
            out[mlflow_key(name)] = text[:_MAX_PARAM]
    return out


def numeric_items(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numbers only (no bools, strings, lists); one level of nested dicts becomes `key.sub`."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            out.update({f"{key}.{k}": float(v) for k, v in value.items() if _is_number(v)})
        elif _is_number(value):
            out[str(key)] = float(value)
    return {mlflow_key(f"{prefix}.{k}" if prefix else k): v for k, v in out.items()}


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def mlflow_key(name: str) -> str:
    """`name` with the characters MLflow refuses in param, metric and tag keys replaced."""
    return _BAD_KEY.sub("_", name)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class Tracker:
    """One experiment in one tracking store; every method takes the run id it acts on."""

    def __init__(
        self,
        uri: str | None = None,
        experiment: str = "alad",
        artifact_location: str | None = None,
        create: bool = True,
    ):
        """`create=False` opens a store for lookups only (`alad registry list|rollback`): a
        local store that does not exist is a RegistryError, never created, and no experiment
        is made (`experiment_id` is None: such a Tracker reads and moves aliases, logs no run)."""
        self.uri = uri or tracking_uri(create)
        check_server(self.uri)
        if not create and (where := missing_store(self.uri)) is not None:
            raise RegistryError(no_store(where))
        self.lock = FileLock(str(registry_lock(self.uri)), timeout=LOCK_TIMEOUT_S)
        if not create:
            self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
            self.experiment_id: str | None = None
            return
        # MLflow creates a fresh SQLite store's tables on first use; two processes doing that
        # at once crash one of them ("duplicate column"), so the first use is serialised.
        sqlite = _is_sqlite(self.uri)
        with self.locked("open the tracking store") if sqlite else contextlib.nullcontext():
            self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
            self.experiment_id = self._experiment(experiment, artifact_location)
            if sqlite:
                self.client.search_registered_models(max_results=1)  # the registry's tables

    @contextlib.contextmanager
    def locked(self, what: str) -> Iterator[None]:
        """Hold the registry lock (module docstring) while doing `what`."""
        try:
            with self.lock:
                yield
        except Timeout:
            raise RegistryError(
                f"could not {what}: another process has held {self.lock.lock_file} for "
                f"{LOCK_TIMEOUT_S} s; if none is running, delete that file"
            ) from None

    def _experiment(self, name: str, artifact_location: str | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is None:
            try:
                return self.client.create_experiment(
                    name, artifact_location=artifact_location or artifact_root(self.uri)
                )
            except MlflowException as exc:  # created meanwhile by a concurrent stage
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise exc from None
        if found.lifecycle_stage == "deleted":
            raise RegistryError(
                f"MLflow experiment {name!r} (id {found.experiment_id}) is deleted: restore it "
                f"with `mlflow experiments restore --experiment-id {found.experiment_id}` or "
                "choose another name (tracking.experiment)"
            )
        return found.experiment_id

    # -- runs ------------------------------------------------------------------------------------

    def start_pipeline(
        self, settings: Settings, run_name: str, tags: dict[str, str] | None = None
    ) -> str:
        """The parent run: the whole resolved config as params, commit and params hash as tags."""
        config = settings.model_dump(mode="json")
        commit = git_commit()
        all_tags = {
            "git_commit": commit,
            "mlflow.source.git.commit": commit,
            "params_hash": params_hash(config),
            **(tags or {}),
        }
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags)
        self.log_params(run.info.run_id, config)
        return run.info.run_id

    def start_phase(
        self, parent_id: str | None, phase: str, params: Mapping[str, Any] | None = None
    ) -> str:
        """A run named after the phase, nested under the parent (a top-level run without one)."""
        tags = {"alad.phase": phase}
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
        run = self.client.create_run(self.experiment_id, run_name=phase, tags=tags)
        if params:
            self.log_params(run.info.run_id, params)
        return run.info.run_id

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        items = [Param(k, v) for k, v in flatten(params).items()]
        for chunk in _chunks(items, 100):  # MLflow: at most 100 params per batch
            self.client.log_batch(run_id, params=chunk)

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], prefix: str = "") -> None:
        ts = _now_ms()
        items = [Metric(k, v, ts, 0) for k, v in numeric_items(metrics, prefix).items()]
        for chunk in _chunks(items, 1000):
            self.client.log_batch(run_id, metrics=chunk)

    def log_history(self, run_id: str, history: list[dict[str, Any]], prefix: str = "") -> None:
        """Every number of every epoch's dict as a metric at step=epoch (1-based)."""
        ts, items = _now_ms(), []
        for i, row in enumerate(history):
            step = int(row.get("epoch", i + 1))
            values = numeric_items({k: v for k, v in row.items() if k != "epoch"}, prefix)
            items.extend(Metric(k, v, ts, step) for k, v in values.items())
        for chunk in _chunks(items, 1000):
            self.client.log_batch(run_id, metrics=chunk)

    def log_loss_curve(
        self,
        run_id: str,
        history: list[dict[str, Any]],
        keys: list[str],
        title: str,
        name: str | None = None,
    ) -> None:
        """`keys` against epoch as plots/<name or slug(title)>.png; nothing for an empty history."""
        if not history:
            return
        from alad.plots import plot_history

        with tempfile.TemporaryDirectory() as tmp:
            path = plot_history(history, keys, title, Path(tmp) / f"{name or slug(title)}.png")
            self.client.log_artifact(run_id, str(path), "plots")

    def log_artifacts(self, run_id: str, path: Path, artifact_path: str) -> None:
        """A file or a whole folder under `artifact_path` of the run."""
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path)
        elif path.is_file():
            self.client.log_artifact(run_id, str(path), artifact_path)
        else:
            raise FileNotFoundError(f"{path}: nothing to log as MLflow artifact {artifact_path!r}")

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)

    @contextlib.contextmanager
    def phase_run(
        self, parent_id: str | None, phase: str, params: Mapping[str, Any] | None = None
    ) -> Iterator[str]:
        """A nested run that ends FINISHED, or FAILED (KILLED on Ctrl-C) when the body raises."""
        run_id = self.start_phase(parent_id, phase, params)
        try:
            yield run_id
        except BaseException as exc:
            # The body's error is the one to see, not a second one from a store that went away.
            with contextlib.suppress(Exception):
                self.end(run_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        self.end(run_id)


@contextlib.contextmanager
def logged_model(
    client: MlflowClient, experiment_id: str, run_id: str, model_type: str, name: str = "model"
) -> Iterator[LoggedModel]:
    """A LoggedModel of run `run_id` for the body to fill (`client.log_model_artifacts`): READY
    and an output of the run when the body returns, FAILED when it raises (never half-made)."""
    logged = client.create_logged_model(
        experiment_id, name=name, source_run_id=run_id, model_type=model_type
    )
    try:
        yield logged
    except BaseException:
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])


def flavor_metadata(logged: LoggedModel, run_id: str) -> Any:
    """The MLmodel metadata (mlflow.models.Model) that ties a flavor's `save_model(...,
    mlflow_model=)` to `logged`, a LoggedModel of run `run_id` (alad/pyfunc.py,
    alad/onnx_flavor.py)."""
    from mlflow.models import Model

    return Model(
        artifact_path=logged.artifact_location,
        run_id=run_id,
        model_uuid=logged.model_id,
        model_id=logged.model_id,
    )


class NullTracker:
    """Tracking off: the same calls as Tracker, doing nothing (no `if tracker:` in the stages)."""

    client = None
    experiment_id = None

    def start_pipeline(self, *args: Any, **kwargs: Any) -> None:
        return None

    def start_phase(self, *args: Any, **kwargs: Any) -> None:
        return None

    def log_params(self, *args: Any, **kwargs: Any) -> None:
        pass

    log_metrics = log_history = log_loss_curve = log_artifacts = end = log_params

    @contextlib.contextmanager
    def phase_run(self, *args: Any, **kwargs: Any) -> Iterator[None]:
        yield None


def run_tracker(settings: Settings) -> Tracker | NullTracker:
    """The configured run logger: MLflow when `tracking.enabled`, else the no-op twin."""
    if not settings.tracking.enabled:
        return NullTracker()
    return Tracker(experiment=settings.tracking.experiment)
