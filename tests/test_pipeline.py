"""The pipeline's stages end to end on tiny models (tracking off here; see test_tracking)."""

from __future__ import annotations

import json

import pytest
from phases.test_finetune import write_bio

from alad.pipeline import STAGES, Layout, run_pipeline


@pytest.fixture
def pipeline_settings(tiny_settings, tmp_path):
    p3 = tiny_settings.phase3.model_copy(
        update={
            "task": "ner",
            "mode": "alad-frozen",
            "train": str(write_bio(tmp_path / "ner.tsv", 80, 7)),
            "max_train_examples": 48,
            "max_eval_examples": 16,
            "epochs": 2,
        }
    )
    off = tiny_settings.tracking.model_copy(update={"enabled": False})
    return tiny_settings.model_copy(update={"phase3": p3, "tracking": off})


def test_all_stages_write_their_outputs(pipeline_settings, tmp_path):
    layout = Layout(tmp_path / "runs")
    results = run_pipeline(pipeline_settings, layout)
    assert list(results) == list(STAGES)
    counts = results["prepare"]["counts"]
    assert counts["phase3_train"] == 70 and counts["phase3_dev"] == 8  # 86 - 2 x 8 carved
    for name in (
        "phase1.txt",
        "phase2.txt",
        "phase3-train.tsv",
        "phase3-dev.tsv",
        "phase3-test.tsv",
        "pipeline.json",
    ):
        assert (layout.data / name).is_file(), name
    assert (layout.phase("phase1") / "metrics.json").is_file()
    manifest = json.loads((layout.phase("phase3") / "model" / "manifest.json").read_text())
    assert manifest["init"] == str(layout.phase("phase2"))  # phase 3 starts from phase 2
    test = json.loads((layout.eval / "metrics.json").read_text())["test"]
    assert 0 <= test["f1_micro"] <= 1 and test["size_pct"] > 0 and "speedup" not in test
    assert sorted(p.name for p in (layout.eval / "plots").iterdir()) == [
        "phase1.png",
        "phase2.png",
        "phase3.png",
    ]
    assert "| NER F1_O |" in (layout.eval / "table.md").read_text()
    assert json.loads(layout.registry.read_text())["registered"] is False


def test_prepared_data_is_deterministic(pipeline_settings, tmp_path):
    a, b = Layout(tmp_path / "a"), Layout(tmp_path / "b")
    STAGES["prepare"](pipeline_settings, a, None)
    STAGES["prepare"](pipeline_settings, b, None)
    for name in ("phase1.txt", "phase2.txt", "phase3-train.tsv", "phase3-test.tsv"):
        assert (a.data / name).read_bytes() == (b.data / name).read_bytes()
