"""The Prefect flow end to end on tiny models, against a real (temporary) Prefect server."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "flows"))


def test_flow_runs_every_stage_as_a_task_and_returns_run_ids(
    prefect_server, tiny_settings, tmp_path, monkeypatch
):
    from conftest import write_bio
    from pipeline import alad_pipeline
    from prefect.client.orchestration import get_client

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    s = tiny_settings
    overrides = [
        f"models.large={s.models.large}",
        f"phase1.corpus={s.phase1.corpus}",
        f"phase2.corpus={s.phase2.corpus}",
        f"cache.dir={s.cache.dir}",
        f"runs_dir={tmp_path / 'runs'}",
        f"phase3.train={write_bio(tmp_path / 'n.tsv', 80, 3)}",
        "phase3.epochs=2",
        "tracking.experiment=flow-test",
    ]
    state = alad_pipeline(
        task="ner",
        compressed=s.models.compressed,
        mode="alad-frozen",
        window=3,
        profile="tiny",
        overrides=overrides,
        return_state=True,
    )
    assert state.is_completed()
    result = state.result()
    root = Path(result["root"])
    assert (root / "eval" / "metrics.json").is_file()
    assert result["parent_run_id"] and result["phase1"]["run_id"] and result["phase3"]["run_id"]
    assert result["register"]["registered"] and result["register"]["version"] == "1"
    assert json.loads((root / "registry.json").read_text())["promoted"] is True

    import anyio

    async def task_names():
        async with get_client() as client:
            runs = await client.read_task_runs()
            return sorted(r.name for r in runs if r.flow_run_id == state.state_details.flow_run_id)

    assert anyio.run(task_names) == sorted(
        ["prepare", "phase1", "phase2", "phase3", "evaluate", "register"]
    )

    # per-epoch lines of the phases in the task-run logs; the evaluation table as an artifact
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)  # logs are sent in batches, in the background
    flow_run = state.state_details.flow_run_id

    async def logs_and_table():
        async with get_client() as client:
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run]))
            )
            table = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["evaluation"]))
            )
            return [log.message for log in logs], table

    messages, table = anyio.run(logs_and_table)
    assert any(m.startswith("phase1 epoch 1:") for m in messages), messages[:20]
    assert any(m.startswith("epoch 2: train loss") for m in messages)  # phase 3's second epoch
    assert table and "| NER F1_O |" in table[-1].data
