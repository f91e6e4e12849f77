"""dvc.yaml: consistent with the project, and a real `dvc repro` in a throwaway git repo.

The integration test copies alad/, dvc.yaml and .dvcignore into a temporary git repo with a
tiny params.yaml (in-test models, a toy corpus, a toy BIO file, tracking off) and checks what the
README promises: all six stages run, a second `dvc repro` runs nothing, a phase-3 parameter
reruns only phase 3 and what follows, `dvc exp run -S` works, `dvc push` fills a local remote,
and a killed phase resumes from its last checkpoint. About two minutes (tiny models; each
`alad` process spends a few seconds importing).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import tiny_sentences, write_bio

from alad.config import Settings, load_settings
from alad.stages import STAGES

ROOT = Path(__file__).resolve().parents[1]


def _dvc_yaml() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def _param_keys(stage: dict[str, Any]) -> list[str]:
    keys: list[str] = []
    for entry in stage.get("params", []):
        # `- key` reads params.yaml; `- other.yaml: [keys]` would read another file.
        assert isinstance(entry, str), f"params entry {entry!r}: only params.yaml is used"
        keys.append(entry)
    return keys


def test_dvc_yaml_runs_each_stage_through_the_cli():
    stages = _dvc_yaml()["stages"]
    assert list(stages) == list(STAGES)
    for name, stage in stages.items():
        assert stage["cmd"] == f"alad stage {name}"


def test_dvc_yaml_names_real_modules_and_config_keys():
    """A dependency that does not exist or a key params.yaml lacks stops `dvc repro`."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text()) or {}
    for name, stage in _dvc_yaml()["stages"].items():
        for dep in stage.get("deps", []):
            if dep.startswith("alad/"):
                assert (ROOT / dep).exists(), f"{name}: dependency {dep} does not exist"
        for key in _param_keys(stage):
            model: Any = Settings
            node: Any = params
            for part in key.split("."):
                assert part in model.model_fields, f"{name}: {key} is not a config key"
                model = model.model_fields[part].annotation
                assert isinstance(node, dict) and part in node, (
                    f"{name}: dvc.yaml reads {key}, which params.yaml does not set"
                )
                node = node[part]


# ---------------------------------------------------------------------------------------------
# `dvc repro` for real


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd)} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-6000:]}"
        )
    return proc


def _ran(proc: subprocess.CompletedProcess) -> list[str]:
    return re.findall(r"Running stage '([\w-]+)'", proc.stdout + proc.stderr)


def _params(tiny_models: tuple[Path, Path], tmp_path: Path) -> dict[str, Any]:
    """The tiny profile, every key written out (DVC needs each key a stage reads)."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(tiny_sentences(80)) + "\n")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    compressed, large = tiny_models
    settings = load_settings(
        params=empty,
        profile="tiny",
        overrides={
            "runs_dir": "runs",
            "models": {"compressed": str(compressed), "large": str(large)},
            "phase1": {"corpus": str(corpus)},
            "phase2": {"corpus": str(corpus)},
            "phase3": {
                "task": "ner",
                "mode": "alad-frozen",
                "train": str(write_bio(tmp_path / "ner.tsv", 80, 7)),
            },
            "cache": {"dir": str(tmp_path / "features")},
            "tracking": {"enabled": True, "register_model": True, "experiment": "dvc"},
        },
    )
    # Without `profile`: the overlay would override the values the test edits.
    return settings.model_dump(mode="json", exclude={"profile"})


def _env(tmp_path: Path, repo: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if not (Path(sys.executable).parent / "alad").exists():  # no console script: a wrapper
        wrapper = bin_dir / "alad"
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m alad.cli "$@"\n')
        wrapper.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALAD_", "DVC_", "GIT_"))}
    for name in ("dvc-global", "dvc-system", "dvc-site"):
        (tmp_path / name).mkdir()
    env.update(
        PATH=os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), env["PATH"]]),
        PYTHONPATH=str(repo),  # the copied alad/ is what the stages run
        ALAD_CACHE_HOME=str(tmp_path / "alad-home"),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        DVC_NO_ANALYTICS="1",
        DVC_GLOBAL_CONFIG_DIR=str(tmp_path / "dvc-global"),
        DVC_SYSTEM_CONFIG_DIR=str(tmp_path / "dvc-system"),
        DVC_SITE_CACHE_DIR=str(tmp_path / "dvc-site"),
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db",
    )
    return env


@pytest.mark.integration
def test_dvc_repro_end_to_end(tiny_models, tmp_path):
    pytest.importorskip("dvc")
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo, remote = tmp_path / "repo", tmp_path / "remote"
    repo.mkdir()
    shutil.copytree(ROOT / "alad", repo / "alad", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    params = _params(tiny_models, tmp_path)
    params_file = repo / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    env = _env(tmp_path, repo)

    def run(*cmd: str) -> subprocess.CompletedProcess:
        return _run(list(cmd), repo, env)

    def dvc(*args: str) -> subprocess.CompletedProcess:
        return run(sys.executable, "-m", "dvc", *args)

    def status() -> dict[str, Any]:
        return json.loads(dvc("status", "--json").stdout)

    run("git", "init", "-q")
    run("git", "config", "user.email", "test@example.com")
    run("git", "config", "user.name", "test")
    run("git", "config", "commit.gpgsign", "false")
    dvc("init", "-q")
    dvc("config", "core.analytics", "false")
    dvc("remote", "add", "-d", "local", str(remote))

    # 1. Everything runs, in order, and the evaluation is written.
    assert _ran(dvc("repro")) == list(STAGES)
    runs = repo / "runs"
    test = json.loads((runs / "eval" / "metrics.json").read_text())["test"]
    assert 0 <= test["f1_micro"] <= 1
    assert sorted(p.name for p in (runs / "eval" / "plots").iterdir()) == [
        "phase1.png",
        "phase2.png",
        "phase3.png",
    ]
    # the task model and both adapters are registered, with their aliases
    registered = json.loads((runs / "registry.json").read_text())
    assert registered["registered"] is True and registered["promoted"] is True
    adapters = [
        json.loads((runs / p / "metrics.json").read_text())["registered"]
        for p in ("phase1", "phase2")
    ]
    assert [(a["version"], a["alias"], a["promoted"]) for a in adapters] == [
        ("1", "champion-phase1", True),
        ("2", "champion-phase2-ner", True),
    ]
    from mlflow import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    tags = client.get_model_version(registered["name"], registered["version"]).tags
    assert tags["adapter"] == f"{adapters[1]['name']}/2"
    metrics = json.loads(dvc("metrics", "show", "--json").stdout)
    assert "runs/eval/metrics.json" in json.dumps(metrics)

    # 2. Nothing changed: nothing runs.
    again = dvc("repro")
    assert _ran(again) == []
    assert "Data and pipelines are up to date" in again.stdout
    assert status() == {}

    # 3. A phase-3 parameter: DVC flags phase 3 (downstream stages are not listed by
    # `dvc status`), and `dvc repro` reruns phase 3, evaluation and registration only.
    before = {p: (runs / p / "LATEST").stat().st_mtime_ns for p in ("phase1", "phase2")}
    data = sorted((p.name, p.stat().st_mtime_ns) for p in (runs / "data").iterdir())
    params["phase3"]["epochs"] = 3
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    assert set(status()) == {"phase3"}
    assert _ran(dvc("repro")) == ["phase3", "evaluate", "register"]
    assert {p: (runs / p / "LATEST").stat().st_mtime_ns for p in before} == before
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (runs / "data").iterdir()) == data
    assert len(json.loads((runs / "phase3" / "metrics.json").read_text())["history"]) == 3
    assert status() == {}

    # 4. An experiment with one parameter changed (needs a commit to branch from).
    run("git", "add", "-A")
    run("git", "commit", "-q", "-m", "pipeline")
    assert _ran(dvc("exp", "run", "-S", "phase3.lr=0.002")) == ["phase3", "evaluate", "register"]
    assert yaml.safe_load(params_file.read_text())["phase3"]["lr"] == 0.002
    assert dvc("exp", "list", "--name-only").stdout.split()

    # 5. Data, checkpoints and models go to the remote.
    dvc("push")
    assert any(p.is_file() for p in remote.rglob("*"))
    assert json.loads(dvc("status", "--cloud", "--json").stdout) == {}

    # 6. A phase killed during its last epoch: DVC keeps the persisted output, the phase
    # resumes after its last finished epoch and ends with the same weights.
    phase1 = runs / "phase1"
    weights = (phase1 / "epoch-0002" / "adapter.safetensors").read_bytes()
    shutil.rmtree(phase1 / "epoch-0002")
    (phase1 / "LATEST").write_text("epoch-0001\n")
    assert "phase1" in status()
    resumed = dvc("repro", "--single-item", "phase1")
    log = resumed.stdout + resumed.stderr
    assert "resuming phase1 after epoch 1" in log and "starting over" not in log
    assert (phase1 / "epoch-0002" / "adapter.safetensors").read_bytes() == weights
