"""Raw text in, word tags or answers out: what every predictor of alad shares, without torch.

    alad predict runs/ner-alad-frozen/model "Empire State Building = ESB ."     # alad.predict
    python -c "from alad.onnx_predict import OnnxPredictor as P; print(P('onnx-ner').tag(['...']))"

Text is any Unicode string. Control characters, NUL, zero-width and right-to-left characters,
lone combining accents and emoji are kept and tagged as words (one the tokenizer drops entirely
is read as its unknown token: alad/data/tagging.py); a lone surrogate, which is what bytes that
are not UTF-8 become in Python (argv, stdin, a "\\ud800" escape in JSON), is replaced by U+FFFD.
A text without words (empty, only spaces) gets no tags; a question or a context without words
gets no answer.

A subclass runs a model: `tag_words` (words of non-empty texts -> their tags) and
`answer_examples` (QA examples -> answer per example id). alad.predict.Predictor runs the saved
PyTorch model, alad.onnx_predict.OnnxPredictor an exported ONNX graph; both encode and decode
with the same functions (alad/data/tagging.py, alad/data/qa.py), so they answer alike.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from alad.data.records import QAExample
from alad.errors import UsageError

_SURROGATE = re.compile("[\ud800-\udfff]")


def as_text(text: str) -> str:
    """`text` with every lone surrogate replaced by U+FFFD (module docstring): the tokenizer
    (Rust, UTF-8) cannot take one. Everything else is kept as it is."""
    return _SURROGATE.sub("\ufffd", text)


class TextPredictor:
    """Splits, checks and routes requests; the subclass sets `folder`, `task_name` ("pos", ...),
    `head_kind` ("token" | "span") and `pre_tokenizer` (the tokenizer's, `tokenizers` object)."""

    folder: Path
    task_name: str
    head_kind: str
    pre_tokenizer: Any

    def words(self, text: str) -> list[str]:
        """Split raw text into words the way the tokenizer's pre-tokenizer does."""
        return [w for w, _ in self.pre_tokenizer.pre_tokenize_str(text)]

    def tag_words(self, words: list[tuple[str, ...]]) -> list[list[str]]:
        """One tag per word of each (non-empty) word list."""
        raise NotImplementedError

    def answer_examples(self, examples: list[QAExample]) -> dict[str, str]:
        """Answer text per example id, "" for no answer."""
        raise NotImplementedError

    def tag(self, texts: list[str]) -> list[list[tuple[str, str]]]:
        """Words and their tags per text; a text without words (empty) gets an empty list."""
        if self.head_kind != "token":
            raise UsageError(
                f"{self.folder} is a {self.task_name} model: it answers questions "
                "(alad predict MODEL --question Q --context C), it does not tag text"
            )
        words = [tuple(self.words(as_text(t))) for t in texts]
        nonempty = [i for i, w in enumerate(words) if w]
        tags = self.tag_words([words[i] for i in nonempty]) if nonempty else []
        out: list[list[tuple[str, str]]] = [[] for _ in texts]
        for i, sentence in zip(nonempty, tags, strict=True):
            out[i] = list(zip(words[i], sentence, strict=True))
        return out

    def answer(self, pairs: list[tuple[str, str]]) -> list[str]:
        """(question, context) pairs -> answer text, or "" for no answer (also when the question
        or the context has no words)."""
        if self.head_kind != "span":
            raise UsageError(
                f"{self.folder} is a {self.task_name} model: it tags the words of text "
                '(alad predict MODEL "a sentence"), it does not answer questions'
            )
        clean = [(as_text(q), as_text(c)) for q, c in pairs]
        asked = [i for i, (q, c) in enumerate(clean) if q.strip() and c.strip()]
        answers = [""] * len(pairs)  # nothing asked, or nothing to read: no answer
        if not asked:
            return answers
        examples = [QAExample(str(i), *clean[i]) for i in asked]
        predictions = self.answer_examples(examples)
        for i, e in zip(asked, examples, strict=True):
            answers[i] = predictions[e.id]
        return answers
