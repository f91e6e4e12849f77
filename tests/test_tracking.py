"""MLflow tracking against a real SQLite store in a temp folder: runs, registry, promotion gate."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from conftest import train_tiny_model

import alad.registry as registry_mod
import alad.tracking as tracking
from alad.errors import RegistryError, ServicesDown
from alad.registry import Registry
from alad.tracking import Tracker


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite store per module: creating one runs MLflow's migrations (seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_models) -> Path:
    root = tmp_path_factory.mktemp("model")
    with pytest.MonkeyPatch.context() as mp:  # the autouse cache fixture is per test
        mp.setenv("ALAD_CACHE_HOME", str(root / "cache"))
        return train_tiny_model(root, tiny_models)


@pytest.fixture
def tracker(store, request) -> Tracker:
    return Tracker(uri=store, experiment=request.node.name)


HISTORY = [
    {"epoch": 1, "train_mse": 0.9, "heldout_mse": 1.0, "stopped": "no"},
    {"epoch": 2, "train_mse": 0.5, "heldout_mse": 0.7, "stopped": "no"},
]


def test_pipeline_and_phase_runs_hold_params_metrics_steps_and_plot(tracker, tiny_settings):
    client = tracker.client
    parent = tracker.start_pipeline(tiny_settings, run_name="ner-alad-frozen")
    run = client.get_run(parent)
    assert run.info.run_name == "ner-alad-frozen"
    assert run.data.params["phase1.lr"] == str(tiny_settings.phase1.lr)
    assert run.data.params["adapter.window"] == "3"
    assert len(run.data.tags["params_hash"]) == 12 and run.data.tags["git_commit"]
    assert run.info.artifact_uri.startswith(Path(tracker.uri[10:]).parent.as_uri())

    phase = tracker.start_phase(parent, "phase1", {"lr": 1e-3, "corpus": "wiki"})
    tracker.log_history(phase, HISTORY)
    tracker.log_metrics(
        phase,
        {"before": {"mse": 1.2}, "after": {"mse": 0.7}, "table_row": "x", "flag": True},
    )
    tracker.log_loss_curve(phase, HISTORY, ["train_mse", "heldout_mse"], "phase1: alignment MSE")
    tracker.end(phase)

    run = client.get_run(phase)
    assert run.data.tags["mlflow.parentRunId"] == parent and run.info.run_name == "phase1"
    assert run.data.params == {"lr": "0.001", "corpus": "wiki"}
    assert run.data.metrics == {
        "train_mse": 0.5,
        "heldout_mse": 0.7,
        "before.mse": 1.2,
        "after.mse": 0.7,
    }
    steps = [(m.step, m.value) for m in client.get_metric_history(phase, "train_mse")]
    assert sorted(steps) == [(1, 0.9), (2, 0.5)]
    assert run.info.status == "FINISHED"
    png = client.download_artifacts(phase, "plots/phase1-alignment-mse.png")
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_loss_curve_with_an_unknown_key_names_the_known_ones(tracker):
    run = tracker.start_phase(None, "phase2")
    with pytest.raises(ValueError, match=r"\['dev_loss'\].*heldout_mse"):
        tracker.log_loss_curve(run, HISTORY, ["dev_loss"], "phase 2")


def test_artifacts_file_and_folder(tracker, tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "manifest.json").write_text("{}")
    (tmp_path / "table.md").write_text("| a |\n")
    run = tracker.start_phase(None, "evaluate")
    tracker.log_artifacts(run, tmp_path / "table.md", "evaluation")
    tracker.log_artifacts(run, tmp_path / "ckpt", "checkpoint")
    paths = {a.path for a in tracker.client.list_artifacts(run, "checkpoint")}
    assert paths == {"checkpoint/manifest.json"}
    assert [a.path for a in tracker.client.list_artifacts(run, "evaluation")] == [
        "evaluation/table.md"
    ]
    with pytest.raises(FileNotFoundError, match="missing"):
        tracker.log_artifacts(run, tmp_path / "missing", "x")


def test_phase_run_ends_failed_and_reraises(tracker):
    parent = tracker.start_phase(None, "pipeline")
    with pytest.raises(ZeroDivisionError), tracker.phase_run(parent, "phase3") as run_id:
        1 / 0  # noqa: B018
    assert tracker.client.get_run(run_id).info.status == "FAILED"
    with tracker.phase_run(parent, "evaluate") as ok:
        pass
    assert tracker.client.get_run(ok).info.status == "FINISHED"


def _register(tracker: Tracker, model_dir: Path, main: float, compressed: str):
    parent = tracker.start_phase(None, "pipeline")
    return Registry(tracker).register(
        parent,
        model_dir,
        "ner",
        compressed,
        {"main": main, "f1_micro": main, "per_tag": {"LOC": {"f1": 1.0}}, "table_row": "x"},
        {"git_commit": "abc123", "data_hash": "d" * 12, "params_hash": "p" * 12},
    )


def _aliases(tracker: Tracker, name: str) -> dict[str, str]:
    aliases = tracker.client.get_registered_model(name).aliases  # MLflow gives int versions
    return {alias: str(version) for alias, version in aliases.items()}


def test_promotion_gate_previous_alias_and_rollback(tracker, model_dir):
    client = tracker.client
    v1 = _register(tracker, model_dir, 0.50, "tiny:gate")
    assert v1.name == "alad-ner-tiny-gate" and v1.version == "1"
    tags = client.get_model_version(v1.name, "1").tags
    assert tags["alad.status"] == "ready" and tags["val.main"] == "0.5"
    assert tags["git_commit"] == "abc123" and "val.per_tag.LOC" not in tags
    assert client.get_run(v1.run_id).data.tags["mlflow.parentRunId"]

    first = Registry(tracker).promote(v1.name, "1", "main", margin=0.02)
    assert first.promoted and first.previous is None and "first" in first.reason

    v2 = _register(tracker, model_dir, 0.51, "tiny:gate")  # better, but by less than the margin
    worse = Registry(tracker).promote(v2.name, v2.version, "main", margin=0.02)
    assert not worse.promoted and worse.previous == "1"
    tags = client.get_model_version(v2.name, "2").tags
    assert tags["alad.promotion"] == "rejected"
    assert "gain +0.0100 < margin 0.0200" in tags["alad.promotion_reason"]
    assert _aliases(tracker, v1.name) == {"champion": "1"}

    v3 = _register(tracker, model_dir, 0.60, "tiny:gate")
    better = Registry(tracker).promote(v3.name, v3.version, "main", margin=0.02)
    assert better.promoted and better.previous == "1"
    assert _aliases(tracker, v1.name) == {"champion": "3", "previous": "1"}
    assert client.get_model_version(v3.name, "3").tags["alad.promotion"] == "promoted"

    assert Registry(tracker).rollback(v1.name) == "1"
    assert _aliases(tracker, v1.name) == {"champion": "1"}  # v1 had no champion before it
    assert client.get_model_version(v3.name, "3").tags["alad.promotion"] == "rolled_back"
    with pytest.raises(RegistryError, match="no @previous"):
        Registry(tracker).rollback(v1.name)


def test_an_equal_score_does_not_take_the_champion_alias(tracker, model_dir):
    v1 = _register(tracker, model_dir, 0.70, "tiny:equal")
    v2 = _register(tracker, model_dir, 0.70, "tiny:equal")
    assert Registry(tracker).promote(v1.name, v1.version, "main", margin=0.0).promoted
    tie = Registry(tracker).promote(v2.name, v2.version, "main", margin=0.0)
    assert not tie.promoted and "is no gain over" in tie.reason
    assert _aliases(tracker, v1.name) == {"champion": "1"}


def test_lower_is_better_and_repeated_rollback_walks_back(tracker, model_dir):
    versions = [_register(tracker, model_dir, loss, "tiny:loss") for loss in (0.9, 0.5, 0.3)]
    name = versions[0].name
    for v in versions:
        assert (
            Registry(tracker).promote(name, v.version, "main", 0.1, higher_is_better=False).promoted
        )
    assert _aliases(tracker, name) == {"champion": "3", "previous": "2"}
    assert Registry(tracker).rollback(name) == "2"
    assert _aliases(tracker, name) == {"champion": "2", "previous": "1"}
    assert Registry(tracker).rollback(name) == "1"
    assert _aliases(tracker, name) == {"champion": "1"}


def test_half_registered_version_is_marked_failed_and_never_promoted(
    tracker, model_dir, monkeypatch
):
    v1 = _register(tracker, model_dir, 0.50, "tiny:fail")
    assert Registry(tracker).promote(v1.name, v1.version, "main", 0.0).promoted

    def breaks(*args, **kwargs):
        raise RuntimeError("store went away")

    monkeypatch.setattr(registry_mod, "version_tags", breaks)  # fails after the version exists
    with pytest.raises(RuntimeError, match="store went away"):
        _register(tracker, model_dir, 0.99, "tiny:fail")
    monkeypatch.undo()
    failed = tracker.client.get_model_version(v1.name, "2")
    assert failed.tags["alad.status"] == "failed"
    assert tracker.client.get_run(failed.run_id).info.status == "FAILED"
    decision = Registry(tracker).promote(v1.name, "2", "main", 0.0)
    assert not decision.promoted and "failed" in decision.reason
    assert _aliases(tracker, v1.name) == {"champion": "1"}


def test_promote_on_an_unknown_metric_names_the_known_ones(tracker, model_dir):
    v = _register(tracker, model_dir, 0.5, "tiny:metric")
    with pytest.raises(RegistryError, match=r"val\.f1.*val\.f1_micro.*val\.main"):
        Registry(tracker).promote(v.name, v.version, "f1", 0.0)


def test_rollback_without_previous_is_a_clear_error(tracker, model_dir):
    v = _register(tracker, model_dir, 0.5, "tiny:solo")
    Registry(tracker).promote(v.name, v.version, "main", 0.0)
    with pytest.raises(RegistryError, match="no @previous version to roll back to"):
        Registry(tracker).rollback(v.name)


def test_unreachable_server_is_services_down():
    with socket.socket() as s:  # a port nothing listens on once this closes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ServicesDown, match=r"127\.0\.0\.1.*not answering.*make up"):
        Tracker(uri=f"http://127.0.0.1:{port}")
    tracking.check_server("sqlite:///anything.db")  # not a server: nothing to check


def test_default_store_is_sqlite_under_mlflow(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    assert tracking.artifact_root() == (tmp_path / "mlflow" / "artifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert tracking.tracking_uri() == "http://mlflow:5000"


@pytest.mark.parametrize(
    ("compressed", "name"),
    [
        ("minilm-l6", "alad-ner-minilm-l6"),
        ("mpnet-base:prune4", "alad-ner-mpnet-base-prune4"),
        ("MiniLM-L6:int8", "alad-ner-minilm-l6-int8"),
        ("/models/My_BERT/", "alad-ner-models-my-bert"),
    ],
)
def test_model_name_is_a_slug(compressed, name):
    assert registry_mod.model_name("ner", compressed) == name


def test_params_are_flat_strings_cut_to_mlflow_limit():
    config = {"a": {"b": 1, "c": None, "d": "x" * 7000}, "e": [1, 2], "f": Path("runs")}
    flat = tracking.flatten(config)
    assert flat == {"a.b": "1", "a.c": "null", "a.d": "x" * 6000, "e": "[1, 2]", "f": "runs"}
