"""MLflow runs, the model registry and the promotion gate, with explicit run ids everywhere.

    alad pipeline --profile demo        # parent run + one nested run per phase, then register
    alad registry rollback alad-ner-minilm-l6

Where: `$MLFLOW_TRACKING_URI` (e.g. the `make up` server), else the SQLite store
`./mlflow/mlflow.db` with artifacts in `./mlflow/artifacts`. Every call names its run id: Prefect
runs tasks in threads and MLflow's "active run" is thread-local, so nothing here uses it.

Registry: phase 3's model is logged as a pyfunc (alad/serving.py) and registered as a new version
of `alad-<task>-<compressed>`. Version tags carry its provenance (git commit, data hash, params
hash), its validation scores (`val.<key>`) and `alad.status` (pending -> ready, or failed). The
`champion` alias is what serves; `promote` moves it only through the gate, `rollback` moves it back.

Concurrency: `promote` and `rollback` read the aliases and write them under one file lock (see
`registry_lock`), so two runs promoting at once are judged one after the other. For a SQLite
store that holds for every process on the machine that uses the file; for a tracking server it
holds for the processes on this machine (other machines are not serialised).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import numbers
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from filelock import FileLock, Timeout
from mlflow.entities import LoggedModel, LoggedModelOutput, LoggedModelStatus, Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from alad.config import Settings
from alad.errors import RegistryError, ServicesDown

LOCAL_STORE = Path("mlflow")
CHAMPION, PREVIOUS = "champion", "previous"
STATUS, PROMOTION, REASON = "alad.status", "alad.promotion", "alad.promotion_reason"
PREDECESSOR = "alad.previous_champion"
# What the pyfunc needs at load time, pinned to what trained it (alad itself ships as code).
SERVING_PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "numpy",
    "pandas",
    "peft",
    "pydantic",
    "pydantic-settings",
    "pyyaml",
    "seqeval",
    "tqdm",
    "mlflow",
)
LOCK_TIMEOUT_S = 600  # promotion takes well under a second; a holder that long is stuck
_MAX_PARAM = 6000  # MLflow's limit on a param value (characters)
_BAD_KEY = re.compile(r"[^\w\-. /:]")  # MLflow keys: alphanumerics, _ - . space / :


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    model_uri: str  # models:/<model id>: the logged pyfunc itself


@dataclass(frozen=True)
class PromotionDecision:
    promoted: bool
    reason: str
    previous: str | None  # the champion before this decision (None: there was none)


def tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else the SQLite store ./mlflow/mlflow.db (folder created)."""
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return uri
    LOCAL_STORE.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(LOCAL_STORE / 'mlflow.db').resolve()}"


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


def check_server(uri: str) -> None:
    """Fail in seconds when an http(s) server is down (MLflow itself retries for minutes)."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        requests.get(uri.rstrip("/") + "/health", timeout=2).raise_for_status()
    except requests.RequestException as exc:
        raise ServicesDown(
            f"MLflow server at {uri} is not answering ({type(exc).__name__}): start it with "
            "`make up` (or unset MLFLOW_TRACKING_URI to use the local SQLite store)"
        ) from exc


def slug(text: str) -> str:
    """Lowercase; every run of characters outside [a-z0-9-] becomes one '-'."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "model"


def adapter_name(compressed: str, large: str, window: int) -> str:
    """One registered model per (M_C, M_L, n): phase-1 and every task's phase-2 adapters are
    its versions, told apart by aliases champion-phase1, champion-phase2-<task>."""
    return f"alad-adapter-{slug(compressed)}-to-{slug(large)}-n{window}"


def adapter_scope(phase: str, task: str | None = None) -> str:
    """The alias suffix of a (phase, task): `-phase1`, `-phase2-pos`."""
    return f"-{phase}" + (f"-{task}" if phase == "phase2" and task else "")


def model_name(task: str, compressed: str) -> str:
    return f"alad-{task}-{slug(compressed)}"


def params_hash(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


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
            out[_key(name)] = text[:_MAX_PARAM]
    return out


def numeric_items(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numbers only (no bools, strings, lists); one level of nested dicts becomes `key.sub`."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            out.update({f"{key}.{k}": float(v) for k, v in value.items() if _is_number(v)})
        elif _is_number(value):
            out[str(key)] = float(value)
    return {_key(f"{prefix}.{k}" if prefix else k): v for k, v in out.items()}


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _key(name: str) -> str:
    return _BAD_KEY.sub("_", name)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def pip_requirements() -> list[str]:
    """Exact versions of what the pyfunc imports, as installed here."""
    return [f"{p}=={importlib.metadata.version(p)}" for p in SERVING_PACKAGES]


class Tracker:
    """One experiment in one tracking store; every method takes the run id it acts on."""

    def __init__(
        self,
        uri: str | None = None,
        experiment: str = "alad",
        artifact_location: str | None = None,
    ):
        self.uri = uri or tracking_uri()
        check_server(self.uri)
        self.lock = FileLock(str(registry_lock(self.uri)), timeout=LOCK_TIMEOUT_S)
        # MLflow creates a fresh SQLite store's tables on first use; two processes doing that
        # at once crash one of them ("duplicate column"), so the first use is serialised.
        sqlite = _is_sqlite(self.uri)
        with self._locked("open the tracking store") if sqlite else contextlib.nullcontext():
            self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
            self.experiment_id = self._experiment(experiment, artifact_location)
            if sqlite:
                self.client.search_registered_models(max_results=1)  # the registry's tables

    @contextlib.contextmanager
    def _locked(self, what: str) -> Iterator[None]:
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
        missing = [k for k in keys if not any(_is_number(row.get(k)) for row in history)]
        if missing:
            raise ValueError(
                f"loss curve {title!r}: no numeric {missing} in the history; "
                f"its keys are {sorted({k for row in history for k in row})}"
            )
        # A bare Figure, not pyplot: pyplot keeps global state and is not thread-safe (Prefect
        # runs tasks in threads); Figure.savefig renders PNG with Agg without touching it.
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 4), layout="constrained")
        ax = fig.subplots()
        for key in keys:
            points = [
                (row.get("epoch", i + 1), row[key])
                for i, row in enumerate(history)
                if _is_number(row.get(key))
            ]
            ax.plot(*zip(*points, strict=True), marker="o", label=key)
        ax.set(xlabel="epoch", title=title)
        ax.legend()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name or slug(title)}.png"
            fig.savefig(path, dpi=100)
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

    # -- registry --------------------------------------------------------------------------------

    def register(
        self,
        parent_id: str | None,
        model_dir: Path,
        task: str,
        compressed: str,
        metrics: Mapping[str, Any],
        tags: Mapping[str, str],
    ) -> RegisteredVersion:
        """Log `model_dir` as a pyfunc in a nested "register" run and register a new version.

        The version is created with alad.status=pending and only marked ready after all its
        tags are written; any failure after it exists marks it failed (never promoted)."""
        name = model_name(task, compressed)
        with self.phase_run(parent_id, "register", {"model_dir": str(model_dir)}) as run_id:
            logged = self.log_pyfunc(run_id, Path(model_dir), task)
            self._ensure_registered_model(
                name,
                {"task": task, "compressed": compressed},
                f"AlAd {task} model on compressed encoder {compressed}",
            )
            # The source is the artifact location, not models:/<id>: MLflow resolves the latter
            # with the *global* tracking URI, i.e. another store than this client's.
            version = self.client.create_model_version(
                name,
                logged.artifact_location,
                run_id=run_id,
                tags={STATUS: "pending"},
                model_id=logged.model_id,
            )
            try:
                for key, value in version_tags(metrics, tags).items():
                    self.client.set_model_version_tag(name, version.version, key, value)
                self.client.set_tag(run_id, "alad.registered", f"{name}/{version.version}")
                self.client.set_model_version_tag(name, version.version, STATUS, "ready")
            except BaseException:
                self._mark_failed(name, version.version)
                raise
        return RegisteredVersion(name, str(version.version), run_id, f"models:/{logged.model_id}")

    def log_pyfunc(self, run_id: str, model_dir: Path, task: str) -> LoggedModel:
        """Save `model_dir` as an alad.serving.AladPyfunc, log it as a LoggedModel of the run."""
        import mlflow.pyfunc
        import pandas as pd
        from mlflow.models import Model

        import alad
        from alad.model import read_manifest
        from alad.serving import AladPyfunc
        from alad.tasks import TASKS

        read_manifest(model_dir)  # fail before logging anything if it is not a model folder
        logged = self.client.create_logged_model(
            self.experiment_id, name="model", source_run_id=run_id, model_type="alad"
        )
        try:
            with tempfile.TemporaryDirectory() as tmp:
                # alad ships as code: copy it without bytecode caches, which are not portable.
                code = Path(tmp) / "code" / "alad"
                shutil.copytree(
                    Path(alad.__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__")
                )
                local = Path(tmp) / "model"
                mlflow.pyfunc.save_model(
                    path=str(local),
                    python_model=AladPyfunc(),
                    artifacts={"model": str(model_dir)},
                    code_paths=[str(code)],
                    pip_requirements=pip_requirements(),
                    # A DataFrame, not a dict of lists: MLflow reads {"text": [...]} as one
                    # row holding an array, and would then reject a column of plain strings.
                    input_example=pd.DataFrame(TASKS[task].input_example),
                    mlflow_model=Model(
                        artifact_path=logged.artifact_location,
                        run_id=run_id,
                        model_uuid=logged.model_id,
                        model_id=logged.model_id,
                    ),
                )
                self.client.log_model_artifacts(logged.model_id, str(local))
        except BaseException:
            self.client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
            raise
        self.client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
        self.client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
        return logged

    def register_adapter(
        self,
        run_id: str,
        checkpoint: Path,
        metrics: Mapping[str, Any],
        lineage: Mapping[str, Any],
    ) -> RegisteredVersion:
        """Log an adapter checkpoint folder (safetensors + checksummed manifest) as a model of
        `run_id` and register it as a new version of `adapter_name(M_C, M_L, n)`, tagged with
        its lineage and held-out metrics (val.mse, val.cosine). Not a pyfunc: an adapter is
        loaded with `load_checkpoint` on the downloaded folder (README "Adapters")."""
        from alad.checkpoint import load_checkpoint

        manifest = load_checkpoint(checkpoint).manifest  # verifies every file before logging
        window = manifest["config"]["adapter"]["window"]
        name = adapter_name(manifest["compressed"], manifest["large"], window)
        logged = self.client.create_logged_model(
            self.experiment_id, name="adapter", source_run_id=run_id, model_type="alad-adapter"
        )
        try:
            self.client.log_model_artifacts(logged.model_id, str(checkpoint))
        except BaseException:
            self.client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
            raise
        self.client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
        self.client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
        self._ensure_registered_model(
            name,
            {"kind": "adapter", "compressed": manifest["compressed"], "large": manifest["large"]},
            f"AlAd adapters from {manifest['compressed']} to {manifest['large']}, window {window}",
        )
        version = self.client.create_model_version(
            name,
            logged.artifact_location,
            run_id=run_id,
            tags={STATUS: "pending"},
            model_id=logged.model_id,
        )
        try:
            for key, value in version_tags(metrics, lineage).items():
                self.client.set_model_version_tag(name, version.version, key, value)
            self.client.set_tag(run_id, "alad.registered_adapter", f"{name}/{version.version}")
            self.client.set_model_version_tag(name, version.version, STATUS, "ready")
        except BaseException:
            self._mark_failed(name, version.version)
            raise
        return RegisteredVersion(
            name, str(version.version), run_id, f"models:/{name}/{version.version}"
        )

    def _ensure_registered_model(self, name: str, tags: dict[str, str], description: str) -> None:
        if self._registered_model_exists(name):
            return
        try:
            self.client.create_registered_model(name, tags=tags, description=description)
        except MlflowException:
            if not self._registered_model_exists(name):  # else: created meanwhile; fine
                raise

    def _registered_model_exists(self, name: str) -> bool:
        try:
            self.client.get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise
        return True

    def _mark_failed(self, name: str, version: str) -> None:
        # Best effort: the original error is what the user needs to see, so a second failure
        # here (e.g. the store went away) must not replace it.
        with contextlib.suppress(Exception):
            self.client.set_model_version_tag(name, version, STATUS, "failed")

    def _version(self, name: str, version: str) -> Version:
        found = self.client.get_model_version(name, str(version))
        return Version(str(found.version), dict(found.tags))

    def _alias(self, name: str, alias: str) -> Version | None:
        try:
            found = self.client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise
        return Version(str(found.version), dict(found.tags))

    def promote(
        self,
        name: str,
        version: str,
        metric: str,
        margin: float,
        higher_is_better: bool = True,
        scope: str = "",
    ) -> PromotionDecision:
        """The gate: `version` becomes @champion only if it is ready and its val.<metric> beats the
        champion's by at least `margin` (absolute), or if there is no champion yet. The old
        champion becomes @previous. The decision and its reason are written as version tags.
        `scope` suffixes the aliases (adapters: @champion-phase1, @champion-phase2-<task>)."""
        if margin < 0:
            raise ValueError(f"promotion margin must be >= 0, got {margin}")
        # Read the champion, judge, move the aliases: one step for concurrent promoters, or two
        # could both see no champion, or the worse one could overwrite the better.
        with self._locked(f"promote {name} version {version}"):
            return self._promote(name, version, metric, margin, higher_is_better, scope)

    def _promote(
        self,
        name: str,
        version: str,
        metric: str,
        margin: float,
        higher_is_better: bool,
        scope: str,
    ) -> PromotionDecision:
        champion_alias, previous_alias = CHAMPION + scope, PREVIOUS + scope
        candidate = self._version(name, version)
        champion = self._alias(name, champion_alias)
        if champion is not None and champion.version == candidate.version:
            before = self._alias(name, previous_alias)
            reason = f"version {champion.version} is already the champion"
            return PromotionDecision(True, reason, before.version if before else None)
        promoted, reason = _judge(candidate, champion, metric, margin, higher_is_better)
        if promoted:
            if champion is not None:
                self.client.set_registered_model_alias(name, previous_alias, champion.version)
                self.client.set_model_version_tag(
                    name, candidate.version, PREDECESSOR + scope, champion.version
                )
            self.client.set_registered_model_alias(name, champion_alias, candidate.version)
        verdict = "promoted" if promoted else "rejected"
        self.client.set_model_version_tag(name, candidate.version, PROMOTION + scope, verdict)
        self.client.set_model_version_tag(name, candidate.version, REASON + scope, reason)
        return PromotionDecision(promoted, reason, champion.version if champion else None)

    def rollback(self, name: str) -> str:
        """@champion back to @previous; returns the champion's version.

        The demoted version is tagged rolled_back and is *not* kept as @previous (rolling back
        twice must not bring a known-bad model back): @previous becomes the restored version's
        own predecessor, if it has one, so repeated rollbacks walk back through the champions."""
        with self._locked(f"roll back {name}"):
            return self._rollback(name)

    def _rollback(self, name: str) -> str:
        previous = self._alias(name, PREVIOUS)
        if previous is None:
            raise RegistryError(
                f"model {name!r} has no @previous version to roll back to: it has had one "
                "champion only, or was rolled back already; set @champion by hand with "
                f"`MlflowClient().set_registered_model_alias({name!r}, 'champion', <version>)`"
            )
        champion = self._alias(name, CHAMPION)
        self.client.set_registered_model_alias(name, CHAMPION, previous.version)
        before = previous.tags.get(PREDECESSOR)
        if before and self._usable(name, before):
            self.client.set_registered_model_alias(name, PREVIOUS, before)
        else:
            self.client.delete_registered_model_alias(name, PREVIOUS)
        if champion is not None and champion.version != previous.version:
            self.client.set_model_version_tag(name, champion.version, PROMOTION, "rolled_back")
            self.client.set_model_version_tag(
                name, champion.version, REASON, f"rolled back to version {previous.version}"
            )
        return previous.version

    def _usable(self, name: str, version: str) -> bool:
        try:
            tags = self._version(name, version).tags
        except MlflowException:
            return False
        return tags.get(STATUS) == "ready" and tags.get(PROMOTION) != "rolled_back"


ADAPTER_URI = ("models:/", "runs:/")


def resolve_adapter(ref: str | Path | None, uri: str | None = None) -> Path | None:
    """`phase2.init` / `phase3.init` as a local folder: a folder as it is; `models:/<name>@<alias>`,
    `models:/<name>/<version>` or `runs:/<run id>/<path>` downloaded from the tracking store into
    ~/.cache/alad/adapters/ (an alias is resolved to its version first, so a moved alias is
    fetched again). The phases verify the folder's checksummed manifest as for any checkpoint."""
    if ref is None or not str(ref).startswith(ADAPTER_URI):
        return None if ref is None else Path(ref)
    import mlflow.artifacts

    from alad.models.packaged import cache_home

    text, uri = str(ref), uri or tracking_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    source = text
    try:
        if text.startswith("models:/"):
            name, _, which = text.removeprefix("models:/").partition("@")
            if which:  # models:/name@alias
                version = client.get_model_version_by_alias(name, which).version
            else:  # models:/name/version
                name, _, version = name.rpartition("/")
            source = client.get_model_version_download_uri(name, str(version))
            text = f"models:/{name}/{version}"
        dest = cache_home() / "adapters" / hashlib.sha256(f"{uri}|{text}".encode()).hexdigest()[:16]
        if not (dest / "manifest.json").is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
                got = Path(
                    mlflow.artifacts.download_artifacts(
                        artifact_uri=source, dst_path=tmp, tracking_uri=uri
                    )
                )
                shutil.rmtree(dest, ignore_errors=True)
                got.rename(dest)
    except MlflowException as exc:
        raise RegistryError(f"adapter {ref}: {exc.message} (tracking store {uri})") from None
    return dest


def registry_table(tracker: Tracker) -> list[dict[str, str]]:
    """Every registered version of alad's task models and adapters: aliases, status, metrics."""
    rows = []
    for model in tracker.client.search_registered_models():
        if not model.name.startswith("alad-"):
            continue
        aliases: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        for v in tracker.client.search_model_versions(f"name = '{model.name}'"):
            tags = dict(v.tags)
            metrics = {k[4:]: float(x) for k, x in tags.items() if k.startswith("val.")}
            shown = ("main", "mse", "cosine")
            rows.append(
                {
                    "name": model.name,
                    "version": str(v.version),
                    "kind": "adapter" if model.name.startswith("alad-adapter-") else "task model",
                    "aliases": ",".join(sorted(aliases.get(str(v.version), []))) or "-",
                    "status": tags.get(STATUS, "?"),
                    "metrics": " ".join(f"{k} {metrics[k]:.4f}" for k in shown if k in metrics),
                    "from": tags.get("adapter")
                    or tags.get("phase", "")
                    + (f"/{tags['task']}" if tags.get("phase") == "phase2" else ""),
                }
            )
    return sorted(rows, key=lambda r: (r["name"], int(r["version"])))


@dataclass(frozen=True)
class Version:
    """A registered model version as the gate sees it (MLflow's entity has an int version)."""

    version: str
    tags: dict[str, str]


def version_tags(metrics: Mapping[str, Any], tags: Mapping[str, Any]) -> dict[str, str]:
    """Provenance tags as given + each numeric validation metric as val.<key>."""
    out = {_key(str(k)): str(v) for k, v in tags.items()}
    out.update({f"val.{k}": repr(v) for k, v in numeric_items(metrics).items()})
    return out


def _judge(
    candidate: Version,
    champion: Version | None,
    metric: str,
    margin: float,
    higher_is_better: bool,
) -> tuple[bool, str]:
    status = candidate.tags.get(STATUS)
    if status != "ready":
        return False, f"version {candidate.version} has {STATUS}={status}, not ready"
    key = f"val.{metric}"
    if key not in candidate.tags:
        known = sorted(k for k in candidate.tags if k.startswith("val."))
        raise RegistryError(
            f"version {candidate.version} has no tag {key!r} to compare: pass one of {known}"
        )
    new = float(candidate.tags[key])
    if champion is None:
        return True, f"first champion ({key}={new:.4f})"
    if key not in champion.tags:
        return False, (
            f"champion version {champion.version} has no {key} to compare with; "
            "set @champion by hand if this version should serve"
        )
    old = float(champion.tags[key])
    gain = new - old if higher_is_better else old - new
    # "Beats": strictly better, and by at least the margin (a tiny tolerance so a gain equal to
    # the margin is not lost to float rounding). A rerun with the same score stays a challenger.
    ok = gain > 0 and gain >= margin - 1e-12
    return ok, (
        f"{key}={new:.4f} vs champion version {champion.version} {old:.4f}: "
        f"gain {gain:+.4f} {'>=' if ok else '<' if gain < margin - 1e-12 else 'is no gain over'}"
        f" margin {margin:.4f}"
    )
