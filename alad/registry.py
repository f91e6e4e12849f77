"""The model registry: task models and adapters, registered with lineage, promoted through a gate.

    alad registry list                          # every version: aliases, metrics, lineage
    alad registry rollback alad-ner-minilm-l6   # @champion back to @previous

Task models: phase 3's saved folder, logged as a pyfunc (alad/pyfunc.py) and registered as a
version of `alad-<task>-<compressed>`. Adapters: a phase-1/2 checkpoint folder, registered as a
version of `alad-adapter-<M_C>-to-<M_L>-n<k>`. Version tags carry provenance and validation
metrics (`val.<key>`) and `alad.status` (pending -> ready, or failed). `promote` moves the
`champion` alias (adapters: `champion-phase1`, `champion-phase2-<task>`) only through the gate;
`rollback` moves it back.

Concurrency: `promote` and `rollback` read the aliases and write them under one file lock beside
the store (alad.tracking.registry_lock), so two runs promoting at once are judged one after the
other. For a SQLite store that holds for every process on the machine that uses the file; for a
tracking server it holds for the processes on this machine (other machines are not serialised).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

from alad.errors import RegistryError
from alad.pyfunc import log_pyfunc
from alad.store import REGISTRY_URI, download, is_registry_uri
from alad.tracking import Tracker, logged_model, mlflow_key, numeric_items, slug

CHAMPION, PREVIOUS = "champion", "previous"
STATUS, PROMOTION, REASON = "alad.status", "alad.promotion", "alad.promotion_reason"
PREDECESSOR = "alad.previous_champion"

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class Gate:
    """What a new version must beat to become @champion<scope>: the champion's val.<metric>
    by `margin` (absolute), in the direction `higher_is_better`."""

    metric: str
    margin: float = 0.0
    higher_is_better: bool = True
    scope: str = ""  # alias suffix: adapters' -phase1, -phase2-<task>


@dataclass(frozen=True)
class Published:
    """A registered version and the gate's decision on it."""

    name: str
    version: str
    alias: str  # the alias the gate judged it for
    promoted: bool
    reason: str
    previous: str | None

    def line(self) -> str:
        verdict = f"@{self.alias}" if self.promoted else "not promoted"
        return f"registered {self.name} v{self.version}: {verdict} ({self.reason})"


def adapter_name(compressed: str, large: str, window: int) -> str:
    """One registered model per (M_C, M_L, n): phase-1 and every task's phase-2 adapters are
    its versions, told apart by aliases champion-phase1, champion-phase2-<task>."""
    return f"alad-adapter-{slug(compressed)}-to-{slug(large)}-n{window}"


def adapter_scope(phase: str, task: str | None = None, target: str | None = None) -> str:
    """The alias suffix of a (phase, task): `-phase1`, `-phase2-pos`; with `target` (a teacher
    other than M_L pre-trained at its last layer: held-out MSEs against another target do not
    compare), `-phase2-pos-to-<target>`."""
    scope = f"-{phase}" + (f"-{task}" if phase == "phase2" and task else "")
    return scope + (f"-to-{target}" if target else "")


def model_name(task: str, compressed: str) -> str:
    return f"alad-{task}-{slug(compressed)}"


def onnx_name(source: str, int8: bool) -> str:
    """Where ONNX exports of versions of `source` are registered: `<source>-onnx`, INT8 ones
    `<source>-onnx-int8`. Names of their own, not versions of `source`: one registered name
    serves one interface (these take token ids, `source` takes text) and its @champion is judged
    against exports of the same precision only."""
    return f"{source}-onnx{'-int8' if int8 else ''}"


class Registry:
    """Register, gate, promote and roll back, in the store (and under the lock) of `tracker`."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker
        self.client = tracker.client

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
        with self.tracker.phase_run(parent_id, "register", {"model_dir": str(model_dir)}) as run_id:
            experiment = self.tracker.experiment_id
            logged = log_pyfunc(self.client, experiment, run_id, Path(model_dir), task)
            self._ensure_registered_model(
                name,
                {"task": task, "compressed": compressed},
                f"AlAd {task} model on compressed encoder {compressed}",
            )
            # The source is the artifact location, not models:/<id>: MLflow resolves the latter
            # with the *global* tracking URI, i.e. another store than this client's.
            version = self._new_version(name, logged, run_id, metrics, tags, "alad.registered")
        return RegisteredVersion(name, version, run_id, f"models:/{logged.model_id}")

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
        experiment = self.tracker.experiment_id
        with logged_model(self.client, experiment, run_id, "alad-adapter", "adapter") as logged:
            self.client.log_model_artifacts(logged.model_id, str(checkpoint))
        self._ensure_registered_model(
            name,
            {"kind": "adapter", "compressed": manifest["compressed"], "large": manifest["large"]},
            f"AlAd adapters from {manifest['compressed']} to {manifest['large']}, window {window}",
        )
        version = self._new_version(
            name, logged, run_id, metrics, lineage, "alad.registered_adapter"
        )
        return RegisteredVersion(name, version, run_id, f"models:/{name}/{version}")

    def register_onnx(
        self, folder: Path, metrics: Mapping[str, Any], tags: Mapping[str, str]
    ) -> RegisteredVersion:
        """Log an ONNX export of a registered task model version (alad/export.py) with MLflow's
        ONNX flavor (alad/onnx_flavor.py) and register it as a new version of
        `onnx_name(source, int8)`, from a run nested under the source version's run.

        Lineage tags: the source's name, version and run, INT8 or not, the export's max abs
        difference to PyTorch (manifest.json), the opset. Its val.* metrics are the source
        version's (what the gate compares), unless `metrics` gives others: the export is checked
        against PyTorch, not re-evaluated (fp32 is within 1e-3 of it by construction; INT8's
        score change is measured by experiments/onnx_exactness.py)."""
        from alad.onnx_flavor import log_onnx
        from alad.onnx_predict import read_export_manifest

        manifest = read_export_manifest(Path(folder))
        name, version, source = self._export_source(manifest)
        int8 = bool(manifest["int8"])
        target = onnx_name(name, int8)
        lineage = onnx_lineage(manifest, name, version, source.run_id or "")
        inherited = {k[4:]: float(v) for k, v in source.tags.items() if k.startswith("val.")}
        params = {"export": str(folder), "source": f"{name}/{version}"}
        with self.tracker.phase_run(source.run_id or None, "register-onnx", params) as run_id:
            logged = log_onnx(self.client, self.tracker.experiment_id, run_id, Path(folder))
            self._ensure_registered_model(
                target,
                {"task": manifest["task"], "source": name, "format": "onnx", "int8": str(int8)},
                f"ONNX exports ({'INT8' if int8 else 'fp32'}) of {name}: input_ids and "
                "attention_mask in, logits out (MLflow's ONNX flavor)",
            )
            version = self._new_version(
                target,
                logged,
                run_id,
                {**inherited, **metrics},
                {**lineage, **tags},
                "alad.registered_onnx",
            )
        return RegisteredVersion(target, version, run_id, f"models:/{target}/{version}")

    def _export_source(self, manifest: Mapping[str, Any]) -> tuple[str, str, Any]:
        """(name, version, the MLflow version) of the registered version an export was made
        from; it must be one, and ready."""
        ref = str(manifest["source"]["model"])
        name, _, version = ref.removeprefix("models:/").rpartition("/")
        if not ref.startswith("models:/") or not name or "@" in ref:
            raise RegistryError(
                f"the export was made from {ref}, not from a registered version: an ONNX "
                "version is registered in its source's lineage, so export "
                "models:/<name>@<alias> or models:/<name>/<version>"
            )
        try:
            found = self.client.get_model_version(name, version)
        except MlflowException as exc:
            raise RegistryError(
                f"the export's source {ref} is not in {self.tracker.uri}: register the export in "
                f"the store it was exported from ({exc.error_code})"
            ) from None
        if found.tags.get(STATUS) != "ready":
            raise RegistryError(
                f"the export's source {ref} has {STATUS}={found.tags.get(STATUS)}, not ready"
            )
        return name, str(found.version), found

    def publish(
        self,
        folder: Path,
        metrics: Mapping[str, Any],
        lineage: Mapping[str, Any],
        gate: Gate,
        run_id: str | None,
        task: str | None = None,
        compressed: str | None = None,
        onnx: bool = False,
    ) -> Published:
        """Register `folder` as a new version with its lineage tags, then run the promotion
        gate: the one way the pipeline, its stages, the sweep and `alad export --register`
        register anything.

        With `task`, `folder` is a saved task model: a pyfunc registered as a version of
        `alad-<task>-<compressed>` from a nested run of `run_id`. With `onnx`, an ONNX export
        of a registered version (`register_onnx`; `run_id` is not used: the run is nested under
        the source version's). Else it is an adapter checkpoint registered from run `run_id` as
        a version of `alad-adapter-...`."""
        if onnx:
            info = self.register_onnx(folder, metrics, lineage)
        elif task is not None:
            if compressed is None:
                raise ValueError("publish: a task model needs its compressed model's name")
            info = self.register(run_id, folder, task, compressed, metrics, lineage)
        else:
            if run_id is None:
                raise ValueError("publish: an adapter is registered from a run; run_id is None")
            info = self.register_adapter(run_id, folder, metrics, lineage)
        decision = self.promote(
            info.name, info.version, gate.metric, gate.margin, gate.higher_is_better, gate.scope
        )
        published = Published(
            info.name,
            info.version,
            CHAMPION + gate.scope,
            decision.promoted,
            decision.reason,
            decision.previous,
        )
        log.info(published.line())
        return published

    def _new_version(
        self,
        name: str,
        logged: Any,
        run_id: str,
        metrics: Mapping[str, Any],
        tags: Mapping[str, Any],
        run_tag: str,
    ) -> str:
        """A new version of `name` from the logged model: created pending, tagged (metrics and
        tags), then ready; any failure after it exists, the tags' own included, marks it failed
        (never promoted). Returns its number."""
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
            self.client.set_tag(run_id, run_tag, f"{name}/{version.version}")
            self.client.set_model_version_tag(name, version.version, STATUS, "ready")
        except BaseException:
            self._mark_failed(name, version.version)
            raise
        return str(version.version)

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
        with self.tracker.locked(f"promote {name} version {version}"):
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
        with self.tracker.locked(f"roll back {name}"):
            return self._rollback(name)

    def _rollback(self, name: str) -> str:
        if not self._registered_model_exists(name):
            raise RegistryError(
                f"no registered model named {name!r} in {self.tracker.uri}: "
                "`alad registry list` shows the models there"
            )
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


ADAPTER_URI = REGISTRY_URI


def resolve_adapter(ref: str | Path | None, uri: str | None = None) -> Path | None:
    """`phase2.init` / `phase3.init` as a local folder: a folder as it is; `models:/<name>@<alias>`,
    `models:/<name>/<version>` or `runs:/<run id>/<path>` downloaded from the tracking store into
    ~/.cache/alad/adapters/ (an alias is resolved to its version first, so a moved alias is
    fetched again; alad.store.download). The phases verify the folder's checksummed manifest as
    for any checkpoint."""
    if ref is None or not is_registry_uri(ref):
        return None if ref is None else Path(ref)
    return download(str(ref), "adapters", uri)


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
                    "kind": _kind(model.name, tags),
                    "aliases": ",".join(sorted(aliases.get(str(v.version), []))) or "-",
                    "status": tags.get(STATUS, "?"),
                    "metrics": " ".join(f"{k} {metrics[k]:.4f}" for k in shown if k in metrics),
                    "from": _source(tags)
                    or tags.get("adapter")
                    or tags.get("phase", "")
                    + (f"/{tags['task']}" if tags.get("phase") == "phase2" else ""),
                }
            )
    return sorted(rows, key=lambda r: (r["name"], int(r["version"])))


def _kind(name: str, tags: Mapping[str, str]) -> str:
    if "alad.source_model" in tags:
        return "onnx int8" if tags.get("alad.int8") == "true" else "onnx"
    return "adapter" if name.startswith("alad-adapter-") else "task model"


def _source(tags: Mapping[str, str]) -> str | None:
    """An ONNX version's source version, as `<name>/<version>`."""
    if "alad.source_model" not in tags:
        return None
    return f"{tags['alad.source_model']}/{tags.get('alad.source_version', '?')}"


@dataclass(frozen=True)
class Version:
    """A registered model version as the gate sees it (MLflow's entity has an int version)."""

    version: str
    tags: dict[str, str]


def onnx_lineage(
    manifest: Mapping[str, Any], name: str, version: str, run_id: str
) -> dict[str, str]:
    """An ONNX version's tags from its export's manifest: the source and how close it is."""
    tags = {
        "alad.source_model": name,
        "alad.source_version": version,
        "alad.source_run": run_id,
        "alad.int8": str(bool(manifest["int8"])).lower(),
        "alad.opset": str(manifest.get("opset", "")),
        "task": str(manifest["task"]),
    }
    for key, diff in (manifest.get("max_abs_diff") or {}).items():
        tags[f"alad.max_abs_diff.{key}"] = repr(float(diff))  # vs PyTorch fp32 (fp32 / int8)
    return tags


def version_tags(metrics: Mapping[str, Any], tags: Mapping[str, Any]) -> dict[str, str]:
    """Provenance tags as given + each numeric validation metric as val.<key>."""
    out = {mlflow_key(str(k)): str(v) for k, v in tags.items()}
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
