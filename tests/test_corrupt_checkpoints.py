"""Damaged checkpoints and interrupted folder swaps: never a silent restart, never a good epoch
pruned because another is broken, leftovers of a killed swap cleaned on the next run.

At 286efbe a run folder whose latest manifest.json was missing, or whose LATEST named a missing
folder, restarted phase 1 from epoch 1 without a word and pruned the intact older epochs.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import tiny_sentences

import alad.phases.align as align_mod
from alad.adapter import AlignmentAdapter
from alad.aligned_model import ModelFolderError, verify_model_folder
from alad.atomic import checksums, recover_all, recover_dir
from alad.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from alad.config import Settings, load_settings
from alad.phases.align import AlignData, prepare_data, run_alignment


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def _flip_a_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(folder).adapter.state_dict()


@dataclass
class Phase1Run:
    settings: Settings
    data: AlignData  # models and feature caches, prepared once for the module
    folder: Path  # a finished 3-epoch run; tests damage copies of it

    def copy(self, tmp: Path) -> Path:
        return Path(shutil.copytree(self.folder, tmp / "phase1"))

    def rerun(self, out: Path):
        return run_alignment(self.settings, "phase1", out=out, progress=False, data=self.data)


@pytest.fixture(scope="module")
def phase1(tiny_models, tmp_path_factory) -> Phase1Run:
    root = tmp_path_factory.mktemp("phase1")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(tiny_sentences(60)) + "\n")
    c, lg = tiny_models
    overrides = {
        "models": {"compressed": str(c), "large": str(lg)},
        "phase1": {"corpus": str(corpus), "epochs": 3},
        "cache": {"dir": str(root / "features")},
    }
    settings = load_settings(params=None, profile="tiny", overrides=overrides)
    data = prepare_data(settings, "phase1", progress=False)
    run_alignment(settings, "phase1", out=root / "run", progress=False, data=data)
    return Phase1Run(settings, data, root / "run")


DAMAGES = {
    "manifest-missing": lambda out: (out / "epoch-0003" / "manifest.json").unlink(),
    "latest-names-a-missing-folder": lambda out: shutil.rmtree(out / "epoch-0003"),
    "bit-flip-in-weights": lambda out: _flip_a_byte(out / "epoch-0003" / "adapter.safetensors"),
    "trainer-truncated": lambda out: (out / "epoch-0003" / "trainer.pt").write_bytes(b"PK"),
}


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
def test_damaged_latest_epoch_falls_back_to_the_newest_intact_one(
    damage, phase1, tmp_path, monkeypatch, caplog
):
    out = phase1.copy(tmp_path)
    expected = _weights(out / "epoch-0003")
    DAMAGES[damage](out)

    real, calls = align_mod._train_epoch, []

    def counted(*args, **kwargs):
        calls.append(args[1])  # the epoch (0-based; args[0] is the recipe)
        return real(*args, **kwargs)

    monkeypatch.setattr(align_mod, "_train_epoch", counted)
    with caplog.at_level(logging.WARNING, logger="alad.checkpoint"):
        result = phase1.rerun(out)
    assert calls == [2], "only epoch 3 is trained again, from epoch 2"
    assert "epoch-0003" in caplog.text and "using" in caplog.text and "epoch-0002" in caplog.text
    assert result.checkpoint == out / "epoch-0003"
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    for key, value in _weights(out).items():  # resumed: bitwise the uninterrupted run's weights
        assert torch.equal(value, expected[key]), key
    assert (out / "epoch-0002").is_dir(), "the intact epoch the run resumed from is kept"


def test_no_intact_epoch_is_an_error_and_nothing_is_deleted(phase1, tmp_path):
    out = phase1.copy(tmp_path)
    for epoch in ("epoch-0002", "epoch-0003"):
        _flip_a_byte(out / epoch / "adapter.safetensors")
    with pytest.raises(CheckpointError, match=r"no intact checkpoint.*epoch-0003.*epoch-0002"):
        phase1.rerun(out)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["epoch-0002", "epoch-0003"]


def _adapter() -> AlignmentAdapter:
    torch.manual_seed(0)
    return AlignmentAdapter(8, 12, window=3, hidden=16)


def test_pruning_keeps_intact_epochs_when_a_newer_one_is_damaged(tmp_path):
    for epoch in (1, 2, 5):
        save_checkpoint(tmp_path, f"epoch-{epoch:04d}", _adapter(), {})
    (tmp_path / "epoch-0005" / "manifest.json").unlink()  # damaged, newer than the resume point
    save_checkpoint(tmp_path, "epoch-0003", _adapter(), {})  # resumed from 2, wrote 3
    # 286efbe kept the newest by name (the damaged epoch-0005) and deleted the intact 1 and 2.
    assert sorted(p.name for p in tmp_path.glob("epoch-*")) == [
        "epoch-0002",
        "epoch-0003",
        "epoch-0005",
    ]
    assert load_checkpoint(tmp_path).dir == tmp_path / "epoch-0003"


def test_a_bit_flip_is_an_error_naming_the_file(tmp_path):
    folder = save_checkpoint(tmp_path, "epoch-0001", _adapter(), {}, {"optimizer": {}})
    _flip_a_byte(folder / "trainer.pt")
    with pytest.raises(CheckpointError, match=r"epoch-0001: trainer\.pt does not match"):
        load_checkpoint(folder, with_trainer_state=True)


def test_bit_flip_in_a_saved_model_names_the_file(tmp_path):
    model = tmp_path / "model"
    (model / "encoder").mkdir(parents=True)
    for name in ("encoder/model.safetensors", "head.safetensors"):
        (model / name).write_bytes(b"weights " * 64)
    manifest = {"files": checksums(model)}  # as save_model writes them
    verify_model_folder(model, manifest)
    _flip_a_byte(model / "encoder" / "model.safetensors")
    with pytest.raises(ModelFolderError, match=r"encoder/model\.safetensors does not match"):
        verify_model_folder(model, manifest)


def test_a_swap_killed_between_its_two_renames_is_finished_on_the_next_run(tmp_path):
    final, pid = tmp_path / "model", _dead_pid()
    (tmp_path / f".model.old-{pid}").mkdir()  # the previous folder, moved aside
    (tmp_path / f".model.old-{pid}" / "which").write_text("old")
    (tmp_path / f".model.tmp-{pid}").mkdir()  # the new, complete folder, not yet renamed
    (tmp_path / f".model.tmp-{pid}" / "which").write_text("new")
    recover_dir(final)
    assert (final / "which").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_leftovers_of_finished_or_unfinished_swaps_are_removed_and_live_ones_kept(tmp_path):
    dead = _dead_pid()
    (tmp_path / "state").mkdir()
    for name in (f".state.old-{dead}", f".state.tmp-{dead}", f".epoch-0002.tmp-{dead}"):
        (tmp_path / name).mkdir()
    (tmp_path / f".LATEST.tmp-{dead}").write_text("epoch-0002\n")
    live = tmp_path / f".model.tmp-{1}"  # pid 1 is alive: another process may be writing it
    live.mkdir()
    recover_all(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "state"]


def test_phase1_rerun_recovers_a_killed_swap_without_training(phase1, tmp_path, monkeypatch):
    out, pid = phase1.copy(tmp_path), _dead_pid()
    shutil.copytree(out / "epoch-0003", out / f".epoch-0003.tmp-{pid}")
    (out / "epoch-0003").rename(out / f".epoch-0003.old-{pid}")
    monkeypatch.setattr(align_mod, "_train_epoch", lambda *a, **k: pytest.fail("retrained"))
    result = phase1.rerun(out)
    assert result.checkpoint == out / "epoch-0003"
    assert sorted(p.name for p in out.iterdir()) == ["LATEST", "epoch-0002", "epoch-0003"]
