"""The teacher of phases 1-2 (issue 20): a target layer, a fine-tuned or registered task model as
the target, its head reused in phase 3 or with no phase 3 at all. Tiny in-test models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import train_tiny_model, write_bio
from safetensors.torch import load_file

from alad.aligned_model import load_model, phase3_config
from alad.cache import cache_key
from alad.checkpoint import load_checkpoint
from alad.config import ConfigError, load_settings
from alad.data.corpus import load_corpus, sample_split
from alad.models.catalog import load_encoder
from alad.modes import MODES
from alad.phases.align import prepare_data, run_alignment
from alad.phases.finetune import build_model, finetune
from alad.phases.recipe import run_key
from alad.tasks import TASKS
from alad.teacher import TeacherError, compose_zero_shot, load_teacher


def _with(settings, **sections):
    update = {n: getattr(settings, n).model_copy(update=f) for n, f in sections.items()}
    return settings.model_copy(update=update)


def _ner_splits(root: Path) -> dict[str, str]:
    return {
        "train": str(write_bio(root / "train.tsv", 40, 1)),
        "dev": str(write_bio(root / "dev.tsv", 8, 2)),
        "test": str(write_bio(root / "test.tsv", 8, 3)),
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_models):
    """A fine-tuned teacher (the tiny MPNet, mode `large`, NER), registered in a SQLite store
    as alad-ner-tiny-mpnet@champion; a phase-1 adapter (pre-trained teacher) and a phase-2
    adapter aimed at the registered teacher. Built once: each is a few seconds of training."""
    from alad.registry import Gate, Registry
    from alad.tracking import Tracker

    root = tmp_path_factory.mktemp("teacher")
    compressed, large = tiny_models
    store = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:  # the autouse cache fixture is per test
        mp.setenv("ALAD_CACHE_HOME", str(root / "cache"))
        mp.setenv("MLFLOW_TRACKING_URI", store)
        splits = _ner_splits(root)
        base = {
            "models": {"compressed": str(compressed), "large": str(large)},
            "runs_dir": str(root / "runs"),
            "cache": {"dir": str(root / "features")},
            "tracking": {"enabled": False},
            "phase1": {"corpus": splits["train"], "epochs": 2, "lr": 3e-3},
            "phase2": {"corpus": splits["train"], "epochs": 2, "lr": 3e-3},
            "phase3": {"task": "ner", "mode": "large", **splits, "epochs": 2, "lr": 3e-3},
        }
        s = load_settings(params=None, profile="tiny", overrides=base)
        teacher = finetune(s, out=root / "large", progress=False).model_dir
        tracker = Tracker(uri=store, experiment="teacher")
        Registry(tracker).publish(
            teacher,
            {"main": 0.5},
            {"git_commit": "x"},
            Gate("main"),
            None,
            task="ner",
            compressed="tiny-mpnet",
        )
        uri = "models:/alad-ner-tiny-mpnet@champion"
        phase1 = run_alignment(s, "phase1", out=root / "phase1", progress=False)
        s2 = _with(s, phase2={"teacher": uri})
        phase2 = run_alignment(
            s2, "phase2", out=root / "phase2", init=root / "phase1", progress=False
        )
    return {
        "root": root,
        "settings": s,
        "teacher": teacher,
        "uri": uri,
        "store": store,
        "phase1": phase1,
        "phase2": phase2,
    }


@pytest.fixture
def in_world(world, monkeypatch):
    monkeypatch.setenv("ALAD_CACHE_HOME", str(world["root"] / "cache"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", world["store"])
    return world


def test_target_layer_picks_that_hidden_state(tiny_settings, tiny_models):
    s = _with(tiny_settings, phase1={"target_layer": 1})
    data = prepare_data(s, "phase1", progress=False)
    assert (data.teacher.layer, data.teacher.cache_layer) == (1, 1)
    assert data.train[1].dir.name.endswith("-h1") and data.train[1].manifest["layer"] == 1
    texts, _ = sample_split(load_corpus(s.phase1.corpus), 64, s.phase1.heldout_fraction, s.seed)
    hidden, lengths = data.train[1].shard(0)
    large = load_encoder(str(tiny_models[1]))
    for i, text in enumerate(texts[:3]):  # by hand: the teacher's hidden_states[1] of the text
        ids = large.tokenizer(text, truncation=True, max_length=32, return_tensors="pt")
        with torch.no_grad():
            want = large.model(**ids, output_hidden_states=True).hidden_states[1][0]
        start = int(lengths[:i].sum())
        got = hidden[start : start + int(lengths[i])].float()
        torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-3)
        last = large.model(**ids).last_hidden_state[0]
        assert not torch.allclose(got, last, atol=1e-2)  # not the last layer's
    # the last layer named by its index is the last layer: the same cache as no target_layer
    last = prepare_data(_with(tiny_settings, phase1={"target_layer": 2}), "phase1", False)
    default = prepare_data(tiny_settings, "phase1", progress=False)
    assert last.teacher.cache_layer is None and last.train[1].dir == default.train[1].dir


def test_a_target_layer_the_teacher_does_not_have_is_one_error(tiny_settings):
    s = _with(tiny_settings, phase2={"target_layer": 3})
    with pytest.raises(TeacherError, match=r"phase2\.target_layer=3: .* has 2 layers; choose 0"):
        prepare_data(s, "phase2", progress=False)
    with pytest.raises(TeacherError, match="sweep grid's placeholder"):
        load_teacher("@large", "x", None, "phase2")


def test_the_cache_key_changes_with_the_teacher_and_with_the_layer(tiny_settings, world):
    enc = load_encoder(tiny_settings.models.large)
    texts = ["the city of the king ."]
    assert "layer" not in cache_key(enc, texts, 32, 8)  # the last layer: the key it always had
    assert cache_key(enc, texts, 32, 8, 1)["layer"] == 1
    runs = {
        "paper": tiny_settings,
        "layer 1": _with(tiny_settings, phase1={"target_layer": 1}),
        "fine-tuned": _with(tiny_settings, phase1={"teacher": str(world["teacher"])}),
    }
    dirs = {name: prepare_data(s, "phase1", progress=False) for name, s in runs.items()}
    assert len({d.train[1].dir for d in dirs.values()}) == 3  # the teacher's side: three caches
    assert len({d.train[0].dir for d in dirs.values()}) == 1  # M_C's side: one
    fingerprints = {d.teacher.encoder.fingerprint for d in dirs.values()}
    assert len(fingerprints) == 2  # fine-tuned weights are another model


def test_phase2_aims_at_a_registered_task_model(in_world):
    w = in_world
    m = load_checkpoint(w["phase2"].checkpoint).manifest
    assert m["teacher"] == w["uri"] and m["teacher_version"] == "models:/alad-ner-tiny-mpnet/1"
    assert m["large"] == w["settings"].models.large and m["large_fingerprint"] is None
    assert (m["target_layer"], m["teacher_layers"]) == (2, 2)
    folder = Path(m["teacher_dir"])  # the registered version's alad model folder, downloaded
    assert (
        load_file(folder / "head.safetensors").keys()
        == load_file(w["teacher"] / "head.safetensors").keys()
    )
    pretrained = load_checkpoint(w["phase1"].checkpoint).manifest
    assert (
        pretrained["teacher"] is None
        and m["teacher_fingerprint"] != pretrained["teacher_fingerprint"]
    )
    fine_tuned = load_teacher(str(w["teacher"]), "unused").encoder.model.state_dict()
    registered = load_teacher(w["uri"], "unused").encoder.model.state_dict()
    assert all(torch.equal(registered[k], fine_tuned[k]) for k in fine_tuned)
    assert m["run_key"]["teacher_version"] == "models:/alad-ner-tiny-mpnet/1"
    assert "teacher" not in run_key(w["settings"], "phase2")["phase"]  # at the default: left out


def test_head_init_teacher_starts_phase3_from_the_teachers_head(in_world):
    w = in_world
    s = w["settings"]
    p3 = s.phase3.model_copy(
        update={"mode": "alad-frozen", "head_init": "teacher", "init": str(w["phase2"].checkpoint)}
    )
    s = s.model_copy(update={"phase3": p3})
    task = TASKS["ner"]
    labels = task.labels(task.read(s.phase3.train))
    encoders = (load_encoder(s.models.compressed), load_encoder(s.models.large))
    model = build_model(s, MODES["alad-frozen"], task, labels, encoders)
    want = load_file(w["teacher"] / "head.safetensors")
    got = model.head.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    with pytest.raises(TeacherError, match=r"labels \[.*\] differ from this task's .*\['O', 'X'\]"):
        build_model(s, MODES["alad-frozen"], task, ["O", "X"], encoders)
    fresh = s.model_copy(update={"phase3": p3.model_copy(update={"head_init": "fresh"})})
    other = build_model(fresh, MODES["alad-frozen"], task, labels, encoders).head.state_dict()
    assert not torch.equal(other["classifier.weight"], want["classifier.weight"])
    # the paper's adapter (aimed at the pre-trained M_L) has no head to give
    p1 = s.phase3.model_copy(update={"init": str(w["phase1"].checkpoint)})
    with pytest.raises(TeacherError, match="pre-trained encoder without a task head"):
        build_model(
            s.model_copy(update={"phase3": p1}), MODES["alad-frozen"], task, labels, encoders
        )


def test_head_init_teacher_needs_an_adapter_mode():
    with pytest.raises(ConfigError, match="head_init=teacher needs an AlAd mode"):
        load_settings(
            params=None, overrides={"phase3": {"mode": "compressed", "head_init": "teacher"}}
        )


def test_zero_shot_model_is_encoder_then_adapter_then_the_teachers_head(in_world, tmp_path):
    from alad.evaluation import evaluate_model
    from alad.inference import predict_outputs

    w = in_world
    out = compose_zero_shot(w["phase2"].checkpoint, tmp_path / "zero-shot")
    model, tok, manifest = load_model(out)
    assert manifest["zero_shot"] is True and manifest["mode"] == "alad-frozen"
    assert manifest["labels"] == json.loads((w["teacher"] / "manifest.json").read_text())["labels"]
    # by hand: pre-trained M_C -> the phase-2 adapter -> the teacher's head
    encoder = load_encoder(w["settings"].models.compressed).model.eval()
    adapter = load_checkpoint(w["phase2"].checkpoint).adapter.eval()
    teacher, _, _ = load_model(w["teacher"])
    task, test = TASKS["ner"], w["settings"].phase3.test
    examples = task.read(test)
    cfg = phase3_config(manifest)
    feats = task.encode(tok, examples, manifest["labels"], cfg, False)
    batch = next(task.batches(feats, 8, tok.pad_token_id))
    with torch.no_grad():
        hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        manual = teacher.head(adapter(hidden.last_hidden_state, batch["attention_mask"]))
        torch.testing.assert_close(model(batch["input_ids"], batch["attention_mask"]), manual)
    # `alad evaluate` on it scores what the manual forward predicts
    report = evaluate_model(out, test)
    outputs = predict_outputs(model, task, feats, 32, tok.pad_token_id)
    scored = task.score(examples, task.decode(examples, feats, outputs, manifest["labels"], cfg))
    assert report["main"] == pytest.approx(scored["main"]) and report["size_pct"] > 0


def test_a_model_with_an_adapter_is_no_teacher(tiny_models, tmp_path):
    folder = train_tiny_model(tmp_path, tiny_models)  # alad-frozen
    with pytest.raises(TeacherError, match="its head reads the adapter's output"):
        load_teacher(str(folder), "unused")


def test_an_adapter_aimed_at_another_teacher_is_registered_in_its_own_scope(in_world, tmp_path):
    from alad.stages import Layout, _register_adapter
    from alad.tracking import Tracker

    w = in_world
    tracker = Tracker(uri=w["store"], experiment="adapters")
    run = tracker.start_phase(None, "phase2")
    s = _with(w["settings"], phase2={"teacher": w["uri"]})
    done = _register_adapter(tracker, s, Layout(tmp_path), "phase2", run, w["phase2"])
    m = load_checkpoint(w["phase2"].checkpoint).manifest
    scope = f"champion-phase2-ner-to-{m['teacher_fingerprint'][:8]}-l2"
    assert done["alias"] == scope and done["promoted"]
    tags = tracker.client.get_model_version(done["name"], done["version"]).tags
    assert tags["teacher"] == w["uri"] and tags["target_layer"] == "2 of 2"
    assert tags["teacher_version"] == "models:/alad-ner-tiny-mpnet/1"
    assert tags["teacher_fingerprint"] == m["teacher_fingerprint"]


def test_alad_compose_writes_a_model_that_evaluate_and_predict_use(in_world, tmp_path, capsys):
    from alad.cli import main

    w = in_world
    out = tmp_path / "zs"
    uri = w["uri"]
    assert (
        main(
            [
                "compose",
                "--adapter",
                str(w["phase2"].checkpoint),
                "--teacher",
                uri,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "no phase 3" in capsys.readouterr().out
    assert main(["evaluate", str(out), "--test", w["settings"].phase3.test]) == 0
    assert "| NER F1_O |" in capsys.readouterr().out
    assert main(["predict", str(out), "the king of the city"]) == 0
    assert "king/" in capsys.readouterr().out
    missing = main(["compose", "--adapter", str(w["phase1"].checkpoint), "--out", str(out)])
    assert missing == 2 and "without a task head" in capsys.readouterr().err
