"""The Table-1 sweep: a grid of cells (task x compressed model x mode x window x seed), each a
phase-3 fine-tuning + test evaluation, resumable across machines through committed results.

    alad sweep list sweeps/table1.yaml            # every cell, done or not, cheapest first
    alad sweep run sweeps/table1.yaml [--task pos] [--max-cells 5] [--max-minutes 90]
    prefect deployment run 'alad-sweep/table1'    # the same cells, one Prefect task each
    dvc repro sweep                               # the same, one DVC stage per task

A cell's identity is the hash of its fully resolved config (`Cell.key`); its result is
`<results>/<task>/<key>.json`, written atomically when the cell finishes and meant to be
committed to git. A rerun skips every cell whose result exists, so a grid can be completed in
several runs on different machines. Runners sharing a filesystem (two `alad sweep run`, Dask
workers) run each cell once: a runner claims a cell before running it
(`<runs>/cells/<task>/<key>.claim`, alad.atomic.claim) and the others skip it; a shared
alignment is trained by the first runner that needs it while the others wait for it.
Phase 1 is trained once per (M_C, M_L, n) and phase 2 once per (M_C, M_L, n, task), both with
the grid's `align_seed`, under `<runs>/align/`; every AlAd cell of every seed starts from that
phase-2 adapter (METHOD.md's phases 1-2 are not re-run per seed: the seeds measure phase 3's
variance).

The package, top to bottom: grid.py (the sweep file), cell.py (its cells and their keys),
teachers.py ('@large' / '@probe' and the zero-shot cell), progress.py (done / total, the ETA),
run.py (running cells, the sweep, registering the best seeds).
"""

from alad.sweep.cell import ZERO_SHOT_COST, Cell, adapter_shapes, cells, key_config
from alad.sweep.grid import (
    LARGE_TEACHER,
    TEACHER_CELLS,
    TEACHER_KEYS,
    Ablation,
    Grid,
    TaskAxis,
    Variant,
    load_grid,
)
from alad.sweep.progress import Progress, check_limits, plan
from alad.sweep.run import (
    CellTaken,
    align_cell,
    check_outputs,
    file_sha256,
    register_best,
    run_cell,
    run_sweep,
)
from alad.sweep.teachers import best_teacher, ensure_teacher, teacher_record, zero_shot

__all__ = [
    "LARGE_TEACHER",
    "TEACHER_CELLS",
    "TEACHER_KEYS",
    "Ablation",
    "Grid",
    "TaskAxis",
    "Variant",
    "load_grid",
    "ZERO_SHOT_COST",
    "Cell",
    "adapter_shapes",
    "cells",
    "key_config",
    "best_teacher",
    "ensure_teacher",
    "teacher_record",
    "zero_shot",
    "Progress",
    "check_limits",
    "plan",
    "CellTaken",
    "align_cell",
    "check_outputs",
    "file_sha256",
    "register_best",
    "run_cell",
    "run_sweep",
]
