"""Evaluate a saved model: the task metric, size as % of the large model, and on request the
measured speed-up.

    alad evaluate runs/pos-alad-frozen/model --test ../shared/data/pos_de/test.conllu [--speed]

Size % needs only the large model's parameter count (its architecture, not its weights, see
`catalog.count_parameters`). Speed-up is measured only with `speed=True` (`--speed`): timing on
every evaluation ran M_L three times per run and, on a shared machine, gave noisy figures;
Table 1's speed-ups come from one `alad bench latency` run instead. When measured, it is the
saved model's forward pass (encoder + AlAd + head) against the large model's (encoder + a head
of the same shape) over the same length-sorted batches, best of 3 alternating runs each.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from alad.heads import build_head
from alad.metrics import format_table_row, size_and_speed, size_pct
from alad.model import AlignedModel, load_model, phase3_config
from alad.models.catalog import Encoder, count_parameters, load_encoder
from alad.phases.finetune import predict_outputs
from alad.tasks import TASKS, Task
from alad.timing import best_of


@torch.no_grad()
def forward_seconds(
    model: torch.nn.Module, task: Task, feats: Any, batch_size: int, pad_id: int, rows: int
) -> float:
    """One pass over the `rows` shortest rows (untimed warm-up on the first batch)."""
    model.eval()
    n = min(rows, task.num_rows(feats))
    order = sorted(range(task.num_rows(feats)), key=lambda i: len(feats.input_ids[i]))[:n]
    batches = list(task.batches(feats, batch_size, pad_id, order))
    model(batches[0]["input_ids"], batches[0]["attention_mask"])  # warm-up
    t0 = time.perf_counter()
    for b in batches:
        model(b["input_ids"], b["attention_mask"])
    return time.perf_counter() - t0


def measure_speed(
    model: AlignedModel,
    feats: Any,
    pad_id: int,
    large: Encoder,
    manifest: dict[str, Any],
    examples: list[Any],
    rows: int = 256,
    repeats: int = 3,
) -> dict[str, float]:
    """Seconds of the saved model and of M_L with a head of the same shape on the same
    examples, alternating, best of `repeats` each (alad.timing.best_of)."""
    task = TASKS[manifest["task"]]
    head = build_head(manifest["head"]["kind"], large.dim, manifest["head"]["num_labels"])
    large_model = AlignedModel(large.model, head)
    large_feats = task.encode(
        large.tokenizer, examples, manifest["labels"], phase3_config(manifest), False
    )
    large_pad = large.tokenizer.pad_token_id or 0
    best = best_of(
        {
            "model": lambda: forward_seconds(model, task, feats, 32, pad_id, rows),
            "large": lambda: forward_seconds(large_model, task, large_feats, 32, large_pad, rows),
        },
        repeats,
        warmup=False,  # forward_seconds warms up itself, on one batch
    )
    return {"model_seconds": best["model"], "large_seconds": best["large"]}


def evaluate_model(
    model_dir: Path,
    test: str | list[Any],
    encoders: tuple[Encoder, Encoder] | None = None,
    speed: bool = False,
    speed_rows: int = 256,
    repeats: int = 3,
    predictions: Path | None = None,
) -> dict[str, Any]:
    """Scores on `test` (a file, or already-read examples) + size % + a table row; with
    `speed`, also the measured speed-up vs the large model. With `predictions`, the
    predictions are also written there in the task's own format."""
    model, tok, manifest = load_model(model_dir)
    task = TASKS[manifest["task"]]
    examples = task.read(test) if isinstance(test, str) else test
    labels = manifest["labels"]
    task.check(examples, labels, str(test) if isinstance(test, str) else "test split")
    cfg = phase3_config(manifest)
    feats = task.encode(tok, examples, labels, cfg, False)
    pad_id = tok.pad_token_id or 0
    outputs = predict_outputs(model, task, feats, 32, pad_id)
    scores = task.score(examples, task.decode(examples, feats, outputs, labels, cfg))
    if predictions is not None:
        task.write_predictions(examples, feats, outputs, labels, cfg, Path(predictions))

    params = model.encoder_parameters() + model.adapter_parameters()
    large = encoders[1] if encoders else None
    if speed and large is None:
        large = load_encoder(manifest["large"])
    large_params = large.num_parameters if large else count_parameters(manifest["large"])
    scores["size_pct"] = size_pct(params, large_params)
    if speed and large is not None:
        seconds = measure_speed(
            model, feats, pad_id, large, manifest, examples, speed_rows, repeats
        )
        scores.update(seconds)
        scores.update(
            size_and_speed(params, large_params, seconds["model_seconds"], seconds["large_seconds"])
        )
    scores.update(
        {
            "params": params,
            "large_params": large_params,
            "examples": len(examples),
            "task": manifest["task"],
        }
    )
    name = f"{manifest['encoder_name']} {manifest['mode']}"
    if manifest.get("adapter"):
        name += f" (n={manifest['adapter']['window']})"
    scores["table_row"] = format_table_row(name, scores, manifest["task"])
    return scores
