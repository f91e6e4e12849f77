"""The alad pipeline as a Prefect flow: one task per stage, the same functions `dvc repro` runs.

    make up                                   # Prefect server, MLflow server, deployment runner
    prefect deployment run 'alad-pipeline/demo' --param task=ner --param mode=alad-joint --watch

Why call the library stage functions (alad/stages.py) and not `dvc repro`: Prefect then sees
each stage as a task with its own retries, logs and result (the MLflow run ids), and one flow
run can carry an experiment's parameters without editing params.yaml. `dvc repro` runs the same
functions through `alad stage <name>`, so there is one code path and two schedulers.
Each experiment writes under runs/flows/<experiment>/; `dvc repro` owns runs/ itself.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NONE

from alad.config import Settings, load_settings
from alad.stages import STAGES, Layout


def forward_alad_logs() -> None:
    """alad's own log lines (one per epoch of every phase) in the task-run logs: the `alad`
    logger gets the handlers Prefect gives its "extra" loggers (what
    PREFECT_LOGGING_EXTRA_LOGGERS=alad does when set before Prefect sets up logging)."""
    target = logging.getLogger("alad")
    target.setLevel(logging.INFO)
    for handler in logging.getLogger("prefect.extra").handlers:
        if handler not in target.handlers:
            target.addHandler(handler)


def transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry crashes and flaky I/O, not errors that would fail the same way again."""
    from alad.errors import user_errors
    from alad.stopping import Stopped

    try:
        state.result()
    except (*user_errors(), Stopped):  # a stop on request is not a crash: the next run resumes
        return False
    except Exception:
        return True
    return True


@task(
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=transient,
    cache_policy=NONE,
    task_run_name="{stage}",
)
def run_stage(stage: str, settings: Settings, root: str, parent_run_id: str | None) -> dict:
    """One stage. A retry is safe: phases resume from their last checkpoint."""
    forward_alad_logs()
    result = STAGES[stage](settings, Layout(Path(root)), parent_run_id)
    _artifacts(stage, result)
    get_run_logger().info(
        "%s done: %s",
        stage,
        {k: v for k, v in result.items() if k.endswith(("run_id", "version", "reason"))},
    )
    return result


def _artifacts(stage: str, result: dict[str, Any]) -> None:
    """The evaluation table (markdown) and links to the MLflow run / registered version."""
    import os

    ui = os.environ.get("MLFLOW_UI_URL") or os.environ.get("MLFLOW_TRACKING_URI", "")
    ui = ui if ui.startswith("http") else ""  # a SQLite store has no page to link to
    if stage == "evaluate":
        create_markdown_artifact(
            key="evaluation", markdown=result["table"], description="test scores (Table-1 row)"
        )
    if ui and result.get("run_id"):
        from mlflow import MlflowClient

        experiment = MlflowClient(ui).get_run(result["run_id"]).info.experiment_id
        create_link_artifact(
            key=f"mlflow-{stage}",
            link=f"{ui}/#/experiments/{experiment}/runs/{result['run_id']}",
            description=f"MLflow run of {stage}",
        )
    for what in (result.get("registered"), result if stage == "register" else None):
        if ui and isinstance(what, dict) and what.get("version"):
            create_link_artifact(
                key=f"model-{stage}",
                link=f"{ui}/#/models/{what['name']}/versions/{what['version']}",
                description=f"registered {what['name']} v{what['version']}",
            )


def experiment_name(task_name: str, compressed: str, mode: str, window: int) -> str:
    return re.sub(r"[^a-z0-9.-]+", "-", f"{task_name}-{compressed}-{mode}-n{window}".lower())


@flow(name="alad-pipeline", log_prints=True)
def alad_pipeline(
    task: str = "ner",
    compressed: str = "minilm-l6",
    mode: str = "alad-joint",
    window: int = 5,
    profile: str = "demo",
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """data prep -> phase 1 -> phase 2 -> phase 3 -> evaluation -> registration + promotion."""
    keys = [
        f"phase3.task={task}",
        f"models.compressed={compressed}",
        f"phase3.mode={mode}",
        f"adapter.window={window}",
    ]
    settings = load_settings(profile=profile, overrides=keys + list(overrides or []))
    root = str(settings.runs_dir / "flows" / experiment_name(task, compressed, mode, window))
    results: dict[str, Any] = {"root": root}
    parent = None
    for stage in STAGES:
        results[stage] = run_stage(stage, settings, root, parent)
        parent = parent or results[stage].get("parent_run_id")
    results["parent_run_id"] = parent
    return results
