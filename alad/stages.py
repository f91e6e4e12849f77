"""The pipeline's stages: data prep -> phase 1 -> phase 2 -> phase 3 -> evaluation -> registration.

    alad stage prepare|phase1|phase2|phase3|evaluate|register   # what dvc.yaml runs, one each
    alad pipeline run                                           # all stages in one process
    prefect deployment run 'alad-pipeline/demo'                 # flows/pipeline.py, same functions

Each stage is a function of (config, output layout, MLflow parent run id) that returns a small
dict of what it produced, so all three doors run the same code. Stages communicate only through
files under the layout's root (what DVC tracks) and the explicit parent run id.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alad.atomic import ensure_writable_dir, read_json, write_json, write_text
from alad.config import Settings
from alad.data.corpus import load_corpus, sample_split
from alad.errors import AladError
from alad.jobs import finetune_job, with_resolved_init
from alad.modes import MODES
from alad.phases.align import run_alignment
from alad.tasks import TASKS, load_splits, table_header

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    """Where each stage writes, under one root (DVC: `runs/`; Prefect: `runs/flows/<name>`)."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def run_file(self) -> Path:  # the MLflow parent run of this pipeline's data version
        return self.data / "pipeline.json"

    def phase(self, name: str) -> Path:
        return self.root / name

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def registry(self) -> Path:
        return self.root / "registry.json"

    def split(self, task: str, name: str) -> Path:
        return self.data / f"phase3-{name}.{TASKS[task].split_ext}"


def prepared(settings: Settings, layout: Layout) -> Settings:
    """The config with every input pointed at the prepared files (already sampled)."""
    s, d = settings, layout
    task = s.phase3.task
    return s.model_copy(
        update={
            "phase1": s.phase1.model_copy(update={"corpus": str(d.data / "phase1.txt")}),
            "phase2": s.phase2.model_copy(update={"corpus": str(d.data / "phase2.txt")}),
            "phase3": s.phase3.model_copy(
                update={
                    "train": str(d.split(task, "train")),
                    "dev": str(d.split(task, "dev")),
                    "test": str(d.split(task, "test")),
                    "max_eval_examples": None,
                    "init": None,
                }
            ),
        }
    )


def _tracker(settings: Settings) -> Any:
    from alad.tracking import run_tracker  # MLflow loads only when a stage runs

    return run_tracker(settings)


def _parent(settings: Settings, layout: Layout, parent_run_id: str | None) -> str | None:
    if parent_run_id or not settings.tracking.enabled:
        return parent_run_id
    if layout.run_file.is_file():
        return json.loads(layout.run_file.read_text()).get("parent_run_id")
    return None


def _write_texts(texts: list[str], path: Path) -> None:
    # One text per line: the .txt corpus format; newlines inside a text would split it.
    path.write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n", encoding="utf-8")


def stage_prepare(settings: Settings, layout: Layout, parent_run_id: str | None = None) -> dict:
    """Sample the phase 1-2 corpora and the phase-3 splits into `data/`, open the parent run."""
    layout.data.mkdir(parents=True, exist_ok=True)
    s = settings
    counts: dict[str, int] = {}
    for phase in ("phase1", "phase2"):
        cfg = getattr(s, phase)
        texts = load_corpus(cfg.corpus)
        train, held = sample_split(texts, cfg.max_texts, cfg.heldout_fraction, s.seed)
        _write_texts(held + train, layout.data / f"{phase}.txt")
        counts[phase] = len(train) + len(held)
    splits = load_splits(s.phase3, s.seed)
    # The whole training split is kept (it defines the label set); phase 3 subsamples it.
    for name, examples in (("train", splits.train_all), ("dev", splits.dev), ("test", splits.test)):
        TASKS[s.phase3.task].write(examples, layout.split(s.phase3.task, name))
        counts[f"phase3_{name}"] = len(examples)
    tracker = _tracker(s)
    if s.tracking.enabled and parent_run_id is None:
        parent_run_id = tracker.start_pipeline(s, run_name=f"{s.phase3.task}-{s.phase3.mode}")
    result = {
        "parent_run_id": parent_run_id,
        "counts": counts,
        "sources": splits.sources,
        "data_hash": data_hash(layout),
    }
    write_json(result, layout.run_file)
    tracker.log_metrics(parent_run_id, {f"data.{k}": v for k, v in counts.items()})
    return result


def data_hash(layout: Layout) -> str:
    """Content hash of the prepared data files (what DVC also hashes), for registry tags."""
    h = hashlib.sha256()
    for path in sorted(layout.data.glob("*")):
        if path.is_file() and path.name != "pipeline.json":
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


def _align_stage(phase: str, settings: Settings, layout: Layout, parent_run_id: str | None) -> dict:
    s = prepared(settings, layout)
    init = layout.phase("phase1") if phase == "phase2" else None
    tracker, parent = _tracker(s), _parent(s, layout, parent_run_id)
    with tracker.phase_run(parent, phase, getattr(s, phase).model_dump()) as run_id:
        result = run_alignment(s, phase, out=layout.phase(phase), init=init, progress=False)
        summary = {
            "run_id": run_id,
            "before": result.before,
            "after": result.after,
            "history": result.history,
            "stopped_by": result.stopped_by,
            "checkpoint": str(result.checkpoint),
        }
        write_json(summary, layout.phase(phase) / "metrics.json")
        tracker.log_history(run_id, result.history)
        tracker.log_metrics(run_id, {"before": result.before, "after": result.after})
        tracker.log_loss_curve(
            run_id, result.history, ["train_mse", "heldout_mse"], f"{phase}: alignment MSE"
        )
        tracker.log_artifacts(run_id, result.checkpoint / "manifest.json", "checkpoint")
        if s.tracking.enabled and s.tracking.register_model:
            summary["registered"] = _register_adapter(tracker, s, layout, phase, run_id, result)
            write_json(summary, layout.phase(phase) / "metrics.json")
    log.info(result.summary())
    return summary


def _register_adapter(
    tracker: Any, s: Settings, layout: Layout, phase: str, run_id: str, result: Any
) -> dict[str, Any]:
    """The adapter as a registered version with its lineage; champion of its (phase, task)
    only when its held-out MSE is lower than the champion's."""
    from alad.checkpoint import load_checkpoint
    from alad.provenance import git_commit
    from alad.registry import Gate, Registry, adapter_scope

    manifest = load_checkpoint(result.checkpoint).manifest
    task = s.phase3.task if phase == "phase2" else None
    run = json.loads(layout.run_file.read_text()) if layout.run_file.is_file() else {}
    init = {}
    if phase == "phase2" and (layout.phase("phase1") / "metrics.json").is_file():
        init = json.loads((layout.phase("phase1") / "metrics.json").read_text()).get(
            "registered", {}
        )
    lineage = {
        "phase": phase,
        "task": task or "-",
        **{f"data.{k}": v for k, v in manifest["data"].items()},
        "compressed": manifest["compressed"],
        "large": manifest["large"],
        "compressed_fingerprint": manifest["compressed_fingerprint"],
        "large_fingerprint": manifest["large_fingerprint"] or "-",
        # the target: M_L's last layer unless phaseN.teacher / target_layer say otherwise
        "teacher": manifest["teacher"] or manifest["large"],
        "teacher_fingerprint": manifest["teacher_fingerprint"],
        "teacher_version": manifest["teacher_version"] or "-",
        "target_layer": f"{manifest['target_layer']} of {manifest['teacher_layers']}",
        "window": s.adapter.window,
        "hidden": s.adapter.hidden,
        "rank": s.adapter.rank or "full",  # the first layer's rank (full: the paper's)
        "epochs": len(result.history),
        "git_commit": git_commit(),
        "parent_run_id": run.get("parent_run_id") or "-",
        "init": f"{init['name']}/{init['version']}" if init else "-",
    }
    metrics = {"mse": result.after["mse"], "cosine": result.after["cosine"]}
    # MSEs against different targets do not compare: another teacher or layer is its own scope
    paper = manifest["teacher"] is None and manifest["target_layer"] == manifest["teacher_layers"]
    target = None if paper else f"{manifest['teacher_fingerprint'][:8]}-l{manifest['target_layer']}"
    gate = Gate("mse", higher_is_better=False, scope=adapter_scope(phase, task, target))
    done = Registry(tracker).publish(result.checkpoint, metrics, lineage, gate, run_id)
    return {
        "name": done.name,
        "version": done.version,
        "alias": done.alias,
        "promoted": done.promoted,
        "reason": done.reason,
    }


def stage_phase1(settings: Settings, layout: Layout, parent_run_id: str | None = None) -> dict:
    return _align_stage("phase1", settings, layout, parent_run_id)


def stage_phase2(settings: Settings, layout: Layout, parent_run_id: str | None = None) -> dict:
    return _align_stage("phase2", settings, layout, parent_run_id)


def stage_phase3(settings: Settings, layout: Layout, parent_run_id: str | None = None) -> dict:
    """Fine-tune, test and record (alad.jobs.finetune_job) in the phase-3 MLflow run."""
    s = prepared(settings, layout)
    if MODES[s.phase3.mode].adapter and s.phase3.init is None:  # phase 2's adapter, unless
        s = s.model_copy(  # phase3.init names one (a folder or a registry URI)
            update={"phase3": s.phase3.model_copy(update={"init": str(layout.phase("phase2"))})}
        )
    s = with_resolved_init(s)
    tracker, parent = _tracker(s), _parent(s, layout, parent_run_id)
    with tracker.phase_run(parent, "phase3", s.phase3.model_dump()) as run_id:
        result = finetune_job(
            s, out=layout.phase("phase3"), progress=False, tracker=tracker, run_id=run_id
        )
    return {
        "run_id": run_id,
        "dev": result.dev,
        "history": result.history,
        "model_dir": str(result.model_dir),
    }


def stage_evaluate(settings: Settings, layout: Layout, parent_run_id: str | None = None) -> dict:
    """The Table-1 row of phase 3's test scores (phase 3 tested its saved model), the test
    metrics, loss-curve plots of every phase; logged in the evaluate run (no timing:
    speed-ups come from `alad bench latency` or `alad evaluate --speed`)."""
    from alad.plots import plot_histories

    s = prepared(settings, layout)
    tracker, parent = _tracker(s), _parent(s, layout, parent_run_id)
    with tracker.phase_run(parent, "evaluate", {}) as run_id:
        report = read_json(layout.phase("phase3") / "metrics.json").get("test")
        if not isinstance(report, dict) or "table_row" not in report:
            raise AladError(
                f"{layout.phase('phase3') / 'metrics.json'}: no test scores; "
                "run the phase3 stage first (`alad stage phase3`)"
            )
        table = f"{table_header(s.phase3.task)}\n{report['table_row']}\n"
        write_text(table, layout.eval / "table.md")
        scalars = {k: v for k, v in report.items() if isinstance(v, int | float)}
        write_json({"test": scalars}, layout.eval / "metrics.json")
        plots = plot_histories(layout, layout.eval / "plots")
        tracker.log_metrics(run_id, {"test": scalars})
        tracker.log_artifacts(run_id, layout.eval / "table.md", "evaluation")
        for plot in plots:
            tracker.log_artifacts(run_id, plot, "plots")
        if parent:
            tracker.log_metrics(parent, {"test": scalars})
    print(table)
    return {"run_id": run_id, "test": scalars, "table": table}


def stage_register(settings: Settings, layout: Layout, parent_run_id: str | None = None) -> dict:
    """Register phase 3's model and run the promotion gate on its validation score."""
    s = settings
    if not (s.tracking.enabled and s.tracking.register_model):
        result = {"registered": False, "reason": "tracking or registration disabled"}
        write_json(result, layout.registry)
        return result
    from alad.provenance import git_commit
    from alad.registry import Gate, Registry
    from alad.tracking import params_hash

    tracker, parent = _tracker(s), _parent(s, layout, parent_run_id)
    model_dir = layout.phase("phase3") / "model"
    dev = json.loads((model_dir / "manifest.json").read_text())["dev"]
    run = json.loads(layout.run_file.read_text()) if layout.run_file.is_file() else {}
    tags = {
        "git_commit": git_commit(),
        "data_hash": run.get("data_hash", "unknown"),
        "params_hash": params_hash(s.model_dump(mode="json")),
    }
    phase2 = layout.phase("phase2") / "metrics.json"
    if MODES[s.phase3.mode].adapter and phase2.is_file():  # the adapter it started from
        adapter = json.loads(phase2.read_text()).get("registered")
        if adapter:
            tags["adapter"] = f"{adapter['name']}/{adapter['version']}"
    metrics = {k: v for k, v in dev.items() if isinstance(v, int | float)}
    gate = Gate("main", s.tracking.promotion_margin)
    done = Registry(tracker).publish(
        model_dir, metrics, tags, gate, parent, task=s.phase3.task, compressed=s.models.compressed
    )
    result = {
        "registered": True,
        "name": done.name,
        "version": done.version,
        "promoted": done.promoted,
        "reason": done.reason,
        "previous": done.previous,
        "parent_run_id": parent,
    }
    write_json(result, layout.registry)
    if parent:
        tracker.end(parent)
    print(
        f"registered {done.name} v{done.version}: "
        f"{'promoted to @champion' if done.promoted else 'not promoted'} ({done.reason})"
    )
    return result


Stage = Callable[[Settings, Layout, str | None], dict]


def _root_checked(stage: Stage) -> Stage:
    """`stage`, after a check that the layout's root takes files (every door runs stages from
    STAGES: `alad stage`, the pipeline, the Prefect flow)."""

    @functools.wraps(stage)
    def checked(settings: Settings, layout: Layout, parent_run_id: str | None = None) -> dict:
        ensure_writable_dir(layout.root, "pipeline root", "pass another --root or runs_dir")
        return stage(settings, layout, parent_run_id)

    return checked


STAGES: dict[str, Stage] = {
    name: _root_checked(stage)
    for name, stage in {
        "prepare": stage_prepare,
        "phase1": stage_phase1,
        "phase2": stage_phase2,
        "phase3": stage_phase3,
        "evaluate": stage_evaluate,
        "register": stage_register,
    }.items()
}


def run_pipeline(settings: Settings, layout: Layout) -> dict[str, dict]:
    """Every stage in order, in this process (what the Prefect flow does task by task)."""
    results: dict[str, dict] = {}
    parent = None
    for name, stage in STAGES.items():
        results[name] = stage(settings, layout, parent)
        parent = parent or results[name].get("parent_run_id")
    return results


__all__ = ["STAGES", "Layout", "prepared", "run_pipeline"]
