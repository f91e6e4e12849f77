"""The deployment runner: serves the `alad-pipeline` deployments to the Prefect server.

    python flows/deployments.py          # started in the background by `make up`

`demo` runs the demo profile on the packaged offline models and data; `experiment` is the same
flow for any parameters (`prefect deployment run 'alad-pipeline/experiment' --param ...`);
`alad-sweep/table1` runs the Table-1 grid (flows/sweep.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # flows/ and the repo (alad) without installing


def _check_api() -> None:
    import os
    import urllib.request

    url = os.environ.get("PREFECT_API_URL")
    if not url:  # unset, Prefect would silently start a throwaway server
        raise SystemExit(
            "PREFECT_API_URL is not set: start the services with `make up` "
            "(or `source .services/env` after it)"
        )
    try:
        urllib.request.urlopen(f"{url}/health", timeout=3)
    except OSError:
        raise SystemExit(f"no Prefect server answers at {url}: start it with `make up`") from None


if __name__ == "__main__":
    _check_api()
    from pipeline import alad_pipeline
    from prefect import serve
    from sweep import alad_sweep

    serve(
        alad_pipeline.to_deployment(
            name="demo",
            parameters={"profile": "demo"},
            description="demo profile, packaged offline models and data",
        ),
        alad_pipeline.to_deployment(
            name="experiment", description="any task / compressed model / mode / window"
        ),
        alad_sweep.to_deployment(
            name="table1",
            parameters={"grid": "sweeps/table1.yaml"},
            description="the Table-1 grid; skips cells whose result is committed",
        ),
        limit=1,  # 2 cores: one pipeline at a time; further runs wait in the queue
    )
