"""`alad export` (alad/export.py): the transformers classes (alad/hf.py), transformers' pipeline,
the ONNX graph and the torch-free ONNX predictor (alad/onnx_predict.py) against `alad predict`.

    PYTHONPATH=$PWD python -m pytest -q tests/test_export.py

Tiny in-test encoders (tests/conftest.py) with AlAd and random heads, saved as phase 3 saves a
model; each export is made once per module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import TINY_NER_LABELS, write_bio, write_squad
from conftest import save_tiny_model as save_tiny

from alad.aligned_model import load_model
from alad.cli import main
from alad.data.readers import read_bio, read_squad
from alad.export import export_model
from alad.hf import pipeline_word_tags
from alad.onnx_predict import OnnxFolderError, OnnxPredictor
from alad.predict import Predictor

ROOT = Path(__file__).resolve().parents[1]
LABELS = TINY_NER_LABELS
RAW = ["The King of the City, north (1990).", "queen-river 19th team", "a"]
# What alad predict takes (alad/text_predictor.py): NUL and control characters, zero-width and
# byte-order marks (no tokens: read as the unknown token), RTL, emoji, lone accents, surrogates
ODD = [
    "the\x00king \x07 of", "a \u200b city \ufeff", "\u05e9\u05dc\u05d5\u05dd the king",
    "emoji \U0001f600 river", "e\u0301 \u0301 north", "\ud800 queen \udcff", "", "  \t ",
]  # fmt: skip


@pytest.fixture(scope="module")
def folders(tiny_models, tmp_path_factory):
    """Saved models: NER and QA on the tiny BERT (token type ids) and MPNet (none)."""
    root = tmp_path_factory.mktemp("export-models")
    bert, mpnet = tiny_models
    return {
        "ner-bert": save_tiny(root, bert, "ner", 0),
        "qa-bert": save_tiny(root, bert, "qa", 1),
        "ner-mpnet": save_tiny(root, mpnet, "ner", 2),
        "qa-mpnet": save_tiny(root, mpnet, "qa", 3),
    }


@pytest.fixture(scope="module")
def exports(folders, tmp_path_factory):
    """Each saved model exported once: hf, onnx (fp32) and onnx --int8 (NER BERT only)."""
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for name, folder in folders.items():
        out[f"{name}-onnx"] = root / f"{name}-onnx"
        export_model(folder, "onnx", out[f"{name}-onnx"])
        if name.endswith("bert"):
            out[f"{name}-hf"] = root / f"{name}-hf"
            export_model(folder, "hf", out[f"{name}-hf"])
    out["ner-bert-int8"] = root / "ner-bert-int8"
    export_model(folders["ner-bert"], "onnx", out["ner-bert-int8"], int8=True)
    return out


@pytest.fixture(scope="module")
def sentences(tmp_path_factory) -> list[str]:
    """Texts of a (toy) NER test set, and raw text with punctuation and unknown words."""
    path = write_bio(tmp_path_factory.mktemp("ner-test") / "test.tsv", 10, 3)
    return [" ".join(s.words) for s in read_bio(path)][-10:] + RAW


@pytest.fixture(scope="module")
def questions(tmp_path_factory) -> list[tuple[str, str]]:
    """SQuAD-style pairs (contexts longer than one 32-token window), and edge cases."""
    path = write_squad(tmp_path_factory.mktemp("qa-test") / "test.json", 8, 4)
    pairs = [(e.question, e.context) for e in read_squad(path)]
    return pairs + [("who ?", "the king"), ("", "the king"), ("who was born ?", "  ")]


def _batch(tokenizer, texts):
    enc = tokenizer(texts, padding=True, return_tensors="pt", return_token_type_ids=False)
    return enc["input_ids"], enc["attention_mask"]


# -- transformers --------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["ner", "qa"])
def test_hf_round_trip_keeps_the_logits(task, folders, exports, sentences, tmp_path):
    from transformers import (
        AutoModelForQuestionAnswering,
        AutoModelForTokenClassification,
        AutoTokenizer,
    )

    auto = AutoModelForTokenClassification if task == "ner" else AutoModelForQuestionAnswering
    model, tokenizer, _ = load_model(folders[f"{task}-bert"])
    ids, mask = _batch(tokenizer, sentences)
    hf = auto.from_pretrained(exports[f"{task}-bert-hf"]).eval()
    hf.save_pretrained(tmp_path / "again")
    again = auto.from_pretrained(tmp_path / "again").eval()
    with torch.no_grad():
        want = model(ids, mask)
        outs = [m(input_ids=ids, attention_mask=mask) for m in (hf, again)]
    for out in outs:
        got = out.logits if task == "ner" else torch.stack([out.start_logits, out.end_logits], -1)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    config = json.loads((exports[f"{task}-bert-hf"] / "config.json").read_text())
    assert config["model_type"] == "alad" and config["encoder"]["model_type"] == "bert"
    assert config["adapter"] == {"d_compressed": 32, "d_large": 48, "window": 3, "hidden": 16}
    assert config["architectures"] == [type(hf).__name__] and config["task"] == task
    if task == "ner":
        assert config["id2label"] == {str(i): lab for i, lab in enumerate(LABELS)}
    tok = AutoTokenizer.from_pretrained(exports[f"{task}-bert-hf"])
    assert tok.model_input_names == ["input_ids", "attention_mask"]  # no token type ids
    assert tok.model_max_length == (64 if task == "ner" else 32)


def test_import_alad_registers_the_auto_classes_without_loading_torch(exports):
    code = (
        "import sys, alad\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
        "from transformers import AutoConfig, AutoModelForTokenClassification as A\n"
        f"config = AutoConfig.from_pretrained({str(exports['ner-bert-hf'])!r})\n"
        f"model = A.from_pretrained({str(exports['ner-bert-hf'])!r})\n"
        "print(type(config).__name__, type(model).__name__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["AladConfig", "AladForTokenClassification"]


def _words(tokenizer, text: str) -> list[tuple[str, tuple[int, int]]]:
    return tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)


def entity_groups(words, tags: list[str]) -> list[tuple[str, int, int]]:
    """Word tags grouped as the pipeline groups words: a B- tag or another type starts a group,
    whose name is the tag without B-/I-."""
    groups: list[list] = []
    for (_, (start, end)), tag in zip(words, tags, strict=True):
        name = tag.split("-", 1)[-1]
        if groups and not tag.startswith("B-") and groups[-1][0] == name:
            groups[-1][2] = end
        else:
            groups.append([name, start, end])
    return [tuple(g) for g in groups]


def test_the_pipeline_tags_words_as_alad_predict_does(folders, exports, sentences):
    from transformers import AutoTokenizer, pipeline

    pipe = pipeline("token-classification", model=str(exports["ner-bert-hf"]))
    tokenizer = AutoTokenizer.from_pretrained(exports["ner-bert-hf"])
    predictor = Predictor(folders["ner-bert"])
    tagged = predictor.tag(sentences)
    assert len({t for s in tagged for _, t in s}) > 2  # the check can fail: tags vary
    for text, alad in zip(sentences, tagged, strict=True):
        words = _words(tokenizer, text)
        assert [w for w, _ in words] == [w for w, _ in alad]
        tags = [t for _, t in alad]
        assert pipeline_word_tags(pipe, text) == alad, text
        groups = pipe(text, aggregation_strategy="first", ignore_labels=[])
        got = [(g["entity_group"], g["start"], g["end"]) for g in groups]
        assert got == entity_groups(words, tags), text


def test_a_model_without_alad_exports_both_ways(tiny_models, sentences, tmp_path):
    from transformers import AutoModelForTokenClassification

    folder = save_tiny(tmp_path, tiny_models[1], "ner", 6, alad=False)  # MPNet, mode compressed
    export_model(folder, "hf", tmp_path / "hf")
    export_model(folder, "onnx", tmp_path / "onnx")
    hf = AutoModelForTokenClassification.from_pretrained(tmp_path / "hf").eval()
    assert hf.adapter is None and hf.config.encoder.model_type == "mpnet"
    model, tokenizer, _ = load_model(folder)
    ids, mask = _batch(tokenizer, sentences)
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids, attention_mask=mask).logits, model(ids, mask))
    assert OnnxPredictor(tmp_path / "onnx").tag(sentences) == Predictor(folder).tag(sentences)


def test_a_low_rank_adapter_exports_both_ways(tiny_models, sentences, tmp_path):
    """adapter.rank (a factorised first layer) survives both exports with PyTorch's logits."""
    from transformers import AutoModelForTokenClassification

    folder = save_tiny(tmp_path, tiny_models[0], "ner", 7, rank=4)
    export_model(folder, "hf", tmp_path / "hf")
    export_model(folder, "onnx", tmp_path / "onnx")
    hf = AutoModelForTokenClassification.from_pretrained(tmp_path / "hf").eval()
    assert hf.adapter.rank == 4
    model, tokenizer, _ = load_model(folder)
    ids, mask = _batch(tokenizer, sentences)
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids, attention_mask=mask).logits, model(ids, mask))
    assert OnnxPredictor(tmp_path / "onnx").tag(sentences) == Predictor(folder).tag(sentences)


# -- ONNX ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ner-bert", "qa-bert", "ner-mpnet", "qa-mpnet"])
def test_the_onnx_graph_gives_pytorchs_logits(name, folders, exports, sentences):
    import onnxruntime as ort

    model, tokenizer, _ = load_model(folders[name])
    path = exports[f"{name}-onnx"] / "model.onnx"
    graph = onnx.load(str(path)).graph
    outputs = ["logits"] if name.startswith("ner") else ["start_logits", "end_logits"]
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in graph.output] == outputs
    for value in [*graph.input, *graph.output]:  # batch and sequence are dynamic
        dims = value.type.tensor_type.shape.dim
        assert [d.dim_param for d in dims[:2]] == ["batch", "sequence"], value.name
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for texts in (sentences, sentences[:1], sentences[3:5] * 3):  # three batch shapes
        ids, mask = _batch(tokenizer, texts)
        with torch.no_grad():
            want = model(ids, mask).numpy()
        got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        got = got[0] if len(got) == 1 else np.stack(got, -1)
        real = mask.bool().numpy()
        assert np.abs(got[real] - want[real]).max() <= 1e-4


def test_int8_quantizes_the_weights_and_stays_close(folders, exports, sentences):
    manifest = json.loads((exports["ner-bert-int8"] / "manifest.json").read_text())
    assert manifest["int8"] is True and manifest["max_abs_diff"]["fp32"] <= 1e-4
    ops = {n.op_type for n in onnx.load(str(exports["ner-bert-int8"] / "model.onnx")).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    assert "Conv" in ops and "ConvInteger" not in ops  # AlAd's window layer stays fp32
    tags = Predictor(folders["ner-bert"]).tag(sentences)
    int8 = OnnxPredictor(exports["ner-bert-int8"]).tag(sentences)
    same = sum(a == b for s, t in zip(tags, int8, strict=True) for a, b in zip(s, t, strict=True))
    assert same >= 0.9 * sum(len(s) for s in tags)  # a few near-ties may flip


@pytest.mark.parametrize("encoder", ["bert", "mpnet"])
def test_the_onnx_predictor_answers_as_alad_predict(
    encoder, folders, exports, sentences, questions
):
    ner, qa = folders[f"ner-{encoder}"], folders[f"qa-{encoder}"]
    texts = sentences + ODD
    assert OnnxPredictor(exports[f"ner-{encoder}-onnx"]).tag(texts) == Predictor(ner).tag(texts)
    questions = questions + [(ODD[0], ODD[1]), ("who ?", ODD[2] + " " + ODD[5])]
    answers = Predictor(qa).answer(questions)
    assert any(answers) and "" in answers  # spans and no-answers both occur
    assert OnnxPredictor(exports[f"qa-{encoder}-onnx"]).answer(questions) == answers


def test_the_onnx_predictor_imports_no_torch(folders, exports, sentences):
    code = (
        "import json, sys\n"
        "import numpy, onnxruntime, tokenizers\n"
        "before = set(sys.modules)\n"
        "from alad.onnx_predict import OnnxPredictor\n"
        "texts = json.loads(sys.argv[1])\n"
        f"tags = OnnxPredictor({str(exports['ner-bert-onnx'])!r}).tag(texts)\n"
        f"answer = OnnxPredictor({str(exports['qa-bert-onnx'])!r}).answer([(texts[0], texts[1])])\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "other = sorted(new - set(sys.stdlib_module_names) - {'alad'})\n"
        "assert not other, other  # beyond onnxruntime, tokenizers, numpy: nothing\n"
        "print(json.dumps({'tags': tags, 'answer': answer}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(sentences)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    want = Predictor(folders["ner-bert"]).tag(sentences)
    assert out["tags"] == [[list(pair) for pair in s] for s in want]
    assert out["answer"] == Predictor(folders["qa-bert"]).answer([(sentences[0], sentences[1])])


def test_the_onnx_predictor_refuses_a_damaged_export(exports, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(exports["ner-bert-onnx"], copy)
    with (copy / "model.onnx").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(OnnxFolderError, match="model.onnx does not match its checksum"):
        OnnxPredictor(copy)
    with pytest.raises(OnnxFolderError, match="not an alad ONNX export"):
        OnnxPredictor(tmp_path)


# -- the command ---------------------------------------------------------------------------


def test_export_command_and_its_refusals(tiny_models, folders, tmp_path, capsys):
    out = tmp_path / "onnx"
    assert main(["export", str(folders["ner-bert"]), "--format", "onnx", "--out", str(out)]) == 0
    assert "fp32 graph vs PyTorch: max |diff|" in capsys.readouterr().out
    assert (out / "tokenizer.json").is_file() and (out / "model.onnx").is_file()
    assert main(["export", str(folders["ner-bert"]), "--format", "onnx", "--out", str(out)]) == 0
    capsys.readouterr()  # an earlier export is replaced

    def refused(args: list[str]) -> str:
        assert main(["export", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("alad: error: ") and err.count("\n") == 1
        return err

    assert "--int8 quantizes the ONNX graph" in refused(
        [str(folders["ner-bert"]), "--format", "hf", "--int8", "--out", str(tmp_path / "x")]
    )
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert "not an alad export" in refused(
        [str(folders["ner-bert"]), "--format", "hf", "--out", str(tmp_path / "mine")]
    )
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert "not an alad model folder" in refused(
        [str(tmp_path / "mine"), "--format", "onnx", "--out", str(tmp_path / "y")]
    )


def test_a_pytorch_int8_encoder_exports_to_onnx_int8_only(tiny_models, tmp_path, capsys):
    folder = save_tiny(tmp_path, tiny_models[0], "ner", 5, spec=f"{tiny_models[0]}:int8")
    for fmt, flag in (("hf", "--format onnx --int8"), ("onnx", "add --int8")):
        assert main(["export", str(folder), "--format", fmt, "--out", str(tmp_path / fmt)]) == 2
        assert flag in capsys.readouterr().err
    out = tmp_path / "int8"
    export_model(folder, "onnx", out, int8=True)
    texts = ["the king of the city north", "a river ."]
    tags, onnx_tags = Predictor(folder).tag(texts), OnnxPredictor(out).tag(texts)
    assert [[w for w, _ in s] for s in onnx_tags] == [[w for w, _ in s] for s in tags]


def test_a_registered_version_exports(folders, tmp_path, monkeypatch):
    from alad.registry import Registry
    from alad.tracking import Tracker

    tracker = Tracker(uri=f"sqlite:///{tmp_path}/mlflow.db")
    model_dir = folders["ner-bert"]
    info = Registry(tracker).register(
        tracker.start_phase(None, "pipeline"), model_dir, "ner", "tiny:bert", {"main": 0.5}, {}
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracker.uri)
    done = export_model(f"models:/{info.name}/{info.version}", "onnx", tmp_path / "onnx")
    assert done["source"]["model"] == f"models:/{info.name}/{info.version}"
    texts = ["the king of the city north"]
    assert OnnxPredictor(tmp_path / "onnx").tag(texts) == Predictor(model_dir).tag(texts)


def _env() -> dict[str, str]:
    """This checkout's alad first on the path of a child process (not an installed copy)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}
