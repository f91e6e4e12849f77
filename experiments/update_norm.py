"""How far training moved M_C's attention query/value weights (issue 21: why AdaLoRA trails
LoRA): per sweep result, the saved model's encoder against the pre-trained M_C, as
|W_saved - W_pre| / |W_pre| (Frobenius) averaged over the query and value matrices of every layer.
LoRA and AdaLoRA save their update merged, so this is the size of the low-rank update.

    .venv/bin/python experiments/update_norm.py results/table1/pos/b22641b8a90b.json \
        results/baselines/pos/b22fdc309d11.json

Needs each result's model folder (`model_dir`, under runs/sweep: the machine that ran the cell).
"""

import json
import sys
from pathlib import Path

import torch

from alad.aligned_model import load_model
from alad.models.catalog import load_encoder

PROJECTIONS = ("query.weight", "value.weight", ".q.weight", ".v.weight")


def relative_update(result: Path) -> tuple[str, float, int]:
    record = json.loads(result.read_text())
    cell = record["cell"]
    pre = load_encoder(cell["compressed"]).model.state_dict()
    saved = load_model(Path(record["model_dir"]))[0].encoder.state_dict()
    shares = [
        ((saved[name].float() - weight.float()).norm() / weight.float().norm()).item()
        for name, weight in pre.items()
        if name.endswith(PROJECTIONS) and name in saved
    ]
    name = f"{cell['task']}/{cell['compressed']}/{cell['mode']}/s{cell['seed']}"
    return name, sum(shares) / max(1, len(shares)), len(shares)


def main() -> None:
    if not sys.argv[1:] or "--help" in sys.argv:
        print(__doc__)
        sys.exit(0 if sys.argv[1:] else 2)
    torch.set_num_threads(1)
    for arg in sys.argv[1:]:
        name, share, count = relative_update(Path(arg))
        print(f"{name:40s} |dW|/|W| {100 * share:5.2f} % (mean of {count} matrices)  {arg}")


if __name__ == "__main__":
    main()
