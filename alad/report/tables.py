"""table1.md's pieces in markdown: per task its table (scores, size, speed-up, overhead, gap
recovered) and notes, which method wins at M_C's size, the adapter shapes against latency, the
alignment and learning curves, the per-seed table, the latency paragraph and the ONNX deployment
table.

    alad report                                   # write.build_markdown puts them together
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from alad.config import AdapterConfig
from alad.modes import MODES
from alad.report.latency import LATENCY_BATCH, overhead, speedup, torch_label
from alad.report.rows import Row, adapter_groups, compressed_row, is_number
from alad.tasks import TASKS

DASH = "–"


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
    base = compressed_row(rows, row.compressed)
    if large is None or base is None:
        return DASH
    a, c, m = row.mean("main"), base.mean("main"), large.mean("main")
    if a is None or c is None or m is None:
        return DASH
    if m <= c:
        return "n/a"
    if m - c <= 2 * _se_of_difference(large.values("main"), base.values("main")):
        return "n/a (gap in noise)"
    return f"{100 * (a - c) / (m - c):.0f}%"


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
        if is_number((r.record.get("dev") or {}).get("main"))
    ]
    return statistics.fmean(dev) if dev else None


def _main_column(task: str) -> tuple[str, str, float]:
    """The report column of the task's main metric: (header, metric key, scale)."""
    return next(c for c in TASKS[task].columns if c[0] == TASKS[task].main_name)


def _lead(va: list[float], vb: list[float]) -> str:
    """A's lead over B in seed means, and whether it exceeds twice the standard error of the
    difference (the seed spread)."""
    lead, se = statistics.fmean(va) - statistics.fmean(vb), _se_of_difference(va, vb)
    verdict = (
        "one seed: no spread" if se == 0
        else "beyond the seed spread" if abs(lead) > 2 * se
        else "within the seed spread"
    )  # fmt: skip
    return f"{lead:+.1f} ({verdict}, 2 SE = {2 * se:.1f})"


def _comparable(rows: list[Row]) -> list[Row]:
    """The rows a winner is chosen from: not M_L, with a dev score, and with the most seeds
    among them (a one-seed screen never beats a 3-seed row)."""
    rows = [r for r in rows if not r.is_large and _dev_mean(r) is not None]
    seeds = max((len(r.results) for r in rows), default=0)
    return [r for r in rows if len(r.results) == seeds]


def winners_table(task: str, rows: list[Row]) -> str:
    """Per M_C: the best AlAd row and the best other method on M_C (LoRA, KD, SLAD, AdaLoRA),
    each chosen by its mean *dev* score (the test set never chooses) among the rows with the
    most seeds, with their test scores and gaps recovered, and AlAd's lead: beyond the seed
    spread when it exceeds twice the standard error of the difference of the two means. ""
    when no M_C has both kinds."""
    header, key, scale = _main_column(task)
    lines = []
    for compressed in dict.fromkeys(r.compressed for r in rows if not r.is_large):
        mine = _comparable([r for r in rows if r.compressed == compressed])
        alad = [r for r in mine if MODES[r.mode].adapter]
        other = [r for r in mine if not MODES[r.mode].adapter and r.mode != "compressed"]
        if not alad or not other:
            continue
        a, o = max(alad, key=_dev_mean), max(other, key=_dev_mean)
        va, vo = a.values(key, scale), o.values(key, scale)
        if va and vo:
            lines.append(
                _md_row([compressed, a.label, mean_std(va), gap_recovered(a, rows), o.label,
                         mean_std(vo), gap_recovered(o, rows), _lead(va, vo)])
            )  # fmt: skip
    if not lines:
        return ""
    head = ["M_C", "best AlAd (dev)", header, "gap", "best other method (dev)", header, "gap",
            "AlAd − other"]  # fmt: skip
    return "\n".join([_md_row(head), _md_row(["---"] * len(head)), *lines])


# "as fast": a speed-up at least this share of the AlAd row's (latencies on a shared CPU vary by
# a few %; minilm-l6 alone, 7.9x, is as fast as minilm-l3 + AlAd, 8.3x)
AS_FAST = 0.9


def speed_winners_table(task: str, rows: list[Row], latency: dict[str, Any] | None) -> str:
    """Per M_C: its best AlAd row (by mean dev, as in winners_table) against the best row
    without an adapter, on *any* M_C, that runs as fast (speed-up over M_L in the latency file
    >= AS_FAST x the AlAd row's): what a user who can afford AlAd's latency would get from
    spending it on a bigger plain model or another method instead. "" without latencies or
    where no such pair exists."""
    header, key, scale = _main_column(task)
    mine = _comparable(rows)
    speed = {id(r): speedup(r, latency) for r in mine}
    lines = []
    for compressed in dict.fromkeys(r.compressed for r in mine):
        alad = [r for r in mine if r.compressed == compressed and MODES[r.mode].adapter]
        if not alad or speed[id(a := max(alad, key=_dev_mean))] is None:
            continue
        other = [
            r for r in mine
            if not MODES[r.mode].adapter and (speed[id(r)] or 0) >= AS_FAST * speed[id(a)]
        ]  # fmt: skip
        if not other:
            continue
        o = max(other, key=_dev_mean)
        va, vo = a.values(key, scale), o.values(key, scale)
        if va and vo:
            lines.append(
                _md_row([f"{compressed} {a.label}", f"{speed[id(a)]:.2f}×", mean_std(va),
                         f"{o.compressed} {o.label}", f"{speed[id(o)]:.2f}×", mean_std(vo),
                         _lead(va, vo)])
            )  # fmt: skip
    if not lines:
        return ""
    head = ["best AlAd on M_C (dev)", "speed-up", header,
            "best method without AlAd, as fast (dev)", "speed-up", header,
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
    header, key, scale = _main_column(task)
    paper = tuple(AdapterConfig.model_fields[k].default for k in ("window", "hidden", "rank"))
    lines = []
    for (compressed, _), group in adapter_groups(rows).items():
        ref = [r for r in group if r.adapter_shape == paper]
        if len({r.adapter_shape for r in group}) < 2 or len(ref) != 1:
            continue
        alone = compressed_row(rows, compressed)
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
        split = " / ".join(f"{k} {d[k]:,}" for k in ("train", "dev", "test") if is_number(d.get(k)))
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
        + f"; 1-min load average {_range([x for x in loads if is_number(x)])} during the cells.",
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
                        f"{100 * dev['main']:.1f}" if is_number(dev.get("main")) else DASH,
                        *(
                            f"{scale * t[key]:.1f}" if is_number(t.get(key)) else DASH
                            for _, key, scale in cols
                        ),
                        f"{t['size_pct']:.1f}" if is_number(t.get("size_pct")) else DASH,
                        f"{r.record['seconds']:.0f}"
                        if is_number(r.record.get("seconds"))
                        else DASH,
                        r.record.get("key", r.path.stem),
                    ]
                )
            )
    return "\n".join(lines)


def _phase_record(row: Row, phase: str) -> dict[str, Any] | None:
    """The phase-1/2 record of a row (shared by its seeds: the first seed that has one)."""
    for r in row.results:
        record = (r.record.get("alignment") or {}).get(phase)
        if isinstance(record, dict) and is_number((record.get("after") or {}).get("cosine")):
            return record
    return None


def _cosine(record: dict[str, Any] | None) -> str:
    if record is None:
        return DASH
    before, after = record.get("before") or {}, record["after"]
    b = f"{before['cosine']:.3f} → " if is_number(before.get("cosine")) else ""
    return f"{b}{after['cosine']:.3f}"


def dev_curve(row: Row, key: str = "dev_main", scale: float = 100.0) -> list[float]:
    """`key` per epoch, mean over the row's seeds (epochs that every seed reached)."""
    curves = [
        [scale * h[key] for h in r.record.get("history") or [] if is_number(h.get(key))]
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
        best = [b for b in best if is_number(b)]
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


def latency_line(latency: dict[str, Any] | None, path: Path | None) -> str:
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
