"""The sweep flow on tiny models against a real (temporary) Prefect server: one task per cell."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "flows"))


def test_sweep_flow_runs_each_missing_cell_once_as_a_task(prefect_server, tiny_grid):
    import anyio
    from prefect.client.orchestration import get_client
    from sweep import alad_sweep

    from alad.report import load_results
    from alad.sweep import cells, load_grid

    grid = load_grid(tiny_grid)
    # two of the six cells are already done (as if committed by a run on another machine)
    first = alad_sweep(grid=str(tiny_grid), max_cells=2)
    assert len(first["ran"]) == 2 and first["progress"].startswith("2/6")
    state = alad_sweep(grid=str(tiny_grid), return_state=True)
    assert state.is_completed()
    result = state.result()
    assert result["progress"].startswith("6/6") and len(result["ran"]) == 4
    assert {r.record["key"] for r in load_results(grid.results)} == {c.key for c in cells(grid)}

    async def task_names():
        async with get_client() as client:
            runs = await client.read_task_runs()
            return sorted(r.name for r in runs if r.flow_run_id == state.state_details.flow_run_id)

    names = anyio.run(task_names)
    todo = sorted(c.name for c in cells(grid) if c.key not in {r["key"] for r in first["ran"]})
    assert names == todo  # one task per remaining cell, named after it


def test_sweep_flow_on_a_two_worker_dask_cluster_runs_each_cell_once(
    prefect_server, tiny_grid, monkeypatch
):
    import os
    from datetime import UTC, datetime

    import anyio
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings
    from sweep import alad_sweep

    from alad.report import load_results
    from alad.sweep import cells, load_grid

    # the Dask workers are separate processes: they find the test server through the environment
    monkeypatch.setenv("PREFECT_API_URL", get_current_settings().api.url)
    grid = load_grid(tiny_grid)
    start = datetime.now(UTC)
    state = alad_sweep(grid=str(tiny_grid), workers=2, return_state=True)
    assert state.is_completed()
    result = state.result()
    every = sorted(c.key for c in cells(grid))
    assert result["progress"].startswith("6/6")
    assert sorted(r["key"] for r in result["ran"]) == every  # each cell ran, and once
    assert sorted(r.record["key"] for r in load_results(grid.results)) == every
    pids = {r["pid"] for r in result["ran"]}
    assert len(pids) == 2 and os.getpid() not in pids  # both worker processes took cells

    async def task_names():
        async with get_client() as client:
            return [r.name for r in await client.read_task_runs() if r.created >= start]

    names = anyio.run(task_names)
    cell_names = sorted(c.name for c in cells(grid))
    assert sorted(n for n in names if n in cell_names) == cell_names  # no cell ran twice
    # the alad-frozen cells share one phase 1 and one phase 2, each run once, before them
    assert sorted(n for n in names if n.startswith("align/")) == [
        n for n in sorted(names) if n.startswith("align/phase1/")
    ] + [n for n in sorted(names) if n.startswith("align/phase2/")]
    assert sum(n.startswith("align/phase1/") for n in names) == 1
    assert sum(n.startswith("align/phase2/") for n in names) == 1


def test_a_time_box_ends_the_flow_inside_a_cell_without_a_retry(
    prefect_server, tiny_grid, monkeypatch
):
    import anyio
    from prefect.client.orchestration import get_client
    from sweep import alad_sweep

    from alad import stopping
    from alad.sweep import load_grid

    # The box ends just after the first cell started (whatever the machine's speed): the
    # sweep's check before that cell passes, every later check says "the time box".
    checks = []

    def box_ends_after_the_first_check():
        checks.append(1)
        return None if len(checks) == 1 else "the time box"

    monkeypatch.setattr(stopping, "requested", box_ends_after_the_first_check)
    grid = load_grid(tiny_grid)
    state = alad_sweep(grid=str(tiny_grid), max_minutes=60, return_state=True)
    assert state.is_completed()  # the box is not a failure ...
    assert state.result()["ran"] == [] and state.result()["progress"].startswith("0/6")
    assert len(list(grid.runs.rglob("state/state.pt"))) == 1  # ... and the cell saved its state

    async def cell_runs():
        async with get_client() as client:
            runs = await client.read_task_runs()
            return [r for r in runs if r.flow_run_id == state.state_details.flow_run_id]

    runs = anyio.run(cell_runs)
    assert len(runs) == 1 and runs[0].run_count == 1  # stopped on request: not retried
    assert runs[0].state.is_completed() and runs[0].state.name == "Stopped"  # not Failed
