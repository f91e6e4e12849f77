"""Linear probe on frozen encoders (issue 7, item 9): how much POS information each layer of each
frozen model keeps, and what the stored phase-1 adapters keep of it.

Why: with M_C frozen, phase 3 can only read what M_C's last layer still holds. minilm-l6 + AlAd
frozen scores 13 points below plain fine-tuning while minilm-l3 + AlAd frozen gains 6 points
over its own fine-tuning; this measures whether the frozen last layers differ in what a linear
classifier can read. One probe per (model, layer): softmax regression (L-BFGS, L2 1e-3) on the
first sub-token of every word (the token phase 3's head reads), standardised features, fixed
penalty (no search, test never used for a choice). Trained on POS train (719 sentences), scored
on dev (80) and test (977).

    .venv/bin/python experiments/probe.py         # -> experiments/results/probe/pos.json, a table
    .venv/bin/python experiments/probe.py --plot  # that JSON -> reports/probe.png
"""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from alad.atomic import write_json
from alad.checkpoint import load_checkpoint
from alad.data import tagging
from alad.data.readers import read_conllu
from alad.models.catalog import load_encoder

DATA = Path("../shared/data/pos_de")
MODELS = ("mpnet-base", "mpnet-base:prune4", "minilm-l6", "minilm-l3")
# Stored phase-1 adapters (results/align): the probe on M_C -> AlAd outputs.
ADAPTERS = {"minilm-l6": "phase1-65e7edffa89c", "minilm-l3": "phase1-b83364178189"}
OUT = Path("experiments/results/probe/pos.json")
L2 = 1e-3  # fixed, not searched


@torch.no_grad()
def features(encoder, sentences, label2id, adapter=None):
    """Per layer (0 = embeddings ... L = last; 'alad' = last through the adapter): X [words, D]."""
    feats = tagging.encode_tagged(encoder.tokenizer, sentences, label2id, 128)
    per_layer: dict[str, list[np.ndarray]] = {}
    ys = []
    rows = list(zip(feats.input_ids, feats.labels, strict=True))
    for start in range(0, len(rows), 32):
        batch = tagging.collate(rows[start : start + 32], encoder.tokenizer.pad_token_id)
        out = encoder.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            output_hidden_states=True,
        )
        keep = batch["labels"] != tagging.IGNORE
        layers = {str(i): h for i, h in enumerate(out.hidden_states)}
        if adapter is not None:
            layers["alad"] = adapter(out.last_hidden_state, batch["attention_mask"])
        for name, h in layers.items():
            per_layer.setdefault(name, []).append(h[keep].float().numpy())
        ys.append(batch["labels"][keep].numpy())
    return {k: np.concatenate(v) for k, v in per_layer.items()}, np.concatenate(ys)


def probe(x_train, y_train, evals, classes):
    """Softmax regression, full batch, L-BFGS, fixed L2 (no search): accuracy % per eval split."""
    x = torch.from_numpy(x_train)
    mean, std = x.mean(0), x.std(0) + 1e-6
    x, y = (x - mean) / std, torch.from_numpy(y_train)
    linear = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.LBFGS(linear.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(linear(x), y) + L2 * linear.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return {
            k: round(
                float(
                    (linear((torch.from_numpy(xe) - mean) / std).argmax(-1) == torch.from_numpy(ye))
                    .float()
                    .mean()
                )
                * 100,
                1,
            )
            for k, (xe, ye) in evals.items()
        }


def plot(record: dict, path: Path) -> None:
    """Test accuracy per layer (relative depth 0..1), one line per model; the AlAd probe as a
    star at depth 1 (it reads the last layer through the phase-1 adapter)."""
    from alad.plots import figure, save_figure

    fig = figure(7, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    for name in MODELS:
        rows = [r for r in record["rows"] if r["model"] == name]
        layers = [r for r in rows if r["layer"] != "alad"]
        depth = len(layers) - 1
        line = ax.plot(
            [int(r["layer"]) / depth for r in layers],
            [r["test"] for r in layers],
            marker="o",
            label=f"{name} ({depth} layers)",
        )[0]
        for r in rows:
            if r["layer"] == "alad":
                ax.plot([1.0], [r["test"]], marker="*", ms=14, color=line.get_color(), ls="")
                ax.annotate(
                    f"{name} + AlAd",
                    (1.0, r["test"]),
                    textcoords="offset points",
                    xytext=(6, -4),
                    fontsize=8,
                )
    ax.set_xlabel("layer / number of layers (0 = embeddings, 1 = last layer)")
    ax.set_ylabel("POS test accuracy of a linear probe (%)")
    ax.set_title("What a frozen encoder's layers keep (UD German POS, 719 train sentences)")
    ax.set_xlim(-0.03, 1.25)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower center")
    save_figure(fig, path)


def main() -> None:
    if sys.argv[1:] == ["--plot"]:
        plot(json.loads(OUT.read_text()), Path("reports/probe.png"))
        return
    torch.manual_seed(0)
    torch.set_num_threads(1)  # beside a background sweep: one core
    splits = {s: read_conllu(DATA / f"{s}.conllu") for s in ("train", "dev", "test")}
    labels = tagging.label_list(splits["train"])
    label2id = {lab: i for i, lab in enumerate(labels)}
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    rows = []
    for name in MODELS:
        encoder = load_encoder(name)
        encoder.model.eval()
        adapter = None
        if name in ADAPTERS:
            adapter = load_checkpoint(Path("results/align") / ADAPTERS[name]).adapter.float().eval()
        data = {s: features(encoder, sents, label2id, adapter) for s, sents in splits.items()}
        for layer in data["train"][0]:
            scores = probe(
                data["train"][0][layer],
                data["train"][1],
                {s: (data[s][0][layer], data[s][1]) for s in ("dev", "test")},
                len(labels),
            )
            rows.append({"model": name, "layer": layer, **scores})
            dev, test = scores["dev"], scores["test"]
            print(f"{name:18s} layer {layer:>4s}  dev {dev:5.1f}  test {test:5.1f}")
            sys.stdout.flush()
    record = {
        "what": "linear probe (softmax regression, L-BFGS 200 steps, L2 1e-3, standardised) "
        "on frozen features, first sub-token per word, POS UD German-GSD",
        "command": "python experiments/probe.py",
        "sizes": {s: len(v) for s, v in splits.items()},
        "adapters": ADAPTERS,
        "rows": rows,
        "seconds": round(time.perf_counter() - t0, 1),
        "load1": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }
    write_json(record, OUT)
    print(json.dumps({"seconds": record["seconds"], "load1": record["load1"]}))


if __name__ == "__main__":
    main()
