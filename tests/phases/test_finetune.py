"""Phase 3 on tiny in-test models: every mode trains, saves, reloads and predicts the same."""

from __future__ import annotations

import json
import random

import pytest
import torch
from conftest import (
    finetune_settings,
    interrupt_on_call,
    write_conllu,
    write_squad,
)

import alad.phases.finetune as ft_mod
from alad.aligned_model import load_model
from alad.checkpoint import CheckpointError
from alad.config import AdaLoraSettings, ConfigError, DistillConfig
from alad.data.readers import DataFormatError
from alad.jobs import finetune_job
from alad.models.catalog import load_encoder
from alad.modes import MODES
from alad.phases.align import run_alignment
from alad.phases.finetune import finetune
from alad.predict import Predictor


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_trains_saves_and_reloads_identically(mode, tiny_settings, tmp_path, request):
    distill = None
    if MODES[mode].distills:  # kd: a fine-tuned teacher of these labels (tests/test_distill.py)
        distill = DistillConfig(teacher=str(request.getfixturevalue("tiny_ner_teacher")))
    s = finetune_settings(tiny_settings, tmp_path, mode=mode, distill=distill)
    result = finetune_job(s, out=tmp_path / mode, progress=False)
    manifest = json.loads((result.model_dir / "manifest.json").read_text())
    assert manifest["mode"] == mode and manifest["labels"][0] == "O"
    assert (result.model_dir / "adapter.safetensors").exists() == ("alad" in mode)
    assert 0.0 <= result.test["f1_micro"] <= 1.0 and result.test["size_pct"] > 0
    assert "speedup" not in result.test  # timed only on request (evaluate --speed)
    assert [h["epoch"] for h in result.history] == [1, 2]
    # reload from the folder alone and predict: same tags as the in-process evaluation path
    model, tok, _ = load_model(result.model_dir)
    assert not any("lora_" in n for n, _ in model.named_parameters()), "LoRA is merged on save"
    tags = Predictor(result.model_dir).tag(["the king of the city north", "a river ."])
    assert [w for w, _ in tags[0]] == ["the", "king", "of", "the", "city", "north"]
    assert all(t in manifest["labels"] for sent in tags for _, t in sent)


def test_frozen_mode_leaves_the_compressed_model_untouched(tiny_settings, tmp_path):
    s = finetune_settings(tiny_settings, tmp_path, mode="alad-frozen")
    from alad.models.catalog import load_encoder

    before = {k: v.clone() for k, v in load_encoder(s.models.compressed).model.state_dict().items()}
    result = finetune(s, out=tmp_path / "frozen", progress=False)
    after, _, _ = load_model(result.model_dir)
    for k, v in after.encoder.state_dict().items():
        assert torch.equal(before[k], v), k


def test_joint_mode_learns_the_toy_task(tiny_settings, tmp_path):
    s = finetune_settings(
        tiny_settings, tmp_path, n_train=300, mode="alad-joint", epochs=5, lr=3e-3
    )
    result = finetune(s, out=tmp_path / "joint", progress=False)
    assert result.dev["f1_micro"] > 0.5, result.history


def test_phase3_starts_from_a_phase2_adapter_and_checks_its_fit(tiny_settings, tmp_path):
    p2 = run_alignment(tiny_settings, "phase2", progress=False)
    s = finetune_settings(tiny_settings, tmp_path, mode="alad-frozen", init=p2.checkpoint)
    result = finetune(s, out=tmp_path / "init", progress=False)
    assert json.loads((result.model_dir / "manifest.json").read_text())["init"] == str(
        p2.checkpoint
    )
    bad = s.model_copy(update={"adapter": s.adapter.model_copy(update={"window": 5})})
    with pytest.raises(CheckpointError, match="window"):
        finetune(bad, out=tmp_path / "bad", progress=False)


def test_unseen_eval_label_is_an_error_naming_the_file(tiny_settings, tmp_path):
    s = finetune_settings(tiny_settings, tmp_path, mode="alad-frozen")
    (tmp_path / "odd.tsv").write_text("king\tB-ROYAL\n\n")
    s = s.model_copy(
        update={"phase3": s.phase3.model_copy(update={"test": str(tmp_path / "odd.tsv")})}
    )
    with pytest.raises(DataFormatError, match=r"odd\.tsv.*B-ROYAL"):
        finetune(s, out=tmp_path / "odd", progress=False)


def test_interrupted_finetune_resumes_after_the_last_epoch(tiny_settings, tmp_path, monkeypatch):
    s = finetune_settings(tiny_settings, tmp_path, mode="alad-frozen", epochs=3)
    real = ft_mod._train_epoch
    dies_in_epoch_3 = interrupt_on_call(real, 3)
    calls = dies_in_epoch_3.calls
    monkeypatch.setattr(ft_mod, "_train_epoch", dies_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        finetune(s, out=tmp_path / "r", progress=False)
    assert (tmp_path / "r" / "state" / "state.pt").is_file()
    assert not (tmp_path / "r" / "metrics.json").exists()
    calls.clear()
    monkeypatch.setattr(ft_mod, "_train_epoch", lambda *a, **k: calls.append(1) or real(*a, **k))
    result = finetune(s, out=tmp_path / "r", progress=False)
    assert len(calls) == 1 and [h["epoch"] for h in result.history] == [1, 2, 3]
    assert not (tmp_path / "r" / "state").exists()
    again = finetune(s, out=tmp_path / "r", progress=False)  # finished: nothing to do
    assert len(calls) == 1 and (again.dev, again.history) == (result.dev, result.history)


def test_pos_task_scores_per_word(tiny_settings, tmp_path):
    p3 = {
        "task": "pos",
        "train": str(write_conllu(tmp_path / "t.conllu", 50, 1)),
        "dev": str(write_conllu(tmp_path / "d.conllu", 10, 2)),
        "test": str(write_conllu(tmp_path / "e.conllu", 10, 3)),
        "mode": "alad-joint",
        "epochs": 8,
        "lr": 3e-3,
    }
    s = finetune_settings(tiny_settings, tmp_path, **p3)
    result = finetune_job(s, out=tmp_path / "pos", progress=False)
    assert result.test["accuracy"] > 0.5
    assert f"{100 * result.test['accuracy']:.1f}" in result.test["table_row"]


def test_int8_encoder_cannot_be_trained(tiny_settings, tmp_path):
    s = finetune_settings(tiny_settings, tmp_path, mode="alad-joint")
    s = s.model_copy(
        update={"models": s.models.model_copy(update={"compressed": s.models.compressed + ":int8"})}
    )
    with pytest.raises(ConfigError, match="int8"):
        finetune(s, out=tmp_path / "q", progress=False)


def test_qa_task_trains_evaluates_and_answers(tiny_settings, tmp_path):
    p3 = {
        "task": "qa",
        "train": str(write_squad(tmp_path / "t.json", 40, 1)),
        "dev": str(write_squad(tmp_path / "d.json", 10, 2)),
        "test": str(write_squad(tmp_path / "e.json", 10, 3)),
        "mode": "alad-joint",
        "epochs": 2,
        "lr": 3e-3,
        "max_length": 32,
        "stride": 8,
    }
    s = finetune_settings(tiny_settings, tmp_path, **p3)
    result = finetune_job(s, out=tmp_path / "qa", progress=False)
    for key in ("exact", "f1", "HasAns_total", "NoAns_total"):
        assert key in result.test
    assert result.test["HasAns_total"] == 5 and result.test["NoAns_total"] == 5
    assert "| EQA EM / F1 |" not in result.test["table_row"]  # a row, not the header
    context = "the old king was born in the city . the new art"
    (answer,) = Predictor(result.model_dir).answer([("who was born in the city ?", context)])
    assert answer == "" or answer in context
    # the no-answer threshold was tuned on dev each epoch and the saved model keeps the best's
    manifest = json.loads((result.model_dir / "manifest.json").read_text())
    assert manifest["null_threshold"] == manifest["dev"]["null_threshold"]
    assert all("null_threshold" not in h for h in result.history)


def test_qa_dev_carved_by_article_never_shares_a_context():
    from alad.data.readers import QAExample
    from alad.tasks import TASKS, _carve

    train = [
        QAExample(f"{a}-{q}", "q?", f"context of {a}", (), title=f"article {a}")
        for a in range(20)
        for q in range(5)
    ]
    rest, carved = _carve(train, ["dev"], TASKS["qa"].group, seed=13)
    assert len(carved["dev"]) == 10  # 2 of 20 articles, all 5 questions of each
    assert {e.context for e in carved["dev"]}.isdisjoint({e.context for e in rest})
    assert len(rest) + len(carved["dev"]) == len(train)


def test_frozen_mode_runs_the_encoder_once_and_matches_uncached(tiny_settings, tmp_path):
    from safetensors.torch import load_file

    calls = {"n": 0}
    results = {}
    for cached in (True, False, "again"):
        s = finetune_settings(
            tiny_settings, tmp_path, mode="alad-frozen", epochs=3, cache_frozen=bool(cached)
        )
        encoders = (load_encoder(s.models.compressed), load_encoder(s.models.large))
        encoders[0].model.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
        calls["n"] = 0
        out = tmp_path / f"frozen-{cached}"
        results[cached] = finetune(s, out=out, progress=False, encoders=encoders)
        results[cached].calls = calls["n"]
    # uncached: train + dev every epoch; cached: one pass over train + dev, then never again
    assert 0 < results[True].calls < results[False].calls / 2.5
    assert results["again"].calls == 0  # another run (seed) on the same rows reads the file
    a = load_file(results[True].model_dir / "adapter.safetensors")
    b = load_file(results[False].model_dir / "adapter.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3  # fp16 outputs, same training
    assert [h["dev_main"] for h in results[True].history] == pytest.approx(
        [h["dev_main"] for h in results[False].history], abs=0.05
    )


def test_epoch_order_groups_rows_by_length_and_stays_a_seeded_permutation(tiny_settings):
    from types import SimpleNamespace

    rng = random.Random(0)
    feats = SimpleNamespace(input_ids=[[1] * rng.randint(3, 60) for _ in range(203)])
    cfg = tiny_settings.phase3.model_copy(update={"batch_size": 16, "group_by_length": True})
    order = ft_mod._epoch_order(feats, cfg, seed=13, epoch=0)
    assert sorted(order) == list(range(203))
    assert order == ft_mod._epoch_order(feats, cfg, seed=13, epoch=0)
    assert order != ft_mod._epoch_order(feats, cfg, seed=13, epoch=1)
    batches = [order[i : i + 16] for i in range(0, 203, 16)]

    def padded(bs):
        return sum(max(len(feats.input_ids[i]) for i in b) * len(b) for b in bs)

    plain = cfg.model_copy(update={"group_by_length": False})
    shuffled = ft_mod._epoch_order(feats, plain, seed=13, epoch=0)
    assert padded(batches) < 0.75 * padded([shuffled[i : i + 16] for i in range(0, 203, 16)])


def test_evaluate_writes_predictions_the_official_scorers_read(tiny_settings, tmp_path):
    from pathlib import Path

    from seqeval.metrics import f1_score

    from alad.data.readers import read_conllu, read_squad
    from alad.evaluation import evaluate_model
    from alad.metrics import squad_v2_metrics

    # NER: conlleval's `word gold predicted` lines score the same F1 as the report
    s = finetune_settings(tiny_settings, tmp_path, mode="compressed")
    model = finetune(s, out=tmp_path / "ner", progress=False).model_dir
    report = evaluate_model(model, s.phase3.test, predictions=tmp_path / "p-ner")
    blocks = (tmp_path / "p-ner" / "predictions.txt").read_text().strip().split("\n\n")
    rows = [[line.split(" ") for line in b.splitlines()] for b in blocks]
    assert all(len(r) == 3 for b in rows for r in b)
    gold, pred = [[r[1] for r in b] for b in rows], [[r[2] for r in b] for b in rows]
    assert f1_score(gold, pred) == pytest.approx(report["f1_micro"])

    # POS: gold and predicted CoNLL-U with the same words; their agreement is the accuracy
    p3 = {
        "task": "pos",
        "train": str(write_conllu(tmp_path / "t.conllu", 30, 1)),
        "dev": str(write_conllu(tmp_path / "d.conllu", 6, 2)),
        "test": str(write_conllu(tmp_path / "e.conllu", 8, 3)),
    }
    s = finetune_settings(tiny_settings, tmp_path, mode="compressed", **p3)
    model = finetune(s, out=tmp_path / "pos", progress=False).model_dir
    report = evaluate_model(model, p3["test"], predictions=tmp_path / "p-pos")
    g = read_conllu(tmp_path / "p-pos" / "gold.conllu")
    p = read_conllu(tmp_path / "p-pos" / "predicted.conllu")
    assert [x.words for x in g] == [x.words for x in p]
    pairs = [(a, b) for x, y in zip(g, p, strict=True) for a, b in zip(x.tags, y.tags, strict=True)]
    assert sum(a == b for a, b in pairs) / len(pairs) == pytest.approx(report["accuracy"])

    # QA: predictions.json + null_odds.json for evaluate-v2.0.py
    p3 = {
        "task": "qa",
        "train": str(write_squad(tmp_path / "t.json", 20, 1)),
        "dev": str(write_squad(tmp_path / "d.json", 6, 2)),
        "test": str(write_squad(tmp_path / "e.json", 6, 3)),
        "max_length": 32,
        "stride": 8,
    }
    s = finetune_settings(tiny_settings, tmp_path, mode="compressed", **p3)
    model = finetune(s, out=tmp_path / "qa", progress=False).model_dir
    report = evaluate_model(model, p3["test"], predictions=tmp_path / "p-qa")
    answers = json.loads((tmp_path / "p-qa" / "predictions.json").read_text())
    odds = json.loads((tmp_path / "p-qa" / "null_odds.json").read_text())
    assert sorted(answers) == sorted(odds) == [f"q{i}" for i in range(6)]
    gold = {e.id: [t for t, _ in e.answers] for e in read_squad(Path(p3["test"]))}
    assert squad_v2_metrics(gold, answers)["f1"] == pytest.approx(report["f1"])


def test_low_rank_adapter_phases_1_to_3(tiny_settings, tmp_path):
    """adapter.rank through the method: phase 1 -> phase 2 -> phase 3 (joint) keep the rank in
    every manifest, the saved model is the leaner size and reloads; a config of another rank is
    told which field differs."""
    from alad.adapter import AlignmentAdapter

    a = tiny_settings.adapter  # tiny: n=3, H=32; D_C=32, D_L=48
    s = tiny_settings.model_copy(update={"adapter": a.model_copy(update={"rank": 4})})
    p1 = run_alignment(s, "phase1", progress=False)
    assert json.loads((p1.checkpoint / "manifest.json").read_text())["rank"] == 4
    assert p1.after["mse"] < p1.before["mse"]
    p2 = run_alignment(s, "phase2", init=p1.checkpoint, progress=False)
    s3 = finetune_settings(s, tmp_path, mode="alad-joint", init=str(p2.checkpoint))
    result = finetune_job(s3, out=tmp_path / "lean", progress=False)  # + test scores, size %
    manifest = json.loads((result.model_dir / "manifest.json").read_text())
    assert manifest["adapter"] == {"d_compressed": 32, "d_large": 48, "window": 3, "hidden": 32,
                                   "rank": 4}  # fmt: skip
    model, _, _ = load_model(result.model_dir)
    lean = AlignmentAdapter.parameter_count(32, 48, 3, 32, 4)
    assert model.adapter_parameters() == lean < AlignmentAdapter.parameter_count(32, 48, 3, 32)
    encoder = load_encoder(s.models.compressed).num_parameters
    large = load_encoder(s.models.large).num_parameters
    assert result.test["size_pct"] == pytest.approx(100 * (encoder + lean) / large, rel=1e-6)
    assert Predictor(result.model_dir).tag(["the king of the city"])[0]
    full = finetune_settings(tiny_settings, tmp_path, mode="alad-joint", init=str(p2.checkpoint))
    with pytest.raises(CheckpointError, match="rank: checkpoint 4 vs requested None"):
        finetune(full, out=tmp_path / "full", progress=False)


def test_a_rank_not_below_n_times_d_c_fails_before_any_extraction(tiny_settings, tmp_path):
    """H=64 > n·D_C=32 (n=1): the config alone cannot see that r=32 is not lower-rank; the
    phase says so once M_C is loaded, before its outputs are computed."""
    a = tiny_settings.adapter.model_copy(update={"window": 1, "hidden": 64, "rank": 32})
    s = tiny_settings.model_copy(update={"adapter": a})
    with pytest.raises(ConfigError, match=r"adapter\.rank=32 is not lower-rank.*D_C=32, n=1"):
        run_alignment(s, "phase1", progress=False)
    assert not s.cache.dir.exists()
    with pytest.raises(ConfigError, match=r"adapter\.rank=32"):
        finetune(finetune_settings(s, tmp_path), out=tmp_path / "x", progress=False)


def test_adalora_prunes_its_ranks_to_the_budget_while_training(tiny_settings, tmp_path):
    budget = AdaLoraSettings(init_r=6, target_r=2, tinit=0.1, tfinal=0.2, delta_t=2)
    s = finetune_settings(tiny_settings, tmp_path, mode="adalora", epochs=3, adalora=budget)
    result = finetune(s, out=tmp_path / "ada", progress=False)
    matrices = 4  # tiny BERT: 2 layers x (query, value)
    ranks = [h["adalora_rank"] for h in result.history]
    assert ranks[0] < 6 * matrices and ranks == sorted(ranks, reverse=True), ranks
    assert ranks[-1] <= 2 * matrices  # the final budget: target_r on average
    manifest = json.loads((result.model_dir / "manifest.json").read_text())
    saved = manifest["adalora"]["ranks"]  # of the best epoch's weights
    assert len(saved) == matrices and sum(saved.values()) < 6 * matrices
    assert manifest["adalora"]["init_r"] == 6 and manifest["lora_lr"] == MODES["adalora"].lora_lr


def test_saving_a_lora_model_leaves_its_training_model_as_it_was(tiny_settings, tmp_path):
    from alad.aligned_model import save_model
    from alad.tasks import TASKS

    s = finetune_settings(tiny_settings, tmp_path, mode="lora")
    encoders = (load_encoder(s.models.compressed), load_encoder(s.models.large))
    model = ft_mod.build_model(s, MODES["lora"], TASKS["ner"], ["O", "B-X"], encoders)
    before = {n for n, p in model.named_parameters() if p.requires_grad and "lora_" in n}
    save_model(model, encoders[0].tokenizer, {"task": "ner"}, tmp_path / "m")
    # training goes on after the best epoch so far is saved: the LoRA layers must still be there
    after = {n for n, p in model.named_parameters() if p.requires_grad and "lora_" in n}
    assert before and after == before


@pytest.mark.parametrize("lora_lr", [None, 4e-3])
def test_the_low_rank_weights_learn_at_phase3_lora_lr(lora_lr, tiny_settings, tmp_path):
    """LoRA's rate is the mode's 1e-3 unless phase3.lora_lr sets it; phase3.lr and head_lr
    leave it alone (they set the rest and the head)."""
    from alad.tasks import TASKS

    s = finetune_settings(tiny_settings, tmp_path, mode="lora", lora_lr=lora_lr, head_lr=2e-3)
    encoders = (load_encoder(s.models.compressed), load_encoder(s.models.large))
    model = ft_mod.build_model(s, MODES["lora"], TASKS["ner"], ["O", "B-X"], encoders)
    groups = ft_mod._param_groups(model, MODES["lora"], s.phase3, s.phase3.lr)
    lora = {id(p) for n, p in model.named_parameters() if "lora_" in n and p.requires_grad}
    rates = {g["lr"] for g in groups if {id(p) for p in g["params"]} <= lora}
    assert rates == {lora_lr or MODES["lora"].lora_lr}
    assert {g["lr"] for g in groups} == rates | {2e-3}
