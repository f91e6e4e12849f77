"""Alignment phases 1-2 on tiny in-test models: learning, determinism, resume, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import interrupt_on_call

import alad.phases.align as align_mod
from alad import stopping
from alad.checkpoint import CheckpointError, load_checkpoint
from alad.data.corpus import EmptyCorpus
from alad.models.tokens import TokenMismatch
from alad.phases.align import run_alignment
from alad.phases.recipe import NonFiniteLoss


def _with(settings, **sections):
    """settings with some fields of some sections replaced, e.g. phase1={"epochs": 3}."""
    update = {
        name: getattr(settings, name).model_copy(update=fields) for name, fields in sections.items()
    }
    return settings.model_copy(update=update)


def _weights(path):
    return load_checkpoint(path).adapter.state_dict()


def test_phase1_lowers_heldout_mse_and_writes_a_complete_checkpoint(tiny_settings):
    s = _with(tiny_settings, phase1={"epochs": 4, "lr": 3e-3})
    result = run_alignment(s, "phase1", progress=False)
    assert result.after["mse"] < 0.8 * result.before["mse"]
    assert result.after["cosine"] > result.before["cosine"]
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    manifest = json.loads((result.checkpoint / "manifest.json").read_text())
    assert manifest["compressed"] == s.models.compressed and manifest["large"] == s.models.large
    assert (manifest["d_compressed"], manifest["d_large"]) == (32, 48)
    assert (manifest["window"], manifest["hidden"]) == (3, 32)
    assert manifest["tokenizer"] == s.models.compressed and manifest["finished"] is True


def test_pinned_loss_catches_silent_regressions(tiny_settings):
    """Fixed seed, fixed tiny models: the numbers only move if the computation changes."""
    result = run_alignment(tiny_settings, "phase1", progress=False)
    assert result.history[-1]["train_mse"] == pytest.approx(PINNED_TRAIN_MSE, rel=1e-3)
    assert result.after["mse"] == pytest.approx(PINNED_HELDOUT_MSE, rel=1e-3)


PINNED_TRAIN_MSE = 1.012098798731069
PINNED_HELDOUT_MSE = 0.9989526271820068


def test_same_seed_same_weights(tiny_settings, tmp_path):
    a = run_alignment(tiny_settings, "phase1", out=tmp_path / "a", progress=False)
    b = run_alignment(tiny_settings, "phase1", out=tmp_path / "b", progress=False)
    for k, v in _weights(a.checkpoint).items():
        assert torch.equal(_weights(b.checkpoint)[k], v)


def test_interrupted_run_resumes_and_matches_an_uninterrupted_one(
    tiny_settings, tmp_path, monkeypatch
):
    s = _with(tiny_settings, phase1={"epochs": 3})
    straight = run_alignment(s, "phase1", out=tmp_path / "straight", progress=False)

    real = align_mod._train_epoch
    dies_in_epoch_2 = interrupt_on_call(real, 2)
    monkeypatch.setattr(align_mod, "_train_epoch", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run_alignment(s, "phase1", out=tmp_path / "resumed", progress=False)
    assert load_checkpoint(tmp_path / "resumed").manifest["epoch"] == 1
    monkeypatch.setattr(align_mod, "_train_epoch", real)
    resumed = run_alignment(s, "phase1", out=tmp_path / "resumed", progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for k, v in _weights(straight.checkpoint).items():
        torch.testing.assert_close(_weights(resumed.checkpoint)[k], v)


def test_a_time_box_stops_phase1_after_its_epoch_and_the_rerun_finishes_it(tiny_settings, tmp_path):
    s = _with(tiny_settings, phase1={"epochs": 3})
    straight = run_alignment(s, "phase1", out=tmp_path / "straight", progress=False)
    with stopping.deadline(0), pytest.raises(stopping.Stopped) as stopped:
        run_alignment(s, "phase1", out=tmp_path / "boxed", progress=False)
    assert stopped.value.reason == "the time box" and "after epoch 1" in str(stopped.value)
    assert load_checkpoint(tmp_path / "boxed").manifest["epoch"] == 1
    resumed = run_alignment(s, "phase1", out=tmp_path / "boxed", progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for k, v in _weights(straight.checkpoint).items():
        torch.testing.assert_close(_weights(resumed.checkpoint)[k], v)


def test_rerun_of_a_finished_phase_trains_nothing(tiny_settings, monkeypatch):
    first = run_alignment(tiny_settings, "phase1", progress=False)
    monkeypatch.setattr(align_mod, "_train_epoch", lambda *a, **k: pytest.fail("retrained"))
    again = run_alignment(tiny_settings, "phase1", progress=False)
    assert again.checkpoint == first.checkpoint and again.history == first.history


def test_token_budget_stops_early(tiny_settings):
    s = _with(tiny_settings, phase1={"epochs": 50, "budget_tokens": 300})
    result = run_alignment(s, "phase1", progress=False)
    assert result.stopped_by == "token budget"
    assert len(result.history) == 1 and 300 <= result.history[-1]["tokens_seen"] < 1000


def test_nan_loss_raises_and_keeps_no_checkpoint_from_the_diverged_epoch(
    tiny_settings, monkeypatch
):
    monkeypatch.setattr(align_mod, "_share_of_mse", lambda p, *a: (p * float("nan")).sum())
    with pytest.raises(NonFiniteLoss, match="Lower the learning rate"):
        run_alignment(tiny_settings, "phase1", progress=False)
    assert not (tiny_settings.runs_dir / "phase1" / "LATEST").exists()


def test_phase2_starts_from_phase1_and_checks_the_fit(tiny_settings):
    p1 = run_alignment(tiny_settings, "phase1", progress=False)
    same_texts = _with(tiny_settings, phase2={"max_texts": tiny_settings.phase1.max_texts})
    p2 = run_alignment(same_texts, "phase2", init=p1.checkpoint, progress=False)
    assert p2.before["mse"] == pytest.approx(p1.after["mse"], rel=1e-6)  # started from phase 1
    assert p2.after["mse"] < p2.before["mse"]
    wrong = _with(tiny_settings, adapter={"window": 5})
    with pytest.raises(CheckpointError, match="window: checkpoint 3 vs requested 5"):
        run_alignment(wrong, "phase2", init=p1.checkpoint, progress=False)


def test_empty_corpus_is_an_error(tiny_settings, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(EmptyCorpus, match="no text"):
        run_alignment(_with(tiny_settings, phase1={"corpus": str(empty)}), "phase1", progress=False)


def test_mismatched_tokenizers_fail_before_any_extraction(tiny_settings, tmp_path):
    from conftest import make_tiny_bert
    from transformers import BertTokenizerFast

    other = make_tiny_bert(tmp_path / "cased")
    BertTokenizerFast.from_pretrained(other, do_lower_case=False).save_pretrained(other)
    corpus = tmp_path / "caps.txt"
    corpus.write_text("The City was Founded .\nthe city .\n")
    s = _with(tiny_settings, models={"compressed": str(other)}, phase1={"corpus": str(corpus)})
    with pytest.raises(TokenMismatch, match="disagree"):
        run_alignment(s, "phase1", progress=False)
    assert not s.cache.dir.exists()
