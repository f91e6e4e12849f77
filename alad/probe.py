"""Linear probes: how much of a token task each layer of a frozen encoder keeps, and what a
phase-1/2 adapter keeps of its encoder's last layer.

    alad probe --task pos --models mpnet-base,minilm-l6 \
        --adapter minilm-l6=results/align/phase1-65e7edffa89c \
        --train ../shared/data/pos_de/train.conllu --dev ../shared/data/pos_de/dev.conllu \
        --test ../shared/data/pos_de/test.conllu --out reports/probe-pos.json
    # -> reports/probe-pos.json (one row per model and layer) and reports/probe-pos.png

What to use it for: picking `phase1.target_layer` / `phase2.target_layer`. AlAd can only hand
phase 3 what its target holds, and on sentence-embedding checkpoints the last layer is not where
the most task information is (README "Where Table 1 stands": mpnet-base probes at 75.0 % POS
test at layer 12 and 82.7 % at layer 6). Choose on dev: the JSON names, per model, the layer
with the best dev accuracy and the layers within one standard error of it (dev accuracy of
n words has a standard error of sqrt(p (1 - p) / n)), which are not told apart by this dev set.

One probe per (model, layer): softmax regression (full batch L-BFGS, 200 steps) with a fixed L2
penalty (no search: the test split is never used for a choice) on standardised features of the
first sub-token of every word (the token phase 3's head reads). Layer 0 is the embeddings'
output, L the last; "alad" is the last layer through the adapter. NER is probed per word as
tag accuracy (what a linear read-out of single tokens can do), not entity F1.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from alad.adapter import AlignmentAdapter
from alad.atomic import write_json
from alad.checkpoint import load_checkpoint
from alad.config import Phase3Config
from alad.data import tagging
from alad.errors import UsageError
from alad.models.catalog import Encoder, load_encoder
from alad.plots import plot_probe
from alad.tasks import TASKS, load_splits

log = logging.getLogger(__name__)

L2 = 1e-3  # fixed, not searched
ADAPTER_LAYER = "alad"


@torch.no_grad()
def features(
    encoder: Encoder,
    sentences: list[Any],
    label2id: dict[str, int],
    max_length: int = 128,
    adapter: AlignmentAdapter | None = None,
    batch_size: int = 32,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per layer ("0" = embeddings' output ... "L" = last; "alad" = the last through the
    adapter): the first sub-token's vector of every word, X [words, D] (fp16, to keep a whole
    split of every layer in memory), and the labels y [words]."""
    feats = tagging.encode_tagged(encoder.tokenizer, sentences, label2id, max_length)
    per_layer: dict[str, list[np.ndarray]] = {}
    ys = []
    rows = list(zip(feats.input_ids, feats.labels, strict=True))
    pad = encoder.tokenizer.pad_token_id or 0
    for start in range(0, len(rows), batch_size):
        batch = tagging.collate(rows[start : start + batch_size], pad)
        out = encoder.model(
            input_ids=batch["input_ids"].to(encoder.device),
            attention_mask=batch["attention_mask"].to(encoder.device),
            output_hidden_states=True,
        )
        keep = batch["labels"] != tagging.IGNORE
        layers = {str(i): h.cpu() for i, h in enumerate(out.hidden_states)}
        if adapter is not None:
            mask = batch["attention_mask"].to(encoder.device)
            layers[ADAPTER_LAYER] = adapter(out.last_hidden_state, mask).cpu()
        for name, h in layers.items():
            per_layer.setdefault(name, []).append(h[keep].to(torch.float16).numpy())
        ys.append(batch["labels"][keep].numpy())
    return {k: np.concatenate(v) for k, v in per_layer.items()}, np.concatenate(ys)


def fit_softmax(
    x_train: np.ndarray | torch.Tensor,
    y_train: np.ndarray | torch.Tensor,
    classes: int,
    l2: float = L2,
) -> torch.nn.Linear:
    """Softmax regression, full batch, L-BFGS (200 steps), fixed L2 on standardised features,
    returned as one Linear on the raw features (the standardisation folded into its weights)."""
    x = torch.as_tensor(x_train).float()
    mean, std = x.mean(0), x.std(0) + 1e-6
    x, y = (x - mean) / std, torch.as_tensor(y_train).long()
    linear = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.LBFGS(linear.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(linear(x), y) + l2 * linear.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():  # W (x - m) / s + b = (W / s) x + (b - (W / s) m)
        linear.weight.div_(std)
        linear.bias.sub_(linear.weight @ mean)
    return linear


def probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    evals: dict[str, tuple[np.ndarray, np.ndarray]],
    classes: int,
    l2: float = L2,
) -> dict[str, float]:
    """`fit_softmax` on the training words: accuracy (%) per evaluation split."""
    linear = fit_softmax(x_train, y_train, classes, l2)
    out = {}
    with torch.no_grad():
        for name, (xe, ye) in evals.items():
            pred = linear(torch.from_numpy(xe).float()).argmax(-1)
            out[name] = round(100 * float((pred == torch.from_numpy(ye)).float().mean()), 1)
    return out


def best_layers(rows: list[dict[str, Any]], dev_words: int) -> dict[str, dict[str, Any]]:
    """Per model: the layer with the best dev accuracy (ties: the first) and every layer within
    one standard error of it, which this dev set cannot tell apart from the best."""
    out: dict[str, dict[str, Any]] = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        layers = [r for r in rows if r["model"] == model and r["layer"] != ADAPTER_LAYER]
        if not layers:
            continue
        best = max(layers, key=lambda r: r["dev"])
        p = best["dev"] / 100
        se = 100 * math.sqrt(p * (1 - p) / max(1, dev_words))
        close = [int(r["layer"]) for r in layers if r["dev"] >= best["dev"] - se]
        out[model] = {
            "best_dev_layer": int(best["layer"]),
            "best_dev": best["dev"],
            "dev_se": round(se, 2),
            "within_one_se": close,
            "layers": len(layers) - 1,
        }
    return out


def run_probe(
    task: str,
    models: list[str],
    train: str,
    dev: str | None = None,
    test: str | None = None,
    adapters: dict[str, Path] | None = None,
    max_train: int | None = None,
    seed: int = 13,
    max_length: int = 128,
) -> dict[str, Any]:
    """Probe every layer of every model (and each model's adapter, if given) on `task`'s
    splits, read as phase 3 reads them (a seeded `max_train` subset, carved dev/test when not
    given). Returns the record `alad probe` writes."""
    if TASKS[task].head_kind != "token":
        raise UsageError(f"alad probe: task {task!r} is not a token task (pos, ner)")
    cfg = Phase3Config(task=task, train=train, dev=dev, test=test, max_train_examples=max_train)
    splits = load_splits(cfg, seed)
    labels = TASKS[task].labels(splits.train_all)
    label2id = {lab: i for i, lab in enumerate(labels)}
    parts = {"train": splits.train, "dev": splits.dev, "test": splits.test}
    TASKS[task].check(splits.dev, labels, splits.sources["dev"])
    TASKS[task].check(splits.test, labels, splits.sources["test"])
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    torch.manual_seed(0)  # the probes' initialisation (L-BFGS to convergence: it matters little)
    rows, words = [], {}
    for name in models:
        rows += _probe_model(name, parts, label2id, max_length, (adapters or {}).get(name), words)
    return {
        "what": "linear probe (softmax regression, L-BFGS 200 steps, L2 1e-3, standardised) on "
        f"frozen features, first sub-token per word, task {task}",
        "task": task,
        "sources": splits.sources,
        "sizes": {s: len(v) for s, v in parts.items()},
        "words": words,
        "adapters": {k: str(v) for k, v in (adapters or {}).items()},
        "rows": rows,
        "best": best_layers(rows, words.get("dev", 0)),
        "seconds": round(time.perf_counter() - t0, 1),
        "load1": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }


def _probe_model(
    name: str,
    parts: dict[str, list[Any]],
    label2id: dict[str, int],
    max_length: int,
    adapter_dir: Path | None,
    words: dict[str, int],
) -> list[dict[str, Any]]:
    encoder = load_encoder(name)
    encoder.model.eval()
    adapter = None
    if adapter_dir is not None:
        adapter = load_checkpoint(Path(adapter_dir)).adapter.float().eval()
        if adapter.d_compressed != encoder.dim:
            raise UsageError(
                f"--adapter {name}={adapter_dir}: it reads {adapter.d_compressed}-d inputs, "
                f"{name} outputs {encoder.dim}-d"
            )
    data = {s: features(encoder, v, label2id, max_length, adapter) for s, v in parts.items()}
    words.update({s: int(len(y)) for s, (_, y) in data.items()})
    rows = []
    for layer in data["train"][0]:
        evals = {s: (data[s][0][layer], data[s][1]) for s in ("dev", "test")}
        scores = probe(data["train"][0][layer], data["train"][1], evals, len(label2id))
        rows.append({"model": name, "layer": layer, **scores})
        log.info("%s layer %s: dev %.1f, test %.1f", name, layer, scores["dev"], scores["test"])
    return rows


def write_probe(record: dict[str, Any], out: Path, plot: Path | None = None) -> dict[str, Path]:
    """The record as JSON at `out` and its plot (default: `out` with .png), both atomically."""
    plot = plot or out.with_suffix(".png")
    write_json(record, out)
    plot_probe(record, plot)
    return {"json": out, "plot": plot}


__all__ = ["best_layers", "features", "probe", "run_probe", "write_probe"]
