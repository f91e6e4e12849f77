"""Phase 3 resume, black-box: an interrupted run, resumed, ends bitwise where an uninterrupted
one does (as phases 1-2 do), because the RNG state that dropout draws from is saved too."""

from __future__ import annotations

import pytest
import torch
from conftest import finetune_settings as _settings
from conftest import interrupt_on_call

import alad.phases.finetune as ft_mod
from alad.model import load_model
from alad.phases.finetune import finetune


def _weights(model_dir):
    model, _, _ = load_model(model_dir)
    return model.state_dict()


def test_resumed_phase3_is_identical_to_an_uninterrupted_run(tiny_settings, tmp_path, monkeypatch):
    # alad-joint trains M_C with dropout on: without the saved RNG state, epoch 2 of the
    # resumed run draws other dropout masks (max weight difference ~5e-3 before the fix).
    s = _settings(tiny_settings, tmp_path, n_train=30, mode="alad-joint", epochs=3)
    straight = finetune(s, out=tmp_path / "straight", progress=False)

    real = ft_mod._train_epoch
    dies_in_epoch_2 = interrupt_on_call(real, 2)
    monkeypatch.setattr(ft_mod, "_train_epoch", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        finetune(s, out=tmp_path / "resumed", progress=False)
    torch.manual_seed(12345)  # a new process would start from another RNG state
    monkeypatch.setattr(ft_mod, "_train_epoch", real)
    resumed = finetune(s, out=tmp_path / "resumed", progress=False)

    losses = [h["train_loss"] for h in straight.history]
    assert [h["train_loss"] for h in resumed.history] == losses
    assert resumed.dev == straight.dev
    expected = _weights(straight.model_dir)
    for key, value in _weights(resumed.model_dir).items():
        assert torch.equal(value, expected[key]), key
