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

from pathlib import Path
from typing import Any

from alad.aligned_model import load_model, phase3_config
from alad.atomic import ensure_writable_dir
from alad.inference import measure_speed, predict_outputs
from alad.metrics import size_and_speed, size_pct
from alad.models.catalog import Encoder, count_parameters, load_encoder
from alad.runtime import CPU, Runtime
from alad.tasks import TASKS, table_row


def evaluate_model(
    model_dir: Path,
    test: str | list[Any],
    encoders: tuple[Encoder, Encoder] | None = None,
    speed: bool = False,
    speed_rows: int = 256,
    repeats: int = 3,
    predictions: Path | None = None,
    runtime: Runtime = CPU,
) -> dict[str, Any]:
    """Scores on `test` (a file, or already-read examples) + size % + a table row; with
    `speed`, also the measured speed-up vs the large model. With `predictions`, the
    predictions are also written there in the task's own format. On `runtime`'s device."""
    if predictions is not None:  # before the work, not after it
        ensure_writable_dir(Path(predictions), "predictions folder", "pass another --predictions")
    model, tok, manifest = load_model(model_dir, runtime.device)
    task = TASKS[manifest["task"]]
    examples = task.read(test) if isinstance(test, str) else test
    labels = manifest["labels"]
    task.check(examples, labels, str(test) if isinstance(test, str) else "test split")
    cfg = phase3_config(manifest)
    feats = task.encode(tok, examples, labels, cfg, False)
    pad_id = tok.pad_token_id or 0
    outputs = predict_outputs(model, task, feats, 32, pad_id, runtime)
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
    scores["table_row"] = table_row(name, scores, manifest["task"])
    return scores
