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
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import logging
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cached_property, partial
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from alad import results, stopping
from alad.atomic import claim, ensure_writable_dir, write_json
from alad.cache import feature_root
from alad.checkpoint import saved_progress
from alad.config import (
    ConfigError,
    Integer,
    Settings,
    load_settings,
    load_yaml_file,
)
from alad.errors import ResultError
from alad.models.catalog import training_cost
from alad.modes import MODES
from alad.results import KEY_OMITTED_AT_DEFAULT, NOT_IN_KEY
from alad.runtime import resolve_device
from alad.tasks import TASKS

log = logging.getLogger(__name__)


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TaskAxis(_Strict):
    """One task of the grid: its files, its config overrides and (optionally) narrower axes."""

    train: str = Field(description="Training file (relative paths: from the repository root).")
    dev: str | None = Field(None, description="Validation file (None: carved from train).")
    test: str = Field(description="Test file: scored once, never used for any choice.")
    set: dict[str, Any] = Field(
        default_factory=dict,
        description="Config overrides for this task, e.g. phase3.max_train_examples.",
    )
    seeds: list[Integer] | None = Field(None, description="None: the grid's seeds.")
    compressed: list[str] | None = Field(None, description="None: the grid's compressed models.")
    modes: list[str] | None = Field(None, description="None: the grid's modes.")
    large: bool = Field(True, description="Run the `large` baseline (M_L fine-tuned).")
    ablation: bool = Field(True, description="Run the grid's window ablation on this task.")


Window = Annotated[Integer, Field(ge=1)]  # 0 would be a cell without phases 1-2, named n=0


class Ablation(_Strict):
    compressed: str
    mode: str = "alad-joint"
    windows: list[Window] = Field(default_factory=lambda: [1, 3])


LARGE_TEACHER = "@large"  # a grid's phase1/2.teacher: the task's best-dev `large` cell's model
# Every such placeholder -> the M_L mode whose best-dev cell (of large_seeds) it names: `@probe`,
# M_L frozen + a trained linear head (the probed teacher of SLAD's abstract).
TEACHER_CELLS = {LARGE_TEACHER: "large", "@probe": "probe"}
# Where a variant may aim at it: AlAd's alignment target and phase 3's distillation teacher.
TEACHER_KEYS = ("phase1.teacher", "phase2.teacher", "phase3.distill.teacher")


class Variant(_Strict):
    """Named config overrides for AlAd cells (e.g. another teacher): every compressed model x
    mode of the grid is run once per variant, its group named `<task>/<M_C>/<mode>+<variant>`."""

    set: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides of this variant's cells. phase1.teacher / phase2.teacher / "
        f"phase3.distill.teacher '{LARGE_TEACHER}': the model of the task's `large` cell of this "
        "grid with the best dev score (all its seeds done; rebuilt first where its folder is "
        "not on this machine); '@probe': the same of the task's `probe` cells (M_L frozen + a "
        "linear head, run on large_seeds only when a variant aims at them).",
    )
    modes: list[str] | None = Field(None, description="None: the grid's (or the task's) modes.")
    seeds: list[int] | None = Field(
        None,
        description="None: the task's or grid's seeds; e.g. [13, 14, 15] for the variant a "
        "seed-13 screen chose (a zero-shot cell has no seed of its own: phases 1-2 use "
        "align_seed, so its seeds score the same)",
    )
    zero_shot: bool = Field(
        False,
        description="No phase 3: M_C + the phase-2 adapter + its teacher's task head "
        "(alad.teacher.compose_zero_shot), scored on dev and test. Needs a task-model teacher.",
    )


class Grid(_Strict):
    """A sweep file (e.g. sweeps/table1.yaml)."""

    _source: str = PrivateAttr("the sweep file")  # its path, for errors
    name: str = "table1"
    results: Path = Field(Path("results/table1"), description="Committed result JSONs.")
    runs: Path = Field(Path("runs/sweep"), description="Checkpoints and models (not committed).")
    alignments: Path | None = Field(
        None,
        description="Committed store of finished phase-1 adapters (half precision): a fresh "
        "machine starts phase 2 from it instead of re-running phase 1. None: no store.",
    )
    large: str = "mpnet-base"
    compressed: list[str] = Field(min_length=1)
    modes: list[str] = Field(min_length=1)
    window: Window = 5
    seeds: list[Integer] = Field(min_length=1)
    align_seed: Integer = Field(
        13, description="Seed of phases 1-2 (trained once, shared by seeds)."
    )
    ablation: Ablation | None = None
    set: dict[str, Any] = Field(default_factory=dict, description="Overrides for every cell.")
    tasks: dict[str, TaskAxis] = Field(min_length=1)
    variants: dict[str, Variant] | None = Field(
        None, description="Named override sets of the AlAd cells (None: one, unnamed: Table 1)."
    )
    large_seeds: list[int] | None = Field(
        None, description="Seeds of the `large` cells (None: the task's or grid's seeds)."
    )
    reuse: list[Path] = Field(
        default_factory=list,
        description="Other grids' committed results: a cell whose key has a result there is "
        "done (the same key is the same computation), e.g. Table 1's cells in a levers grid.",
    )

    @model_validator(mode="after")
    def _known_names(self) -> Grid:
        for task in self.tasks:
            if task not in TASKS:
                raise ValueError(f"tasks.{task}: unknown task; choose from {sorted(TASKS)}")
        modes = [*self.modes, *(m for t in self.tasks.values() for m in t.modes or [])]
        modes += [m for v in (self.variants or {}).values() for m in v.modes or []]
        if self.ablation:
            modes.append(self.ablation.mode)
        grid_modes = [m for m, spec in MODES.items() if spec.encoder == "compressed"]
        for mode in modes:
            if mode not in grid_modes:
                raise ValueError(
                    f"mode {mode!r}: choose from {grid_modes} "
                    "(`large` runs once per task by itself: tasks.<task>.large)"
                )
        return self


def load_grid(path: Path) -> Grid:
    """A sweep file, read as params.yaml is (`load_yaml_file`: size cap, no duplicate keys, no
    aliases) and validated; every problem is one ConfigError naming the file and the field."""
    data = load_yaml_file(Path(path), "sweep file") or {}
    try:
        if not isinstance(data, dict):
            raise TypeError(f"expected a mapping at the top level, got {type(data).__name__}")
        grid = Grid(**data)
        grid._source = str(path)
        return grid
    except (TypeError, ValidationError) as exc:
        errors = (
            exc.errors() if isinstance(exc, ValidationError) else [{"loc": (), "msg": str(exc)}]
        )
        where = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg'].removeprefix('Value error, ')}"
            for e in errors
        )
        raise ConfigError(f"{path}: {where}") from None


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


def _dotted(d: dict[str, Any]) -> dict[str, Any]:
    """{"phase3": {"lr": 1}} and {"phase3.lr": 1} alike -> {"phase3.lr": 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in _dotted(v).items()})
        else:
            out[k] = v
    return out


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
        **_dotted(grid.set),
        "models.large": grid.large,
        "phase3.task": task,
        "phase3.train": axis.train,
        "phase3.dev": axis.dev,
        "phase3.test": axis.test,
        "phase2.corpus": axis.train,
        **_dotted(axis.set),
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
    aimed = {p for v in variants.values() for p in TEACHER_CELLS if p in _dotted(v.set).values()}
    # M_L's cells: `large` always, `probe` where a variant aims at it
    of_ml = {
        p: [make(grid.large, mode, None, s) for s in (grid.large_seeds or seeds)]
        for p, mode in TEACHER_CELLS.items()
        if axis.large and (p == LARGE_TEACHER or p in aimed)
    }
    # read only when a variant aims: the best-dev seed, or what the choice waits for
    teachers = {p: _best_teacher(c) for p, c in of_ml.items() if p in aimed}
    out = [c for group in of_ml.values() for c in group]
    for variant, spec in variants.items():
        for p in TEACHER_CELLS:
            if p not in teachers and p in _dotted(spec.set).values():
                raise ConfigError(
                    f"{where}: variant {variant} aims at '{p}', the task's `{TEACHER_CELLS[p]}` "
                    f"cell, and the task runs none (tasks.{task}.large is false)"
                )
        for compressed in axis.compressed or grid.compressed:
            for mode in spec.modes or axis.modes or grid.modes:
                window = grid.window if MODES[mode].adapter else None
                for seed in spec.seeds or seeds:
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
        **_dotted(spec.set),
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


def _best_teacher(large: list[Cell]) -> tuple[Cell | None, str | None]:
    """The seed of M_L's cells (`large` or `probe`) with the best dev score (ties: the lowest
    seed), once every seed has a result (the choice must not move as seeds finish); else
    (None, what it waits for)."""
    done = [c for c in large if c.done]
    if len(done) < len(large):
        return None, f"{large[0].group} ({len(done)} of {len(large)} seeds done)"

    def dev(c: Cell) -> float:
        try:
            return float(json.loads(c.result_path.read_text())["dev"]["main"])
        except (OSError, ValueError, KeyError, TypeError):
            raise ResultError(
                f"{c.result_path}: no dev score (dev.main) to choose a teacher by"
            ) from None

    return max(large, key=lambda c: (dev(c), -c.seed)), None


def file_sha256(path: str | None) -> str | None:
    if not path or not Path(path).is_file():
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


class CellTaken(Exception):
    """Another runner holds this cell's claim, or finished the cell meanwhile: skip it."""


def check_outputs(grid: Grid, todo: list[Cell]) -> None:
    """Every place the cells `todo` write, checked before the first one runs (a place found
    unusable at a cell's end lost that cell's training)."""
    where = f"in {grid._source}"
    places = {grid.runs: ("sweep's run folder", f"set `runs:` {where} to a folder you can write")}
    if grid.alignments is not None:
        fix = f"set `alignments:` {where} to a folder you can write"
        places[grid.alignments] = ("store of phase-1 adapters", fix)
    for cell in todo:
        fix = f"set `results:` {where} to a folder you can write"
        places[cell.result_path.parent] = ("results folder", fix)
        fix = f"set cache.dir in the `set:` {where} to a folder you can write"
        places[feature_root(cell.settings.cache.dir)] = ("frozen-output cache", fix)
    for folder, (what, fix) in places.items():
        ensure_writable_dir(folder, what, fix)


@contextlib.contextmanager
def _one_runner(folder: Path) -> Iterator[None]:
    """The block runs in one runner at a time for `folder` (a shared alignment): the others
    wait for it, then only reload what it trained. Waiting stops on a stop request."""
    path = folder.with_name(f"{folder.name}.claim")
    said = False
    while (held := claim(path)) is None:
        if not said:
            log.info("%s: another runner trains it; waiting for it (%s)", folder, path)
            said = True
        if reason := stopping.requested():
            raise stopping.stop(reason, f"waiting for {folder}", folder)
        time.sleep(2)
    with held:
        yield


def align_cell(cell: Cell, upto: str = "phase2", progress: bool = False) -> dict[str, Any]:
    """Phases 1-2 (or phase 1 only) for the cell's (M_C, M_L, n[, task]): trained once, then
    only reloaded. The distributed flow runs each shared alignment as its own task first."""
    from alad.phases.align import run_alignment

    assert cell.align is not None
    if cell.waits_for:
        raise ConfigError(f"{cell.name}: its teacher is not chosen yet: waits for {cell.waits_for}")
    ensure_teacher(cell, progress)
    with _one_runner(cell.align_dir("phase1")):
        out = {"phase1": _phase1(cell, progress)}
    if upto == "phase2":
        init = cell.stored_phase1 or cell.align_dir("phase1")
        with _one_runner(cell.align_dir("phase2")):
            r = run_alignment(cell.align, "phase2", out=cell.align_dir("phase2"), init=init,
                              progress=progress)  # fmt: skip
        out["phase2"] = _alignment_record(cell, "phase2", r)
    return out


def _phase1(cell: Cell, progress: bool) -> dict[str, Any]:
    """Phase 1 of the cell, or its record from the committed store (no training, no features).
    Phase 2 always starts from the stored copy where there is a store, so a cell scores the
    same whichever machine trained phase 1."""
    from alad.checkpoint import export_adapter, load_checkpoint
    from alad.phases.align import run_alignment

    assert cell.align is not None
    stored = cell.stored_phase1
    if stored is not None and (stored / "manifest.json").is_file():
        record = load_checkpoint(stored).manifest.get("alignment")  # checksums verified
        if isinstance(record, dict):
            log.info("phase 1 of %s: the committed adapter %s", cell.group, stored)
            return record
        log.warning("%s: no alignment record in its manifest; training phase 1 again", stored)
    r = run_alignment(cell.align, "phase1", out=cell.align_dir("phase1"), progress=progress)
    record = _alignment_record(cell, "phase1", r)
    if stored is not None:
        export_adapter(r.checkpoint, stored, {"alignment": record})
        log.info("phase 1 adapter stored in %s (commit it: the next machine skips phase 1)", stored)
    return record


def _alignment_record(cell: Cell, phase: str, r: Any) -> dict[str, Any]:
    return {
        "before": r.before,
        "after": r.after,
        "epochs": len(r.history),
        "history": r.history,
        "texts": getattr(cell.align, phase).max_texts,
        "corpus": getattr(cell.align, phase).corpus,
    }


def ensure_teacher(cell: Cell, progress: bool = False) -> None:
    """The model folder of the `large` cell `cell` aims at, re-trained into its place first
    where it is not on this machine (a fresh clone has only the committed result). Its committed
    result is never rewritten: the rebuild's scores go to `<its out>/rebuilt.json`, and every
    cell aimed at it records them (a GPU or another torch may draw other numbers)."""
    from filelock import FileLock

    from alad.jobs import finetune_job

    t = cell.teacher
    if t is None:
        return
    t.out.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{t.out}.lock"):  # cells on several workers: one rebuild
        if t.model_ready:
            return
        record = json.loads(t.result_path.read_text())
        where = (record.get("machine") or {}).get("device", "cpu")
        log.info(
            "teacher %s (%s): its model %s is not on this machine or its run is unfinished; "
            "training it first (its committed result took %.0f s on %s)",
            t.name,
            t.key,
            t.model_dir,
            record.get("seconds", float("nan")),
            where,
        )
        t0 = time.perf_counter()
        result = finetune_job(t.settings, out=t.out, progress=progress)
        scores = {"dev": result.dev["main"], "test": result.test["main"]}
        committed = {"dev": record["dev"]["main"], "test": record["test"]["main"]}
        rebuilt = {
            "scores": scores,
            "committed": committed,
            "same": scores == committed,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        write_json(rebuilt, t.out / "rebuilt.json")
        if not rebuilt["same"]:
            log.warning(
                "teacher %s rebuilt with other scores than its committed result (%s vs %s): "
                "its cells use the rebuilt model and say so in their results",
                t.name,
                scores,
                committed,
            )


def _teacher_record(cell: Cell) -> dict[str, Any] | None:
    """What a result says about the `large` (`probe`) cell its teacher is (None: not aimed at
    one)."""
    t = cell.teacher
    if t is None:
        return None
    record = json.loads(t.result_path.read_text())
    rebuilt = t.out / "rebuilt.json"
    return {
        "cell": t.name,
        "key": t.key,
        "dev": record["dev"]["main"],
        "test": record["test"]["main"],
        "rebuilt": json.loads(rebuilt.read_text()) if rebuilt.is_file() else None,
    }


def _zero_shot(cell: Cell, settings: Settings) -> Any:
    """No phase 3: M_C + the cell's phase-2 adapter + its teacher's head, scored on dev and
    test (alad.teacher.compose_zero_shot), as a FinetuneResult without history."""
    from alad.evaluation import evaluate_model
    from alad.phases.finetune import FinetuneResult
    from alad.tasks import load_splits
    from alad.teacher import compose_zero_shot

    model_dir = compose_zero_shot(cell.align_dir("phase2"), cell.model_dir)
    cfg = settings.phase3
    splits = load_splits(cfg, settings.seed)
    dev = evaluate_model(model_dir, cfg.dev or splits.dev)
    test = evaluate_model(model_dir, cfg.test or splits.test)
    dev.pop("table_row", None)
    write_json({"dev": dev, "test": test}, cell.out / "metrics.json")
    return FinetuneResult(model_dir, dev, test, [], cell.out / "metrics.json")


def run_cell(cell: Cell, progress: bool = False) -> dict[str, Any]:
    """Fine-tune and test one cell (phases 1-2 first when it has an adapter; a zero-shot cell
    has no phase 3); write its result. Under the cell's claim: CellTaken if another runner
    holds it or has finished the cell."""
    held = claim(cell.claim_path)
    if held is None:
        raise CellTaken(f"{cell.name}: another runner is running it ({cell.claim_path})")
    with held:
        if cell.done:
            raise CellTaken(f"{cell.name}: another runner finished it ({cell.result_path})")
        return _run_cell(cell, progress)


def _run_cell(cell: Cell, progress: bool) -> dict[str, Any]:
    from alad.jobs import finetune_job
    from alad.provenance import git_commit, machine
    from alad.runtime import Runtime

    if cell.waits_for:
        raise ConfigError(f"{cell.name}: its teacher is not chosen yet: waits for {cell.waits_for}")
    # the teacher (of phases 1-2 or of the distillation, for cells without phases 1-2) first:
    # its rebuild is its own run, not this cell's time
    ensure_teacher(cell, progress)
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    settings, alignment = cell.settings, None
    if cell.align is not None:
        alignment = align_cell(cell, progress=progress)
        p3 = settings.phase3.model_copy(update={"init": str(cell.align_dir("phase2"))})
        settings = settings.model_copy(update={"phase3": p3})
    if cell.zero_shot:
        result = _zero_shot(cell, settings)
    else:
        result = finetune_job(settings, out=cell.out, progress=progress)
    runtime, test = Runtime.from_config(settings.runtime), result.test
    manifest = json.loads((result.model_dir / "manifest.json").read_text())
    record = {
        "key": cell.key,
        "cell": {
            "task": cell.task,
            "compressed": cell.compressed,
            "large": settings.models.large,
            "mode": cell.mode,
            "window": cell.window,
            "seed": cell.seed,
            "variant": cell.variant,
            "zero_shot": cell.zero_shot,
        },
        "group": cell.group,
        "teacher": _teacher_record(cell),
        "dev": result.dev,
        "test": {k: v for k, v in test.items() if k != "table_row"},
        "history": result.history,
        "best_epoch": manifest.get("best_epoch"),
        "alignment": alignment,
        "data": {
            **manifest.get("examples", {}),
            "sha256": {
                name: file_sha256(getattr(settings.phase3, name))
                for name in ("train", "dev", "test")
            },
        },
        "config": cell._named(cell.settings.model_dump(mode="json", exclude=NOT_IN_KEY)),
        # phase 3's seconds in earlier processes (a resumed cell) count; the wall clock misses them
        "seconds": round(time.perf_counter() - t0 + result.earlier_seconds, 1),
        "machine": machine(runtime.device, load0),
        "git_commit": git_commit(),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_dir": str(result.model_dir),
    }
    write_json(record, cell.own_result_path)
    return record


@dataclass
class Progress:
    """Cells done / total and an ETA from the seconds measured so far (the committed cells'
    too, any machine's). Each cell still to run is predicted from its closest measured kin:
    another seed of its group (the fastest: a group's first seed also trains its shared phase 2),
    else its cost times the median seconds per unit of cost of its task's cells (of all cells
    while its task has none; a minute before anything is measured). Checked on the 62 committed
    cells, leaving each group out: a median error of 19 %, against 26 % for one rate for all
    tasks (finer kin, task + model or task + mode, did no better). Medians, so the one cell that
    also trained a shared phase 1 (tens of minutes, once) does not inflate every estimate."""

    total: int
    todo: list[Cell]
    measured: list[tuple[Cell, float]] = field(default_factory=list)  # (cell, seconds)
    kind: str = "cpu"  # the device kind the ETA is for (this machine's)

    @classmethod
    def of(cls, every: list[Cell], device: str | None = None) -> Progress:
        """The progress of these cells. The committed cells' timings (another machine's, maybe)
        are measurements too: a resumed grid starts with a measured ETA instead of the prior.
        Only timings from this kind of device count (`device`: cpu | cuda | mps, default this
        machine's), while there are any: a GPU cell runs ~40x faster than a CPU one here."""
        kind = device or resolve_device("auto").type
        timed = [(c, t) for c in every if c.done and (t := _timing(c)) is not None]
        same = [(c, seconds) for c, (seconds, k) in timed if k == kind]
        measured = same or [(c, seconds) for c, (seconds, _) in timed]
        return cls(len(every), [c for c in every if not c.done], measured, kind)

    @property
    def done(self) -> int:
        return self.total - len(self.todo)

    def predict(self, cell: Cell) -> float:
        """Seconds `cell` is expected to take (still to take, when a saved state holds part of
        it: the share of phase 3 done comes off)."""
        left = 1.0 - cell.fraction_done()
        siblings = [s for c, s in self.measured if c.group == cell.group]
        if siblings:
            return min(siblings) * left
        rates = [s / max(c.cost, 1e-9) for c, s in self.measured if c.task == cell.task]
        rates = rates or [s / max(c.cost, 1e-9) for c, s in self.measured]
        return cell.cost * (statistics.median(rates) if rates else 60.0) * left

    def finished(self, cell: Cell, seconds: float) -> str:
        self.todo = [c for c in self.todo if c.name != cell.name]  # a waiting cell: a new key
        self.measured.append((cell, seconds))
        return self.line()

    def teachers_to_rebuild(self) -> dict[str, float]:
        """The `large` cells that cells still to run aim at, whose model folder is not on this
        machine: name -> the seconds a rebuild is expected to take: as long as its committed
        result took, or, when that ran on another kind of device, as predicted for this one."""
        out = {}
        for c in self.todo:
            t = c.teacher
            if t is not None and not t.model_ready:
                timing = _timing(t)
                out[t.name] = timing[0] if timing and timing[1] == self.kind else self.predict(t)
        return out

    def line(self) -> str:
        eta = sum(self.predict(c) for c in self.todo) + sum(self.teachers_to_rebuild().values())
        return f"{self.done}/{self.total} cells done, ETA {eta / 3600:.1f} h"


def plan(
    grid: Grid, tasks: list[str] | None = None, only: list[str] | None = None
) -> tuple[list[Cell], Progress]:
    prog = Progress.of(cells(grid, tasks, only))
    return list(prog.todo), prog


def _timing(cell: Cell) -> tuple[float, str] | None:
    """The seconds a finished cell took and the kind of device it took them on (results from
    before the machine named its device ran on a CPU); None: its result has no timing."""
    try:
        record = json.loads(cell.result_path.read_text())
        device = str((record.get("machine") or {}).get("device", "cpu"))
        return float(record["seconds"]), device.split(":")[0]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def check_limits(max_cells: int | None, max_minutes: float | None) -> None:
    """A sweep's limits are counts and durations: a negative (or non-finite) one would run
    nothing and report success, so it is a ConfigError naming the option."""
    if max_cells is not None and (
        isinstance(max_cells, bool) or not isinstance(max_cells, int) or max_cells < 0
    ):
        raise ConfigError(f"--max-cells (max_cells) {max_cells!r}: must be a whole number >= 0")
    if max_minutes is not None and (
        isinstance(max_minutes, bool)
        or not isinstance(max_minutes, int | float)
        or not 0 <= max_minutes < float("inf")
    ):
        raise ConfigError(f"--max-minutes (max_minutes) {max_minutes!r}: must be a number >= 0")


def run_sweep(
    grid: Grid,
    tasks: list[str] | None = None,
    max_cells: int | None = None,
    max_minutes: float | None = None,
    progress: bool = False,
    run: Callable[[Cell], dict[str, Any]] | None = None,
    only: list[str] | None = None,
) -> Iterator[tuple[Cell, dict[str, Any], str]]:
    """Run the missing cells, cheapest first; yields (cell, result, progress line) per cell.

    Stops before starting a cell once `max_cells` ran. `max_minutes` is a time box (a
    session's): when it ends, the cell in progress saves its state and stops (alad/stopping.py)
    and the sweep ends; the next run resumes that cell where it stopped. A SIGTERM stops the
    same way and raises `Stopped`. A cell another runner holds (or finishes meanwhile) is
    skipped: see `run_cell`."""
    check_limits(max_cells, max_minutes)
    todo, prog = plan(grid, tasks, only)
    check_outputs(grid, todo)
    log.info("%s; %d to run", prog.line(), len(todo))
    ran = 0
    with stopping.deadline(max_minutes):
        for cell in todo:
            if max_cells is not None and ran >= max_cells:
                break
            if reason := stopping.requested():
                if reason != "the time box":
                    raise stopping.stop(reason, "the sweep", grid.results)
                break
            if cell.waits_for:  # last in the order: its `large` cells may have run meanwhile
                cell = _resolved(grid, cell)
                if cell.waits_for:
                    log.info("%s waits for %s; not run", cell.name, cell.waits_for)
                    continue
            if cell.done:  # finished by another runner meanwhile
                continue
            t0 = time.perf_counter()
            try:
                record = (run or (lambda c: run_cell(c, progress)))(cell)
            except CellTaken as exc:
                log.info("%s; skipping it", exc)
                continue
            except stopping.Stopped as exc:
                if exc.reason != "the time box":
                    raise
                log.info("the time box (%g min) ended: %s", max_minutes, exc)
                break
            ran += 1
            seconds = time.perf_counter() - t0
            if isinstance(record, dict) and "seconds" in record:  # without a teacher's rebuild
                seconds = float(record["seconds"])
            line = prog.finished(cell, seconds)
            log.info("%s finished (%.0f s); %s", cell.name, seconds, line)
            yield cell, record, line


def _resolved(grid: Grid, cell: Cell) -> Cell:
    """`cell` built again from the grid, its teacher chosen if its `large` seeds are done now."""
    return next(c for c in cells(grid, [cell.task]) if c.name == cell.name)


def register_best(grid: Grid, tracker: Any, tasks: list[str] | None = None) -> list[dict]:
    """The registry keeps one model per Table-1 cell: for every cell whose seeds all have a
    result, the seed with the best dev score is registered (as a version of
    `alad-<task>-<M_C>`, tagged with the cell and its seeds' test mean) and goes through the
    promotion gate. A cell registered before (tag `alad.sweep_cell`) or whose best model folder
    is not on this machine is skipped; the results stay the record either way."""
    from alad.provenance import git_commit
    from alad.registry import Gate, Registry, model_name

    registry = Registry(tracker)

    groups: dict[str, list[Cell]] = {}
    for cell in cells(grid, tasks):
        groups.setdefault(cell.group, []).append(cell)
    done: list[dict] = []
    for group, members in sorted(groups.items()):
        if not all(c.done for c in members):
            continue
        records = [results.read_result(c.result_path) for c in members]  # validated
        best = max(records, key=lambda r: r["dev"]["main"])
        model_dir = Path(best["model_dir"])
        name = model_name(best["cell"]["task"], best["cell"]["compressed"])
        tag = f"{group}@{best['key']}"
        found = tracker.client.search_model_versions(f"name = '{name}'")
        if any(v.tags.get("alad.sweep_cell") == tag for v in found):
            continue
        if not (model_dir / "manifest.json").is_file():
            log.warning(
                "%s: best seed's model %s is not on this machine; not registered", group, model_dir
            )
            continue
        tests = [r["test"]["main"] for r in records]
        lineage = {
            "alad.sweep_cell": tag,
            "mode": best["cell"]["mode"],
            "window": str(best["cell"]["window"]),
            "seed": str(best["cell"]["seed"]),
            "seeds": ",".join(str(r["cell"]["seed"]) for r in records),
            "test_mean": f"{sum(tests) / len(tests):.4f}",
            "git_commit": git_commit(),
        }
        metrics = {k: v for k, v in best["dev"].items() if isinstance(v, int | float)}
        published = registry.publish(
            model_dir, metrics, lineage, Gate("main"), None,
            task=best["cell"]["task"], compressed=best["cell"]["compressed"],
        )  # fmt: skip
        done.append(
            {
                "group": group,
                "name": published.name,
                "version": published.version,
                "promoted": published.promoted,
                "reason": published.reason,
            }
        )
    return done


__all__ = [
    "Cell",
    "CellTaken",
    "Grid",
    "check_outputs",
    "load_grid",
    "cells",
    "adapter_shapes",
    "plan",
    "check_limits",
    "run_cell",
    "run_sweep",
    "register_best",
]
