"""The CLI door: help, a tiny phase run end to end, user errors as one line (exit 2)."""

from __future__ import annotations

import json

import pytest

from alad.cli import main


def _tiny_args(tiny_models, tiny_corpus, tmp_path):
    c, lg = tiny_models
    return [
        "--profile",
        "tiny",
        "--set",
        f"models.compressed={c}",
        "--set",
        f"models.large={lg}",
        "--set",
        f"phase1.corpus={tiny_corpus}",
        "--set",
        f"phase2.corpus={tiny_corpus}",
        "--set",
        f"cache.dir={tmp_path / 'features'}",
        "--set",
        f"runs_dir={tmp_path / 'runs'}",
    ]


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("models", "align", "finetune", "evaluate", "predict", "stage", "pipeline"):
        assert command in out


def test_phase1_then_phase2_from_the_cli(tiny_models, tiny_corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml here: built-in defaults + profile
    args = _tiny_args(tiny_models, tiny_corpus, tmp_path)
    assert main(["align", "phase1", "-q", *args]) == 0
    metrics = json.loads((tmp_path / "runs" / "phase1" / "metrics.json").read_text())
    assert metrics["after"]["mse"] < metrics["before"]["mse"]
    assert main(["align", "phase2", "-q", "--init", str(tmp_path / "runs" / "phase1"), *args]) == 0
    assert "phase2: held-out MSE" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["align", "phase1", "--set", "adapter.window=4"], "adapter.window must be odd"),
        (["align", "phase1", "--set", "phase1.lr=-1"], "phase1.lr"),
        (["align", "phase1", "--set", "models.compresed=x"], "models.compresed"),
        (["align", "phase2", "--init", "/nonexistent/ckpt"], "no adapter checkpoint"),
        (["models", "prepare", "gpt-9"], "unknown packaged model 'gpt-9'"),
    ],
)
def test_user_errors_are_one_clear_line(
    argv, message, tiny_models, tiny_corpus, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    extra = _tiny_args(tiny_models, tiny_corpus, tmp_path) if argv[0] == "align" else []
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("alad: error:") and message in err
    assert "Traceback" not in err


def test_config_show_prints_the_resolved_config(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["config", "show", "--profile", "tiny", "--set", "adapter.window=7"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["adapter"] == {"window": 7, "hidden": 32, "rank": None}


def test_output_into_a_closed_pipe_ends_quietly(tiny_grid):
    """`alad sweep list ... | head -1`: the reader stops early; no traceback on stderr."""
    import subprocess
    import sys

    import yaml

    grid = yaml.safe_load(tiny_grid.read_text())
    grid["seeds"] = list(range(1, 601))  # 1,800 long lines: more than a pipe buffers
    tiny_grid.write_text(yaml.safe_dump(grid))
    cmd = f"{sys.executable} -m alad.cli sweep list {tiny_grid} | head -1"
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=300
    )
    assert "1800 cells" in done.stdout
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
