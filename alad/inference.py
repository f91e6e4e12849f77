"""Forward passes of a model: logits for prediction and evaluation, and their timing.

    from alad.inference import predict_outputs
    outputs = predict_outputs(model, TASKS["pos"], feats, batch_size=32, pad_id=0)

Below training: phase 3 (its per-epoch validation), evaluation, `alad predict`, the MLflow pyfunc
and the benchmarks import this module; it imports nothing from alad.phases, so serving a model
never loads the training code.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import torch

from alad.aligned_model import AlignedModel, phase3_config
from alad.heads import build_head
from alad.models.catalog import Encoder
from alad.runtime import Runtime
from alad.tasks import TASKS, Task
from alad.timing import best_of


@torch.no_grad()
def predict_outputs(
    model: AlignedModel,
    task: Task,
    feats: Any,
    batch_size: int,
    pad_id: int,
    runtime: Runtime | None = None,
) -> list[torch.Tensor]:
    """fp32 CPU logits per feature row (padding stripped), in row order; computed on the model's
    device, in `runtime`'s precision (fp32 without one)."""
    model.eval()
    device = model.device
    cast = runtime.autocast() if runtime is not None else contextlib.nullcontext()
    outputs: list[torch.Tensor] = []
    for batch in task.batches(feats, batch_size, pad_id):
        with cast:
            logits = model(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        logits = logits.float().cpu()
        lengths = batch["attention_mask"].sum(1).tolist()
        outputs.extend(logits[i, : lengths[i]] for i in range(len(lengths)))
    return outputs


@torch.no_grad()
def forward_seconds(
    model: torch.nn.Module, task: Task, feats: Any, batch_size: int, pad_id: int, rows: int
) -> float:
    """One pass over the `rows` shortest rows (untimed warm-up on the first batch)."""
    model.eval()
    n = min(rows, task.num_rows(feats))
    order = sorted(range(task.num_rows(feats)), key=lambda i: len(feats.input_ids[i]))[:n]
    device = next(model.parameters()).device
    batches = [
        (b["input_ids"].to(device), b["attention_mask"].to(device))
        for b in task.batches(feats, batch_size, pad_id, order)
    ]
    model(*batches[0])  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    for ids, mask in batches:
        model(ids, mask)
    _sync(device)  # a GPU returns before it has finished
    return time.perf_counter() - t0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
