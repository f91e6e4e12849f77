"""The Table-1 sweep as a Prefect flow: one task per cell, cheapest first, progress in the logs.

    make up
    prefect deployment run 'alad-sweep/table1' --watch                 # sweeps/table1.yaml
    prefect deployment run 'alad-sweep/table1' --param 'tasks=["pos"]' --param max_minutes=120

The same cells as `alad sweep run` and `dvc repro sweeps/dvc.yaml` (alad/sweep.py): a cell whose
result JSON exists is skipped, so a flow run picks up where any earlier run, on any machine,
stopped. Cells run one at a time: each already uses both cores of this machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline import transient
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from alad.sweep import cells, load_grid, plan, run_cell, run_sweep


@task(
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=transient,
    cache_policy=NONE,
    task_run_name="{name}",
)
def run_cell_task(grid: str, key: str, name: str) -> dict[str, Any]:
    """One cell (phases 1-2 first when it has an adapter; they resume from checkpoints)."""
    cell = next(c for c in cells(load_grid(Path(grid))) if c.key == key)
    record = run_cell(cell)
    get_run_logger().info(
        "%s: dev %.4f, test %.4f (%.0f s)",
        name,
        record["dev"]["main"],
        record["test"]["main"],
        record["seconds"],
    )
    return {"key": key, "test": record["test"]["main"], "seconds": record["seconds"]}


@flow(name="alad-sweep", log_prints=True)
def alad_sweep(
    grid: str = "sweeps/table1.yaml",
    tasks: list[str] | None = None,
    max_cells: int | None = None,
    max_minutes: float | None = None,
) -> dict[str, Any]:
    """Run the grid's cells that have no result yet; returns what ran and the progress."""
    logger = get_run_logger()
    cells_grid = load_grid(Path(grid))
    todo, progress = plan(cells_grid, tasks)
    line = progress.line()
    logger.info("%s: %s; %d to run, cheapest first", grid, line, len(todo))
    ran: list[dict[str, Any]] = []
    for _, summary, line in run_sweep(
        cells_grid,
        tasks,
        max_cells,
        max_minutes,
        run=lambda cell: run_cell_task(grid, cell.key, cell.name),
    ):
        ran.append(summary)
        logger.info("%s", line)
    create_markdown_artifact(
        key="sweep-progress",
        markdown=f"**{grid}**: {line}\n\n"
        + "\n".join(
            f"- `{r['key']}` test {100 * r['test']:.1f} ({r['seconds']:.0f} s)" for r in ran
        ),
        description="cells run by this flow run",
    )
    return {"ran": ran, "progress": line}
