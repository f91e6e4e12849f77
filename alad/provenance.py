"""Where a result came from: the code's commit and the machine it ran on.

Light on purpose (no MLflow, no Prefect): every result writer records these, including a sweep
cell run on a bare GPU machine with only torch and the config's packages installed.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from typing import Any

import torch


def git_commit() -> str:
    """`git rev-parse HEAD`; in a copy without its .git (a device machine, an image),
    `$ALAD_GIT_COMMIT` as the caller names it; else "unknown"."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return commit or os.environ.get("ALAD_GIT_COMMIT", "unknown")


def machine(device: torch.device | str = "cpu", load_start: float | None = None) -> dict[str, Any]:
    """Host, CPUs, torch build and threads, the device (with the GPU's name on CUDA) and the
    1-minute load average at the start (when given) and now: what a reader needs to judge a
    time or compare two runs."""
    device = torch.device(device)
    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    if load_start is not None:
        info["load1_start"] = round(load_start, 2)
    info["load1_end"] = round(os.getloadavg()[0], 2)
    return info
