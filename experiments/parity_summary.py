"""Mean ± std (sample std, n-1) of experiments/results/parity/*.json per (model, harness), test
accuracy in %.

    .venv/bin/python experiments/parity_summary.py [FOLDER]   # default experiments/results/parity

Distillation runs (experiments/parity.sh with KD="T ALPHA") are the harnesses `alad-kd-T<T>-a<A>`
and `reference-kd-T<T>-a<A>`; the last table pairs them: the means' difference against the
target (within 1.5 points).

The Table-1 sweep's POS cells `mpnet-base/large` and `minilm-l6/compressed` are the same
`alad finetune` runs (same data, lr, epochs, batch, seeds; results/table1/pos/): they are listed
as harness `alad (sweep)`. The reference's mpnet-base seed 13 was measured by the team
(../shared/reference/README.md: dev 85.8, test 83.7; no JSON here). The last rows pool every seed
of a model per harness: the figures the parity target (means within 1.5 points) is read on.
"""

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

FOLDER = Path(sys.argv[1] if len(sys.argv) > 1 else "experiments/results/parity")
runs: dict[tuple[str, str], list[dict]] = defaultdict(list)
for f in sorted(FOLDER.glob("*.json")):
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

kd = sorted((m, h) for m, h in runs if h.startswith("alad-kd-"))
if kd:
    print()
    print("| model | KD (T, alpha) | seeds | alad test | reference test | difference |")
    print("|---|---|---|---|---|---|")
for model, harness in kd:
    setting = harness.removeprefix("alad-kd-")
    ours, peer = runs[model, harness], runs.get((model, f"reference-kd-{setting}"), [])
    t, a = setting.removeprefix("T").split("-a")
    a_test = {r["seed"]: r["test"] for r in ours}
    r_test = {r["seed"]: r["test"] for r in peer}
    common = sorted(set(a_test) & set(r_test))  # the same seeds on both sides
    if not common:
        print(f"| {model} | {t}, {a} | – | – | – | – |")
        continue
    ours_m, peer_m = ([by[x] for x in common] for by in (a_test, r_test))
    diff = 100 * (statistics.mean(ours_m) - statistics.mean(peer_m))
    seeds = ",".join(map(str, common))
    print(f"| {model} | {t}, {a} | {seeds} | {ms(ours_m)} | {ms(peer_m)} | {diff:+.1f} |")
