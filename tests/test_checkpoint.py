"""Adapter checkpoints: round trip, atomic publication, pruning, fit checks."""

from __future__ import annotations

import pytest
import torch

import alad.checkpoint as ckpt_mod
from alad.adapter import AlignmentAdapter
from alad.checkpoint import CheckpointError, check_fits, latest, load_checkpoint, save_checkpoint


def _adapter(seed=0):
    torch.manual_seed(seed)
    return AlignmentAdapter(8, 12, window=3, hidden=16)


def test_round_trip_and_latest_pointer(tmp_path):
    a = _adapter()
    save_checkpoint(tmp_path, "epoch-0001", _adapter(1), {"compressed": "c", "large": "l"})
    path = save_checkpoint(
        tmp_path, "epoch-0002", a, {"compressed": "c", "large": "l"}, {"optimizer": {"x": 1}}
    )
    assert latest(tmp_path) == path
    loaded = load_checkpoint(tmp_path, with_trainer_state=True)
    assert loaded.dir == path and loaded.trainer_state == {"optimizer": {"x": 1}}
    assert loaded.manifest["window"] == 3 and loaded.manifest["d_large"] == 12
    for k, v in a.state_dict().items():
        assert torch.equal(loaded.adapter.state_dict()[k], v)


def test_old_epochs_are_pruned(tmp_path):
    for e in range(1, 6):
        save_checkpoint(tmp_path, f"epoch-{e:04d}", _adapter(), {})
    assert sorted(p.name for p in tmp_path.glob("epoch-*")) == ["epoch-0004", "epoch-0005"]


def test_crash_while_saving_keeps_previous_checkpoint_current(tmp_path, monkeypatch):
    first = save_checkpoint(tmp_path, "epoch-0001", _adapter(), {})

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", broken)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, "epoch-0002", _adapter(), {}, {"optimizer": {}})
    assert latest(tmp_path) == first
    assert not (tmp_path / "epoch-0002").exists()
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no adapter checkpoint"):
        load_checkpoint(tmp_path)


def test_fit_check_names_the_mismatching_fields(tmp_path):
    manifest = {
        "d_compressed": 8,
        "d_large": 12,
        "window": 3,
        "hidden": 16,
        "compressed": "c",
        "large": "l",
    }
    check_fits(manifest, 8, 12, 3, 16, tmp_path)
    with pytest.raises(
        CheckpointError, match=r"d_compressed: checkpoint 8 vs requested 384.*window"
    ):
        check_fits(manifest, 384, 12, 5, 16, tmp_path)
