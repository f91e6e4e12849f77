"""The deployment runner: serves the `alad-pipeline` deployments to the Prefect server.

    python flows/serve.py          # started in the background by `make up`

`demo` runs the demo profile on the packaged offline models and data; `experiment` is the same
flow for any parameters (`prefect deployment run 'alad-pipeline/experiment' --param ...`).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline import alad_pipeline  # noqa: E402
from prefect import serve  # noqa: E402

if __name__ == "__main__":
    serve(
        alad_pipeline.to_deployment(
            name="demo",
            parameters={"profile": "demo"},
            description="demo profile, packaged offline models and data",
        ),
        alad_pipeline.to_deployment(
            name="experiment", description="any task / compressed model / mode / window"
        ),
        limit=1,  # 2 cores: one pipeline at a time; further runs wait in the queue
    )
