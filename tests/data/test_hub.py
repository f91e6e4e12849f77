"""`hub:` task data through `datasets` (alad.data.readers.load_hub / read_hub_tagged).

A hub id needs internet, so these read the same code path from local `datasets` datasets: a
`save_to_disk` folder, a folder of parquet files and a single parquet file (all through
`load_from_disk` / `load_dataset`, no mock), with ClassLabel tag columns as on the hub.
"""

from __future__ import annotations

import re
from pathlib import Path

import datasets
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value

from alad.config import ConfigError, load_settings
from alad.data.corpus import load_corpus
from alad.data.readers import DataFormatError, TaggedSentence, read_hub_tagged
from alad.tasks import TASKS, load_splits

NER = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
UPOS = ["NOUN", "VERB", "_", "PROPN"]
ROWS = {
    "id": ["0", "1", "2"],
    "tokens": [["John", "Smith", "lives"], ["in", "New", "York"], []],
    "ner_tags": [[1, 2, 0], [0, 3, 4], []],
    "upos": [[3, 3, 1], [1, 3, 3], []],  # ClassLabel ids into UPOS
}
SENTENCES = [
    TaggedSentence(("John", "Smith", "lives"), ("B-PER", "I-PER", "O")),
    TaggedSentence(("in", "New", "York"), ("O", "B-LOC", "I-LOC")),
]


def _features(**columns) -> Features:
    base = {
        "id": Value("string"),
        "tokens": List(Value("string")),
        "ner_tags": List(ClassLabel(names=NER)),
        "upos": List(ClassLabel(names=UPOS)),
    }
    return Features({**base, **columns})


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """`load_dataset` writes its Arrow cache here, not into the user's ~/.cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets-cache")


@pytest.fixture
def saved(tmp_path) -> Path:
    ds = Dataset.from_dict(ROWS, features=_features())
    folder = tmp_path / "saved"
    DatasetDict(train=ds, validation=ds.select([1])).save_to_disk(str(folder))
    return folder


def test_ner_from_a_saved_dataset_dict_with_classlabel_names(saved, caplog):
    assert TASKS["ner"].read(f"hub:{saved}") == SENTENCES  # default split train, ner_tags
    assert "skipped 1 rows without tokens" in caplog.text
    assert TASKS["ner"].read(f"hub:{saved}:validation") == SENTENCES[1:]


def test_pos_picks_upos_and_a_named_column_wins(saved):
    pos = TASKS["pos"].read(f"hub:{saved}")
    assert [s.tags for s in pos] == [("PROPN", "PROPN", "VERB"), ("VERB", "PROPN", "PROPN")]
    assert TASKS["pos"].read(f"hub:{saved}:train:ner_tags")[0].tags == ("B-PER", "I-PER", "O")


def test_parquet_folder_and_single_file_through_load_dataset(tmp_path):
    ds = Dataset.from_dict(ROWS, features=_features())
    (tmp_path / "pq").mkdir()
    ds.to_parquet(str(tmp_path / "pq" / "train.parquet"))
    ds.select([1]).to_parquet(str(tmp_path / "pq" / "validation.parquet"))
    assert TASKS["ner"].read(f"hub:{tmp_path / 'pq'}") == SENTENCES
    assert TASKS["ner"].read(f"hub:{tmp_path / 'pq'}:validation") == SENTENCES[1:]
    assert TASKS["ner"].read(f"hub:{tmp_path / 'pq' / 'train.parquet'}") == SENTENCES


def test_string_tags_are_read_as_they_are(tmp_path):
    rows = {"tokens": [["Paris", "is"]], "tags": [["PROPN", "AUX"]]}
    Dataset.from_dict(rows).save_to_disk(str(tmp_path / "s"))
    assert TASKS["pos"].read(f"hub:{tmp_path / 's'}") == [
        TaggedSentence(("Paris", "is"), ("PROPN", "AUX"))
    ]


def test_load_splits_from_hub_specs(saved):
    cfg = load_settings(
        overrides=[
            "phase3.task=ner",
            f"phase3.train=hub:{saved}",
            f"phase3.dev=hub:{saved}:validation",
            f"phase3.test=hub:{saved}:validation",
        ]
    ).phase3
    splits = load_splits(cfg, seed=0)
    assert splits.train_all == SENTENCES and splits.dev == splits.test == SENTENCES[1:]
    assert splits.sources["dev"] == f"hub:{saved}:validation"
    assert TASKS["ner"].labels(splits.train_all) == ["O", "B-LOC", "B-PER", "I-LOC", "I-PER"]


def test_phase2_text_of_a_token_dataset_is_its_tokens(saved):
    assert load_corpus(f"hub:{saved}") == ["John Smith lives", "in New York"]


def _save(tmp_path: Path, rows: dict, features: Features | None = None) -> str:
    folder = tmp_path / "bad"
    Dataset.from_dict(rows, features=features).save_to_disk(str(folder))
    return str(folder)


@pytest.mark.parametrize(
    ("rows", "features", "suffix", "scheme", "needle"),
    [
        (
            {"tokens": [["a", "b"]], "ner_tags": [["O", "I-PER"]]},
            None,
            "",
            "bio",
            "row 0, token 1 ('b'): I-PER follows O",
        ),
        (
            {"tokens": [["a"]], "ner_tags": [["PER"]]},
            None,
            "",
            "bio",
            "row 0, token 0 ('a'): tag 'PER' is not O, B-x or I-x",
        ),
        (
            {"tokens": [["x", "zum"]], "upos": [[0, 2]]},
            "upos",
            "",
            "upos",
            "row 0, token 1 ('zum'): no UPOS tag ('_')",
        ),
        (
            {"tokens": [["a", "b"]], "ner_tags": [["O"]]},
            None,
            "",
            "bio",
            "row 0 has 2 tokens and 1 ner_tags",
        ),
        (
            {"tokens": [["a"]], "ner_tags": [[-1]]},
            "classlabel",
            "",
            "bio",
            "ner_tags is -1, not one of its 5 labels",
        ),
        (
            {"tokens": [["a"]], "ner_tags": [[0]]},
            "ints",
            "",
            "bio",
            "expected a list of class labels",
        ),
        ({"words": [["a"]], "ner_tags": [["O"]]}, None, "", "bio", "no column 'tokens'"),
        (
            {"tokens": ["a b"], "ner_tags": [["O"]]},
            None,
            "",
            "bio",
            "column 'tokens' is Value('string')",
        ),
        (
            {"tokens": [["a"]], "labels": [["O"]]},
            None,
            "",
            "bio",
            "no tag column 'ner_tags' or 'tags'",
        ),
        (
            {"tokens": [["a"]], "ner_tags": [["O"]]},
            None,
            ":train:nope",
            "bio",
            "no tag column nope",
        ),
        (
            {"tokens": [["a"]], "ner_tags": [["O"]]},
            None,
            ":validation",
            "bio",
            "holds one dataset (split 'train'), not 'validation'",
        ),
        ({"tokens": [[]], "ner_tags": [[]]}, "classlabel", "", "bio", "no sentences found"),
    ],
)
def test_bad_datasets_are_one_error_naming_row_and_token(
    tmp_path, rows, features, suffix, scheme, needle
):
    if features == "classlabel":
        features = Features(
            {"tokens": List(Value("string")), "ner_tags": List(ClassLabel(names=NER))}
        )
    elif features == "upos":
        features = Features({"tokens": List(Value("string")), "upos": List(ClassLabel(names=UPOS))})
    elif features == "ints":
        features = Features({"tokens": List(Value("string")), "ner_tags": List(Value("int64"))})
    spec = f"hub:{_save(tmp_path, rows, features)}{suffix}"
    with pytest.raises(DataFormatError, match=re.escape(needle)) as info:
        read_hub_tagged(spec, ("ner_tags", "tags") if scheme == "bio" else ("upos",), scheme)
    assert str(info.value).startswith(f"{spec}: ") and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("hub:{saved}:test", "no split 'test'; splits are ['train', 'validation']"),
        ("hub:{tmp}/missing-folder", "datasets cannot load"),
        ("hub:no-such-org/no-such-dataset", "datasets cannot load"),  # offline in the tests
        ("hub:{tmp}/x.conllu", "not .conllu"),
        ("hub:", "expected hub:<dataset id or path>"),
        ("hub:a:b:c:d", "expected hub:<dataset id or path>"),
    ],
)
def test_unloadable_specs_are_one_error(tmp_path, saved, spec, needle):
    (tmp_path / "x.conllu").write_text("1\tx\n")
    spec = spec.format(saved=saved, tmp=tmp_path)
    with pytest.raises(DataFormatError, match=re.escape(needle)) as info:
        TASKS["ner"].read(spec)
    assert str(info.value).startswith(f"{spec}: ") and "\n" not in str(info.value)


@pytest.mark.parametrize("key", ["train", "dev", "test"])
def test_hub_data_is_for_token_tasks_only(key):
    with pytest.raises(ConfigError, match=f"phase3.{key}='hub:squad_v2'.*token tasks"):
        load_settings(overrides=["phase3.task=qa", f"phase3.{key}=hub:squad_v2"])
