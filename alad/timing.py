"""Wall-clock timing of forward passes on a shared machine: alternate, keep the best.

    alad bench latency            # M_L, each M_C, M_C + AlAd: one process, best of k each
    alad evaluate MODEL --test F --speed

On a CPU shared with other jobs, the minimum over repeats estimates the undisturbed time (noise
only ever adds), and alternating the candidates round-robin makes a burst of load spoil one
repeat of each rather than every repeat of whichever model happened to run during it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any


def best_of(
    calls: Mapping[Any, Callable[[], Any]], k: int, warmup: bool = True
) -> dict[Any, float]:
    """Seconds of each call's fastest of `k` runs; the calls alternate round-robin.

    With `warmup`, each call first runs once untimed (one-off allocations, lazy init)."""
    if k < 1:
        raise ValueError(f"k must be >= 1 (repeats per call), got {k}")
    if warmup:
        for call in calls.values():
            call()
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(k):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best
