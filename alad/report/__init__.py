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

The package, top to bottom: rows.py (the result files read back, grouped into Table 1's rows),
latency.py (the join with the latency file: speed-up and overhead), tables.py (the markdown of
every table and paragraph), write.py (table1.md put together, the plots, the cells still to run).
"""

from alad.report.latency import (
    LATENCY_BATCH,
    latency_ms,
    overhead,
    speedup,
    torch_label,
    torch_rows,
)
from alad.report.rows import (
    Result,
    Row,
    group_rows,
    load_latency,
    load_results,
    read_result,
    reused_results,
)
from alad.report.tables import (
    DASH,
    LEAN_DROP,
    LEAN_OVERHEAD,
    curves_table,
    deployment_table,
    dev_curve,
    gap_recovered,
    mean_std,
    seed_table,
    shapes_table,
    speed_winners_table,
    task_notes,
    task_table,
    trivial,
    winners_table,
)
from alad.report.write import (
    build_markdown,
    pareto_baselines,
    pareto_points,
    still_to_run,
    write_report,
)

__all__ = [
    "Result",
    "read_result",
    "load_results",
    "load_latency",
    "Row",
    "group_rows",
    "reused_results",
    "LATENCY_BATCH",
    "torch_rows",
    "torch_label",
    "speedup",
    "latency_ms",
    "overhead",
    "DASH",
    "gap_recovered",
    "mean_std",
    "trivial",
    "task_table",
    "speed_winners_table",
    "winners_table",
    "LEAN_OVERHEAD",
    "LEAN_DROP",
    "shapes_table",
    "task_notes",
    "seed_table",
    "dev_curve",
    "curves_table",
    "deployment_table",
    "build_markdown",
    "still_to_run",
    "pareto_points",
    "pareto_baselines",
    "write_report",
]
