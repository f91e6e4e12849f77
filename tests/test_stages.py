"""The pipeline's stages end to end on tiny models (tracking off here; see test_tracking)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_bio

from alad.stages import STAGES, Layout, run_pipeline


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


def test_adapters_are_registered_with_lineage_and_phase3_starts_from_the_registry(
    pipeline_settings, tmp_path, monkeypatch
):
    from alad.jobs import finetune_job
    from alad.registry import Registry, adapter_name, registry_table, resolve_adapter
    from alad.tracking import Tracker

    store = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    on = pipeline_settings.tracking.model_copy(update={"enabled": True, "experiment": "reg"})
    s = pipeline_settings.model_copy(update={"tracking": on})
    layout = Layout(tmp_path / "runs")
    results = run_pipeline(s, layout)
    client = Tracker(uri=store).client
    name = adapter_name(s.models.compressed, s.models.large, s.adapter.window)
    versions = {str(v.version): v for v in client.search_model_versions(f"name = '{name}'")}
    assert sorted(versions) == ["1", "2"]
    p1, p2 = (dict(versions[v].tags) for v in ("1", "2"))
    assert (p1["phase"], p2["phase"], p2["task"]) == ("phase1", "phase2", "ner")
    assert p2["init"] == f"{name}/1"  # phase 2 started from phase 1's registered adapter
    ckpt1 = json.loads((layout.phase("phase1") / "metrics.json").read_text())
    assert float(p1["val.mse"]) == pytest.approx(ckpt1["after"]["mse"])
    for key in ("data.train_hash", "data.train_tokens", "compressed_fingerprint", "git_commit"):
        assert p1[key] and p2[key], key
    assert p1["data.train_hash"] != p2["data.train_hash"]  # Wikipedia vs the task's text
    aliases = client.get_registered_model(name).aliases
    assert aliases == {"champion-phase1": 1, "champion-phase2-ner": 2}
    task_model = results["register"]
    tags = client.get_model_version(task_model["name"], task_model["version"]).tags
    assert tags["adapter"] == f"{name}/2"  # the task model names the adapter it started from

    # the gate: a worse held-out MSE is registered but does not take the alias
    run = client.create_run(client.get_experiment_by_name("reg").experiment_id).info.run_id
    tracker = Tracker(uri=store, experiment="reg")
    ckpt = Path(ckpt1["checkpoint"])
    registry = Registry(tracker)
    worse = registry.register_adapter(run, ckpt, {"mse": 9.9, "cosine": 0.0}, {"phase": "phase1"})
    assert not registry.promote(
        name, worse.version, "mse", 0.0, higher_is_better=False, scope="-phase1"
    ).promoted
    assert client.get_registered_model(name).aliases["champion-phase1"] == 1

    # phase 3 from a models:/ URI: the downloaded folder is the phase-2 adapter, verified
    uri = f"models:/{name}@champion-phase2-ner"
    local = resolve_adapter(uri, store)
    ckpt2 = Path(json.loads((layout.phase("phase2") / "metrics.json").read_text())["checkpoint"])
    assert (local / "adapter.safetensors").read_bytes() == (
        ckpt2 / "adapter.safetensors"
    ).read_bytes()
    off = s.tracking.model_copy(update={"enabled": False})
    p3 = s.phase3.model_copy(update={"init": uri})
    from_registry = finetune_job(
        s.model_copy(update={"phase3": p3, "tracking": off}), out=tmp_path / "p3", progress=False
    )
    manifest = json.loads((from_registry.model_dir / "manifest.json").read_text())
    assert manifest["init"] == str(local) and 0 <= from_registry.test["f1_micro"] <= 1

    # the README's plain-mlflow snippet (MLFLOW_TRACKING_URI is the store here)
    import mlflow

    from alad.adapter import AlignmentAdapter
    from alad.checkpoint import load_checkpoint

    c = mlflow.MlflowClient()
    v = c.get_model_version_by_alias(name, "champion-phase1")
    folder = mlflow.artifacts.download_artifacts(
        c.get_model_version_download_uri(v.name, v.version)
    )
    assert isinstance(load_checkpoint(Path(folder)).adapter, AlignmentAdapter)

    listed = {(r["name"], r["version"]): r for r in registry_table(tracker)}
    assert (
        listed[name, "1"]["aliases"] == "champion-phase1" and listed[name, "1"]["kind"] == "adapter"
    )
    assert "mse" in listed[name, "2"]["metrics"]
    assert listed[task_model["name"], task_model["version"]]["from"] == f"{name}/2"
