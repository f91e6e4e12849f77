"""How far a grid is: cells done / total, an ETA from the seconds measured so far, and the
checks of a sweep's limits.

    alad sweep list sweeps/table1.yaml            # Progress.of(cells): the first line it prints
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field

from alad.config import ConfigError
from alad.runtime import resolve_device
from alad.sweep.cell import Cell, cells
from alad.sweep.grid import Grid


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
        # a zero-shot cell's seconds are mostly its phase 2 (shared, so not in its cost, which
        # counts only scoring): zero-shot and trained cells predict only their own kind
        kin = [(c, s) for c, s in self.measured if c.zero_shot == cell.zero_shot] or self.measured
        rates = [s / max(c.cost, 1e-9) for c, s in kin if c.task == cell.task]
        rates = rates or [s / max(c.cost, 1e-9) for c, s in kin]
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
