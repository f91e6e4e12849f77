"""SLAD (mode `slad`) and the probed teacher (mode `probe`) on tiny in-test models: the layer map;
the tie (the student's LoRA factors are slices of its mapped teacher layers', so both losses'
gradients land in the shared tensors, and the saved student is the teacher's slices merged);
the student alone is saved, loads and predicts; the resume state holds the teacher; a probe
trains its head on the frozen M_L's cached outputs and leaves the encoder as it was.

    PYTHONPATH=$PWD python -m pytest -q tests/test_slad.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import finetune_settings, make_tiny_mpnet

from alad.aligned_model import load_model
from alad.cache import feature_root
from alad.config import ConfigError, DistillConfig, load_settings
from alad.models.catalog import load_encoder
from alad.phases.finetune import FinetuneRecipe, finetune
from alad.phases.recipe import resume_state
from alad.phases.slad import TiedSlice, even_layer_map, lora_layers
from alad.predict import Predictor

D_C = 32  # the tiny BERT student's width; the tiny MPNet teacher's is 48


@pytest.fixture(scope="module")
def deep_teacher(tmp_path_factory):
    """A tiny MPNet (48-d) with 4 layers: a 2-layer student maps to its layers 2 and 4."""
    return make_tiny_mpnet(tmp_path_factory.mktemp("mpnet4") / "mpnet4", layers=4)


def _slad(tiny_settings, tmp_path, deep_teacher, **phase3):
    s = finetune_settings(tiny_settings, tmp_path, mode="slad", epochs=1, **phase3)
    return s.model_copy(update={"models": s.models.model_copy(update={"large": str(deep_teacher)})})


def _setup(settings, out) -> FinetuneRecipe:
    r = FinetuneRecipe(settings, out, False, None)
    r.setup()
    r.history = []
    return r


def _teacher_lora(r: FinetuneRecipe) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]:
    """(layer, q|v) -> the teacher's (A, B) weight Parameters."""
    return {
        k: (layer.lora_A["default"].weight, layer.lora_B["default"].weight)
        for k, layer in lora_layers(r.model.teacher.encoder).items()
    }


def test_the_even_layer_map_counts_from_one():
    assert even_layer_map(2, 4) == {0: 1, 1: 3}  # layers 1, 2 -> 2, 4
    assert even_layer_map(6, 12) == {i - 1: 2 * i - 1 for i in range(1, 7)}  # minilm-l6: 2i
    assert even_layer_map(3, 12) == {0: 3, 1: 7, 2: 11}  # minilm-l3: 4i
    assert even_layer_map(2, 2) == {0: 0, 1: 1}
    assert even_layer_map(2, 5) == {0: 2, 1: 4}  # 2.5 -> 3 (half up), 5
    with pytest.raises(ConfigError, match="student has 4 layers, the teacher 2"):
        even_layer_map(4, 2)
    with pytest.raises(ConfigError, match=r"\(8, 64\) does not fit in \(8, 48\)"):
        TiedSlice(torch.nn.Linear(48, 8, bias=False), (8, 64))


def test_the_tie_shares_the_teachers_tensors_and_both_losses_reach_them(
    tiny_settings, tmp_path, deep_teacher
):
    r = _setup(_slad(tiny_settings, tmp_path, deep_teacher), tmp_path / "slad")
    assert r.model.layer_map == {0: 1, 1: 3}
    teacher = _teacher_lora(r)
    assert sorted(teacher) == [(i, k) for i in range(4) for k in "qv"]
    student = lora_layers(r.model.encoder)
    for (i, kind), layer in student.items():
        a, b = teacher[(r.model.layer_map[i], kind)]
        assert layer.lora_A["default"].source.weight is a  # the teacher's Parameter itself
        assert layer.lora_B["default"].source.weight is b
        assert layer.lora_A["default"].weight.shape == (8, D_C)
    # the student owns no LoRA tensors: every trainable one of its encoder is the teacher's
    shared = {id(p) for ab in teacher.values() for p in ab}
    assert {id(p) for p in r.model.encoder.parameters() if p.requires_grad} <= shared
    with torch.no_grad():  # B starts at 0 (no gradient into A): give every factor a value
        for a, b in teacher.values():
            a.normal_(std=0.2)
            b.normal_(std=0.2)
    rows = [0, 1, 2, 3]
    batch = r.runtime.move(next(r.task.batches(r.train_feats, 4, r.pad_id, rows)))
    # the student's task loss alone: into the mapped layers' first D_C rows/columns only
    r.model.zero_grad()
    r.task.loss(r.model(batch["input_ids"], batch["attention_mask"]), batch).backward()
    for (layer, _), (a, b) in teacher.items():
        if layer in (1, 3):
            assert a.grad[:, :D_C].abs().sum() > 0 and b.grad[:D_C].abs().sum() > 0
            assert not a.grad[:, D_C:].any() and not b.grad[D_C:].any()
        else:  # teacher layers 1 and 3 (from 1): no student layer reads them
            assert a.grad is None and b.grad is None
    # the teacher's task loss alone (SLAD's loss with the student's terms weighted 0)
    r.model.zero_grad()
    logits = r.model(batch["input_ids"], batch["attention_mask"]).float()
    zero = logits.sum() * 0.0
    r.slad.alpha = 0.0
    r.slad(r.model, r.task, logits.detach(), zero, batch, rows, 100, r.runtime).backward()
    for a, b in teacher.values():
        assert a.grad[:, D_C:].abs().sum() > 0 and b.grad[D_C:].abs().sum() > 0
    # one optimizer step on SLAD's loss moves the student exactly as the teacher's slices
    r.slad.alpha = 0.5
    before = {k: (a.detach().clone(), b.detach().clone()) for k, (a, b) in teacher.items()}
    r.optimizer.zero_grad()
    logits = r.model(batch["input_ids"], batch["attention_mask"]).float()
    loss = r.slad(r.model, r.task, logits, r.task.loss(logits, batch), batch, rows, 20, r.runtime)
    loss.backward()
    r.optimizer.step()
    for (i, kind), layer in student.items():
        a, b = teacher[(r.model.layer_map[i], kind)]
        assert not torch.equal(a, before[(r.model.layer_map[i], kind)][0])
        assert torch.equal(layer.lora_A["default"].weight, a[:, :D_C])
        assert torch.equal(layer.lora_B["default"].weight, b[:D_C])


def test_slad_trains_and_saves_the_student_only_its_lora_the_teachers_slices(
    tiny_settings, tmp_path, deep_teacher
):
    distill = DistillConfig(temperature=4.0, alpha=0.9)  # slad's T and alpha, no teacher
    s = _slad(tiny_settings, tmp_path, deep_teacher, distill=distill)
    r = _setup(s, tmp_path / "slad")
    r.history.append({"epoch": 1, **r.train_epoch(0), **r.validate(0)})
    r.save(resume_state(r, 1), True)
    model_dir = tmp_path / "slad" / "model"
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["mode"] == "slad" and manifest["distill"] is None
    slad = manifest["slad"]
    assert (slad["teacher"], slad["temperature"], slad["alpha"]) == (str(deep_teacher), 4.0, 0.9)
    assert slad["layer_map"] == {"1": 2, "2": 4}
    assert sorted(p.name for p in model_dir.iterdir()) == ["encoder", "head.safetensors",
                                                           "manifest.json"]  # fmt: skip
    saved, _, _ = load_model(model_dir)
    assert saved.encoder.config.hidden_size == D_C and saved.adapter is None
    assert not any("lora_" in n for n, _ in saved.named_parameters())
    # the saved weights: the pre-trained student's + its LoRA, i.e. the teacher's slices, merged
    base = load_encoder(s.models.compressed).model.state_dict()
    merged = saved.encoder.state_dict()
    teacher, scaling = _teacher_lora(r), s.phase3.lora_alpha / s.phase3.lora_r
    for (i, kind), (a, b) in teacher.items():
        if i not in (1, 3):
            continue
        name = f"encoder.layer.{(i - 1) // 2}.attention.self.{'query' if kind == 'q' else 'value'}"
        assert b[:D_C].abs().sum() > 0  # trained: B left its zero start
        expected = base[f"{name}.weight"] + (b[:D_C] @ a[:, :D_C]).detach() * scaling
        torch.testing.assert_close(merged[f"{name}.weight"], expected, rtol=0, atol=1e-6)
    tags = Predictor(model_dir).tag(["the king of the city north"])
    assert [w for w, _ in tags[0]] == ["the", "king", "of", "the", "city", "north"]
    # the resume state: the teacher's LoRA and head and their optimizer moments
    state = r.saved_state()
    heads = {"teacher.head.classifier.weight", "teacher.head.classifier.bias"}
    assert heads <= set(state["weights"])
    assert any(k.startswith("teacher.encoder.") and "lora_A" in k for k in state["weights"])
    trainable = [p for p in r.model.parameters() if p.requires_grad]
    assert len(state["optimizer"]["state"]) == len(trainable)
    again = _setup(s, tmp_path / "again")
    again.load_state_extra(state)
    for x, y in zip(again.model.teacher.parameters(), r.model.teacher.parameters(), strict=True):
        assert torch.equal(x, y)
    for k, (a, b) in _teacher_lora(again).items():  # the student reads the restored tensors
        assert torch.equal(a, teacher[k][0]) and torch.equal(b, teacher[k][1])


def test_slads_config_rules_are_one_line_each():
    with pytest.raises(ConfigError, match="phase3.mode=slad trains token tasks only.*not qa"):
        load_settings(params=None, overrides=["phase3.mode=slad", "phase3.task=qa"])
    with pytest.raises(ConfigError, match="phase3.distill.teacher='m' with phase3.mode=slad"):
        load_settings(params=None, overrides=["phase3.mode=slad", "phase3.distill.teacher=m"])
    with pytest.raises(ConfigError, match="phase3.distill.teacher is not set"):
        load_settings(params=None, overrides=["phase3.mode=kd", "phase3.distill.temperature=4"])
    s = load_settings(params=None, overrides=["phase3.mode=slad", "phase3.distill.alpha=0.9"])
    assert s.phase3.distill.teacher is None and s.phase3.distill.alpha == 0.9


def test_probe_trains_a_head_on_the_frozen_large_models_cached_outputs(tiny_settings, tmp_path):
    s = finetune_settings(tiny_settings, tmp_path, mode="probe", epochs=1)
    large = load_encoder(s.models.large)
    before = {k: v.clone() for k, v in large.model.state_dict().items()}
    result = finetune(s, out=tmp_path / "probe", progress=False)
    saved, _, manifest = load_model(result.model_dir)
    assert manifest["encoder_name"] == s.models.large and saved.adapter is None
    for k, v in saved.encoder.state_dict().items():
        assert torch.equal(before[k], v), k
    assert saved.head.classifier.weight.shape[1] == large.dim
    # its frozen outputs are cached under M_L's fingerprint (not M_C's: another encoder)
    cached = [p.name for p in (feature_root(s.cache.dir) / "phase3").glob("*.safetensors")]
    assert cached and all(n.startswith(large.fingerprint) for n in cached)
    assert result.history[0]["train_loss"] > 0


def test_a_probes_head_starts_from_the_converged_linear_probe(tiny_settings, tmp_path, monkeypatch):
    """The probed teacher is a linear probe (alad.probe.fit_softmax, L-BFGS), not a head that a
    few epochs at the frozen rate leave half-trained: fitted on the frozen outputs of every
    training word (each word's first sub-token, labels as the task's), then trained as any head
    (here at a negligible rate, so the saved head is the fit)."""
    import alad.phases.finetune as ft

    fits, real = [], ft.fit_softmax

    def spy(x, y, classes, *args):  # the real fit, its inputs and output kept
        fits.append((x, y, real(x, y, classes, *args)))
        return fits[-1][2]

    monkeypatch.setattr(ft, "fit_softmax", spy)
    s = finetune_settings(tiny_settings, tmp_path, mode="probe", epochs=1, lr=1e-12)
    result = finetune(s, out=tmp_path / "probe", progress=False)
    ((x, y, fit),) = fits
    words = [ln for ln in Path(s.phase3.train).read_text().splitlines() if ln.strip()]
    assert len(y) == len(words) and x.shape == (len(words), load_encoder(s.models.large).dim)
    saved = load_model(result.model_dir)[0].head.classifier
    assert torch.allclose(saved.weight, fit.weight, atol=1e-6)
    assert torch.allclose(saved.bias, fit.bias, atol=1e-6)
    # a convex fit to convergence: the training words are read better than by a fresh head
    fresh = torch.nn.functional.cross_entropy(torch.zeros(len(y), fit.out_features), y)
    assert torch.nn.functional.cross_entropy(fit(x), y) < 0.5 * fresh
