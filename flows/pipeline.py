"""The alad pipeline as a Prefect flow: one task per stage, the same functions `dvc repro` runs.

    make up                                   # Prefect server, MLflow server, deployment runner
    prefect deployment run 'alad-pipeline/demo' --param task=ner --param mode=alad-joint --watch

Why call the library stage functions (alad/pipeline.py) and not `dvc repro`: Prefect then sees
each stage as a task with its own retries, logs and result (the MLflow run ids), and one flow
run can carry an experiment's parameters without editing params.yaml. `dvc repro` runs the same
functions through `alad stage <name>`, so there is one code path and two schedulers.
Each experiment writes under runs/flows/<experiment>/; `dvc repro` owns runs/ itself.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from alad.config import Settings, load_settings
from alad.pipeline import STAGES, Layout


def transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry crashes and flaky I/O, not errors that would fail the same way again."""
    from alad.errors import user_errors

    try:
        state.result()
    except user_errors():
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
    result = STAGES[stage](settings, Layout(Path(root)), parent_run_id)
    get_run_logger().info(
        "%s done: %s",
        stage,
        {k: v for k, v in result.items() if k.endswith(("run_id", "version", "reason"))},
    )
    return result


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
