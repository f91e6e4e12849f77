"""Loss-curve plots of a pipeline run (a picture says more than the per-epoch table).

alad stage evaluate        # writes runs/eval/plots/{phase1,phase2,phase3}.png
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CURVES = {
    "phase1": (["train_mse", "heldout_mse"], "Phase 1: alignment MSE (general text)"),
    "phase2": (["train_mse", "heldout_mse"], "Phase 2: alignment MSE (task text)"),
    "phase3": (["train_loss", "dev_main"], "Phase 3: train loss and validation score"),
}


def plot_history(history: list[dict[str, Any]], keys: list[str], title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=110)
    epochs = [h["epoch"] for h in history]
    for key in keys:
        ax.plot(epochs, [h[key] for h in history], marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


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
