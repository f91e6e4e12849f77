"""The committed results read back and grouped into Table 1's rows: one row per (task, M_C, mode,
n, the grid's variant) with its seeds, the newest result per seed.

    alad report [--results results/table1] [--grid sweeps/table1.yaml]   # load_results, group_rows
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alad import results as result_files
from alad.errors import ResultError
from alad.modes import MODES
from alad.tasks import TASKS

# ---------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class Result:
    """One finished cell (one seed) as committed by the sweep."""

    path: Path
    record: dict[str, Any] = field(repr=False)

    @property
    def cell(self) -> dict[str, Any]:
        return self.record["cell"]

    @property
    def test(self) -> dict[str, Any]:
        return self.record["test"]

    @property
    def row_key(self) -> tuple[str, str, str, int | None, str | None]:
        """The Table-1 row this seed belongs to: (task, M_C, mode, n, the grid's variant);
        M_L's row for `large`."""
        c = self.cell
        if MODES[c["mode"]].encoder == "large":
            return c["task"], c["large"], c["mode"], None, None
        return c["task"], c["compressed"], c["mode"], c.get("window"), c.get("variant")


def read_result(path: Path) -> Result:
    """One result JSON, validated (alad.results.CellResult; ResultError names the file and
    the field)."""
    return Result(Path(path), result_files.read_result(path))


def is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def load_results(root: Path) -> list[Result]:
    """Every result JSON under `root` (at any depth; hidden temporary files skipped)."""
    root = Path(root)
    if not root.is_dir():
        raise ResultError(f"{root}: no such results folder; run `alad sweep run` first")
    paths = sorted(
        p for p in root.rglob("*.json") if not any(part.startswith(".") for part in p.parts)
    )
    if not paths:
        raise ResultError(f"{root}: no result JSONs; run `alad sweep run` first")
    return [read_result(p) for p in paths]


def load_latency(path: Path | None) -> dict[str, Any] | None:
    """`alad bench latency`'s JSON, validated (alad.results.Latency), or None when there is
    none."""
    if path is None or not Path(path).exists():
        return None
    return result_files.read_latency(Path(path))


# ---------------------------------------------------------------------------------------------
# Rows of Table 1


@dataclass
class Row:
    """A Table-1 row: one (task, M_C, mode, n) and its seeds (the newest result per seed)."""

    task: str
    compressed: str
    mode: str
    window: int | None
    results: list[Result]
    superseded: list[Result] = field(default_factory=list)
    variant: str | None = (
        None  # a levers grid's variant (sweeps/teacher.yaml), e.g. another teacher
    )

    @property
    def large(self) -> str:
        return self.results[0].cell["large"]

    @property
    def is_large(self) -> bool:
        """M_L's own row (the reference), not a compressed model's."""
        return MODES[self.mode].encoder == "large"

    @property
    def model(self) -> str:
        """The encoder this row fine-tunes and ships."""
        return MODES[self.mode].model(self.compressed, self.large)

    @property
    def series(self) -> str:
        """How plots and tables name the row's model."""
        return f"{self.large} (M_L)" if self.is_large else self.compressed

    @property
    def seeds(self) -> list[int]:
        return [r.cell["seed"] for r in self.results]

    def values(self, key: str, scale: float = 1.0) -> list[float]:
        return [scale * r.test[key] for r in self.results if is_number(r.test.get(key))]

    def mean(self, key: str, scale: float = 1.0) -> float | None:
        v = self.values(key, scale)
        return statistics.fmean(v) if v else None

    def std(self, key: str, scale: float = 1.0) -> float:
        v = self.values(key, scale)
        return statistics.stdev(v) if len(v) > 1 else 0.0

    @property
    def label(self) -> str:
        label = f"{self.mode} n={self.window}" if self.window else self.mode
        return f"{label} [{self.variant}]" if self.variant else label

    @property
    def adapter_shape(self) -> tuple[int, int | None, int | None] | None:
        """(n, H, rank) of the row's adapter (rank None: the full layer; results before ranks
        have none), or None without one."""
        if not MODES[self.mode].adapter:
            return None
        a = (self.results[0].record.get("config") or {}).get("adapter") or {}
        return self.window or a.get("window"), a.get("hidden"), a.get("rank")


def group_rows(results: Iterable[Result]) -> dict[str, list[Row]]:
    """Results -> rows per task, in the paper's order: `large` first, then each M_C (largest
    first) with its modes in MODES order and windows ascending. Two results of the same row and
    seed (e.g. the grid's config changed and the cell reran): the newer one counts."""
    by_key: dict[tuple[str, str, str, int | None, str | None], dict[int, list[Result]]] = {}
    for r in results:
        by_key.setdefault(r.row_key, {}).setdefault(r.cell["seed"], []).append(r)
    rows: dict[str, list[Row]] = {}
    for (task, compressed, mode, window, variant), seeds in by_key.items():
        kept, old = [], []
        for _, same in sorted(seeds.items()):
            same = sorted(same, key=lambda r: (str(r.record.get("finished", "")), str(r.path)))
            kept.append(same[-1])
            old += same[:-1]
        rows.setdefault(task, []).append(Row(task, compressed, mode, window, kept, old, variant))
    modes = list(MODES)
    for task_rows in rows.values():
        size = {}
        for row in task_rows:
            s = row.mean("size_pct")
            if s is not None and not row.is_large:
                size[row.compressed] = max(size.get(row.compressed, 0.0), s)
        task_rows.sort(
            key=lambda r: (
                not r.is_large,
                -size.get(r.compressed, 0.0),
                r.compressed,
                modes.index(r.mode),
                r.window or 0,
                r.variant or "",
            )
        )
    return {t: rows[t] for t in TASKS if t in rows}


def adapter_groups(rows: list[Row]) -> dict[tuple[str, str], list[Row]]:
    """(M_C, mode) -> its AlAd rows, in table order (several: shapes or a grid's variants)."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        if row.adapter_shape is not None:
            groups.setdefault((row.compressed, row.mode), []).append(row)
    return groups


def compressed_row(rows: list[Row], compressed: str) -> Row | None:
    """M_C fine-tuned alone (`compressed`): the reference of gaps, parameters and overheads."""
    return next((r for r in rows if r.mode == "compressed" and r.compressed == compressed), None)


def reused_results(grid_path: Path | None, results_dir: Path) -> list[Result]:
    """The results the grid at `grid_path` (writing to `results_dir`) takes from the folders
    it reuses (`reuse:` in the grid file): its cells whose key has a result there, e.g. Table
    1's cells that a levers grid shares. Empty without a grid or a `reuse:`."""
    if grid_path is None or not Path(grid_path).is_file():
        return []
    from alad.sweep import cells, load_grid

    grid = load_grid(Path(grid_path))
    if not grid.reuse or grid.results.resolve() != Path(results_dir).resolve():
        return []
    return [
        listed_as(read_result(c.result_path), c.variant)
        for c in cells(grid)
        if c.done and c.result_path != c.own_result_path
    ]


def listed_as(result: Result, variant: str | None) -> Result:
    """`result` under the variant name of the grid that reuses it: a row is the same whether
    its seeds were run by this grid or reused from another (sweeps/adapter.yaml's h1280 is the
    teacher grid's `finetuned-head` at seed 13 and its own at seeds 14-15: one row)."""
    if result.cell.get("variant") == variant:
        return result
    return Result(result.path, {**result.record, "cell": {**result.cell, "variant": variant}})
