"""Linear probe on frozen encoders (issue 7, item 9): the run behind experiments/results/probe/
pos.json and reports/probe.png, now a thin call of `alad probe` (alad/probe.py; issue 20).

    .venv/bin/python experiments/probe.py         # -> experiments/results/probe/pos.json
    .venv/bin/python experiments/probe.py --plot  # that JSON -> reports/probe.png

The same as
    alad probe --task pos --models mpnet-base,mpnet-base:prune4,minilm-l6,minilm-l3 \
        --adapter minilm-l6=results/align/phase1-65e7edffa89c \
        --adapter minilm-l3=results/align/phase1-b83364178189 \
        --train ../shared/data/pos_de/train.conllu --dev ../shared/data/pos_de/dev.conllu \
        --test ../shared/data/pos_de/test.conllu \
        --out experiments/results/probe/pos.json --plot reports/probe.png
"""

import json
import sys
from pathlib import Path

import torch

from alad.plots import plot_probe
from alad.probe import run_probe, write_probe

DATA = Path("../shared/data/pos_de")
MODELS = ["mpnet-base", "mpnet-base:prune4", "minilm-l6", "minilm-l3"]
# Stored phase-1 adapters (results/align): the probe on M_C -> AlAd outputs.
ADAPTERS = {"minilm-l6": "phase1-65e7edffa89c", "minilm-l3": "phase1-b83364178189"}
OUT = Path("experiments/results/probe/pos.json")


def main() -> None:
    if sys.argv[1:] == ["--plot"]:
        plot_probe(json.loads(OUT.read_text()), Path("reports/probe.png"))
        return
    torch.set_num_threads(1)  # beside a background sweep: one core
    record = run_probe(
        "pos",
        MODELS,
        str(DATA / "train.conllu"),
        str(DATA / "dev.conllu"),
        str(DATA / "test.conllu"),
        adapters={k: Path("results/align") / v for k, v in ADAPTERS.items()},
    )
    record["command"] = "python experiments/probe.py"
    write_probe(record, OUT, Path("reports/probe.png"))
    print(json.dumps({"seconds": record["seconds"], "best": record["best"]}))


if __name__ == "__main__":
    main()
