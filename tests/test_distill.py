"""Phase-3 distillation on tiny in-test models: `kd` trains, saves, loads and predicts; the
teacher's logits are computed once and then read from their checksummed cache (no forward pass
of the teacher on a later epoch, seed or mode); another label set is one error; a Hugging Face
teacher's labels are matched by name; QA reads the teacher on the student's windows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import finetune_settings, write_conllu, write_squad

import alad.distill as distill_mod
from alad.aligned_model import load_model
from alad.config import ConfigError, DistillConfig, load_settings
from alad.data import qa as qa_data
from alad.jobs import finetune_job
from alad.models.catalog import load_encoder
from alad.phases.finetune import finetune
from alad.predict import Predictor
from alad.runtime import Runtime
from alad.tasks import TASKS, load_splits
from alad.teacher import TeacherError

SPLITS = ("train", "dev", "test")


def _kd(tiny_settings, tmp_path, teacher, **phase3):
    distill = DistillConfig(teacher=str(teacher), temperature=2.0, alpha=0.5)
    return finetune_settings(
        tiny_settings, tmp_path, **{"mode": "kd", "distill": distill, **phase3}
    )


@pytest.fixture
def counted_teacher(monkeypatch):
    """Counts the teacher's loads and forward passes (the real teacher, a hook on its calls)."""
    counts = {"loads": 0, "forwards": 0}
    real = distill_mod.KDTeacher.load

    def load(self, device):
        counts["loads"] += 1
        model = real(self, device)
        model.register_forward_pre_hook(
            lambda *_: counts.__setitem__("forwards", counts["forwards"] + 1)
        )
        return model

    monkeypatch.setattr(distill_mod.KDTeacher, "load", load)
    return counts


def test_kd_mode_needs_a_teacher_in_one_line():
    with pytest.raises(ConfigError, match=r"phase3\.mode=kd distils.*phase3\.distill\.teacher"):
        load_settings(params=None, overrides={"phase3": {"mode": "kd"}})
    s = load_settings(params=None, overrides=["phase3.mode=kd", "phase3.distill.teacher=m"])
    assert (s.phase3.distill.temperature, s.phase3.distill.alpha) == (2.0, 0.5)
    with pytest.raises(ConfigError, match="phase3.distill.alpha"):
        load_settings(params=None, overrides=["phase3.distill.teacher=m", "phase3.distill.alpha=2"])


def test_kd_trains_saves_loads_and_predicts(tiny_settings, tmp_path, tiny_ner_teacher):
    result = finetune_job(
        _kd(tiny_settings, tmp_path, tiny_ner_teacher), out=tmp_path / "kd", progress=False
    )
    manifest = json.loads((result.model_dir / "manifest.json").read_text())
    assert manifest["mode"] == "kd" and manifest["adapter"] is None
    d = manifest["distill"]
    assert (d["teacher"], d["temperature"], d["alpha"]) == (str(tiny_ner_teacher), 2.0, 0.5)
    assert 0 <= result.test["f1_micro"] <= 1 and [h["epoch"] for h in result.history] == [1, 2]
    model, _, _ = load_model(result.model_dir)
    assert model.encoder.config.hidden_size == 32  # the compressed student, not the teacher
    tags = Predictor(result.model_dir).tag(["the king of the city north"])
    assert [w for w, _ in tags[0]] == ["the", "king", "of", "the", "city", "north"]


def test_teacher_logits_are_computed_once_and_reused(
    tiny_settings, tmp_path, tiny_ner_teacher, counted_teacher, caplog
):
    s = _kd(tiny_settings, tmp_path, tiny_ner_teacher, epochs=2)
    finetune(s, out=tmp_path / "s13", progress=False)
    # one pass over the training rows in epoch 1, none in epoch 2
    splits = load_splits(s.phase3, s.seed)
    rows = len(TASKS["ner"].encode(
        load_encoder(s.models.compressed).tokenizer, splits.train,
        TASKS["ner"].labels(splits.train_all), s.phase3, True,
    ))  # fmt: skip
    assert counted_teacher == {"loads": 1, "forwards": math.ceil(rows / 8)}  # tiny: batches of 8
    # another seed, another mode (AlAd jointly + KD) on the same rows: the cache, no teacher
    one = s.model_copy(update={"seed": 14, "phase3": s.phase3.model_copy(update={"epochs": 1})})
    finetune(one, out=tmp_path / "s14", progress=False)
    joint = one.model_copy(update={"phase3": one.phase3.model_copy(update={"mode": "alad-joint"})})
    result = finetune(joint, out=tmp_path / "joint", progress=False)
    assert counted_teacher["loads"] == 1 and counted_teacher["forwards"] == math.ceil(rows / 8)
    cached = json.loads((result.model_dir / "manifest.json").read_text())["distill"]
    assert cached["teacher_fingerprint"] and cached["alpha"] == 0.5
    # a damaged cache file fails its checksum: computed again, never trusted
    (path,) = (Path(s.cache.dir) / "teacher-logits").glob("*.safetensors")
    data = bytearray(path.read_bytes())
    data[-8:] = b"\x00\x01\x02\x03\x04\x05\x06\x07"
    path.write_bytes(bytes(data))
    finetune(one, out=tmp_path / "again", progress=False)
    assert counted_teacher["loads"] == 2 and "fails its checksum" in caplog.text


def test_a_teacher_with_another_label_set_is_refused_in_one_line(
    tiny_settings, tmp_path, tiny_ner_teacher
):
    words = ["the", "king", "of", "the", "city", "."]
    lines = [f"{w}\t{'B-PER' if w == 'king' else 'O'}" for w in words]
    (tmp_path / "few.tsv").write_text(("\n".join(lines) + "\n\n") * 20)
    s = _kd(
        tiny_settings,
        tmp_path,
        tiny_ner_teacher,
        train=str(tmp_path / "few.tsv"),
        dev=None,
        test=None,
    )
    with pytest.raises(TeacherError) as err:
        finetune(s, out=tmp_path / "few", progress=False)
    message = str(err.value)
    assert "\n" not in message and "['O', 'B-PER']" in message and "few.tsv" in message
    assert "'B-LOC', 'B-ORG'" in message and str(tiny_ner_teacher) in message
    files = {k: str(write_conllu(tmp_path / f"{k}.conllu", 12, i)) for i, k in enumerate(SPLITS)}
    pos = _kd(tiny_settings, tmp_path, tiny_ner_teacher, task="pos", **files)
    with pytest.raises(TeacherError, match="a ner model; phase 3 trains pos"):
        finetune(pos, out=tmp_path / "pos", progress=False)


def _hf_tagger(folder: Path, base: Path, labels: list[str]) -> Path:
    """A Hugging Face *ForTokenClassification folder, as the peer harness's `--save` writes."""
    from transformers import AutoTokenizer, BertForTokenClassification

    torch.manual_seed(0)
    model = BertForTokenClassification.from_pretrained(base, num_labels=len(labels))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    return folder


def test_a_hugging_face_teacher_is_matched_word_by_word_and_label_by_name(
    tiny_settings, tiny_models, tmp_path
):
    s = finetune_settings(tiny_settings, tmp_path, max_train_examples=12)
    splits, task = load_splits(s.phase3, s.seed), TASKS["ner"]
    labels = task.labels(splits.train_all)  # 'O' first
    hf_order = sorted(labels)  # the peer harness's order: 'O' last
    folder = _hf_tagger(tmp_path / "hf", tiny_models[0], hf_order)
    tok = load_encoder(s.models.compressed).tokenizer
    feats = task.encode(tok, splits.train, labels, s.phase3, True)
    args = (
        task,
        splits.train,
        feats,
        tok,
        labels,
        "train.tsv",
        tmp_path / "c",
        Runtime.from_config(s.runtime),
        32,
    )
    with pytest.raises(TeacherError, match="does not name its labels"):
        distill_mod.teacher_logits(str(folder), *args)
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = dict(enumerate(hf_order))
    config["label2id"] = {name: i for i, name in enumerate(hf_order)}
    (folder / "config.json").write_text(json.dumps(config))
    got = distill_mod.teacher_logits(str(folder), *args)
    # by hand: the teacher's logits at each word's first sub-token, columns in the task's order
    model = distill_mod.KDTeacher.load(distill_mod.resolve_teacher(str(folder)), "cpu")
    for r, sentence in enumerate(splits.train[:4]):
        enc = tok(list(sentence.words), is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            logits = model(enc["input_ids"], enc["attention_mask"])[0]
        first = [
            i for i, w in enumerate(enc.word_ids()) if w is not None and w != enc.word_ids()[i - 1]
        ]
        want = logits[first][:, [hf_order.index(label) for label in labels]]
        assert torch.allclose(got.pieces[r], want, atol=1e-5)


def test_qa_distils_from_a_teacher_with_other_special_tokens(tiny_settings, tiny_models, tmp_path):
    qa = {
        "task": "qa",
        "train": str(write_squad(tmp_path / "train.json", 16, 1)),
        "dev": str(write_squad(tmp_path / "dev.json", 6, 2)),
        "test": str(write_squad(tmp_path / "test.json", 6, 3)),
        "max_length": 64,
        "stride": 16,
        "epochs": 1,
    }
    teacher = finetune(
        finetune_settings(tiny_settings, tmp_path, mode="large", **qa),
        out=tmp_path / "t",
        progress=False,
    ).model_dir
    s = finetune_settings(
        tiny_settings, tmp_path, mode="kd", distill=DistillConfig(teacher=str(teacher)), **qa
    )
    result = finetune_job(s, out=tmp_path / "kd", progress=False)
    assert "f1" in result.test
    # the targets: the MPNet teacher's own logits at [CLS] and the context tokens, -inf elsewhere
    splits = load_splits(s.phase3, s.seed)
    student = load_encoder(s.models.compressed).tokenizer
    feats = TASKS["qa"].encode(student, splits.train, [], s.phase3, True)
    got = distill_mod.teacher_logits(
        str(teacher), TASKS["qa"], splits.train, feats, student, [], "train.json",
        Path(s.cache.dir), Runtime.from_config(s.runtime), 64,
    )  # fmt: skip
    model, ttok, _ = load_model(teacher)
    own = qa_data.prepare_qa_features(ttok, splits.train, max_length=64, stride=16)
    assert len(own) == len(feats)  # one window per example: the same windows
    for w in range(3):
        ids = torch.tensor([own.input_ids[w]])
        with torch.no_grad():
            logits = model(ids, torch.ones_like(ids))[0]
        context = [i for i, o in enumerate(own.offset_mapping[w]) if o is not None]
        target = got.pieces[w]
        finite = torch.isfinite(target[:, 0]).nonzero().flatten().tolist()
        assert finite == [0] + [i for i, o in enumerate(feats.offset_mapping[w]) if o is not None]
        assert torch.allclose(target[finite], logits[[0, *context]], atol=1e-5)
