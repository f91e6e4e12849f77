"""Table 1 from the committed sweep results: reports/table1.md, pareto.png and curves.png.

    alad report [--results results/table1] [--latency results/latency.json] [--out reports]

Reads only files: every result JSON under `--results` (one per finished cell, written by
`alad sweep run`, any folder depth) and, for the speed-up column, `alad bench latency`'s JSON.
One table per task in the paper's layout: the `large` row (M_L fine-tuned) as the reference, then
each M_C with its modes; every score is "mean ± sample std (k seeds)" of the test set, the size
% of M_L, the speed-up vs M_L (batch 32 from latency.json, matching M_C and the adapter's
shape n, H, rank), AlAd's latency overhead over M_C alone and, for every method on M_C (AlAd,
LoRA, KD, SLAD, AdaLoRA), the share of the compressed -> large gap that it recovers. A cell of
the grid without a result simply does not appear; the report says how many result files it
used. The adapter Pareto sweep (sweeps/adapter.yaml) reads its own latency file:
`--latency results/latency-adapter.json`.
"""

from __future__ import annotations

import os
import shutil
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alad import results as result_files
from alad.atomic import recover_dir, tmp_dir, write_text
from alad.config import AdapterConfig
from alad.errors import ResultError
from alad.modes import MODES
from alad.tasks import TASKS

LATENCY_BATCH = 32
DASH = "–"


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


def _number(x: Any) -> bool:
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
        return [scale * r.test[key] for r in self.results if _number(r.test.get(key))]

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


def _latency_row(row: Row, latency: dict[str, Any] | None) -> dict[str, Any] | None:
    """latency.json's batch-32 figure for this row's encoder and adapter shape (n, H, rank;
    rows written before shapes: the file's `hidden`, full rank), measured against the same M_L.
    LoRA is merged into M_C's weights when saved: a LoRA row runs as its M_C."""
    if latency is None or latency.get("large") != row.large:
        return None
    want = (row.model, row.adapter_shape, LATENCY_BATCH)
    # a file that names no H at all was timed at the default (1280, the paper's)
    default_h = latency.get("hidden") or AdapterConfig.model_fields["hidden"].default
    for r in torch_rows(latency):
        shape = (r["window"], r.get("hidden") or default_h, r.get("rank"))
        if (r["model"], shape if r["window"] else None, r["batch"]) == want:
            return r
    return None


def torch_rows(latency: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows timed in PyTorch: Table 1's speed-up and overhead (a row without `runtime`, as
    written before runtimes, is torch's)."""
    return [r for r in latency["rows"] if r.get("runtime", "torch") == "torch"]


def torch_label(latency: dict[str, Any] | None) -> str:
    """What Table 1's speed-ups were timed in: "PyTorch fp32" (the file's torch precision)."""
    precision = ((latency or {}).get("machine") or {}).get("precision") or "fp32"
    return f"PyTorch {precision}"


def speedup(row: Row, latency: dict[str, Any] | None) -> float | None:
    r = _latency_row(row, latency)
    return float(r["speedup"]) if r else None


def latency_ms(row: Row, latency: dict[str, Any] | None) -> float | None:
    r = _latency_row(row, latency)
    return float(r["ms_per_batch"]) if r else None


def overhead(row: Row, latency: dict[str, Any] | None) -> float | None:
    """What AlAd adds to M_C's latency: the row's time / its M_C's alone (batch 32, one file);
    1.0 for a row that runs as its M_C (compressed, LoRA); None for M_L or where not measured."""
    r = _latency_row(row, latency)
    if r is None or row.is_large:
        return None
    if r["window"] is None:
        return 1.0
    alone = next(
        (x for x in torch_rows(latency) if (x["model"], x["window"], x["batch"]) == (r["model"],
         None, LATENCY_BATCH)),
        None,
    )  # fmt: skip
    return float(r["ms_per_batch"]) / float(alone["ms_per_batch"]) if alone else None


def _overhead_cell(row: Row, value: float | None) -> str:
    if row.adapter_shape is None:
        return ""  # no adapter, nothing added (as the gap column)
    return f"{value:.2f}×" if value is not None else DASH


def gap_recovered(row: Row, rows: list[Row]) -> str:
    """(method − compressed) / (large − compressed) on the main metric, from seed means, for
    every row that ships M_C other than M_C fine-tuned itself (AlAd, LoRA, KD, SLAD, AdaLoRA:
    the methods compared at M_C's size); `large` is the reference mode's row (M_L fine-tuned;
    not `probe`, which also runs M_L)."""
    if MODES[row.mode].encoder != "compressed" or row.mode == "compressed":
        return ""
    large = next((r for r in rows if MODES[r.mode].reference), None)
    base = next(
        (r for r in rows if r.mode == "compressed" and r.compressed == row.compressed), None
    )
    if large is None or base is None:
        return DASH
    a, c, m = row.mean("main"), base.mean("main"), large.mean("main")
    if a is None or c is None or m is None:
        return DASH
    if m <= c:
        return "n/a"
    if m - c <= 2 * _diff_se(large, base):
        return "n/a (gap in noise)"
    return f"{100 * (a - c) / (m - c):.0f}%"


def _diff_se(a: Row, b: Row) -> float:
    return _se_of_difference(a.values("main"), b.values("main"))


def _se_of_difference(va: list[float], vb: list[float]) -> float:
    """Standard error of the difference of two seed means; 0 while either has one seed (no
    noise estimate: the share is shown, and the table's "(1)" says how little it rests on)."""
    if len(va) < 2 or len(vb) < 2:
        return 0.0
    return (statistics.variance(va) / len(va) + statistics.variance(vb) / len(vb)) ** 0.5


# ---------------------------------------------------------------------------------------------
# Markdown


def mean_std(values: list[float]) -> str:
    """ "84.3 ± 0.5 (3)": mean ± sample std (k seeds); one seed: "84.3 ± — (1)"."""
    if not values:
        return DASH
    if len(values) == 1:
        return f"{values[0]:.1f} ± — (1)"
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f} ({len(values)})"


def _md_row(cells: Iterable[Any]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def trivial(task: str, rows: list[Row]) -> tuple[str, dict | None, str]:
    """The task's model-free baseline (QA: always no-answer) from the rows' results."""
    return TASKS[task].trivial_baseline([r.record for row in rows for r in row.results])


def task_table(task: str, rows: list[Row], latency: dict[str, Any] | None) -> str:
    cols = TASKS[task].columns
    head = ["M_C", "mode", *(c[0] for c in cols), "size %",
            f"speed-up ({torch_label(latency)})", "AlAd overhead", "gap recovered"]  # fmt: skip
    lines = [_md_row(head), _md_row(["---"] * len(head))]
    for row in rows:
        s, o = speedup(row, latency), overhead(row, latency)
        size = row.mean("size_pct")
        lines.append(
            _md_row(
                [
                    row.series,
                    row.label,
                    *(mean_std(row.values(key, scale)) for _, key, scale in cols),
                    f"{size:.1f}" if size is not None else DASH,
                    f"{s:.2f}" if s is not None else DASH,
                    _overhead_cell(row, o),
                    gap_recovered(row, rows),
                ]
            )
        )
    name, scores, why = trivial(task, rows)
    if scores is not None:
        values = [f"{scores[key] * scale:.1f}" for _, key, scale in cols]
        lines.append(_md_row([name, "trivial", *values, DASH, DASH, DASH, ""]))
    elif name:
        lines.append("")
        lines.append(f"(The {name} baseline is omitted: {why}.)")
    return "\n".join(lines)


def _dev_mean(row: Row) -> float | None:
    dev = [
        r.record["dev"]["main"]
        for r in row.results
        if _number((r.record.get("dev") or {}).get("main"))
    ]
    return statistics.fmean(dev) if dev else None


def winners_table(task: str, rows: list[Row]) -> str:
    """Per M_C: the best AlAd row and the best other method on M_C (LoRA, KD, SLAD, AdaLoRA),
    each chosen by its mean *dev* score (the test set never chooses) among the rows with the
    most seeds, with their test scores and gaps recovered, and AlAd's lead: beyond the seed
    spread when it exceeds twice the standard error of the difference of the two means. ""
    when no M_C has both kinds."""
    header, key, scale = next(c for c in TASKS[task].columns if c[0] == TASKS[task].main_name)
    lines = []
    for compressed in dict.fromkeys(r.compressed for r in rows if not r.is_large):
        mine = [r for r in rows if r.compressed == compressed and not r.is_large]
        seeds = max(len(r.results) for r in mine)  # a one-seed screen never beats a 3-seed row
        mine = [r for r in mine if len(r.results) == seeds]
        alad = [r for r in mine if MODES[r.mode].adapter and _dev_mean(r) is not None]
        other = [
            r for r in mine
            if not MODES[r.mode].adapter and r.mode != "compressed" and _dev_mean(r) is not None
        ]  # fmt: skip
        if not alad or not other:
            continue
        a, o = max(alad, key=_dev_mean), max(other, key=_dev_mean)
        va, vo = a.values(key, scale), o.values(key, scale)
        if not va or not vo:
            continue
        lead, se = statistics.fmean(va) - statistics.fmean(vo), _se_of_difference(va, vo)
        verdict = (
            "one seed: no spread" if se == 0
            else "beyond the seed spread" if abs(lead) > 2 * se
            else "within the seed spread"
        )  # fmt: skip
        lines.append(
            _md_row(
                [
                    compressed,
                    a.label,
                    mean_std(va),
                    gap_recovered(a, rows),
                    o.label,
                    mean_std(vo),
                    gap_recovered(o, rows),
                    f"{lead:+.1f} ({verdict}, 2 SE = {2 * se:.1f})",
                ]
            )
        )
    if not lines:
        return ""
    head = ["M_C", "best AlAd (dev)", header, "gap", "best other method (dev)", header, "gap",
            "AlAd − other"]  # fmt: skip
    return "\n".join([_md_row(head), _md_row(["---"] * len(head)), *lines])


# issue 22's goal for a leaner adapter: at most this overhead over M_C alone, at most this many
# points below the paper's shape
LEAN_OVERHEAD, LEAN_DROP = 1.10, 0.3


def shapes_table(task: str, rows: list[Row], latency: dict[str, Any] | None) -> str:
    """Per (M_C, mode) with AlAd rows of several shapes (sweeps/adapter.yaml; Table 1's window
    ablation): each shape's adapter parameters, latency overhead over M_C and test score,
    against the paper's shape (n=5, H=1280, full first layer) of the same M_C and mode, with
    issue 22's goal: overhead <= 1.10x at <= 0.3 points below it. "" when no group has
    several shapes and one row of the paper's shape."""
    header, key, scale = next(c for c in TASKS[task].columns if c[0] == TASKS[task].main_name)
    paper = (5, AdapterConfig.model_fields["hidden"].default, None)
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        if row.adapter_shape is not None:
            groups.setdefault((row.compressed, row.mode), []).append(row)
    lines = []
    for (compressed, _), group in groups.items():
        ref = [r for r in group if r.adapter_shape == paper]
        if len({r.adapter_shape for r in group}) < 2 or len(ref) != 1:
            continue
        alone = next(
            (r for r in rows if r.mode == "compressed" and r.compressed == compressed), None
        )
        base = ref[0].values(key, scale)
        for row in sorted(group, key=lambda r: -(r.mean("params") or 0)):
            n, h, rank = row.adapter_shape
            params = row.mean("params"), alone.mean("params") if alone else None
            o, v = overhead(row, latency), row.values(key, scale)
            drop = statistics.fmean(v) - statistics.fmean(base) if v and base else None
            meets = (
                DASH if o is None or drop is None
                else "yes" if o <= LEAN_OVERHEAD and drop >= -LEAN_DROP
                else "no"
            )  # fmt: skip
            lines.append(
                _md_row(
                    [
                        compressed,
                        row.label,
                        f"n={n} H={h} " + (f"r={rank}" if rank else "full"),
                        f"{(params[0] - params[1]) / 1e6:.2f}" if None not in params else DASH,
                        f"{o:.2f}×" if o is not None else DASH,
                        mean_std(v),
                        DASH if drop is None or row is ref[0]
                        else f"{drop:+.1f} (2 SE {2 * _se_of_difference(v, base):.1f})",
                        meets if row is not ref[0] else "(reference)",
                    ]
                )
            )  # fmt: skip
    if not lines:
        return ""
    head = ["M_C", "mode", "shape", "AlAd params (M)", "AlAd overhead", header,
            "vs n=5 H=1280 full", f"≤ {LEAN_OVERHEAD:.2f}× and ≥ −{LEAN_DROP}"]  # fmt: skip
    return "\n".join([_md_row(head), _md_row(["---"] * len(head)), *lines])


def _range(values: list[float]) -> str:
    if not values:
        return "?"
    lo, hi = min(values), max(values)
    return f"{lo:.2f}" if lo == hi else f"{lo:.2f}–{hi:.2f}"


def _cells(n: int) -> str:
    return f"{n} cell" if n == 1 else f"{n} cells"


def task_notes(task: str, rows: list[Row], grid: Path | None = None, reused: bool = False) -> str:
    results = [r for row in rows for r in row.results]
    sizes: dict[str, int] = {}
    for r in results:
        d = r.record.get("data") or {}
        split = " / ".join(f"{k} {d[k]:,}" for k in ("train", "dev", "test") if _number(d.get(k)))
        sizes[split or "not recorded"] = sizes.get(split or "not recorded", 0) + 1
    data = "; ".join(f"{s} ({_cells(n)})" for s, n in sizes.items())
    seeds = sorted({s for row in rows for s in row.seeds})
    seconds = sum(float(r.record.get("seconds") or 0.0) for r in results)
    machines: dict[str, int] = {}
    for r in results:
        m = r.record.get("machine") or {}
        gpu = f"{m['gpu']}, " if m.get("gpu") else ""
        desc = (
            f"{m.get('host', '?')} ({gpu}{m.get('cpus', '?')} CPUs, "
            f"{m.get('torch_threads', '?')} torch threads)"
        )
        machines[desc] = machines.get(desc, 0) + 1
    loads = [
        (r.record.get("machine") or {}).get(k)
        for r in results
        for k in ("load1_start", "load1_end")
    ]
    commits = sorted({str(r.record.get("git_commit", "?"))[:7] for r in results})
    superseded = [r.path for row in rows for r in row.superseded]
    lines = [
        f"- Data (examples per split): {data}.",
        f"- Seeds: {', '.join(map(str, seeds))}; {_cells(len(results))} (one per row and seed).",
        f"- Run time of its cells: {seconds / 3600:.2f} h (wall-clock seconds summed over cells; "
        "each cell used all torch threads of its machine).",
        "- Machine: "
        + "; ".join(f"{d} × {_cells(n)}" for d, n in machines.items())
        + f"; 1-min load average {_range([x for x in loads if _number(x)])} during the cells.",
        f"- Code: git {', '.join(commits)}.",
        "- Gap recovered: (method − compressed) / (M_L − compressed) on "
        f"{TASKS[task].main_name} (seed means, same M_C); n/a where M_L does not beat M_C, "
        "n/a (gap in noise) where M_L − M_C is within twice the standard error of that "
        "difference (so the share would be noise over noise).",
        f"- Commands: `alad sweep run {grid or 'sweeps/table1.yaml'} --task {task}` (the cells"
        f"{'; reused ones: the grid that wrote them' if reused else ''}), "
        "`alad bench latency` (speed-up), `alad report` (this file).",
    ]
    if superseded:
        lines.append(
            "- Superseded (an older result of the same row and seed, not counted): "
            + ", ".join(f"`{p}`" for p in superseded)
            + "."
        )
    return "\n".join(lines)


def seed_table(task: str, rows: list[Row]) -> str:
    cols = TASKS[task].columns
    head = ["M_C", "mode", "seed", "dev main", *(c[0] for c in cols), "size %", "s", "key"]
    lines = [_md_row(head), _md_row(["---"] * len(head))]
    for row in rows:
        for r in row.results:
            t, dev = r.test, r.record.get("dev") or {}
            lines.append(
                _md_row(
                    [
                        row.compressed,
                        row.label,
                        r.cell["seed"],
                        f"{100 * dev['main']:.1f}" if _number(dev.get("main")) else DASH,
                        *(
                            f"{scale * t[key]:.1f}" if _number(t.get(key)) else DASH
                            for _, key, scale in cols
                        ),
                        f"{t['size_pct']:.1f}" if _number(t.get("size_pct")) else DASH,
                        f"{r.record['seconds']:.0f}" if _number(r.record.get("seconds")) else DASH,
                        r.record.get("key", r.path.stem),
                    ]
                )
            )
    return "\n".join(lines)


def _phase_record(row: Row, phase: str) -> dict[str, Any] | None:
    """The phase-1/2 record of a row (shared by its seeds: the first seed that has one)."""
    for r in row.results:
        record = (r.record.get("alignment") or {}).get(phase)
        if isinstance(record, dict) and _number((record.get("after") or {}).get("cosine")):
            return record
    return None


def _cosine(record: dict[str, Any] | None) -> str:
    if record is None:
        return DASH
    before, after = record.get("before") or {}, record["after"]
    b = f"{before['cosine']:.3f} → " if _number(before.get("cosine")) else ""
    return f"{b}{after['cosine']:.3f}"


def dev_curve(row: Row, key: str = "dev_main", scale: float = 100.0) -> list[float]:
    """`key` per epoch, mean over the row's seeds (epochs that every seed reached)."""
    curves = [
        [scale * h[key] for h in r.record.get("history") or [] if _number(h.get(key))]
        for r in row.results
    ]
    curves = [c for c in curves if c]
    if not curves:
        return []
    epochs = min(len(c) for c in curves)
    return [statistics.fmean(c[e] for c in curves) for e in range(epochs)]


def curves_table(rows: list[Row]) -> str:
    """Why a row scores as it does: held-out alignment cosine (AlAd output vs M_L, before →
    after each alignment phase) and the dev score per epoch, mean over seeds."""
    head = ["M_C", "mode", "phase 1 cosine", "phase 2 cosine", "dev per epoch", "best epoch"]
    lines = [_md_row(head), _md_row(["---"] * len(head))]
    for row in rows:
        best = [r.record.get("best_epoch") for r in row.results]  # 1-based, as `epoch`
        best = [b for b in best if _number(b)]
        lines.append(
            _md_row(
                [
                    row.model,
                    row.label,
                    _cosine(_phase_record(row, "phase1")),
                    _cosine(_phase_record(row, "phase2")),
                    " / ".join(f"{v:.1f}" for v in dev_curve(row)) or DASH,
                    ", ".join(map(str, best)) or DASH,
                ]
            )
        )
    return "\n".join(lines)


def _latency_line(latency: dict[str, Any] | None, path: Path | None) -> str:
    if latency is None:
        return (
            f"Speed-up: no latency file (`{path}`); the column shows {DASH}. "
            "Run `alad bench latency` (on an idle machine) to fill it."
        )
    m = latency.get("machine", {})
    before, after = m.get("loadavg_before", ["?"]), m.get("loadavg_after", ["?"])
    onnx = " (ONNX Runtime: the deployment table below)" if deployment_table(latency) else ""
    return (
        f"Speed-up ({torch_label(latency)}): M_L's time / the row's time, both in PyTorch "
        f"eager{onnx}, for one batch of {LATENCY_BATCH} × "
        f"{latency.get('tokens', '?')} tokens, best of {latency.get('k', '?')} alternating runs, "
        f"from `{path}` ({latency.get('date', '?')}, {m.get('host', '?')}, "
        f"{m.get('torch_threads', '?')} torch threads, 1-min load {before[0]} before / "
        f"{after[0]} after, git {str(latency.get('git_commit', '?'))[:7]}). LoRA rows run as "
        "fast as their M_C (LoRA is merged when saved); AlAd rows as M_C + AlAd of the same "
        "shape (n, H, rank). AlAd overhead: the row's time / its M_C's alone, same file (1.10× "
        "= the adapter adds 10 % to M_C's latency)."
    )


def _ratio(r: dict[str, Any], key: str) -> str:
    return f"{r[key]:.2f}×" if r.get(key) else DASH


def _shape_label(r: dict[str, Any], latency: dict[str, Any]) -> str:
    """A latency row as "minilm-l6 + AlAd n=5 H=1280 r=64"."""
    if not r["window"]:
        return r["model"]
    hidden = r.get("hidden") or latency.get("hidden")
    rank = f" r={r['rank']}" if r.get("rank") else ""
    return f"{r['model']} + AlAd n={r['window']}" + (f" H={hidden}" if hidden else "") + rank


def deployment_table(latency: dict[str, Any] | None) -> str:
    """The ONNX rows of the latency file (`alad bench latency --runtime torch,onnx,onnx-int8`)
    at batch LATENCY_BATCH: each model's time, its speed-up over M_L in the same runtime, over
    the same model in PyTorch and over M_L in PyTorch (what deploying it through ONNX gains), and
    AlAd's overhead over M_C in that runtime. Empty when the file has no ONNX rows."""
    latency = latency or {}
    rows = [
        r
        for r in latency.get("rows", [])
        if r.get("runtime", "torch") != "torch" and r["batch"] == LATENCY_BATCH
    ]
    if not rows:
        return ""
    ref, onnx = torch_label(latency), latency.get("onnx") or {}
    head = ["model", "runtime", "ms / batch", "speed-up vs M_L (same runtime)",
            f"× same model in {ref}", f"× M_L in {ref}", "AlAd overhead"]  # fmt: skip
    lines = [_md_row(head), _md_row(["---"] * len(head))]
    for r in rows:
        cells = [_shape_label(r, latency), r["runtime"], f"{r['ms_per_batch']:.1f}"]
        cells += [_ratio(r, k) for k in ("speedup", "speedup_vs_torch", "speedup_vs_large_torch")]
        lines.append(_md_row([*cells, _ratio(r, "overhead") if r["window"] else ""]))
    return "\n".join(
        [
            "## Deployment latency: ONNX Runtime",
            "",
            "From the same latency file: each model as `alad export --format onnx [--int8]` "
            f"writes it, run in onnxruntime {onnx.get('onnxruntime', '?')} on the CPU with "
            f"{onnx.get('intra_op_num_threads', '?')} intra-op threads (torch's), batch "
            f"{LATENCY_BATCH} × {latency.get('tokens', '?')} tokens, alternating with the "
            "PyTorch runs. INT8: onnxruntime dynamic quantization (QInt8 weights). Goal (issue "
            f"22): minilm-l6 + AlAd under onnx-int8 ≥ 2× the same model and ≥ 12× M_L in {ref}.",
            "",
            *lines,
        ]
    )


def build_markdown(
    rows: dict[str, list[Row]],
    latency: dict[str, Any] | None,
    results_dir: Path,
    latency_path: Path | None,
    missing: list[str] | None = None,
    grid: Path | None = None,
    reused: bool = False,
) -> str:
    n_files = sum(len(row.results) + len(row.superseded) for rs in rows.values() for row in rs)
    n_used = sum(len(row.results) for rs in rows.values() for row in rs)
    parts = [
        "# Table 1: AlAd on compressed models",
        "",
        f"Generated by `alad report` from the {n_files} result files under `{results_dir}` "
        f"({n_used} cells used, {sum(len(rs) for rs in rows.values())} table rows); a cell of "
        f"the grid without a result does not appear{' (listed at the end)' if missing else ''}.",
        "Scores are on the test set: mean ± sample standard deviation (number of seeds), POS and "
        "NER × 100, QA in %; size % is the share of M_L's parameters (encoder + AlAd).",
        _latency_line(latency, latency_path),
        "",
        "![quality vs size and latency](pareto.png)",
    ]
    if deployment := deployment_table(latency):
        parts += ["", deployment]
    for task, task_rows in rows.items():
        parts += [
            "",
            f"## {TASKS[task].title}",
            "",
            task_table(task, task_rows, latency),
            "",
            task_notes(task, task_rows, grid, reused),
        ]
    shapes = {t: x for t, task_rows in rows.items() if (x := shapes_table(t, task_rows, latency))}
    if shapes:
        parts += [
            "",
            "## Adapter shapes: score against latency",
            "",
            "Per M_C and mode with AlAd rows of several shapes: the adapter's parameters (the "
            "row's minus M_C's), its latency overhead over M_C alone (the latency file above) "
            "and the test score, against the paper's shape (n=5, H=1280, full first layer). "
            f"Goal (issue 22): overhead ≤ {LEAN_OVERHEAD:.2f}× at ≤ {LEAN_DROP} points below it.",
        ]
        for task, table in shapes.items():
            parts += ["", f"### {TASKS[task].title}", "", table]
    winners = {t: w for t, task_rows in rows.items() if (w := winners_table(t, task_rows))}
    if winners:
        parts += [
            "",
            "## Which method wins at M_C's size",
            "",
            "Per M_C: the AlAd row and the row of the other methods on M_C (LoRA, KD, SLAD, "
            "AdaLoRA) with the best mean dev score (chosen on dev, never on test, among the rows "
            "with the most seeds), their test scores and AlAd's lead; beyond the seed spread: "
            "more than twice the standard error of the difference of the two means.",
        ]
        for task, table in winners.items():
            parts += ["", f"### {TASKS[task].title}", "", table]
    parts += [
        "",
        "## Alignment and learning curves",
        "",
        "Held-out cosine similarity of the adapter's output to M_L's (token level; phase 1 on "
        "general text, phase 2 on the task's text; before → after), and the dev score per epoch "
        "(× 100, mean over the seeds), as plotted in `curves.png`. A curve still rising at the "
        "last epoch is a budget limit, not a ceiling.",
        "",
        "![dev score per epoch](curves.png)",
    ]
    for task, task_rows in rows.items():
        parts += ["", f"### {TASKS[task].title}", "", curves_table(task_rows)]
    parts += ["", "## Per seed", ""]
    for task, task_rows in rows.items():
        parts += [f"### {TASKS[task].title}", "", seed_table(task, task_rows), ""]
    if missing:
        parts += ["## Still to run", "", *missing, ""]
    return "\n".join(parts)


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
        read_result(c.result_path)
        for c in cells(grid)
        if c.done and c.result_path != c.own_result_path
    ]


def still_to_run(grid_path: Path | None, results_dir: Path) -> list[str]:
    """The grid's rows that still miss seeds, as markdown lines with `alad sweep list`'s
    estimate; empty without a grid file or when the grid keeps its results elsewhere."""
    if grid_path is None or not Path(grid_path).is_file():
        return []
    from alad.sweep import Progress, cells, load_grid

    grid = load_grid(Path(grid_path))
    if grid.results.resolve() != Path(results_dir).resolve():
        return []
    prog = Progress.of(cells(grid))
    if not prog.todo:
        return []
    groups: dict[str, list[Any]] = {}
    for cell in prog.todo:
        groups.setdefault(cell.group, []).append(cell)
    eta = sum(prog.predict(c) for c in prog.todo) / 3600
    lines = [
        f"{len(prog.todo)} of the {prog.total} cells of `{grid_path}` have no result yet "
        f"(~{eta:.1f} h at the timings measured so far; `alad sweep run {grid_path}` runs them, "
        "cheapest first):",
        "",
    ]
    for group, todo in groups.items():
        seeds = ", ".join(str(c.seed) for c in todo)
        minutes = sum(prog.predict(c) for c in todo) / 60
        lines.append(f"- `{group}`: seed{'s' * (len(todo) > 1)} {seeds} (~{minutes:.0f} min)")
    return lines


# ---------------------------------------------------------------------------------------------
# The report


def pareto_points(rows: dict[str, list[Row]], latency: dict[str, Any] | None) -> list[dict]:
    """One point per row: main ×100 (mean, std) against size %, ms per batch of 32 and the
    latency overhead over M_C alone (`label`: what tells apart the AlAd rows of one M_C and
    mode in that panel, see `_shape_labels`)."""
    points = []
    for task, task_rows in rows.items():
        labels = _shape_labels(task_rows)
        for row in task_rows:
            y = row.mean("main", 100.0)  # a fraction for every task (QA: f1 / 100)
            if y is None:
                continue
            points.append(
                {
                    "task": task,
                    "series": row.series,
                    "mode": row.mode,
                    "y": y,
                    "yerr": row.std("main", 100.0),
                    "size_pct": row.mean("size_pct"),
                    "ms": latency_ms(row, latency),
                    "overhead": overhead(row, latency),
                    "label": labels.get(id(row)),
                }
            )
    return points


def _shape_labels(rows: list[Row]) -> dict[int, str]:
    """id(row) -> its label where several AlAd rows share an M_C and mode (Table 1's window
    ablation, a grid's variants): the variant's name, else its shape ("n=3"; "n=5 H=1280" when
    the rows differ in more than n). A lone row needs none."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        if row.adapter_shape is not None:
            groups.setdefault((row.compressed, row.mode), []).append(row)
    out = {}
    for group in (g for g in groups.values() if len(g) > 1):
        more = len({(r.adapter_shape or ())[1:] for r in group}) > 1  # H or rank differ too
        for r in group:
            n, h, rank = r.adapter_shape or (None, None, None)
            shape = f"n={n} H={h}" + (f" r={rank}" if rank else "") if more else f"n={n}"
            out[id(r)] = r.variant or shape
    return out


def pareto_baselines(rows: dict[str, list[Row]]) -> dict[str, tuple[float, str]]:
    """Model-free baselines to draw across a task's panels (main x100): QA's always no-answer."""
    out = {}
    for task, task_rows in rows.items():
        name, scores, _ = trivial(task, task_rows)
        if scores is not None:
            out[task] = (100.0 * scores["main"], name)
    return out


def write_report(
    results_dir: Path = Path("results/table1"),
    latency_path: Path | None = Path("results/latency.json"),
    out: Path = Path("reports"),
    grid: Path | None = None,
) -> dict[str, Path]:
    """Write `out`/table1.md, `out`/pareto.png and `out`/curves.png as a set; returns their
    paths. With the sweep's `grid` file the table ends with the cells still to run. All three
    are built in a temporary folder beside `out` and only then renamed into it: a bad input
    leaves `out` as it was (no new plots beside an old table)."""
    from alad.plots import plot_curves, plot_pareto

    reused = reused_results(grid, results_dir)
    own = Path(results_dir).is_dir() and any(Path(results_dir).rglob("*.json"))
    rows = group_rows([*(load_results(results_dir) if own or not reused else []), *reused])
    latency = load_latency(latency_path)
    missing = still_to_run(grid, results_dir)
    out = Path(out)
    names = {"table": "table1.md", "plot": "pareto.png", "curves": "curves.png"}
    recover_dir(out.resolve())  # a build folder a killed report left behind
    build = tmp_dir(out.resolve())  # beside `out`: one filesystem, so the renames are atomic
    try:
        titles = [(t, f"{TASKS[t].title} ({TASKS[t].main_name})") for t in rows]
        plot_pareto(pareto_points(rows, latency), titles, build / names["plot"],
                    pareto_baselines(rows))  # fmt: skip
        series = [
            {"task": t, "model": r.model, "mode": r.mode,
             "window": r.window, "y": dev_curve(r)}
            for t, task_rows in rows.items() for r in task_rows
        ]  # fmt: skip
        plot_curves(series, titles, build / names["curves"])
        markdown = build_markdown(
            rows, latency, results_dir, latency_path, missing, grid, bool(reused)
        )
        write_text(markdown + "\n", build / names["table"])
        out.mkdir(parents=True, exist_ok=True)
        for name in names.values():
            os.replace(build / name, out / name)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return {what: out / name for what, name in names.items()}
