"""Workflows written once; every door calls these rather than composing the steps itself.

    alad finetune ...              # finetune_job
    alad stage phase3              # finetune_job inside the pipeline's phase-3 MLflow run
    alad sweep run GRID            # finetune_job per cell (alad/sweep/run.py adds the cell record)
    alad export models:/alad-ner-minilm-l6@champion --format onnx --out onnx-ner --register
                                   # export_and_register

The other shared workflow, "register a version with its lineage and run the promotion gate",
is `Registry.publish` (alad/registry.py).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alad.config import Settings
from alad.evaluation import evaluate_model
from alad.models.catalog import Encoder
from alad.phases.finetune import FinetuneResult, finetune
from alad.runtime import Runtime
from alad.tasks import load_splits

log = logging.getLogger(__name__)


def with_resolved_init(settings: Settings) -> Settings:
    """`phase3.init` as a local folder (a registry URI is downloaded; see resolve_adapter)."""
    init = settings.phase3.init
    if init is None or not init.startswith(("models:/", "runs:/")):
        return settings
    from alad.registry import resolve_adapter  # MLflow loads only for a registry URI

    local = str(resolve_adapter(init))
    log.info("phase3.init %s -> %s", init, local)
    return settings.model_copy(
        update={"phase3": settings.phase3.model_copy(update={"init": local})}
    )


def finetune_job(
    settings: Settings,
    out: Path | None = None,
    progress: bool = True,
    encoders: tuple[Encoder, Encoder] | None = None,
    tracker: Any = None,
    run_id: str | None = None,
) -> FinetuneResult:
    """Fine-tune (phase 3), test, record.

    The test scores the saved model folder, the artifact that is registered and shipped (the
    best epoch, LoRA merged, an int8 encoder re-created), not the last epoch's weights still
    in memory; on the test split file, or the carved one when there is none. Recorded: `test`
    in the run's metrics.json, and, with a `tracker` and its `run_id`, the history, the dev
    metrics, the loss curve and the model's manifest in that MLflow run (the pipeline's
    evaluate stage logs the test scores in its own run)."""
    settings = with_resolved_init(settings)
    cfg = settings.phase3
    runtime = Runtime.from_config(settings.runtime)

    def test(model_dir: Path) -> dict[str, Any]:
        split = cfg.test or load_splits(cfg, settings.seed).test
        return evaluate_model(model_dir, split, encoders=encoders, runtime=runtime)

    # The test is part of the run: a run whose test failed is not finished, and its rerun
    # only tests (see FinetuneRecipe.finish). Under torchrun every rank scores; rank 0 writes.
    result = finetune(settings, out=out, progress=progress, encoders=encoders, test=test)
    if tracker is not None and run_id is not None:
        tracker.log_history(run_id, result.history)
        tracker.log_metrics(run_id, {"dev": result.dev})
        tracker.log_loss_curve(
            run_id, result.history, ["train_loss", "dev_main"], "phase 3: loss and validation score"
        )
        tracker.log_artifacts(run_id, result.model_dir / "manifest.json", "model")
    return result


def export_and_register(
    settings: Settings, model: str, out: Path, int8: bool = False
) -> tuple[dict[str, Any], Any]:
    """Export the registered version `model` to ONNX in `out` (alad/export.py), then log it with
    MLflow's ONNX flavor and register it in its source's lineage through the promotion gate
    (Registry.publish: val.main, `tracking.promotion_margin`, as for any task model). Returns
    (what the export wrote, the Published version)."""
    from alad.errors import UsageError
    from alad.export import export_model
    from alad.provenance import git_commit
    from alad.registry import Gate, Registry
    from alad.store import is_registry_uri
    from alad.tracking import Tracker

    if not (is_registry_uri(model) and str(model).startswith("models:/")):
        raise UsageError(
            f"--register: {model} is not a registered version; an ONNX version is registered in "
            "its source's lineage, so export models:/<name>@<alias> or models:/<name>/<version>"
        )
    done = export_model(model, "onnx", out, int8=int8)
    tracker = Tracker(experiment=settings.tracking.experiment)
    gate = Gate("main", settings.tracking.promotion_margin)
    published = Registry(tracker).publish(
        Path(out), {}, {"git_commit": git_commit()}, gate, None, onnx=True
    )
    return done, published


__all__ = ["export_and_register", "finetune_job", "with_resolved_init"]
