"""Evaluation of a saved model: size % always, speed-up only on request (no M_L forward pass
otherwise)."""

from __future__ import annotations

import pytest
from conftest import write_conllu

import alad.evaluation as ev
from alad.evaluation import evaluate_model
from alad.models.catalog import load_encoder
from alad.phases.finetune import finetune


@pytest.fixture
def pos_model(tiny_settings, tmp_path):
    files = {
        name: str(write_conllu(tmp_path / f"{name}.conllu", n, seed))
        for name, n, seed in (("train", 24, 1), ("dev", 6, 2), ("test", 8, 3))
    }
    p3 = tiny_settings.phase3.model_copy(
        update={"task": "pos", "mode": "compressed", "epochs": 1, **files}
    )
    s = tiny_settings.model_copy(update={"phase3": p3})
    result = finetune(s, out=tmp_path / "pos", progress=False)
    return result.model_dir, files["test"], s


def test_evaluate_reports_size_without_running_the_large_model(pos_model, monkeypatch):
    model_dir, test, s = pos_model
    monkeypatch.setattr(ev, "load_encoder", lambda name: pytest.fail("M_L was loaded"))
    monkeypatch.setattr(ev, "measure_speed", lambda *a, **k: pytest.fail("timed"))
    report = evaluate_model(model_dir, test)
    large = load_encoder(s.models.large).num_parameters
    compressed = load_encoder(s.models.compressed).num_parameters
    assert report["large_params"] == large and report["params"] == compressed
    assert report["size_pct"] == pytest.approx(100 * compressed / large)
    assert "speedup" not in report and "large_seconds" not in report
    assert report["table_row"].endswith(f"| {report['size_pct']:.1f} | – |")
    assert 0 <= report["accuracy"] <= 1 and report["examples"] == 8


def test_evaluate_with_speed_measures_both_models(pos_model):
    model_dir, test, _ = pos_model
    report = evaluate_model(model_dir, test, speed=True, repeats=1)
    assert report["speedup"] == pytest.approx(report["large_seconds"] / report["model_seconds"])
    assert report["table_row"].endswith(f"| {report['speedup']:.2f} |")
