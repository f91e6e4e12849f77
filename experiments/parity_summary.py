"""Mean ± std (sample std, n-1) of experiments/results/parity/*.json per (model, harness), test
accuracy in %.

    .venv/bin/python experiments/parity_summary.py

The Table-1 sweep's POS cells `mpnet-base/large` and `minilm-l6/compressed` are the same
`alad finetune` runs (same data, lr, epochs, batch, seeds; results/table1/pos/): they are listed
as harness `alad (sweep)`. The reference's mpnet-base seed 13 was measured by the team
(../shared/reference/README.md: dev 85.8, test 83.7; no JSON here). The last rows pool every seed
of a model per harness: the figures the parity target (means within 1.5 points) is read on.
"""

import json
import statistics
from collections import defaultdict
from pathlib import Path

runs: dict[tuple[str, str], list[dict]] = defaultdict(list)
for f in sorted(Path("experiments/results/parity").glob("*.json")):
    r = json.loads(f.read_text())
    runs[r["model"], r["harness"]].append(r)
SWEEP = {("mpnet-base", "large"), ("minilm-l6", "compressed")}
for f in sorted(Path("results/table1/pos").glob("*.json")):
    r = json.loads(f.read_text())
    cell = r["cell"]
    model = cell["large"] if cell["mode"] == "large" else cell["compressed"]
    if (model, cell["mode"]) in SWEEP:
        runs[model, "alad (sweep)"].append(
            {
                "seed": cell["seed"],
                "dev": r["dev"]["main"],
                "test": r["test"]["main"],
                "secs": r["seconds"],
            }
        )


SHARED = {("mpnet-base", "reference"): {"seed": 13, "dev": 0.858, "test": 0.837, "secs": None}}


def ms(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{100 * xs[0]:.1f} (1 seed)"
    return f"{100 * statistics.mean(xs):.1f} ± {100 * statistics.stdev(xs):.1f}"


print("| model | harness | seeds | dev acc | test acc | test per seed | s/run |")
print("|---|---|---|---|---|---|---|")
for (model, harness), rs in sorted(runs.items()):
    rs.sort(key=lambda r: r["seed"])
    print(
        f"| {model} | {harness} | {','.join(str(r['seed']) for r in rs)} | "
        f"{ms([r['dev'] for r in rs])} | {ms([r['test'] for r in rs])} | "
        f"{' / '.join(format(100 * r['test'], '.1f') for r in rs)} | "
        f"{statistics.mean(r['secs'] for r in rs):.0f} |"
    )

print()
print("| model | harness (every seed) | seeds | test acc |")
print("|---|---|---|---|")
pooled: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
for (model, harness), rs in runs.items():
    if harness in ("alad", "alad (sweep)", "reference"):
        for r in rs:
            pooled[model, harness.split()[0]][r["seed"]] = r["test"]
for (model, harness), r in SHARED.items():
    pooled[model, harness].setdefault(r["seed"], r["test"])
for (model, harness), by_seed in sorted(pooled.items()):
    seeds = sorted(by_seed)
    print(
        f"| {model} | {harness} | {','.join(map(str, seeds))} | {ms([by_seed[s] for s in seeds])} |"
    )
