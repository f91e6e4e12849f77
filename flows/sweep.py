"""The Table-1 sweep as a Prefect flow: one task per cell, cheapest first, progress in the logs.

    make up
    prefect deployment run 'alad-sweep/table1' --watch                 # sweeps/table1.yaml
    prefect deployment run 'alad-sweep/table1' --param 'tasks=["pos"]' --param max_minutes=120
    prefect deployment run 'alad-sweep/table1' --param workers=4       # a local Dask cluster
    prefect deployment run 'alad-sweep/table1' --param address=tcp://scheduler:8786

The same cells as `alad sweep run` and `dvc repro sweeps/dvc.yaml` (alad/sweep.py): a cell whose
result JSON exists is skipped, so a flow run picks up where any earlier run, on any machine,
stopped. By default cells run one at a time in the flow's process (each already uses every core
of a small machine). With `workers > 1` or a scheduler `address` they run on a Dask cluster
through prefect-dask's DaskTaskRunner: each shared alignment (phase 1 per (M_C, M_L, n), phase 2
per task) is its own task, and the cells that need it wait for it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from pipeline import transient
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.futures import PrefectFuture, as_completed
from prefect.states import Completed, State

from alad import stopping
from alad.sweep import (
    Cell,
    CellTaken,
    align_cell,
    cells,
    check_limits,
    check_outputs,
    load_grid,
    plan,
    run_cell,
    run_sweep,
)

RETRIES = {"retries": 1, "retry_delay_seconds": 5, "retry_condition_fn": transient}


def _cell(grid: str, key: str) -> Cell:
    return next(c for c in cells(load_grid(Path(grid))) if c.key == key)


def _threads(threads: int | None) -> None:
    if threads:  # several cells on one machine share its cores
        import torch

        torch.set_num_threads(threads)


@task(**RETRIES, cache_policy=NONE, task_run_name="align/{phase}/{name}")
def align_task(grid: str, key: str, phase: str, name: str, threads: int | None = None) -> str:
    """A shared alignment (phase 1, or phase 2 on top of it): trained once, resumable."""
    _threads(threads)
    align_cell(_cell(grid, key), upto=phase)
    return name


@task(**RETRIES, cache_policy=NONE, task_run_name="{name}")
def run_cell_task(
    grid: str,
    key: str,
    name: str,
    threads: int | None = None,
    deadline: float | None = None,
) -> dict[str, Any]:
    """One cell (phases 1-2 first when it has an adapter; they resume from checkpoints).

    A cell the time box stops saves its state and ends as a Completed-type state named
    "Stopped" (not Failed: it did what the box asked, and the next run resumes it); a cell
    another runner holds or finished (its claim, alad/sweep/run.py) as one named "Skipped"."""
    if deadline is not None and time.time() > deadline:  # the time box: start nothing new
        return {"key": key, "skipped": True}
    _threads(threads)
    try:  # on a cluster each cell keeps the box itself; in one process run_sweep sets it
        with stopping.deadline(None if deadline is None else (deadline - time.time()) / 60):
            record = run_cell(_cell(grid, key))
    except CellTaken as exc:
        get_run_logger().info("%s; skipping it", exc)
        summary = {"key": key, "skipped": True, "taken": str(exc)}
        return Completed(data=summary, name="Skipped", message=str(exc))
    except stopping.Stopped as exc:
        if exc.reason != "the time box":
            raise  # a SIGTERM stops the flow run too
        get_run_logger().info("%s: %s", name, exc)
        summary = {"key": key, "skipped": True, "stopped": str(exc)}
        return Completed(data=summary, name="Stopped", message=str(exc))
    get_run_logger().info(
        "%s: dev %.4f, test %.4f (%.0f s)",
        name,
        record["dev"]["main"],
        record["test"]["main"],
        record["seconds"],
    )
    return {
        "key": key,
        "test": record["test"]["main"],
        "seconds": record["seconds"],
        "pid": os.getpid(),
    }


def _stopped_again(state: State) -> dict[str, Any]:
    """In one process the box belongs to run_sweep: a cell it stopped ends the loop there."""
    summary = state.result()  # a failed cell raises here, as a direct call would
    if "stopped" in summary:
        raise stopping.Stopped(summary["stopped"], "the time box")
    if "taken" in summary:  # run_sweep skips it, as it does a direct call's
        raise CellTaken(summary["taken"])
    return summary


def dask_runner(workers: int, address: str | None):
    """An existing cluster at `address`, else a local one: `workers` processes, one cell each."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "dashboard_address": None}
    )


@flow(name="alad-sweep-cells")
def sweep_cells(
    grid: str,
    todo_keys: list[str],
    threads: int | None,
    deadline: float | None,
) -> list[dict[str, Any]]:
    """Submit the shared alignments, then every cell after the alignment it needs."""
    logger = get_run_logger()
    by_key = {c.key: c for c in cells(load_grid(Path(grid)))}
    aligned: dict[Path, PrefectFuture] = {}
    futures = []
    for key in todo_keys:
        cell, wait = by_key[key], []
        if cell.align is not None:
            for phase in ("phase1", "phase2"):
                folder = cell.align_dir(phase)
                if folder not in aligned:
                    name = f"{cell.compressed}-n{cell.window}" + (
                        f"/{cell.task}" if phase == "phase2" else ""
                    )
                    aligned[folder] = align_task.submit(
                        grid, key, phase, name, threads, wait_for=list(wait)
                    )
                wait = [aligned[folder]]
        futures.append(run_cell_task.submit(grid, key, cell.name, threads, deadline, wait_for=wait))
    ran, failed = [], []
    for done, future in enumerate(as_completed(futures), 1):
        try:
            summary = future.result()
        except Exception as exc:  # noqa: BLE001 - the other cells go on; the flow fails after
            failed.append(future.task_run_id)
            logger.error("task run %s failed: %s", future.task_run_id, exc)
            continue
        if not summary.get("skipped"):
            ran.append(summary)
        logger.info("%d/%d submitted cells finished", done, len(futures))
    if failed:
        raise RuntimeError(f"{len(failed)} cells failed; their task runs say why")
    return ran


@flow(name="alad-sweep", log_prints=True)
def alad_sweep(
    grid: str = "sweeps/table1.yaml",
    tasks: list[str] | None = None,
    max_cells: int | None = None,
    max_minutes: float | None = None,
    workers: int = 1,
    address: str | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run the grid's cells that have no result yet; returns what ran and the progress.

    workers > 1 or address: on a Dask cluster (local: `workers` processes; each cell gets
    `threads` torch threads, by default this machine's cores / workers)."""
    logger = get_run_logger()
    check_limits(max_cells, max_minutes)  # todo[:-1] would be all cells but one
    cells_grid = load_grid(Path(grid))
    todo, progress = plan(cells_grid, tasks)
    line = progress.line()
    logger.info("%s: %s; %d to run, cheapest first", grid, line, len(todo))
    ran: list[dict[str, Any]] = []
    if workers > 1 or address:
        if threads is None and not address:
            threads = max(1, (os.cpu_count() or 1) // workers)
        deadline = time.time() + 60 * max_minutes if max_minutes is not None else None
        # a cell whose teacher waits for `large` seeds runs in a later flow run, once they are done
        ready = [c for c in todo if not c.waits_for][:max_cells]
        keys = [c.key for c in ready]
        check_outputs(cells_grid, ready)  # before any cell runs (run_sweep's too)
        runner = dask_runner(workers, address)
        ran = sweep_cells.with_options(task_runner=runner)(grid, keys, threads, deadline)
        line = plan(cells_grid, tasks)[1].line()
    else:
        for _, summary, line in run_sweep(
            cells_grid,
            tasks,
            max_cells,
            max_minutes,
            run=lambda cell: _stopped_again(
                run_cell_task(grid, cell.key, cell.name, threads, return_state=True)
            ),
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


if __name__ == "__main__":  # python flows/sweep.py [GRID] [WORKERS]: without a deployment
    import sys

    alad_sweep(
        grid=sys.argv[1] if len(sys.argv) > 1 else "sweeps/table1.yaml",
        workers=int(sys.argv[2]) if len(sys.argv) > 2 else 1,
    )
