"""A grid's cells: each one phase-3 run (+ its phases 1-2), named by the hash of its resolved
config (`Cell.key`), cheapest first.

    alad sweep list sweeps/table1.yaml            # cells(load_grid(...)), done or not
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field, replace
from functools import cached_property, partial
from pathlib import Path
from typing import Any

from alad import results
from alad.checkpoint import saved_progress
from alad.config import ConfigError, Settings, load_settings
from alad.models.catalog import training_cost
from alad.modes import MODES
from alad.results import KEY_OMITTED_AT_DEFAULT, NOT_IN_KEY
from alad.sweep.grid import (
    LARGE_TEACHER,
    TEACHER_CELLS,
    TEACHER_KEYS,
    Grid,
    TaskAxis,
    Variant,
    dotted,
)
from alad.sweep.teachers import best_teacher
from alad.tasks import TASKS


def key_config(settings: Settings) -> dict[str, Any]:
    """The part of a resolved config that decides what a run computes (alad.results.key_config:
    the key rules, shared with the result files' check)."""
    return results.key_config(
        settings.model_dump(mode="json", exclude=NOT_IN_KEY), KEY_OMITTED_AT_DEFAULT
    )


@dataclass(frozen=True)
class Cell:
    """One phase-3 run of the grid."""

    task: str
    compressed: str
    mode: str
    window: int | None  # None: no adapter
    seed: int
    settings: Settings
    align: Settings | None  # phases 1-2 config (align_seed), None without adapter
    grid: Grid = field(repr=False)
    variant: str | None = None  # the grid's variant (None: a Table-1 cell)
    teacher: Cell | None = field(default=None, repr=False)  # the cell "@large"/"@probe" named
    waits_for: str | None = None  # "@large" not resolved yet: the group whose seeds it waits for
    zero_shot: bool = False  # no phase 3: M_C + the phase-2 adapter + the teacher's head

    @cached_property
    def key(self) -> str:
        """The hash of the config (alad.results.cell_key; a result file is checked against it),
        a `large` cell's model as teacher named by that cell's key, not by its folder."""
        config = self._named(self.settings.model_dump(mode="json", exclude=NOT_IN_KEY))
        return results.cell_key(
            config, self.align is not None, KEY_OMITTED_AT_DEFAULT, zero_shot=self.zero_shot
        )

    def _named(self, config: dict[str, Any]) -> dict[str, Any]:
        """`config` with a `large` cell's model as teacher named by that cell's key, not by
        its folder on this machine."""
        if self.teacher is not None:
            for dotted in TEACHER_KEYS:
                *parents, leaf = dotted.split(".")
                section = config
                for part in parents:
                    section = section.get(part) or {}
                if section.get(leaf) == str(self.teacher.model_dir):  # "@large:<key>"
                    section[leaf] = f"@{self.teacher.mode}:{self.teacher.key}"
        return config

    @property
    def group(self) -> str:
        """The Table-1 cell this run is one seed of (+ the grid's variant)."""
        n = f"-n{self.window}" if self.window else ""
        variant = f"+{self.variant}" if self.variant else ""
        return f"{self.task}/{self.compressed}/{self.mode}{n}{variant}"

    @property
    def name(self) -> str:
        return f"{self.group}/s{self.seed}"

    @property
    def own_result_path(self) -> Path:
        """Where this grid writes the cell's result."""
        return self.grid.results / self.task / f"{self.key}.json"

    @property
    def result_path(self) -> Path:
        """The cell's result: this grid's, else a reused grid's of the same key."""
        own = self.own_result_path
        if own.is_file():
            return own
        found = (r / self.task / f"{self.key}.json" for r in self.grid.reuse)
        return next((f for f in found if f.is_file()), own)

    @property
    def out(self) -> Path:
        return self.grid.runs / "cells" / self.task / self.key

    @property
    def claim_path(self) -> Path:
        """The lock file of the runner running this cell, beside its run folder."""
        return self.out.with_name(f"{self.key}.claim")

    @property
    def model_dir(self) -> Path:
        return self.out / "model"

    @property
    def model_ready(self) -> bool:
        """Its model folder holds the finished run: the model of a run still training (or
        stopped: `state/` beside it) is the best epoch so far, not the cell's model."""
        finished = (self.out / "metrics.json").is_file()
        return finished and (self.model_dir / "manifest.json").is_file()

    def align_dir(self, phase: str) -> Path:
        assert self.align is not None
        a = self._named(key_config(self.align))
        parts = {"models": a["models"], "adapter": a["adapter"], "seed": a["seed"]}
        k1 = results.config_hash({**parts, "phase1": a["phase1"]})
        if phase == "phase1":
            return self.grid.runs / "align" / f"phase1-{k1}"
        k2 = results.config_hash({"phase1": k1, "phase2": a["phase2"]})
        return self.grid.runs / "align" / f"phase2-{k2}"

    @property
    def stored_phase1(self) -> Path | None:
        """Where the committed copy of this cell's phase-1 adapter lives (None: no store)."""
        store = self.grid.alignments
        return store / self.align_dir("phase1").name if store is not None else None

    @property
    def done(self) -> bool:
        return self.result_path.is_file()

    def fraction_done(self) -> float:
        """The share of this unfinished cell's phase 3 that a saved state already holds (a cell
        stopped inside a long epoch resumes there): 0 without one."""
        p = saved_progress(self.out / "state")
        try:
            return min(1.0, (p["epoch"] + p["step"] / p["steps"]) / p["epochs"]) if p else 0.0
        except (KeyError, TypeError, ZeroDivisionError):
            return 0.0

    @property
    def cost(self) -> float:
        """Relative cost (orders cells; the ETA scales it by measured seconds)."""
        s = self.settings.phase3
        mode = MODES[self.mode]
        examples = s.max_train_examples or 1000
        task = TASKS[self.task]
        large = self.settings.models.large
        per_example = training_cost(mode.model(self.compressed, large)) * mode.cost
        if mode.joint_teacher:  # SLAD: + M_L's forward and backward every step (an estimate)
            per_example += training_cost(large) * MODES["large"].cost
        cost = per_example * task.cost * examples * (s.epochs or task.epochs) / 1000
        return cost * (ZERO_SHOT_COST if self.zero_shot else 1.0)


# A zero-shot cell only scores dev and test (its phase 2 is shared): ~ an epoch's forward passes
ZERO_SHOT_COST = 0.05


def _settings(dotted: dict[str, Any], source: str) -> Settings:
    """The validated config of {"phase3.lr": 1e-4, ...}. params.yaml is not read: a grid file
    alone defines its cells (the same keys on every machine). `source` names them in errors."""
    nested: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return load_settings(params=Path(os.devnull), overrides=nested, source=source)


def cells(grid: Grid, tasks: list[str] | None = None, only: list[str] | None = None) -> list[Cell]:
    """Every cell of the grid (optionally of some tasks, or whose name matches one of the
    shell patterns `only`, e.g. "pos/mpnet-base/large/*"), cheapest first; cells waiting for
    their teacher (`@large` whose seeds are not all done) last."""
    out: list[Cell] = []
    for task, axis in grid.tasks.items():
        if not tasks or task in tasks:
            out += _task_cells(grid, task, axis)
    keys = [c.key for c in out]
    if len(set(keys)) != len(keys):
        raise ConfigError("the grid lists the same cell twice (same config, same seed)")
    if only:
        out = [c for c in out if any(fnmatch.fnmatchcase(c.name, pat) for pat in only)]
    return sorted(out, key=lambda c: (c.waits_for is not None, c.cost, c.task, c.group, c.seed))


def _task_cells(grid: Grid, task: str, axis: TaskAxis) -> list[Cell]:
    """One task's cells: its `large` seeds, then every variant x M_C x mode (+ the ablation)."""
    where = f"{grid._source}, task {task}"
    base = {
        **dotted(grid.set),
        "models.large": grid.large,
        "phase3.task": task,
        "phase3.train": axis.train,
        "phase3.dev": axis.dev,
        "phase3.test": axis.test,
        "phase2.corpus": axis.train,
        **dotted(axis.set),
    }
    seeds = axis.seeds or grid.seeds
    if base.get("phase3.distill.teacher") in TEACHER_CELLS:
        raise ConfigError(
            f"{where}: phase3.distill.teacher '{base['phase3.distill.teacher']}' is set for every "
            "cell, the `large` cells included (they would distil from themselves); set it in a "
            "variant"
        )
    make = partial(_cell, grid, task, base, where)
    variants = grid.variants or {None: Variant()}
    aimed = {p for v in variants.values() for p in TEACHER_CELLS if p in v.set_of(task).values()}
    # M_L's cells: `large` always, `probe` where a variant aims at it
    of_ml = {
        p: [make(grid.large, mode, None, s) for s in (grid.large_seeds or seeds)]
        for p, mode in TEACHER_CELLS.items()
        if axis.large and (p == LARGE_TEACHER or p in aimed)
    }
    # read only when a variant aims: the best-dev seed, or what the choice waits for
    teachers = {p: best_teacher(c) for p, c in of_ml.items() if p in aimed}
    out = [c for group in of_ml.values() for c in group]
    for variant, spec in variants.items():
        for p in TEACHER_CELLS:
            if p not in teachers and p in spec.set_of(task).values():
                raise ConfigError(
                    f"{where}: variant {variant} aims at '{p}', the task's `{TEACHER_CELLS[p]}` "
                    f"cell, and the task runs none (tasks.{task}.large is false)"
                )
        for compressed in axis.compressed or grid.compressed:
            for mode in spec.modes or axis.modes or grid.modes:
                window = grid.window if MODES[mode].adapter else None
                for seed in spec.seeds_of(task, compressed, mode) or seeds:
                    out.append(make(compressed, mode, window, seed, variant, spec, teachers))
    if grid.ablation and axis.ablation:
        a = grid.ablation
        out += [make(a.compressed, a.mode, n, s) for n in a.windows for s in seeds]
    return out


def _cell(
    grid: Grid,
    task: str,
    base: dict[str, Any],
    where: str,
    compressed: str,
    mode: str,
    window: int | None,
    seed: int,
    variant: str | None = None,
    spec: Variant | None = None,
    teachers: dict[str, tuple[Cell | None, str | None]] | None = None,
) -> Cell:
    """One cell; a teacher '@large' ('@probe') becomes the chosen `large` (`probe`) cell's model
    folder (`teachers[placeholder]`: that cell, or None and what it waits for)."""
    spec = spec or Variant()
    over = {
        **base,
        **spec.set_of(task),
        "models.compressed": compressed,
        "phase3.mode": mode,
        "seed": seed,
        **({"adapter.window": window} if window else {}),
    }
    uses = {k: over[k] for k in TEACHER_KEYS if over.get(k) in TEACHER_CELLS}
    if len(set(uses.values())) > 1:
        raise ConfigError(
            f"{where}: variant {variant} aims at {sorted(set(uses.values()))}: a cell has one "
            "teacher cell; aim every teacher key of a variant at the same one"
        )
    aimed = next(iter(uses.values()), None)
    best, waits = (teachers or {}).get(aimed, (None, None)) if aimed else (None, None)
    if best is not None:
        over.update({k: str(best.model_dir) for k in uses})
    if spec.zero_shot and (window is None or over.get("phase2.teacher") is None):
        raise ConfigError(
            f"{where}: variant {variant}: a zero-shot cell needs an AlAd mode and a task model "
            f"as phase2.teacher (e.g. '{LARGE_TEACHER}')"
        )
    align = _settings({**over, "seed": grid.align_seed}, where) if window else None
    settings = _settings(over, where)
    cell = Cell(task, compressed, mode, window, seed, settings, align, grid)
    return replace(cell, variant=variant, teacher=best, waits_for=waits, zero_shot=spec.zero_shot)


def adapter_shapes(grid: Grid) -> tuple[list[str], list[tuple[int, int, int | None]]]:
    """The M_C of the grid's AlAd cells and every adapter shape (window, hidden, rank) they use,
    in the grid's order: what `alad bench latency --grid` times."""
    compressed: dict[str, None] = {}
    shapes: dict[tuple[int, int, int | None], None] = {}
    for cell in cells(grid):
        if cell.window is not None:
            a = cell.settings.adapter
            compressed[cell.compressed] = None
            shapes[(a.window, a.hidden, a.rank)] = None
    if not shapes:
        raise ConfigError(f"{grid._source}: no AlAd cells, so no adapter shapes to time")
    return list(compressed), sorted(shapes, key=lambda s: (s[0], -s[1], -(s[2] or 10**9)))
