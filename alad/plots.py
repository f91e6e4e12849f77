"""Plots: loss curves of a pipeline run, Table 1's quality/size/latency Pareto plot, probes.

    alad stage evaluate        # writes runs/eval/plots/{phase1,phase2,phase3}.png
    alad report                # writes reports/pareto.png and reports/curves.png
    alad probe ... --out reports/probe-pos.json     # and reports/probe-pos.png

Figures are built with matplotlib's object API (`Figure` + the Agg canvas), not pyplot: no global
figure state, so plotting is safe from Prefect's worker threads, and nothing needs closing.
Files are written whole under a temporary name and renamed (alad.atomic).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import IO, Any

from alad.atomic import write_bytes
from alad.modes import MODES

CURVES = {
    "phase1": (["train_mse", "heldout_mse"], "Phase 1: alignment MSE (general text)"),
    "phase2": (["train_mse", "heldout_mse"], "Phase 2: alignment MSE (task text)"),
    "phase3": (["train_loss", "dev_main"], "Phase 3: train loss and validation score"),
}
DPI = 110


def figure(width: float, height: float) -> Any:
    """An empty Figure (inches, at DPI) on its own Agg canvas: no pyplot state, nothing to close."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, target: Path | IO[bytes]) -> None:
    """PNG to a file object, or atomically to a path."""
    if isinstance(target, Path):
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        write_bytes(buffer.getvalue(), target)
    else:
        fig.savefig(target, format="png")


def plot_history(history: list[dict[str, Any]], keys: list[str], title: str, path: Path) -> Path:
    """`keys` against epoch (1-based; rows without a number for a key are skipped). The one loss
    curve renderer: the pipeline's evaluate stage and MLflow's plots/ artifacts use it."""
    missing = [k for k in keys if not any(_is_number(row.get(k)) for row in history)]
    if missing:
        raise ValueError(
            f"loss curve {title!r}: no numeric {missing} in the history; "
            f"its keys are {sorted({k for row in history for k in row})}"
        )
    fig = figure(5, 3.2)
    ax = fig.add_subplot()
    for key in keys:
        points = [
            (row.get("epoch", i + 1), row[key])
            for i, row in enumerate(history)
            if _is_number(row.get(key))
        ]
        ax.plot(*zip(*points, strict=True), marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    return path


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def plot_histories(layout: Any, out: Path) -> list[Path]:
    """One PNG per phase whose metrics.json has a history."""
    paths = []
    for phase, (keys, title) in CURVES.items():
        metrics = layout.phase(phase) / "metrics.json"
        if metrics.is_file():
            history = json.loads(metrics.read_text()).get("history") or []
            if history:
                paths.append(plot_history(history, keys, title, out / f"{phase}.png"))
    return paths


PARETO_AXES = (
    ("size_pct", "size (% of M_L parameters)"),
    ("ms", "ms per batch of 32 (CPU)"),
    ("overhead", "latency overhead over M_C alone (×)"),
)


def plot_pareto(
    points: list[dict[str, Any]],
    tasks: list[tuple[str, str]],
    target: Path | IO[bytes],
    baselines: dict[str, tuple[float, str]] | None = None,
) -> None:
    """One column per task: quality (`y` ± `yerr`) against `size_pct` (top), `ms` (middle) and
    `overhead` (bottom: (M_C + AlAd) / M_C latency, 1.0 for M_C alone; M_L not shown).

    `points`: dicts with task, series (the colour: one per model), mode (the marker), y, yerr,
    size_pct, ms and overhead (None: not measured, the point is left out of that panel), and
    label (optional: written beside the point in the overhead panel, e.g. a grid's variant).
    `tasks`: (task, title) per column. `baselines`: task -> (score, label), a dashed line across
    its panels (QA's always-no-answer, without which its panel cannot be read)."""
    from matplotlib.lines import Line2D

    baselines = baselines or {}
    fig = figure(4.2 * max(1, len(tasks)), 10.6)
    series = sorted({p["series"] for p in points})
    colours = {s: f"C{i % 10}" for i, s in enumerate(series)}
    axes = fig.subplots(len(PARETO_AXES), max(1, len(tasks)), squeeze=False)
    for col, (task, title) in enumerate(tasks):
        for row, (x, xlabel) in enumerate(PARETO_AXES):
            ax = axes[row][col]
            shown = [p for p in points if p["task"] == task and p.get(x) is not None]
            for p in shown:
                _pareto_point(ax, p, x, colours[p["series"]])
            if task in baselines:
                _baseline(ax, *baselines[task])
            if not shown:
                why = "no sizes in the results" if x == "size_pct" else "no latency.json"
                ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("test score × 100")
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(title, fontsize=10)
    handles = [Line2D([], [], color=colours[s], marker="o", ls="", label=s) for s in series]
    modes = [m for m in MODES if any(p["mode"] == m for p in points)]
    handles += [Line2D([], [], color="0.3", marker=MODES[m].marker, ls="", label=m) for m in modes]
    fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    save_figure(fig, target)


def _pareto_point(ax: Any, p: dict[str, Any], x: str, colour: str) -> None:
    ax.errorbar(
        p[x],
        p["y"],
        yerr=p["yerr"] or None,
        fmt=MODES[p["mode"]].marker if p["mode"] in MODES else "x",
        color=colour,
        markersize=9 if MODES[p["mode"]].encoder == "large" else 6,
        capsize=3,
    )
    if x == "overhead" and p.get("label"):
        ax.annotate(
            p["label"], (p[x], p["y"]), xytext=(4, 3), textcoords="offset points", fontsize=7
        )


def _baseline(ax: Any, score: float, label: str) -> None:
    ax.axhline(score, color="0.4", ls="--", lw=1)
    ax.annotate(
        label,
        (0.01, score),
        xycoords=("axes fraction", "data"),
        xytext=(0, 3),
        textcoords="offset points",
        fontsize=8,
        color="0.3",
    )


def plot_curves(
    series: list[dict[str, Any]], tasks: list[tuple[str, str]], target: Path | IO[bytes]
) -> None:
    """One panel per task: each row's dev score per epoch (`y`, a list; empty: left out),
    coloured by `model`, marked by `mode`, dashed for M_L and dotted / dash-dotted for the
    windows n = 1 / 3 (the ablation); one legend for all panels, below them."""
    from matplotlib.lines import Line2D

    fig = figure(4.6 * max(1, len(tasks)), 4.8)
    models = sorted({s["model"] for s in series})
    colours = {m: f"C{i % 10}" for i, m in enumerate(models)}
    styles = {1: ":", 3: "-."}
    axes = fig.subplots(1, max(1, len(tasks)), squeeze=False)[0]
    for ax, (task, title) in zip(axes, tasks, strict=False):
        shown = [s for s in series if s["task"] == task and s["y"]]
        for s in shown:
            ax.plot(
                range(1, len(s["y"]) + 1),
                s["y"],
                marker=MODES[s["mode"]].marker if s["mode"] in MODES else "x",
                color=colours[s["model"]],
                ls="--"
                if MODES[s["mode"]].encoder == "large"
                else styles.get(s.get("window"), "-"),
            )
        if not shown:
            ax.text(0.5, 0.5, "no dev history", ha="center", va="center", transform=ax.transAxes)
        else:
            epochs = max(len(s["y"]) for s in shown)
            ax.set_xlim(0.5, epochs + 0.5)
            ax.set_xticks(range(1, epochs + 1, max(1, epochs // 10)))
        ax.set_xlabel("epoch")
        ax.set_ylabel("dev score × 100 (mean over seeds)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colours[m], marker="o", ls="", label=m) for m in models]
    modes = [m for m in MODES if any(s["mode"] == m for s in series)]
    handles += [Line2D([], [], color="0.3", marker=MODES[m].marker, ls="", label=m) for m in modes]
    windows = sorted({s.get("window") for s in series} & set(styles))
    handles += [Line2D([], [], color="0.3", ls=styles[n], label=f"n = {n}") for n in windows]
    fig.legend(handles=handles, loc="lower center", ncol=min(8, len(handles)), fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    save_figure(fig, target)


def plot_probe(record: dict[str, Any], target: Path | IO[bytes]) -> None:
    """`alad probe`'s record: test accuracy per layer (relative depth 0..1, so models of
    different depths share the axis), one line per model, each model's best dev layer ringed;
    the probe through an adapter as a star at depth 1 (it reads the last layer through AlAd)."""
    fig = figure(7, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    best = record.get("best", {})
    for name in dict.fromkeys(r["model"] for r in record["rows"]):
        rows = [r for r in record["rows"] if r["model"] == name]
        layers = [r for r in rows if r["layer"] != "alad"]
        depth = max(1, len(layers) - 1)
        line = ax.plot(
            [int(r["layer"]) / depth for r in layers],
            [r["test"] for r in layers],
            marker="o",
            label=f"{name} ({depth} layers)",
        )[0]
        chosen = best.get(name, {}).get("best_dev_layer")
        for r in layers:
            if chosen is not None and int(r["layer"]) == chosen:
                ax.plot(
                    [chosen / depth],
                    [r["test"]],
                    marker="o",
                    ms=13,
                    mfc="none",
                    color=line.get_color(),
                    ls="",
                )
        for r in rows:
            if r["layer"] == "alad":
                ax.plot([1.0], [r["test"]], marker="*", ms=14, color=line.get_color(), ls="")
                ax.annotate(
                    f"{name} + AlAd",
                    (1.0, r["test"]),
                    textcoords="offset points",
                    xytext=(6, -4),
                    fontsize=8,
                )
    task = record.get("task", "pos").upper()
    ax.set_xlabel("layer / number of layers (0 = embeddings, 1 = last layer)")
    ax.set_ylabel(f"{task} test accuracy of a linear probe (%)")
    ax.set_title(f"What a frozen encoder's layers keep ({task}; ring: the best layer on dev)")
    ax.set_xlim(-0.03, 1.25)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower center")
    save_figure(fig, target)
