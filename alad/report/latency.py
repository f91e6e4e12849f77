"""The join with `alad bench latency`'s JSON: a row's time at batch 32, its speed-up over M_L and
AlAd's overhead over M_C alone, matched on the row's encoder and adapter shape (n, H, rank).

    alad report --latency results/latency.json    # the speed-up and overhead columns
"""

from __future__ import annotations

from typing import Any

from alad.config import AdapterConfig
from alad.report.rows import Row

LATENCY_BATCH = 32


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
