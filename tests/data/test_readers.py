"""Task-file readers: CoNLL-U (POS), token<TAB>tag BIO (NER), SQuAD 2.0 JSON (QA)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from alad.data.readers import (
    DataFormatError,
    QAExample,
    TaggedSentence,
    read_bio,
    read_conllu,
    read_squad,
    sniff_format,
    task_texts,
)

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _conllu_line(idx: str, form: str, upos: str) -> str:
    return "\t".join([idx, form, form.lower(), upos, "_", "_", "0", "dep", "_", "_"])


CONLLU = "\n".join(
    [
        "# sent_id = s1",
        "# text = Ich gehe zum Haus.",
        _conllu_line("1", "Ich", "PRON"),
        _conllu_line("2", "gehe", "VERB"),
        _conllu_line("3-4", "zum", "_"),
        _conllu_line("3", "zu", "ADP"),
        _conllu_line("4", "dem", "DET"),
        _conllu_line("5", "Haus", "NOUN"),
        _conllu_line("5.1", "ist", "AUX"),
        _conllu_line("6", ".", "PUNCT"),
        "",
        "",
        "# sent_id = s2",
        _conllu_line("1", "Ja", "INTJ"),
        "",
    ]
)

BIO = "\n".join(
    [
        "-DOCSTART-\tO",
        "",
        "John\tB-PER",
        "Smith\tI-PER",
        "lives\tO",
        "in\tO",
        "New\tB-LOC",
        "York\tI-LOC",
        "",
        "",
        "EU NNP B-NP B-ORG",  # CoNLL-2003 style: whitespace columns, tag last
        "rejects VBZ B-VP O",
        "",
        "-DOCSTART- -X- -X- O",
        "Hi\tO",
    ]
)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _squad(qas_by_context: dict[str, list[dict]]) -> dict:
    paragraphs = [{"context": c, "qas": qas} for c, qas in qas_by_context.items()]
    return {"version": "v2.0", "data": [{"title": "T", "paragraphs": paragraphs}]}


CONTEXT = "Paris is the capital of France. It lies on the Seine."
SQUAD = _squad(
    {
        CONTEXT: [
            {
                "id": "q1",
                "question": "What is the capital of France?",
                "answers": [{"text": "Paris", "answer_start": 0}],
                "is_impossible": False,
            },
            {
                "id": "q2",
                "question": "What river crosses Berlin?",
                "answers": [],
                "plausible_answers": [{"text": "the Seine", "answer_start": 43}],
                "is_impossible": True,
            },
            {
                "id": "q3",
                "question": "Which river?",
                "answers": [
                    {"text": "Seine", "answer_start": 47},
                    {"text": "the Seine", "answer_start": 43},
                ],
            },
        ],
        "Second context.": [{"id": "q4", "question": "Anything?", "answers": []}],
    }
)


# --- CoNLL-U -------------------------------------------------------------------------------


def test_conllu_reads_upos_and_skips_ranges_empty_nodes_comments(tmp_path):
    sents = read_conllu(_write(tmp_path, "a.conllu", CONLLU))
    assert sents == [
        TaggedSentence(
            ("Ich", "gehe", "zu", "dem", "Haus", "."),
            ("PRON", "VERB", "ADP", "DET", "NOUN", "PUNCT"),
        ),
        TaggedSentence(("Ja",), ("INTJ",)),
    ]
    assert sents[0].text == "Ich gehe zu dem Haus ."


def test_conllu_without_trailing_blank_line(tmp_path):
    text = _conllu_line("1", "Hallo", "INTJ") + "\n" + _conllu_line("2", "Welt", "NOUN")
    assert read_conllu(_write(tmp_path, "a.conllu", text)) == [
        TaggedSentence(("Hallo", "Welt"), ("INTJ", "NOUN"))
    ]


@pytest.mark.parametrize(
    ("bad_line", "needle"),
    [
        ("1\tHallo\thallo\tINTJ", "10 tab-separated columns, found 4"),
        ("1 Hallo hallo INTJ _ _ 0 dep _ _", "found 1"),
        ("\t".join(["x", "Hallo", "h", "INTJ", "_", "_", "0", "dep", "_", "_"]), "'x'"),
    ],
)
def test_conllu_bad_line_names_file_and_line(tmp_path, bad_line, needle):
    text = "\n".join(["# c", _conllu_line("1", "Ja", "INTJ"), "", "# c2", bad_line, ""])
    path = _write(tmp_path, "bad.conllu", text)
    with pytest.raises(DataFormatError, match=needle) as info:
        read_conllu(path)
    assert f"{path}:5:" in str(info.value)


@pytest.mark.parametrize(
    ("bad_line", "needle"),
    [
        # what the conllu package is lenient about: two spaces split columns there, a bad ID
        # range raises its own ParseException; here each is one DataFormatError with the line
        (_conllu_line("1", "Hallo  Welt", "INTJ"), "two spaces in a row"),
        (_conllu_line("1", "Hallo", "IN  TJ"), "two spaces in a row"),
        (_conllu_line("3-x", "zum", "_"), "'3-x'"),
        (_conllu_line("4-3", "zum", "_"), "'4-3'"),
        (_conllu_line("01", "Hallo", "INTJ"), "'01'"),
        (_conllu_line("_", "Hallo", "INTJ"), "'_'"),
        (" " + _conllu_line("1", "Hallo", "INTJ"), "' 1'"),
        (" #" + _conllu_line("1", "Hallo", "INTJ"), "' #1'"),
        (_conllu_line("1", "Hallo", "_"), "no UPOS tag"),
        (_conllu_line("1", "Hallo", " "), "no UPOS tag"),
        ("\t".join(["1", "Hallo", "h", " ", "", "", "", "", "", " "]), "no UPOS tag"),
    ],
)
def test_conllu_what_the_parser_would_accept_or_raise_is_one_error_with_the_line(
    tmp_path, bad_line, needle
):
    text = "\n".join(["# c", _conllu_line("1", "Ja", "INTJ"), "", "# c2", bad_line, ""])
    path = _write(tmp_path, "bad.conllu", text)
    with pytest.raises(DataFormatError, match=needle) as info:
        read_conllu(path)
    assert f"{path}:5:" in str(info.value) and "\n" not in str(info.value)


def test_conllu_first_problem_wins_within_a_sentence(tmp_path):
    lines = [_conllu_line("1", "Ja", "_"), "1\tzu\twenige\tSpalten"]
    path = _write(tmp_path, "bad.conllu", "\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match="no UPOS tag") as info:
        read_conllu(path)
    assert f"{path}:1:" in str(info.value)


def test_conllu_reads_only_id_form_upos(tmp_path):
    """HEAD, FEATS, DEPS or MISC values conllu's own parsers reject, spaces inside a FORM (UD v2)
    and a trailing empty MISC do not stop a POS file: those columns are not read."""
    odd = "\t".join(["1", "New York", "x", "PROPN", "_", "a=b=c|=", "dep", "dep", "1:", ""])
    empty_node = "\t".join(["1.1", "x", "x", "_", "_", "_", "_", "_", "_", "_"])
    path = _write(tmp_path, "a.conllu", "\n".join([odd, empty_node, _conllu_line("2", "0", "NUM")]))
    assert read_conllu(path) == [TaggedSentence(("New York", "0"), ("PROPN", "NUM"))]


def test_conllu_utf8_bom_and_crlf(tmp_path):
    path = tmp_path / "bom.conllu"
    text = "# sent_id = 1\r\n" + _conllu_line("1", "Grüße", "NOUN") + "\r\n\r\n"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert read_conllu(path) == [TaggedSentence(("Grüße",), ("NOUN",))]
    path.write_bytes(_conllu_line("1", "Gr\xfc\xdfe", "NOUN").encode("latin-1"))
    with pytest.raises(DataFormatError, match="not UTF-8") as info:
        read_conllu(path)
    assert f"{path}:1:" in str(info.value)


# --- BIO -----------------------------------------------------------------------------------


def test_bio_sentences_docstart_and_whitespace_columns(tmp_path):
    sents = read_bio(_write(tmp_path, "a.tsv", BIO))
    assert sents == [
        TaggedSentence(
            ("John", "Smith", "lives", "in", "New", "York"),
            ("B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC"),
        ),
        TaggedSentence(("EU", "rejects"), ("B-ORG", "O")),
        TaggedSentence(("Hi",), ("O",)),
    ]


@pytest.mark.parametrize(
    ("lines", "bad_line", "needle"),
    [
        (["a\tO", "b\tI-PER"], 2, "I-PER follows O"),
        (["a\tI-PER"], 1, "I-PER follows sentence start"),
        (["a\tB-PER", "", "b\tI-PER"], 3, "I-PER follows sentence start"),
        (["a\tB-LOC", "b\tI-PER"], 2, "I-PER follows B-LOC"),
        (["a\tB-PER", "b\tI-PER", "c\tI-LOC"], 3, "I-LOC follows I-PER"),
        (["a\tB-PER", "b\tPER"], 2, "tag 'PER' is not O, B-x or I-x"),
        (["a\tO", "b\tE-PER"], 2, "tag 'E-PER'"),
        (["a\tO", "lonely"], 2, "expected 'token<TAB>tag'"),
        (["a\tO", "b\t"], 2, "expected 'token<TAB>tag'"),
    ],
)
def test_bio_errors_name_the_line(tmp_path, lines, bad_line, needle):
    path = _write(tmp_path, "bad.tsv", "\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=needle) as info:
        read_bio(path)
    assert f"{path}:{bad_line}:" in str(info.value)


@pytest.mark.parametrize(
    "lines",
    [["a\tB-PER", "b\tI-PER", "c\tI-PER"], ["a\tB-PER", "b\tB-PER"], ["a\tO", "b\tB-MISC"]],
)
def test_bio_valid_sequences(tmp_path, lines):
    sents = read_bio(_write(tmp_path, "ok.tsv", "\n".join(lines)))
    assert [list(s.tags) for s in sents] == [[line.split("\t")[1] for line in lines]]


# --- SQuAD ---------------------------------------------------------------------------------


def test_squad_answerable_and_unanswerable(tmp_path):
    examples = read_squad(_write(tmp_path, "s.json", json.dumps(SQUAD)))
    by_id = {e.id: e for e in examples}
    assert [e.id for e in examples] == ["q1", "q2", "q3", "q4"]
    assert by_id["q1"] == QAExample(
        "q1", "What is the capital of France?", CONTEXT, (("Paris", 0),), "T"
    )
    assert not by_id["q1"].is_impossible
    assert by_id["q2"].is_impossible and by_id["q2"].answers == ()  # plausible answers ignored
    assert by_id["q3"].answers == (("Seine", 47), ("the Seine", 43))
    assert by_id["q4"].is_impossible and by_id["q4"].context == "Second context."


@pytest.mark.parametrize("start", [1, 44, 1000])
def test_squad_bad_answer_start_names_question(tmp_path, start):
    data = _squad(
        {
            CONTEXT: [
                {
                    "id": "qid-77",
                    "question": "?",
                    "answers": [{"text": "Seine", "answer_start": start}],
                }
            ]
        }
    )
    with pytest.raises(DataFormatError) as info:
        read_squad(_write(tmp_path, "s.json", json.dumps(data)))
    message = str(info.value)
    assert "'qid-77'" in message
    assert f"answer_start {start}" in message and "'Seine'" in message
    assert "data[0].paragraphs[0]" in message


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "not SQuAD JSON"),
        ("{not json", "not SQuAD JSON"),
        ('{"version": "v2.0"}', "not SQuAD JSON"),
        ('{"data": []}', "no questions found"),
        ('{"data": [{"paragraphs": []}]}', "no questions found"),
    ],
)
def test_squad_bad_or_empty_file(tmp_path, text, needle):
    with pytest.raises(DataFormatError, match=needle):
        read_squad(_write(tmp_path, "s.json", text))


# --- empty and missing files ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("e.conllu", "", "no sentences found"),
        ("e.conllu", "# only a comment\n\n", "no sentences found"),
        ("e.tsv", "", "empty file"),
        ("e.tsv", "\n\n# x\n", "empty file"),
        ("e.json", "", "not SQuAD JSON"),
    ],
)
def test_empty_files_error(tmp_path, name, text, needle):
    with pytest.raises(DataFormatError, match=needle):
        task_texts(_write(tmp_path, name, text))


@pytest.mark.parametrize("reader", [read_conllu, read_bio, read_squad, task_texts])
def test_missing_file(tmp_path, reader):
    with pytest.raises(FileNotFoundError, match="nope"):
        reader(tmp_path / "nope.json")


def test_bio_only_docstart_is_empty(tmp_path):
    with pytest.raises(DataFormatError, match="no sentences found"):
        read_bio(_write(tmp_path, "d.tsv", "-DOCSTART-\tO\n\n"))


# --- sniffing and task_texts ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "fmt"),
    [
        ("x.json", json.dumps(SQUAD), "squad"),
        ("x.conllu", CONLLU, "conllu"),
        ("x.tsv", BIO, "bio"),
        ("x.txt", BIO, "bio"),
        ("train", CONLLU, "conllu"),  # no extension: the first content line decides
        ("train", "\n\n" + BIO, "bio"),
    ],
)
def test_sniff_format(tmp_path, name, content, fmt):
    assert sniff_format(_write(tmp_path, name, content)) == fmt


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("p.conllu", CONLLU, ["Ich gehe zu dem Haus .", "Ja"]),
        ("data", CONLLU, ["Ich gehe zu dem Haus .", "Ja"]),
        ("n.tsv", BIO, ["John Smith lives in New York", "EU rejects", "Hi"]),
        (
            "q.json",
            json.dumps(SQUAD),
            [
                CONTEXT,
                "Second context.",
                "What is the capital of France?",
                "What river crosses Berlin?",
                "Which river?",
                "Anything?",
            ],
        ),
    ],
)
def test_task_texts(tmp_path, name, content, expected):
    assert task_texts(_write(tmp_path, name, content)) == expected


@pytest.mark.integration
def test_shared_pos_de_dev_has_80_texts():
    path = SHARED_DATA / "pos_de" / "dev.conllu"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    texts = task_texts(path)
    assert len(texts) == 80
    assert all(t.strip() for t in texts)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("relative", "reader", "count"),
    [("pos_de/train.conllu", read_conllu, 719), ("ner_en/test.tsv", read_bio, 871)],
)
def test_shared_data_sentence_counts(relative, reader, count):
    """Counts from shared/data/README.md: the real files parse cleanly end to end."""
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"{path} not present")
    sents = reader(path)
    assert len(sents) == count
    assert all(len(s.words) == len(s.tags) > 0 for s in sents)


# Sentences and syntactic words per file, as counted in shared/data/README.md when the data was
# assembled (independently of this reader). extra_lit.conllu is UD German-LIT, a treebank of
# another domain that no other part of alad reads.
POS_DE_COUNTS = [
    ("train.conllu", 719, 10_991),
    ("dev.conllu", 80, 1_489),
    ("test.conllu", 977, 16_499),
    ("extra_lit.conllu", 1_920, 40_450),
]
UPOS_17 = {"ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON"}
UPOS_17 |= {"PROPN", "PUNCT", "SCONJ", "SYM", "VERB", "X"}


@pytest.mark.integration
@pytest.mark.parametrize(("name", "sentences", "words"), POS_DE_COUNTS)
def test_conllu_matches_independent_counts_on_real_ud_treebanks(name, sentences, words):
    path = SHARED_DATA / "pos_de" / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    sents = read_conllu(path)
    assert (len(sents), sum(len(s.words) for s in sents)) == (sentences, words)
    # and a count made here without any CoNLL-U parser: integer-ID lines, sent_id comments
    text = path.read_text(encoding="utf-8")
    assert sum(len(s.words) for s in sents) == len(re.findall(r"^\d+\t", text, re.MULTILINE))
    assert len(sents) == len(re.findall(r"^# sent_id = ", text, re.MULTILINE))
    upos = {t for s in sents for t in s.tags}
    assert upos <= UPOS_17
