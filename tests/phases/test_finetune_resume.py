"""Phase 3 resume, black-box: an interrupted run, resumed, ends bitwise where an uninterrupted
one does (as phases 1-2 do), because the RNG state that dropout draws from is saved too."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from conftest import finetune_settings as _settings
from conftest import interrupt_on_call

import alad.phases.finetune as ft_mod
from alad import stopping
from alad.aligned_model import load_model
from alad.checkpoint import load_trainer_state, saved_progress
from alad.config import AdaLoraSettings
from alad.phases.finetune import finetune


def _weights(model_dir):
    model, _, _ = load_model(model_dir)
    return model.state_dict()


def _straight_counting_steps(s, tmp_path, monkeypatch):
    """An uninterrupted 3-epoch run with its optimizer steps counted: (the real step, the
    counting wrapper, the run's result, steps per epoch)."""
    real = ft_mod.optimizer_step
    counted = interrupt_on_call(real, 10**9)
    monkeypatch.setattr(ft_mod, "optimizer_step", counted)
    straight = finetune(s, out=tmp_path / "straight", progress=False)
    return real, counted, straight, len(counted.calls) // 3


@pytest.mark.parametrize("mode", ["alad-joint", "adalora"])
def test_resumed_phase3_is_identical_to_an_uninterrupted_run(
    mode, tiny_settings, tmp_path, monkeypatch
):
    # alad-joint trains M_C with dropout on: without the saved RNG state, epoch 2 of the
    # resumed run draws other dropout masks (max weight difference ~5e-3 before the fix).
    # AdaLoRA: its importance averages and ranks so far are part of the state too.
    budget = AdaLoraSettings(init_r=6, target_r=2, delta_t=2)
    s = _settings(tiny_settings, tmp_path, n_train=30, mode=mode, epochs=3, adalora=budget)
    straight = finetune(s, out=tmp_path / "straight", progress=False)

    real = ft_mod._train_epoch
    dies_in_epoch_2 = interrupt_on_call(real, 2)
    monkeypatch.setattr(ft_mod, "_train_epoch", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        finetune(s, out=tmp_path / "resumed", progress=False)
    if mode == "adalora":
        allocator = load_trainer_state(tmp_path / "resumed" / "state")["adalora"]
        assert allocator["exp_avg_ipt"] and allocator["rank_pattern"]  # 5 steps: pruned once
    torch.manual_seed(12345)  # a new process would start from another RNG state
    monkeypatch.setattr(ft_mod, "_train_epoch", real)
    resumed = finetune(s, out=tmp_path / "resumed", progress=False)

    losses = [h["train_loss"] for h in straight.history]
    assert [h["train_loss"] for h in resumed.history] == losses
    assert resumed.dev == straight.dev
    expected = _weights(straight.model_dir)
    for key, value in _weights(resumed.model_dir).items():
        assert torch.equal(value, expected[key]), key


def test_a_run_stopped_inside_an_epoch_resumes_from_its_last_batch(
    tiny_settings, tmp_path, monkeypatch
):
    # A long epoch (QA on mpnet-base: hours) saves its state every runtime.save_every_minutes;
    # here after every batch. Killed in batch 5 of epoch 2, the rerun trains only the batches
    # not yet done and ends bitwise where an uninterrupted run ends.
    s = _settings(tiny_settings, tmp_path, n_train=30, mode="alad-joint", epochs=3, batch_size=4)
    s = s.model_copy(update={"runtime": s.runtime.model_copy(update={"save_every_minutes": 1e-9})})
    real, counted, straight, per_epoch = _straight_counting_steps(s, tmp_path, monkeypatch)
    assert per_epoch >= 6

    steps = interrupt_on_call(real, per_epoch + 5)
    monkeypatch.setattr(ft_mod, "optimizer_step", steps)
    with pytest.raises(KeyboardInterrupt):
        finetune(s, out=tmp_path / "resumed", progress=False)
    state = load_trainer_state(tmp_path / "resumed" / "state")
    assert (state["epoch"], state["partial"]["step"]) == (1, 4)
    assert [h["epoch"] for h in state["history"]] == [1]

    torch.manual_seed(12345)  # a new process would start from another RNG state
    counted.calls.clear()
    monkeypatch.setattr(ft_mod, "optimizer_step", counted)
    resumed = finetune(s, out=tmp_path / "resumed", progress=False)
    assert len(counted.calls) == 3 * per_epoch - (per_epoch + 4)  # only the batches not done
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in straight.history]
    assert resumed.dev == straight.dev
    assert resumed.earlier_seconds > 0  # the seconds before the stop are counted
    expected = _weights(straight.model_dir)
    for key, value in _weights(resumed.model_dir).items():
        assert torch.equal(value, expected[key]), key


def test_a_sigterm_stops_phase3_after_its_batch_and_the_rerun_ends_bitwise_as_one_run(
    tiny_settings, tmp_path, monkeypatch
):
    # A SIGTERM (a preemption, `timeout`) arrives in batch 5 of epoch 2: the run saves its state
    # after that batch (no periodic save is due) and raises Stopped; the rerun trains the rest.
    s = _settings(tiny_settings, tmp_path, n_train=30, mode="alad-joint", epochs=3, batch_size=4)
    real, counted, straight, per_epoch = _straight_counting_steps(s, tmp_path, monkeypatch)

    def sigterm_in_call(n):
        calls = []

        def wrapper(*args, **kwargs):
            calls.append(1)
            if len(calls) == n:
                os.kill(os.getpid(), signal.SIGTERM)
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(ft_mod, "optimizer_step", sigterm_in_call(per_epoch + 5))
    with stopping.handle_sigterm(), pytest.raises(stopping.Stopped) as stopped:
        finetune(s, out=tmp_path / "resumed", progress=False)
    assert stopped.value.reason == "SIGTERM" and stopped.value.exit_code == 143
    assert "epoch 2 after batch 5" in str(stopped.value)
    state = load_trainer_state(tmp_path / "resumed" / "state")
    assert (state["epoch"], state["partial"]["step"]) == (1, 5)
    progress = saved_progress(tmp_path / "resumed" / "state")  # from the manifest alone
    assert {k: progress[k] for k in ("epoch", "epochs", "step", "steps")} == {
        "epoch": 1, "epochs": 3, "step": 5, "steps": per_epoch,
    }  # fmt: skip
    assert progress["seconds"] > 0

    torch.manual_seed(12345)
    counted.calls.clear()
    monkeypatch.setattr(ft_mod, "optimizer_step", counted)
    resumed = finetune(s, out=tmp_path / "resumed", progress=False)
    assert len(counted.calls) == 3 * per_epoch - (per_epoch + 5)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in straight.history]
    expected = _weights(straight.model_dir)
    for key, value in _weights(resumed.model_dir).items():
        assert torch.equal(value, expected[key]), key
