"""Evaluate a saved model: the task metric, size as % of the large model, measured speed-up.

    alad evaluate runs/pos-alad-frozen/model --test ../shared/data/pos_de/test.conllu

Speed-up is measured here, in the same process on the same inputs: the saved model's forward
pass (encoder + AlAd + head) against the large model's (encoder + a head of the same shape),
over the same length-sorted batches, after one warm-up batch each, best of 3 alternating runs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from alad.heads import build_head
from alad.metrics import format_table_row, size_and_speed
from alad.model import AlignedModel, load_model, phase3_config
from alad.models.catalog import Encoder, load_encoder
from alad.phases.finetune import predict_outputs
from alad.tasks import TASKS, Task


@torch.no_grad()
def forward_seconds(
    model: torch.nn.Module, task: Task, feats: Any, batch_size: int, pad_id: int, rows: int
) -> float:
    model.eval()
    n = min(rows, task.num_rows(feats))
    order = sorted(range(task.num_rows(feats)), key=lambda i: len(feats.input_ids[i]))[:n]
    batches = list(task.batches(feats, batch_size, pad_id, order))
    model(batches[0]["input_ids"], batches[0]["attention_mask"])  # warm-up
    t0 = time.perf_counter()
    for b in batches:
        model(b["input_ids"], b["attention_mask"])
    return time.perf_counter() - t0


def evaluate_model(
    model_dir: Path,
    test: str | list[Any],
    encoders: tuple[Encoder, Encoder] | None = None,
    speed_rows: int = 256,
    repeats: int = 3,
    predictions: Path | None = None,
) -> dict[str, Any]:
    """Scores on `test` (a file, or already-read examples) + size % + speed-up + a table row.
    With `predictions`, the predictions are also written there in the task's own format."""
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

    large = encoders[1] if encoders else load_encoder(manifest["large"])
    large_model = AlignedModel(
        large.model, build_head(manifest["head"]["kind"], large.dim, manifest["head"]["num_labels"])
    )
    large_feats = task.encode(large.tokenizer, examples, labels, cfg, False)
    # Alternate the two models and keep each one's best of `repeats`: on a shared machine a
    # burst of load hits one measurement, not a whole model's.
    t_model = t_large = float("inf")
    for _ in range(repeats):
        t_model = min(t_model, forward_seconds(model, task, feats, 32, pad_id, speed_rows))
        t_large = min(
            t_large,
            forward_seconds(
                large_model, task, large_feats, 32, large.tokenizer.pad_token_id or 0, speed_rows
            ),
        )
    params = model.encoder_parameters() + model.adapter_parameters()
    scores.update(size_and_speed(params, large.num_parameters, t_model, t_large))
    scores.update(
        {
            "params": params,
            "large_params": large.num_parameters,
            "model_seconds": t_model,
            "large_seconds": t_large,
            "examples": len(examples),
            "task": manifest["task"],
        }
    )
    name = f"{manifest['encoder_name']} {manifest['mode']}"
    if manifest.get("adapter"):
        name += f" (n={manifest['adapter']['window']})"
    scores["table_row"] = format_table_row(name, scores, manifest["task"])
    return scores
