"""The registered pyfunc round trip: a real saved model -> registry -> @champion -> predictions."""

from __future__ import annotations

import sys

import pandas as pd
import pytest
from conftest import train_tiny_model

from alad.pyfunc import as_frame, predict_frame


@pytest.fixture
def tracker(tmp_path):
    from alad.tracking import Tracker

    return Tracker(uri=f"sqlite:///{tmp_path}/mlflow.db")


def test_registered_champion_tags_raw_sentences(tracker, tiny_models, tmp_path, monkeypatch):
    import mlflow.pyfunc

    from alad.aligned_model import read_manifest

    model_dir = train_tiny_model(tmp_path, tiny_models)
    parent = tracker.start_phase(None, "pipeline")
    from alad.registry import Registry

    registry = Registry(tracker)
    info = registry.register(
        parent, model_dir, "ner", "tiny:bert", {"main": 0.5}, {"git_commit": "abc"}
    )
    assert registry.promote(info.name, info.version, "main", 0.0).promoted
    # models:/ URIs resolve through the global tracking URI; restore sys.path afterwards, as
    # loading prepends the model's code/ folder to it.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracker.uri)
    monkeypatch.setattr(sys, "path", list(sys.path))
    model = mlflow.pyfunc.load_model(f"models:/{info.name}@champion")

    sentences = ["the king of the city north", "a river ."]
    out = model.predict(pd.DataFrame({"text": sentences}))
    labels = set(read_manifest(model_dir)["labels"])
    assert len(out) == len(sentences)
    for sentence, tags in zip(sentences, out, strict=True):
        assert [t["word"] for t in tags] == sentence.split()
        assert {t["tag"] for t in tags} <= labels


class _FakePredictor:
    """Just enough of alad.predict.Predictor to check the input handling."""

    def __init__(self, kind: str):
        self.task = type("T", (), {"head_kind": kind})()
        self.manifest = {"task": "ner" if kind == "token" else "qa"}

    def tag(self, texts):
        return [[(w, "O") for w in t.split()] for t in texts]

    def answer(self, pairs):
        return [c.split()[0] if q.endswith("?") else "" for q, c in pairs]


@pytest.mark.parametrize(
    "model_input",
    [
        pd.DataFrame({"text": ["a b", "c"]}),
        {"text": ["a b", "c"]},
        [{"text": "a b"}, {"text": "c"}],
        ["a b", "c"],
    ],
)
def test_tagging_input_forms(model_input):
    out = predict_frame(_FakePredictor("token"), as_frame(model_input))
    a, b, c = ({"word": w, "tag": "O"} for w in "abc")
    assert out == [[a, b], [c]]


def test_qa_answers_and_empty_for_no_answer():
    frame = as_frame({"question": ["Who?", "no"], "context": ["Ann ran", "Bob"]})
    assert predict_frame(_FakePredictor("span"), frame) == ["Ann", ""]


@pytest.mark.parametrize(
    ("kind", "frame", "missing"),
    [
        ("token", pd.DataFrame({"sentence": ["a"]}), "'text'"),
        ("span", pd.DataFrame({"question": ["q"]}), "'context'"),
    ],
)
def test_missing_column_names_it_and_the_expected_ones(kind, frame, missing):
    with pytest.raises(ValueError, match=rf"no column {missing}.*expects columns"):
        predict_frame(_FakePredictor(kind), frame)
