"""QA training budget (issue 7, item 7), chosen on dev only: the Table-1 grid's QA cell
(sweeps/table1.yaml, minilm-l6 `compressed`, seed 13) with some phase-3 values changed, trained
and scored on the dev article; the test split is not read. One JSON per try in
experiments/results/qa_budget/<label>.json (committed): dev EM/F1, HasAns/NoAns F1, the tuned
no-answer threshold, per-epoch history, seconds, load.

    .venv/bin/python experiments/qa_budget.py all-1ep-lr1e-4 phase3.max_train_examples=null \
        phase3.epochs=1 phase3.lr=1e-4
"""

import json
import os
import sys
import time
from pathlib import Path

import yaml

from alad.atomic import write_json
from alad.phases.finetune import finetune
from alad.sweep import cells, load_grid

label, *pairs = sys.argv[1:]
cell = next(
    c
    for c in cells(load_grid(Path("sweeps/table1.yaml")), ["qa"])
    if c.name.endswith("qa/minilm-l6/compressed/s13")
)
changes = {k: yaml.safe_load(v) for k, v in (p.split("=", 1) for p in pairs)}
p3 = cell.settings.phase3
p3 = type(p3).model_validate(
    {**p3.model_dump(), **{k.removeprefix("phase3."): v for k, v in changes.items()}}
)
settings = cell.settings.model_copy(update={"phase3": p3})
t0, load0 = time.perf_counter(), os.getloadavg()[0]
r = finetune(settings, out=Path("runs/qa_budget") / label, progress=False)
record = {
    "label": label,
    "cell": cell.name,
    "changes": changes,
    "dev": {k: v for k, v in r.dev.items() if not isinstance(v, dict | list)},
    "history": r.history,
    "seconds": round(time.perf_counter() - t0, 1),
    "load1": [round(load0, 2), round(os.getloadavg()[0], 2)],
}
write_json(record, Path("experiments/results/qa_budget") / f"{label}.json")
print(json.dumps(record["dev"]), record["seconds"])
