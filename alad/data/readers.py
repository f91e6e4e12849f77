"""Readers for the task formats: CoNLL-U (POS), `token<TAB>tag` BIO (NER), SQuAD 2.0 JSON (QA).

    alad data inspect ../shared/data/pos_de/train.conllu

Every reader raises `DataFormatError` naming the file and line of the first problem, with what
was expected. Phase 2 needs only the text (`task_texts`); phase 3 uses the labels too. CoNLL-U
is parsed by the `conllu` package behind a strict line check; `hub:<id>[:split[:column]]` reads
a token task's sentences from a `datasets` dataset, hub or local (`read_hub_tagged`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import conllu
from conllu.exceptions import ParseException
from conllu.parser import parse_id_value

from alad.atomic import read_json, text_lines
from alad.data.records import QAExample, TaggedSentence  # the readers' records, named here too
from alad.errors import DataFormatError

log = logging.getLogger(__name__)


def _lines(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"{path}: task file not found")
    yield from text_lines(path)


def _sentence_blocks(path: Path):
    """Non-blank lines grouped into sentences (blank line = boundary), with line numbers."""
    block: list[tuple[int, str]] = []
    for lineno, raw in _lines(path):
        line = raw.rstrip("\n")
        if line.strip():
            block.append((lineno, line))
        elif block:
            yield block
            block = []
    if block:
        yield block


def _read_tagged(path: Path, parse_line, kind: str) -> list[TaggedSentence]:
    """`parse_line(lineno, line, tags_so_far)` -> (word, tag), or None to skip the line."""
    sentences = []
    for block in _sentence_blocks(path):
        words: list[str] = []
        tags: list[str] = []
        for lineno, line in block:
            parsed = parse_line(lineno, line, tags)
            if parsed is not None:
                words.append(parsed[0])
                tags.append(parsed[1])
        if words:
            sentences.append(TaggedSentence(tuple(words), tuple(tags)))
    if not sentences:
        raise DataFormatError(f"{path}: no sentences found (empty file, or not {kind}?)")
    return sentences


def read_conllu(path: Path) -> list[TaggedSentence]:
    """UPOS (column 4) per syntactic word; multiword ranges (3-4) and empty nodes (5.1) skipped.

    The `conllu` package parses each sentence; a pass over its lines first checks the layout the
    package is lenient about (it also splits at two spaces and fills in missing columns), so every
    problem is a DataFormatError naming the line, never a conllu exception or a shifted column."""
    sentences = []
    for block in _sentence_blocks(path):
        rows = []  # (line number, tab columns) of the token lines, in the order conllu keeps
        bad = None  # the first line conllu cannot be given: reported after the lines above it
        for k, (lineno, line) in enumerate(block):
            if line.startswith("#"):
                continue
            cols = line.split("\t")
            if len(cols) != 10:
                bad = DataFormatError(
                    f"{path}:{lineno}: CoNLL-U token lines have 10 tab-separated columns, "
                    f"found {len(cols)}: {line[:80]!r}"
                )
            elif line[:1].isspace():  # conllu strips it (and "  # x" would become a comment)
                bad = _bad_id(path, lineno, cols[0])
            if bad is not None:
                block = block[:k]
                break
            rows.append((lineno, cols))
        tokens = _conllu_tokens(path, block) if rows else []
        if len(tokens) != len(rows):  # cannot happen after the checks above; never silently
            raise DataFormatError(
                f"{path}:{block[0][0]}: the conllu parser found {len(tokens)} token lines in "
                f"this sentence, the file has {len(rows)}"
            )
        words: list[str] = []
        tags: list[str] = []
        for (lineno, cols), token in zip(rows, tokens, strict=True):
            word = _conllu_word(path, lineno, cols, token)
            if word is not None:
                words.append(word[0])
                tags.append(word[1])
        if bad is not None:
            raise bad
        if words:
            sentences.append(TaggedSentence(tuple(words), tuple(tags)))
    if not sentences:
        raise DataFormatError(f"{path}: no sentences found (empty file, or not CoNLL-U?)")
    return sentences


def _conllu_tokens(path: Path, block: list[tuple[int, str]]) -> conllu.TokenList:
    try:
        return conllu.parse_token_and_metadata(
            "\n".join(line for _, line in block),
            fields=conllu.DEFAULT_FIELDS,
            field_parsers=dict(_CONLLU_PARSERS),
        )
    except ParseException as exc:  # not expected after the checks above; still one line
        raise DataFormatError(f"{path}:{block[0][0]}: not CoNLL-U ({exc})") from None


def _conllu_id(value: str) -> int | tuple | str:
    """conllu's ID parse: 7, (3, '-', 4) or (5, '.', 1); the raw text if it is none of them
    (reported with its line by `_conllu_word`, not raised from inside the parser)."""
    try:
        parsed = parse_id_value(value)
    except ParseException:
        return value
    return value if parsed is None else parsed


# Only ID is interpreted; every other column stays the file's text, so a HEAD or FEATS value the
# package would reject cannot make a POS file unreadable (the reader uses FORM and UPOS only).
_CONLLU_PARSERS = {name: (lambda cols, i: cols[i]) for name in conllu.DEFAULT_FIELDS}
_CONLLU_PARSERS["id"] = lambda cols, i: _conllu_id(cols[i])


def _bad_id(path: Path, lineno: int, value: str) -> DataFormatError:
    return DataFormatError(
        f"{path}:{lineno}: ID column {value!r} is not a word index (1, 2, ...), "
        "a multiword range (3-4) or an empty node (5.1)"
    )


def _conllu_word(path: Path, lineno: int, cols: list[str], token) -> tuple[str, str] | None:
    """(FORM, UPOS) of a syntactic word; None for a multiword range or an empty node."""
    ident = token["id"]
    if isinstance(ident, tuple):
        return None
    if not isinstance(ident, int):
        raise _bad_id(path, lineno, cols[0])
    upos = token.get("upos")
    if upos is None or upos.strip() in ("", "_"):
        # '_' is CoNLL-U's "unannotated": training on it would teach a tag called "_".
        raise DataFormatError(
            f"{path}:{lineno}: word {cols[1]!r} has no UPOS tag (column 4 is "
            f"{cols[3]!r}); every word of a POS file needs one"
        )
    if (token.get("form"), upos) != (cols[1], cols[3]):
        shown = "\t".join(cols)[:80]
        raise DataFormatError(
            f"{path}:{lineno}: FORM, LEMMA or UPOS holds two spaces in a row, which the conllu "
            f"parser reads as a column break (UD allows single spaces only): {shown!r}"
        )
    return cols[1], cols[3]


def read_bio(path: Path) -> list[TaggedSentence]:
    """`token<TAB>tag` (or the last of several whitespace columns, as in CoNLL-2003) per line;
    blank line between sentences; `-DOCSTART-` lines skipped. An `I-x` that does not continue an
    `x` entity is an error (the files here are well-formed; silently repairing would hide bugs)."""

    def parse(lineno: int, line: str, tags: list[str]) -> tuple[str, str] | None:
        cols = line.split("\t") if "\t" in line else line.split()
        if cols[0] == "-DOCSTART-":
            return None
        if len(cols) < 2 or not cols[0] or not cols[-1]:
            raise DataFormatError(f"{path}:{lineno}: expected 'token<TAB>tag', found {line[:80]!r}")
        problem = _bio_problem(cols[-1], tags)
        if problem:
            raise DataFormatError(f"{path}:{lineno}: {problem}")
        return cols[0], cols[-1]

    return _read_tagged(path, parse, "token<TAB>tag")


def _bio_problem(tag: str, tags: list[str]) -> str | None:
    """What is wrong with BIO tag `tag` after the sentence's `tags` so far (None: nothing)."""
    if tag != "O" and not tag.startswith(("B-", "I-")):
        return f"tag {tag!r} is not O, B-x or I-x"
    if tag.startswith("I-") and (not tags or tags[-1][2:] != tag[2:] or tags[-1] == "O"):
        return (
            f"{tag} follows {tags[-1] if tags else 'sentence start'}; "
            f"an I- tag must continue an entity of the same type (B-{tag[2:]} or {tag})"
        )
    return None


def _upos_problem(tag: str, tags: list[str]) -> str | None:
    if tag.strip() in ("", "_"):  # CoNLL-U's "unannotated", or a multiword token's row
        return f"no UPOS tag ({tag!r}); every word of a POS dataset needs one"
    return None


# `datasets` datasets as task data (phase 3, token tasks): `hub:<id>[:split[:column]]`.
TAG_SCHEMES = {"upos": _upos_problem, "bio": _bio_problem}
_DATASET_FILES = {
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
}


def load_hub(spec: str) -> tuple[Any, str | None]:
    """`hub:<id>[:split[:column]]` through `datasets`: (that split, the column named or None).

    <id> is a hub dataset id (needs internet; `datasets` keeps its Arrow cache), a folder
    written by `save_to_disk`, a folder of data files `load_dataset` reads (parquet, json, csv,
    arrow; e.g. train.parquet + validation.parquet), or one such file (its split is `split`)."""
    from datasets import DatasetDict, load_dataset, load_from_disk

    _, dataset_id, *rest = spec.split(":")
    if not dataset_id or len(rest) > 2:
        raise DataFormatError(f"{spec}: expected hub:<dataset id or path>[:split[:column]]")
    split = rest[0] if rest and rest[0] else "train"
    column = rest[1] if len(rest) > 1 and rest[1] else None
    local = Path(dataset_id).expanduser()
    try:
        if (local / "dataset_dict.json").is_file() or (local / "state.json").is_file():
            ds = load_from_disk(str(local))
            if isinstance(ds, DatasetDict):
                if split not in ds:
                    raise DataFormatError(f"{spec}: no split {split!r}; splits are {sorted(ds)}")
                ds = ds[split]
            elif split != str(ds.split or "train"):  # one saved split: never a silent stand-in
                raise DataFormatError(
                    f"{spec}: {local} holds one dataset (split {str(ds.split or 'train')!r}), "
                    f"not {split!r}; leave the split out"
                )
        elif local.is_file():
            if local.suffix not in _DATASET_FILES:
                raise DataFormatError(
                    f"{spec}: datasets reads {', '.join(sorted(_DATASET_FILES))} files, "
                    f"not {local.suffix or 'files without an extension'}"
                )
            builder = _DATASET_FILES[local.suffix]
            ds = load_dataset(builder, data_files={split: str(local)}, split=split)
        else:
            ds = load_dataset(dataset_id, split=split)
    except (ConnectionError, FileNotFoundError, ValueError) as exc:
        if isinstance(exc, DataFormatError):
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataFormatError(
            f"{spec}: datasets cannot load {dataset_id!r} ({reason[:200]}); a hub id needs "
            "internet or an earlier download in the datasets cache"
        ) from None
    return ds, column


def read_hub_tagged(spec: str, tag_columns: tuple[str, ...], scheme: str) -> list[TaggedSentence]:
    """A token task's sentences from a `datasets` dataset: one row per sentence, its words in
    `tokens` and its tags in the column the spec names, else the first of `tag_columns` it has.
    Tags are class labels (ClassLabel: their names are the tags) or strings, checked like the
    files' (`scheme`: "upos" or "bio"); a DataFormatError names the row and word."""
    from datasets import ClassLabel, Value

    ds, column = load_hub(spec)
    names = ds.column_names
    if "tokens" not in names:
        raise DataFormatError(f"{spec}: no column 'tokens' (the words of each row); has {names}")
    column = column or next((c for c in tag_columns if c in names), None)
    if column not in names:
        raise DataFormatError(
            f"{spec}: no tag column {column or ' or '.join(map(repr, tag_columns))}; has {names}. "
            "Name it: hub:<id>:<split>:<column>"
        )
    words_type = getattr(ds.features["tokens"], "feature", None)  # List / Sequence / LargeList
    if not (isinstance(words_type, Value) and words_type.dtype in ("string", "large_string")):
        raise DataFormatError(
            f"{spec}: column 'tokens' is {ds.features['tokens']}; expected a list of words per row"
        )
    inner = getattr(ds.features[column], "feature", None)
    if isinstance(inner, ClassLabel):
        label_names = inner.names
    elif isinstance(inner, Value) and inner.dtype in ("string", "large_string"):
        label_names = None
    else:
        raise DataFormatError(
            f"{spec}: column {column!r} is {ds.features[column]}; expected a list of class "
            "labels (ClassLabel, whose names are the tags) or of strings per row"
        )
    check = TAG_SCHEMES[scheme]
    sentences, empty = [], 0
    for i, (words, ids) in enumerate(zip(ds["tokens"], ds[column], strict=True)):
        words, ids = words or [], ids or []
        if len(words) != len(ids):
            raise DataFormatError(
                f"{spec}: row {i} has {len(words)} tokens and {len(ids)} {column}; "
                "every token needs one tag"
            )
        tags: list[str] = []
        for j, (word, raw) in enumerate(zip(words, ids, strict=True)):
            if label_names is None:
                tag = raw if isinstance(raw, str) else None
            else:
                tag = (
                    label_names[raw]
                    if isinstance(raw, int) and 0 <= raw < len(label_names)
                    else None
                )
            if not isinstance(word, str) or not word:
                problem = f"token {word!r} is not a word"
            elif tag is None:
                known = f"not one of its {len(label_names)} labels" if label_names else "no tag"
                problem = f"{column} is {raw!r}, {known}"
            else:
                problem = check(tag, tags)
            if problem:
                raise DataFormatError(f"{spec}: row {i}, token {j} ({word!r}): {problem}")
            tags.append(tag)
        if words:
            sentences.append(TaggedSentence(tuple(words), tuple(tags)))
        else:
            empty += 1
    if empty:
        log.warning("%s: skipped %d rows without tokens", spec, empty)
    if not sentences:
        raise DataFormatError(f"{spec}: no sentences found (no row has tokens)")
    return sentences


def read_squad(path: Path) -> list[QAExample]:
    """SQuAD 2.0 JSON. Every field is checked (a DataFormatError names its JSON path): ids are
    unique, each answer span lies inside its context and matches it, contexts are not empty."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: task file not found")
    root = read_json(path, "SQuAD JSON")
    data = root.get("data") if isinstance(root, dict) else None
    if not isinstance(data, list):
        raise DataFormatError(f"{path}: not SQuAD JSON: need {{'data': [articles...]}}")
    out: list[QAExample] = []
    first_seen: dict[str, str] = {}
    for a, article in enumerate(data):
        title = str(_dict(article, path, f"data[{a}]").get("title", ""))
        for p, para in enumerate(_list(article, "paragraphs", path, f"data[{a}]")):
            where = f"data[{a}].paragraphs[{p}]"
            para = _dict(para, path, where)
            context = _str(para, "context", path, where)
            if not context.strip():
                raise DataFormatError(
                    f"{path}: {where}.context is empty; no question about it "
                    "can be answered or scored"
                )
            for q, qa in enumerate(_list(para, "qas", path, where)):
                out.append(
                    _qa_example(
                        _dict(qa, path, f"{where}.qas[{q}]"),
                        context,
                        path,
                        f"{where}.qas[{q}]",
                        first_seen,
                        title,
                    )
                )
    if not out:
        raise DataFormatError(f"{path}: no questions found")
    return out


def _qa_example(
    qa: dict, context: str, path: Path, where: str, first_seen: dict, title: str = ""
) -> QAExample:
    qid = qa.get("id")
    if not isinstance(qid, str) or not qid:
        raise DataFormatError(f"{path}: {where}.id: expected a non-empty string, got {qid!r}")
    if qid in first_seen:  # scores are keyed by id: a duplicate would drop a question
        raise DataFormatError(
            f"{path}: {where}.id {qid!r} is used twice (first at {first_seen[qid]}); "
            "question ids must be unique"
        )
    first_seen[qid] = where
    question = _str(qa, "question", path, where)
    impossible = qa.get("is_impossible", False)
    if not isinstance(impossible, bool):
        raise DataFormatError(f"{path}: {where}.is_impossible: expected true or false")
    answers = []
    for k, ans in enumerate([] if impossible else _list(qa, "answers", path, where)):
        at = f"{where}.answers[{k}]"
        ans = _dict(ans, path, at)
        text, start = _str(ans, "text", path, at), ans.get("answer_start")
        if not isinstance(start, int) or isinstance(start, bool):
            raise DataFormatError(f"{path}: {at}.answer_start: expected an integer, got {start!r}")
        if not text or start < 0 or context[start : start + len(text)] != text:
            raise DataFormatError(
                f"{path}: {at} (question {qid!r}): answer_start {start} does not point at "
                f"{text!r} in the context ({len(context)} characters)"
            )
        answers.append((text, start))
    if not answers and qa.get("is_impossible") is False:
        # Said to be answerable, with no answer to learn or score: taken as it stands, it would
        # silently count as unanswerable. (Without `is_impossible`, as in SQuAD 1.1 files or
        # exports of the `squad_v2` dataset, no answers means unanswerable.)
        raise DataFormatError(
            f"{path}: {where}.answers (question {qid!r}): empty, but is_impossible is false; "
            "give its answers, or set is_impossible to true"
        )
    return QAExample(qid, question, context, tuple(answers), title)


def _dict(value: object, path: Path, where: str) -> dict:
    if not isinstance(value, dict):
        raise DataFormatError(f"{path}: {where}: expected an object, got {type(value).__name__}")
    return value


def _list(obj: dict, key: str, path: Path, where: str = "") -> list:
    value = obj.get(key, [])
    if not isinstance(value, list):
        name = f"{where}.{key}" if where else key
        raise DataFormatError(f"{path}: {name}: expected a list, got {type(value).__name__}")
    return value


def _str(obj: dict, key: str, path: Path, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        got = "nothing" if key not in obj else f"{type(value).__name__} {value!r}"[:80]
        raise DataFormatError(f"{path}: {where}.{key}: expected a string, got {got}")
    return value


def sniff_format(path: Path) -> str:
    """'squad', 'conllu' or 'bio', from the extension and the first content line."""
    if path.suffix == ".json":
        return "squad"
    if path.suffix == ".conllu":
        return "conllu"
    for _, line in _lines(path):
        if line.strip() and not line.startswith("#"):
            return "conllu" if len(line.rstrip("\n").split("\t")) == 10 else "bio"
    raise DataFormatError(f"{path}: empty file")


def task_texts(path: Path) -> list[str]:
    """The unlabeled text of a task file, for phase 2: sentences, or QA contexts + questions."""
    fmt = sniff_format(path)
    if fmt == "squad":
        examples = read_squad(path)
        contexts = list(dict.fromkeys(e.context for e in examples))
        return contexts + [e.question for e in examples]
    reader = read_conllu if fmt == "conllu" else read_bio
    return [s.text for s in reader(path)]


# Writers: the prepared-data stage stores the exact splits it used in the standard formats,
# so every later stage (and anyone reading runs/data/) reads them with the readers above.


def write_conllu(sentences: list[TaggedSentence], path: Path) -> None:
    lines = []
    for i, s in enumerate(sentences):
        lines.append(f"# sent_id = {i}")
        lines.extend(
            f"{j}\t{w}\t_\t{t}\t_\t_\t_\t_\t_\t_"
            for j, (w, t) in enumerate(zip(s.words, s.tags, strict=True), start=1)
        )
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_bio(sentences: list[TaggedSentence], path: Path) -> None:
    blocks = [
        "\n".join(f"{w}\t{t}" for w, t in zip(s.words, s.tags, strict=True)) for s in sentences
    ]
    path.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")


def write_squad(examples: list[QAExample], path: Path) -> None:
    """SQuAD 2.0 JSON, one article per title (questions of one context share a paragraph)."""
    articles: dict[str, dict[str, list[dict]]] = {}
    for e in examples:
        articles.setdefault(e.title or "prepared", {}).setdefault(e.context, []).append(
            {
                "id": e.id,
                "question": e.question,
                "is_impossible": e.is_impossible,
                "answers": [{"text": t, "answer_start": s} for t, s in e.answers],
            }
        )
    data = [
        {"title": title, "paragraphs": [{"context": c, "qas": q} for c, q in paragraphs.items()]}
        for title, paragraphs in articles.items()
    ]
    path.write_text(
        json.dumps({"version": "v2.0", "data": data}, ensure_ascii=False), encoding="utf-8"
    )
