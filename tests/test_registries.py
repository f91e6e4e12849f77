"""One source of truth per extension point: a task or a mode registered once is known to the
config, the CLI, the sweep and phase 3, with no other file edited (README "Adding a task or a
mode")."""

from __future__ import annotations

import pytest

from alad.cli import build_parser
from alad.config import ConfigError, load_settings
from alad.modes import MODES, ModeSpec
from alad.tasks import TASKS, PosTask


def test_unknown_names_are_one_clear_error_listing_the_registered_ones():
    with pytest.raises(ConfigError, match=r"phase3\.task.*unknown task 'chunking'.*'ner', 'pos'"):
        load_settings(overrides=["phase3.task=chunking"])
    with pytest.raises(ConfigError, match=r"phase3\.mode.*unknown mode 'warp'.*alad-frozen"):
        load_settings(overrides=["phase3.mode=warp"])


@pytest.fixture
def toy_mode(monkeypatch):
    """What a contributor writes: one ModeSpec, one line in MODES."""
    monkeypatch.setitem(
        MODES, "alad-slow", ModeSpec("compressed", True, "frozen", 1e-5, description="toy")
    )
    return "alad-slow"


class ChunkTask(PosTask):  # a new task: a class (here reusing POS's reader) + one line
    name = "chunk"
    title = "Chunking"


@pytest.fixture
def toy_task(monkeypatch):
    monkeypatch.setitem(TASKS, "chunk", ChunkTask())
    return "chunk"


def test_a_registered_mode_and_task_reach_config_and_cli(toy_mode, toy_task, capsys):
    s = load_settings(overrides=[f"phase3.mode={toy_mode}", f"phase3.task={toy_task}"])
    assert (s.phase3.mode, s.phase3.task) == (toy_mode, toy_task)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["finetune", "--help"])
    help_text = capsys.readouterr().out
    assert toy_mode in help_text and toy_task in help_text


def test_a_registered_mode_trains(toy_mode, tiny_settings, tmp_path):
    from conftest import write_conllu

    from alad.jobs import finetune_job

    p3 = tiny_settings.phase3.model_copy(
        update={
            "task": "pos",
            "mode": toy_mode,
            "train": str(write_conllu(tmp_path / "t.conllu", 24, 1)),
            "dev": str(write_conllu(tmp_path / "d.conllu", 6, 2)),
            "test": str(write_conllu(tmp_path / "e.conllu", 6, 3)),
            "epochs": 1,
        }
    )
    result = finetune_job(
        tiny_settings.model_copy(update={"phase3": p3}), out=tmp_path / "m", progress=False
    )
    assert (result.model_dir / "adapter.safetensors").is_file()  # the spec said: an adapter
    assert 0.0 <= result.test["accuracy"] <= 1.0
